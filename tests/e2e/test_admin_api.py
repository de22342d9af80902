"""The admin JSON API against a real gateway: authentication on every endpoint, bad
input refused with a JSON error that names the field, unknown ids 404, the OpenAPI
document, a bounded schemathesis run over its GET operations, and the CLI's errors.

One gateway (one worker of tests/apps/backend.py) serves the whole module: nothing
here changes its revisions, since every refused request is refused before it acts.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GatewayProcess, require

from holdover.admin.commands import COMMANDS, Command

# -- the gateway and a small client -------------------------------------------------------


class Admin:
    """Calls to a gateway's admin side with (or without) its bearer token."""

    def __init__(self, gw: GatewayProcess) -> None:
        state = gw.dir / "state"
        self.base = (state / "admin.url").read_text().strip().rstrip("/")
        self.host, port = self.base.split("//")[1].split(":")
        self.port = int(port)
        self.token = (state / "admin.token").read_text().strip()

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             auth: str | None = "token") -> tuple[int, dict[str, str], Any]:
        headers = {"Accept": "application/json"}
        if auth == "token":
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth is not None:
            headers["Authorization"] = auth
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            ctype = r.headers.get("Content-Type", "")
            if "event-stream" in ctype:  # an authorised stream: don't read it to the end
                return r.status, dict(r.headers), None
            payload = r.read()
            answer = json.loads(payload) if ctype.startswith("application/json") else payload
            return r.status, dict(r.headers), answer
        finally:
            conn.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    g = GatewayProcess(tmp_path_factory.mktemp("admin-api"), workers=1).wait_ready()
    yield g
    g.stop_and_check()


@pytest.fixture(scope="module")
def admin(gw: GatewayProcess) -> Admin:
    return Admin(gw)


def check_error(answer: Any, status: int, field: str | None = None,
                message: str | None = None) -> None:
    assert isinstance(answer, dict) and isinstance(answer.get("error"), dict), answer
    err = answer["error"]
    assert err["status"] == status, answer
    assert isinstance(err["message"], str) and err["message"], answer
    if field is not None:
        assert err.get("field") == field, answer
        assert field in err["message"], answer
    if message is not None:
        assert re.search(message, err["message"]), answer


def call_command(admin: Admin, command: Command, args: dict[str, Any] | None = None,
                 raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """A GET command gets ``args`` as its query, a POST command as its JSON body."""
    if command.method == "GET":
        query = "&".join(f"{k}={v}" for k, v in (args or {}).items())
        return admin.call("GET", command.path + (f"?{query}" if query else ""))
    return admin.call("POST", command.path, body=args, raw=raw)


# -- authentication ------------------------------------------------------------------------

ENDPOINTS = [(c.method, c.path) for c in COMMANDS] + [
    ("GET", "/api/openapi.json"), ("GET", "/api/stream"), ("GET", "/metrics")]
BAD_AUTH = [None, "Bearer not-the-token", "Bearer ", "Basic dXNlcjpwYXNz", "bearer", ""]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[p for _, p in ENDPOINTS])
def test_every_endpoint_needs_the_token(admin: Admin, method: str, path: str) -> None:
    for auth in [*BAD_AUTH, f"Bearer {admin.token}x", f"Token {admin.token}"]:
        code, headers, answer = admin.call(method, path, auth=auth,
                                           body={} if method == "POST" else None)
        assert code == 401, (auth, code, answer)
        check_error(answer, 401, message="missing or wrong admin token")
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
    # And with it the endpoint exists (reads only: a POST here would act).
    if method == "GET" and path not in ("/api/logs",):
        code, headers, _ = admin.call(method, path)
        assert code == 200, (path, code)
        assert headers.get("X-Content-Type-Options") == "nosniff"


def test_refused_post_did_nothing(gw: GatewayProcess, admin: Admin) -> None:
    """The unauthenticated POSTs above (reload, deploy, worker-restart…) never ran."""
    code, _, st = admin.call("GET", "/api/status")
    assert code == 200
    assert [r["id"] for r in st["revisions"]] == ["v1"] and st["active"] == "v1"
    assert [w["restarts"] for w in st["revisions"][0]["workers"]] == [0]
    code, _, ev = admin.call("GET", "/api/events?limit=100")
    assert code == 200
    assert not {"reload", "worker-restart", "canary", "rollback"} & {e["kind"] for e in
                                                                     ev["events"]}, ev
    assert gw.proc.poll() is None


# -- bad input -----------------------------------------------------------------------------

POST_COMMANDS = [c for c in COMMANDS if c.method == "POST"]
WRONG = {str: [5, True, ["x"], {"a": "b"}], int: ["3", 1.5, True, [1]],
         float: ["5", True, [5]], bool: ["yes", 1], dict: [["A=1"], "A=1", {"A": 1}],
         list: ["http://x", [1], {"a": "b"}, [None]]}
PLACEHOLDER = {str: "placeholder", int: 1, float: 1.0, bool: True, dict: {}, list: []}


def _valid_others(command: Command, skip: str) -> dict[str, Any]:
    return {p.name: PLACEHOLDER[p.type] for p in command.params if p.required and
            p.name != skip}


