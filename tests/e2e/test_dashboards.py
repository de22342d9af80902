"""The Grafana dashboard and the Prometheus rules in examples/ query series that exist.

A real sessions-mode gateway serves a pinned client, deploys v2 (so v1 drains with
that session) and is scraped with the admin token.  Every series a dashboard panel, an
annotation, a template variable or an alert rule names must be on that /metrics page,
with the labels the query groups by or matches on, and each label value a query
matches literally (``kind="canary-failed"``, ``class="5xx"``) must be one the gateway
exports — so a renamed series or a typo in a query fails here, not on a wall screen.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import GatewayProcess
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "holdover.json"
RULES = ROOT / "examples" / "prometheus" / "holdover-rules.yml"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus at scrape time
SELECTOR = re.compile(r"\b(holdover_[a-z0-9_]+)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    out += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def rule_queries() -> list[str]:
    data = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in data["groups"] for r in g["rules"]]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys() and p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["expr"].count("{") == t["expr"].count("}"), t["expr"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for what in ("requests", "errors", "sessions per revision", "workers by state", "p99"):
        assert what in titles, what
    kinds = " ".join(a.get("expr", "") for a in dash["annotations"]["list"])
    assert 'kind=~"deploy|' in kinds


def test_the_rules_are_alerting_rules() -> None:
    data = yaml.safe_load(RULES.read_text())
    rules = [r for g in data["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"HoldoverWorkerCrashLooping", "HoldoverCanaryAborted", "HoldoverSessionsLost",
            "HoldoverRevisionDrainingOverADay"} <= names
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]


def scrape(gw: GatewayProcess) -> dict[str, list[dict[str, str]]]:
    code, _, body = gw.admin_request("GET", "/metrics")
    assert code == 200, body
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append({**s.labels, "__value__": str(s.value)})
    return out


def problems(query: str, series: dict[str, list[dict[str, str]]]) -> list[str]:
    """What in ``query`` the scraped ``series`` do not have."""
    found: list[str] = []
    names = [m.group(1) for m in SELECTOR.finditer(query)]
    if not names:
        return [f"{query!r} names no holdover series"]
    for m in SELECTOR.finditer(query):
        name, braces = m.group(1), m.group(2) or ""
        if name not in series:
            found.append(f"{name} is not on /metrics")
            continue
        labels = {k for s in series[name] for k in s if k != "__value__"}
        for label, op, value in MATCHER.findall(braces):
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                found.append(f"{name} has no label {label!r}")
                continue
            seen = {s.get(label) for s in series[name]}
            wanted = [value] if op == "=" else value.split("|") if op == "=~" and re.fullmatch(
                r"[\w\-|]+", value) else []
            found += [f'{name}{{{label}="{v}"}} is not on /metrics' for v in wanted
                      if v not in seen]
    every = {k for n in names if n in series for s in series[n] for k in s}
    for group in GROUPING.findall(query):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in every and label not in TARGET_LABELS:
                found.append(f"no series of {names} has the label {label!r} to group by")
    return found


def test_every_query_names_series_the_gateway_exports(gateway_factory) -> None:
    gw = gateway_factory(mode="sessions").wait_ready()
    # A client pinned to v1, some answers of each kind, then a deploy: v1 drains.
    cookie = ""
    # (the health path is never pinned: the first request goes elsewhere)
    for path in ("/nowhere", "/healthz", "/healthz"):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = conn.getresponse()
        r.read()
        conn.close()
        cookie = cookie or r.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("holdover_pin=")
    deployed = gw.cli("deploy", "--revision", "v2")
    assert deployed.returncode == 0, deployed.stderr
    series = scrape(gw)

    queries = dashboard_queries() + rule_queries()
    assert len(queries) >= 20
    bad = {q: p for q in queries if (p := problems(q, series))}
    assert not bad, json.dumps(bad, indent=2)

    # The series added for the alerts say what they should.
    def value(name: str, **labels: str) -> float:
        rows = [s for s in series[name] if all(s.get(k) == v for k, v in labels.items())]
        assert len(rows) == 1, (name, labels, series.get(name))
        return float(rows[0]["__value__"])

    started = value("holdover_revision_drain_started_timestamp_seconds", revision="v1")
    assert time.time() - 300 < started <= time.time()
    assert "v2" not in {s["revision"] for s in
                        series["holdover_revision_drain_started_timestamp_seconds"]}
    assert value("holdover_worker_crash_looping", revision="v1", worker="v1-1") == 0
    assert value("holdover_events_total", kind="deploy") == 2  # the first start, then v2
    assert value("holdover_events_total", kind="canary-failed") == 0
    again = scrape(gw)  # counted once, however often it is scraped
    assert next(s for s in again["holdover_events_total"] if s["kind"] == "deploy")[
        "__value__"] == "2.0"


def test_problems_finds_what_is_missing() -> None:
    series: dict[str, Any] = {"holdover_events_total": [{"kind": "deploy", "__value__": "1"}]}
    assert problems('increase(holdover_events_total{kind="deploy"}[5m])', series) == []
    assert problems('holdover_events_total{kind="canary_failed"}', series)
    assert problems('holdover_events_total{kind=~"deploy|oops"}', series)
    assert problems("holdover_nothing_total", series)
    assert problems("sum by (revision) (holdover_events_total)", series)
    assert problems('sum by (instance) (holdover_events_total{instance=~"$i"})', series) == []
