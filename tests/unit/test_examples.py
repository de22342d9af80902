"""The Kubernetes example (examples/kubernetes/, docs/orchestrators.md) is valid as it
stands: every manifest against the Kubernetes schemas (offline, with the schemas that
kubernetes-validate ships), and the holdover.toml in its ConfigMap with holdover's own
configuration loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import require

from holdover import config
from holdover.core.discovery import parse_discover

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
KUBERNETES = "1.30.0"  # the oldest Kubernetes still supported when the example was written


def documents() -> list[tuple[str, dict[str, Any]]]:
    yaml = require("yaml")
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):  # type: ignore[attr-defined]
            if doc:
                out.append((path.name, doc))
    return out


def test_there_is_an_example() -> None:
    found = {(d["kind"], d["metadata"]["name"]) for _, d in documents()}
    assert {("Deployment", "app-v1"), ("Service", "app-v1"), ("Deployment", "holdover"),
            ("Role", "holdover-scale-app"), ("RoleBinding", "holdover-scale-app"),
            ("ServiceAccount", "holdover"), ("ConfigMap", "holdover")} <= found


@pytest.mark.parametrize(("name", "doc"), documents(),
                         ids=lambda x: x if isinstance(x, str) else
                         f"{x['kind']}/{x['metadata']['name']}")
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kv = require("kubernetes_validate")
    try:
        kv.validate(doc, KUBERNETES, strict=True)  # type: ignore[attr-defined]
    except kv.ValidationError as exc:  # type: ignore[attr-defined]
        pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_the_configmap_holds_a_valid_holdover_config(tmp_path: Path) -> None:
    text = by_kind("ConfigMap", "holdover")["data"]["holdover.toml"]
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    text = text.replace("$(POD_IP)", "10.244.1.7").replace(
        "/etc/holdover/redis/password", str(secret))
    path = tmp_path / "holdover.toml"
    path.write_text(text)
    cfg = config.load(path)
    assert cfg.app_command == "" and cfg.gateway_store.startswith("redis://")
    assert "{revision}" in cfg.app_on_retire
    # the revision's headless Service is what the discover template names
    svc = by_kind("Service", "app-v1")
    assert svc["spec"]["clusterIP"] == "None"
    port_name = svc["spec"]["ports"][0]["name"]
    ns = svc["metadata"]["namespace"]
    assert parse_discover(cfg.app_discover).name("v1") == \
        f"_{port_name}._tcp.app-v1.{ns}.svc.cluster.local"
    assert cfg.app_on_retire.replace("{revision}", "v1").endswith(
        f"-n {ns} scale deployment/app-v1 --replicas=0")
    # the hook may scale exactly that: the Role grants deployments/scale in the namespace
    role = by_kind("Role", "holdover-scale-app")
    assert role["metadata"]["namespace"] == ns
    assert any("deployments/scale" in r["resources"] and "patch" in r["verbs"]
               for r in role["rules"])
    assert by_kind("Deployment", "holdover")["spec"]["replicas"] == 2