@pytest.mark.parametrize("command", POST_COMMANDS, ids=lambda c: c.name)
def test_malformed_json_is_refused(admin: Admin, command: Command) -> None:
    for raw, message in ((b"{not json", "not valid JSON"), (b'{"a": ', "not valid JSON"),
                         (b"\xff\xfe\x00", "not valid JSON"), (b"[1, 2]", "JSON object"),
                         (b'"text"', "JSON object"), (b"42", "JSON object")):
        code, _, answer = call_command(admin, command, raw=raw)
        assert code == 400, (raw, answer)
        check_error(answer, 400, message=message)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_unknown_field_is_refused(admin: Admin, command: Command) -> None:
    args = {**_valid_others(command, ""), "bogus_field": 1}
    code, _, answer = call_command(admin, command, args)
    assert code == 400, answer
    check_error(answer, 400, field="bogus_field", message="unknown field")


TYPED = [(c, p) for c in COMMANDS for p in c.params if c.method == "POST" or p.type is int]


@pytest.mark.parametrize(("command", "param"), TYPED, ids=[f"{c.name}.{p.name}"
                                                           for c, p in TYPED])
def test_wrong_type_is_refused(admin: Admin, command: Command, param: Any) -> None:
    values = WRONG[param.type] if command.method == "POST" else ["abc", "1.5", "", "1e3"]
    for value in values:
        args = {**_valid_others(command, param.name), param.name: value}
        code, _, answer = call_command(admin, command, args)
        assert code == 400, (value, answer)
        check_error(answer, 400, field=param.name, message="expected")


REQUIRED = [(c, p) for c in COMMANDS for p in c.params if p.required]


@pytest.mark.parametrize(("command", "param"), REQUIRED, ids=[f"{c.name}.{p.name}"
                                                              for c, p in REQUIRED])
def test_missing_required_field_is_refused(admin: Admin, command: Command, param: Any) -> None:
    code, _, answer = call_command(admin, command, _valid_others(command, param.name))
    assert code == 400, answer
    check_error(answer, 400, field=param.name, message="required")
    if command.method == "POST":  # an explicit null is a missing value
        code, _, answer = call_command(admin, command, {**_valid_others(command, param.name),
                                                        param.name: None})
        assert code == 400, answer
        check_error(answer, 400, field=param.name, message="required")


UNKNOWN_ID = [(c, p) for c in COMMANDS for p in c.params
              if p.required and p.name in ("revision", "worker")]


@pytest.mark.parametrize(("command", "param"), UNKNOWN_ID, ids=[c.name for c, _ in UNKNOWN_ID])
def test_unknown_id_is_404(admin: Admin, command: Command, param: Any) -> None:
    for unknown in ("nope", "v1-99", "v9", "../v1", "x" * 200):
        code, _, answer = call_command(admin, command, {param.name: unknown})
        assert code == 404, (unknown, answer)
        check_error(answer, 404)
        assert repr(unknown) in answer["error"]["message"], answer


def test_event_paging_bounds(admin: Admin) -> None:
    for query, field in (("limit=-1", "limit"), ("after=-5", "after"),
                         ("limit=99999999999999999999", "limit"),
                         ("after=99999999999999999999", "after")):
        code, _, answer = admin.call("GET", f"/api/events?{query}")
        assert code == 400, (query, answer)
        check_error(answer, 400, field=field)
    for query in ("after=abc", "once=1&bogus=2", "after=-1"):
        code, _, answer = admin.call("GET", f"/api/stream?{query}")
        assert code == 400, (query, answer)
        check_error(answer, 400)
    code, _, snap = admin.call("GET", "/api/stream?once=1")
    assert code == 200 and snap["status"]["active"] == "v1", snap
    assert snap["events"] and all(isinstance(e["id"], int) for e in snap["events"])


def test_refused_request_keeps_security_headers(admin: Admin) -> None:
    from holdover.admin.server import SECURITY_HEADERS

    for method, path, auth in (("GET", "/api/status", None), ("POST", "/api/drain", "token"),
                               ("GET", "/api/nope", "token")):
        code, headers, _ = admin.call(method, path, auth=auth)
        assert code in (400, 401, 404, 405)
        for k, v in SECURITY_HEADERS.items():
            assert headers.get(k) == v, (path, k)


# -- the OpenAPI document ------------------------------------------------------------------


def _resolve(doc: dict, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_openapi_document(admin: Admin) -> None:
    code, headers, doc = admin.call("GET", "/api/openapi.json")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                              "scheme": "bearer"}
    # Every command is in it, with its method, its parameters and the bearer scheme.
    for c in COMMANDS:
        assert c.path in doc["paths"], c.path
        op = doc["paths"][c.path][c.method.lower()]
        assert op["operationId"] == c.name and op["summary"] == c.help
        assert op["security"] == [{"bearer": []}]
        assert {"200", "400", "401"} <= set(op["responses"])
        if c.method == "POST":
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema["additionalProperties"] is False
            assert set(schema["properties"]) == {p.name for p in c.params}
            assert set(schema["required"]) == {p.name for p in c.params if p.required}
        else:
            assert {p["name"] for p in op["parameters"]} == {p.name for p in c.params}
            assert all(p["in"] == "query" for p in op["parameters"])
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    # Structure: responses have descriptions, every $ref resolves, every schema is a
    # valid JSON Schema (2020-12, OpenAPI 3.1's dialect).
    from jsonschema import Draft202012Validator

    def walk(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for node in walk(doc):
        if "$ref" in node:
            assert _resolve(doc, node["$ref"]) is not None
        if "schema" in node and isinstance(node["schema"], dict):
            Draft202012Validator.check_schema(node["schema"])
    for item in doc["paths"].values():
        for method, op in item.items():
            assert method in ("get", "post", "put", "delete", "patch")
            for code_, resp in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", code_) and resp["description"]
    require("openapi_spec_validator").validate(doc)  # type: ignore[attr-defined]


def test_schemathesis_get_operations(admin: Admin, tmp_path: Path) -> None:
    """Property-based requests to every GET operation: none may answer 5xx."""
    require("schemathesis")
    argv = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; "
            "sys.exit(schemathesis())", "run", f"{admin.base}/api/openapi.json",
            "-H", f"Authorization: Bearer {admin.token}", "--include-method", "GET",
            "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "7",
            "--phases", "examples,coverage,fuzzing", "--request-timeout", "10",
            "--suppress-health-check", "all"]
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    m = re.search(r"API Operations:\s+Selected: (\d+)/\d+\s+Tested: (\d+)", out)
    assert m, out[-2000:]
    n_get = sum(1 for c in COMMANDS if c.method == "GET")
    assert int(m.group(1)) == int(m.group(2)) == n_get, out[-2000:]


# -- the CLI ---------------------------------------------------------------------------------


def holdover(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holdover", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    (("drain", "nope"), r"no revision 'nope'"),
    (("retire", "v1"), r"revision v1 is active: cannot retire \(only a draining revision can be retired\)"),
    (("worker-restart", "v9-9"), r"no running worker 'v9-9'"),
    (("promote",), r"there is no canary to promote"),
    (("rollback",), r"nothing to roll back to"),
    (("deploy", "--revision", "v1"), r"revision 'v1' already exists"),
    (("deploy", "--revision", "bad id!"), r"is not valid"),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else None)
def test_cli_prints_the_refusal(gw: GatewayProcess, args: tuple[str, ...], message: str
                                ) -> None:
    r = holdover(gw.config, *args)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert r.stderr.startswith(f"holdover {args[0]}: "), r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_without_a_gateway_exits_3(tmp_path: Path) -> None:
    config = tmp_path / "holdover.toml"
    config.write_text(textwrap.dedent(f"""\
        [gateway]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:{_free_port()}"
        state_dir = "state"
        [app]
        command = "true"
        """))
    # Never started: no token yet.
    for args in (("status",), ("deploy", "--revision", "v2"), ("rollback",), ("events",)):
        r = holdover(config, *args)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert "holdover run" in r.stderr and "admin.token" in r.stderr, r.stderr
    # Started once, not running now: the token is there, nobody answers.
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin.token").write_text("stale-token\n")
    (state / "admin.url").write_text(f"http://127.0.0.1:{_free_port()}/\n")
    for args in (("status", "--json"), ("drain", "v1")):
        r = holdover(config, *args)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert re.search(r"no gateway answers at http://127\.0\.0\.1:\d+", r.stderr), r.stderr
        assert "holdover run" in r.stderr


# -- the live stream the admin page reads ----------------------------------------------------


def test_stream_pushes_status_every_second(admin: Admin) -> None:
    conn = http.client.HTTPConnection(admin.host, admin.port, timeout=10)
    try:
        conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {admin.token}"})
        r = conn.getresponse()
        assert r.status == 200
        assert r.getheader("Content-Type", "").startswith("text/event-stream")
        assert r.getheader("X-Frame-Options") == "DENY"
        snaps = []
        buf = b""
        while len(snaps) < 2:
            line = r.fp.readline()
            assert line, "the stream ended"
            buf += line
            if line == b"\n" and b"data: " in buf:
                event = dict(x.split(": ", 1) for x in buf.decode().strip().splitlines()
                             if ": " in x)
                assert event["event"] == "status", buf
                snaps.append(json.loads(event["data"]))
                buf = b""
    finally:
        conn.close()
    first, second = snaps
    assert 0.5 < second["ts"] - first["ts"] < 3, (first["ts"], second["ts"])
    assert first["events"] and not second["events"]  # later snapshots carry only new events
    (rev,) = first["status"]["revisions"]
    (worker,) = rev["workers"]
    assert worker["state"] == "ready" and worker["rss"] > 1 << 20, worker
    assert worker["cpu"] >= 0 and worker["standby"] is False and worker["disabled"] is False
    assert first["sessions"] == {"total": 0, "lost": 0, "by_revision": {}}
    assert first["deploys"] == 0 and first["queue"] == 0
