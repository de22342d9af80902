"""Revisions end to end: real gateway, real workers, real CLI, a stateful app.

The app (tests/apps/stateful.py) keeps its sessions in process memory, so a request that
reaches any process other than the one that created its session finds no session: every
``count`` that goes on rising proves the session stayed pinned to its process.

Deploys go through ``python -m holdover deploy -c CONFIG`` as a user would run them, and a
few through the admin API with the bearer token.  Waits poll a condition with a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from conftest import APPS, PY, GatewayProcess, wait_for
from websockets.sync.client import ClientConnection, connect

from holdover.core.affinity import Keys

STATEFUL = f"{PY} {APPS / 'stateful.py'} {{port}}"


# -- a sessions-mode gateway -------------------------------------------------------------


def SessionGateway(tmp: Path, workers: int = 2, session_cookie: str = "sid",
                   extra_app: str = "", **kw: Any) -> GatewayProcess:
    """``holdover run`` in sessions mode in front of the stateful app."""
    return GatewayProcess(tmp, app=STATEFUL, workers=workers, mode="sessions",
                          extra_app=f'stop_grace = "3s"\nsession_cookie = "{session_cookie}"\n'
                          + textwrap.dedent(extra_app), **kw)


def _cleanup(gateways: list[GatewayProcess]) -> None:
    for gw in gateways:
        gw.stop_and_check()


@pytest.fixture
def session_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def make(subdir: str | None = None, **kw: Any) -> GatewayProcess:
        d = tmp_path / (subdir or f"sgw{len(started)}")
        d.mkdir(exist_ok=True)
        gw = SessionGateway(d, **kw)
        started.append(gw)
        return gw

    yield make
    _cleanup(started)


# -- clients -------------------------------------------------------------------------------


class Client:
    """One browser: its own keep-alive connection and its own cookie jar."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.conn: http.client.HTTPConnection | None = None

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def request(self, method: str, path: str, headers: dict[str, str] | None = None
                ) -> SimpleNamespace:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        h = dict(headers or {})
        if self.cookies and "Cookie" not in h:
            h["Cookie"] = self.cookie_header()
        self.conn.request(method, path, headers=h)
        r = self.conn.getresponse()
        body = r.read()
        set_cookies = r.headers.get_all("Set-Cookie") or []
        for sc in set_cookies:
            first, *attrs = [a.strip() for a in sc.split(";")]
            name, _, value = first.partition("=")
            gone = not value or any(a.lower().replace(" ", "") in ("max-age=0",)
                                    for a in attrs)
            if gone:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        if r.will_close:
            self.close()
        out = SimpleNamespace(status=r.status, headers=r.headers, body=body,
                              set_cookies=set_cookies)
        out.json = json.loads(body) if r.headers.get("Content-Type", "").startswith(
            "application/json") else None
        return out

    def get(self, path: str = "/") -> dict:
        r = self.request("GET", path)
        assert r.status == 200, (r.status, r.body[:300])
        return r.json

    def login(self, user: str) -> dict:
        r = self.request("POST", f"/login?user={user}")
        assert r.status == 200, (r.status, r.body[:300])
        assert "sid" in self.cookies or "holdover_pin" in self.cookies
        return r.json

    def logout(self) -> dict:
        r = self.request("POST", "/logout")
        assert r.status == 200, (r.status, r.body[:300])
        return r.json

    def websocket(self) -> ClientConnection:
        return connect(f"ws://127.0.0.1:{self.port}/ws", proxy=None, open_timeout=10,
                       close_timeout=5, additional_headers={"Cookie": self.cookie_header()})

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def ws_ask(ws: ClientConnection, text: str) -> dict:
    ws.send(text)
    answer = json.loads(ws.recv(timeout=10))
    assert answer["echo"] == text
    return answer


# -- the CLI and the admin API ----------------------------------------------------------


def holdover(gw: GatewayProcess, command: str, *args: str, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holdover", command, "-c", str(gw.config),
                           *args], capture_output=True, text=True, timeout=timeout)


def cli_status(gw: GatewayProcess) -> dict:
    r = holdover(gw, "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    check_status_shape(st)
    return st


def check_status_shape(st: dict) -> None:
    """The shape SPEC.md promises for ``holdover status --json``."""
    assert isinstance(st, dict) and isinstance(st["revisions"], list)
    for rev in st["revisions"]:
        assert isinstance(rev["id"], str)
        assert rev["state"] in ("starting", "active", "canary", "draining", "retired", "failed")
        assert isinstance(rev["sessions"], int) and not isinstance(rev["sessions"], bool)
        assert isinstance(rev["workers"], list)
        for w in rev["workers"]:
            assert isinstance(w["id"], str) and isinstance(w["state"], str)
            assert isinstance(w["pid"], int) and isinstance(w["port"], int)


def api(gw: GatewayProcess, method: str, path: str, body: Any = None,
        token: str | None = "file", raw: bytes | None = None) -> tuple[int, dict, Any]:
    state = gw.dir / "state"
    base = (state / "admin.url").read_text().strip()
    host, port = base.split("//")[1].rstrip("/").split(":")
    headers = {"Content-Type": "application/json"}
    if token == "file":
        token = (state / "admin.token").read_text().strip()
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.headers), json.loads(r.read() or b"null")
    finally:
        conn.close()


def status(gw: GatewayProcess) -> dict:
    code, _, st = api(gw, "GET", "/api/status")
    assert code == 200, st
    check_status_shape(st)
    return st


def rev_of(st: dict, rid: str) -> dict | None:
    return next((r for r in st["revisions"] if r["id"] == rid), None)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def events(gw: GatewayProcess) -> list[dict]:
    r = holdover(gw, "events", "--json", "--limit", "200")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["events"]


# -- the main story ---------------------------------------------------------------------


def wait_idle_v1_worker_stopped(gw: GatewayProcess, v1_pids: set[int], held_pid: int) -> None:
    """Wait until every v1 worker but ``held_pid``'s has exited.

    The drain tick judges all workers of a draining revision in one pass, so once the
    idle one is gone the tick has also judged the held one: whatever kept it running is
    what it was told to respect, not a tick that had not come yet.
    """
    others = v1_pids - {held_pid}
    assert len(others) == 1, (v1_pids, held_pid)
    wait_for(lambda: not any(alive(p) for p in others), 25,
             what="the idle v1 worker to be stopped by the drain")


def v1_worker(gw: GatewayProcess, pid: int) -> dict:
    v1 = rev_of(status(gw), "v1")
    assert v1 is not None
    return next(w for w in v1["workers"] if w["pid"] == pid)


def test_deploy_keeps_live_sessions_on_their_revision(session_gateway) -> None:
    """A pinned session alone (no connection, no WebSocket) keeps its draining worker."""
    gw = session_gateway().wait_ready()
    st = cli_status(gw)
    assert st["active"] == "v1"
    v1 = rev_of(st, "v1")
    assert v1 is not None and v1["state"] == "active" and len(v1["workers"]) == 2
    v1_pids = {w["pid"] for w in v1["workers"]}
    assert v1_pids == {p.pid for p in gw.workers()}, "status names the real processes"

    a = Client(gw.port)
    info = a.login("alice")
    assert info["revision"] == "v1" and info["user"] == "alice"
    a_pid, a_worker = info["pid"], info["worker"]
    assert a_worker == v1_worker(gw, a_pid)["id"], "the app reports the worker status names"
    for n in (1, 2, 3):
        info = a.get()
        assert (info["revision"], info["pid"], info["user"], info["count"]) == \
            ("v1", a_pid, "alice", n)
    assert rev_of(status(gw), "v1")["sessions"] == 1

    r = holdover(gw, "deploy", "--revision", "v2")
    assert r.returncode == 0, r.stderr
    assert "v2" in r.stdout and "v1 is draining" in r.stdout, r.stdout
    st = cli_status(gw)
    assert (rev_of(st, "v1")["state"], rev_of(st, "v2")["state"]) == ("draining", "active")
    assert rev_of(st, "v1")["sessions"] == 1 and rev_of(st, "v2")["sessions"] == 0

    # Nothing but alice's pin holds her worker now: no connection, no request.
    a.close()
    wait_idle_v1_worker_stopped(gw, v1_pids, a_pid)
    assert alive(a_pid) and v1_worker(gw, a_pid)["state"] == "ready"

    # A still sees v1 and its counter, in the very process that holds its session.
    r4 = a.request("GET", "/")
    assert (r4.json["revision"], r4.json["pid"], r4.json["worker"], r4.json["count"]) == \
        ("v1", a_pid, a_worker, 4)
    assert r4.headers.get("X-Holdover-Revision") == "v1"
    assert r4.headers.get("X-Holdover-Latest") == "v2"

    # New clients get v2.
    b = Client(gw.port)
    info = b.login("bob")
    assert info["revision"] == "v2"
    b_pid = info["pid"]
    assert b.get()["count"] == 1 and b.get()["count"] == 2
    for i in range(6):
        c = Client(gw.port)
        assert c.login(f"c{i}")["revision"] == "v2"
        assert c.get()["revision"] == "v2"
        c.close()
    assert a.get()["count"] == 5

    # A logs out in the very v1 process that created the session, then logs in again:
    # a new session, on v2.
    out = a.logout()
    assert (out["revision"], out["pid"], out["worker"], out["logged_out"]) == \
        ("v1", a_pid, a_worker, True)
    assert "sid" not in a.cookies
    assert rev_of(status(gw), "v1")["sessions"] == 0
    info = a.login("alice")
    assert info["revision"] == "v2" and info["pid"] != a_pid
    info = a.get()
    assert (info["revision"], info["user"], info["count"]) == ("v2", "alice", 1)
    a.close()

    # v1 has no session and no connection left: it retires by itself.
    wait_for(lambda: rev_of(status(gw), "v1")["state"] == "retired", 25,
             what="v1 to retire")
    wait_for(lambda: not any(alive(p) for p in v1_pids), 10, what="v1's processes to exit")
    st = cli_status(gw)
    assert rev_of(st, "v2")["state"] == "active" and st["active"] == "v2"
    assert all(w["state"] == "stopped" for w in rev_of(st, "v1")["workers"])
    assert st["sessions_lost"] == 0
    info = b.get()
    assert (info["pid"], info["count"]) == (b_pid, 3), "bob kept his session throughout"
    kinds = [e["kind"] for e in events(gw)]
    assert "deploy" in kinds and "retired" in kinds
    plain = holdover(gw, "status")
    assert plain.returncode == 0 and "v2" in plain.stdout and "retired" in plain.stdout


def test_an_open_websocket_keeps_its_draining_worker(session_gateway) -> None:
    """A WebSocket alone (no session pinned anywhere) keeps its draining worker."""
    gw = session_gateway().wait_ready()
    v1 = rev_of(status(gw), "v1")
    v1_pids = {w["pid"] for w in v1["workers"]}
    anon = Client(gw.port)
    with anon.websocket() as ws:
        ans = ws_ask(ws, "before")
        ws_pid = ans["pid"]
        assert ans["revision"] == "v1" and ans["user"] is None and ws_pid in v1_pids

        r = holdover(gw, "deploy", "--revision", "v2")
        assert r.returncode == 0, r.stderr
        assert rev_of(status(gw), "v1")["sessions"] == 0, "no session holds v1"
        wait_idle_v1_worker_stopped(gw, v1_pids, ws_pid)
        assert alive(ws_pid) and v1_worker(gw, ws_pid)["state"] == "ready"
        assert rev_of(status(gw), "v1")["state"] == "draining"

        # The WebSocket opened before the deploy stays open and answers from v1.
        ans = ws_ask(ws, "after deploy")
        assert (ans["revision"], ans["pid"]) == ("v1", ws_pid)
        assert Client(gw.port).login("carol")["revision"] == "v2"
        ans = ws_ask(ws, "still")
        assert (ans["revision"], ans["pid"]) == ("v1", ws_pid)

    # Its end lets the worker go, and with it the revision.
    wait_for(lambda: rev_of(status(gw), "v1")["state"] == "retired", 25,
             what="v1 to retire once the WebSocket closed")
    wait_for(lambda: not alive(ws_pid), 10, what="the WebSocket's worker to exit")
    assert cli_status(gw)["sessions_lost"] == 0


# -- bad input --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One gateway on v1 with one logged-in user; bad requests must not disturb either."""
    gw = SessionGateway(tmp_path_factory.mktemp("quiet"), workers=1)
    try:
        gw.wait_ready()
        a = Client(gw.port)
        info = a.login("alice")
        assert a.get()["count"] == 1
        st = status(gw)
        yield SimpleNamespace(gw=gw, a=a, pid=info["pid"], count=1,
                              workers=[(w["id"], w["pid"]) for w in rev_of(st, "v1")["workers"]])
    finally:
        _cleanup([gw])


def assert_undisturbed(q: SimpleNamespace) -> None:
    st = status(q.gw)
    assert st["active"] == "v1" and st["canary"] is None and st["deploying"] is None
    v1 = rev_of(st, "v1")
    assert v1["state"] == "active"
    assert [(w["id"], w["pid"]) for w in v1["workers"]] == q.workers
    assert all(w["state"] == "ready" for w in v1["workers"])
    for rev in st["revisions"]:
        if rev["id"] != "v1":
            assert rev["state"] == "failed", rev
            assert all(w["state"] in ("stopped", "failed") for w in rev["workers"]), rev
    assert {p.pid for p in q.gw.workers()} == {pid for _, pid in q.workers}, \
        "no process of a refused deploy is left running"
    info = q.a.get()
    q.count += 1
    assert (info["pid"], info["user"], info["count"]) == (q.pid, "alice", q.count)
    assert Client(q.gw.port).login("zed")["revision"] == "v1"
    assert q.gw.proc.poll() is None


BAD_CLI = [
    pytest.param(["deploy", "--revision", "v1"], r"revision 'v1' already exists",
                 id="existing-revision-id"),
    pytest.param(["deploy", "--from", "/nonexistent/holdover-src"],
                 r"--from /nonexistent/holdover-src: no such directory", id="missing-from"),
    pytest.param(["deploy", "--command", "/nonexistent/holdover-app {port}"],
                 r"failed to start.*never became ready", id="command-cannot-start"),
    pytest.param(["deploy", "--env", "FAIL_START=1"], r"failed to start.*never became ready",
                 id="app-exits-at-start"),
    pytest.param(["rollback"], r"nothing to roll back to", id="rollback-nothing"),
    pytest.param(["promote"], r"no canary to promote", id="promote-without-canary"),
    pytest.param(["deploy", "--workers", "0"], r"workers must be at least 1", id="zero-workers"),
    pytest.param(["deploy", "--canary", "100"], r"canary must be a percentage",
                 id="canary-100"),
    pytest.param(["deploy", "--revision", "../x"], r"revision id '\.\./x' is not valid",
                 id="bad-revision-id"),
]


@pytest.mark.parametrize(("args", "message"), BAD_CLI)
def test_bad_cli_request_is_refused(quiet_gateway: SimpleNamespace, args: list[str],
                                    message: str) -> None:
    r = holdover(quiet_gateway.gw, *args)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    # (progress lines of the workers that tried to start may come first)
    first = next((ln for ln in r.stderr.splitlines() if ln.startswith("holdover")), "")
    assert first.startswith(f"holdover {args[0]}: "), r.stderr
    assert re.search(message, first), r.stderr
    assert r.stdout == ""
    assert_undisturbed(quiet_gateway)


def test_failed_deploy_shows_the_workers_log(quiet_gateway: SimpleNamespace) -> None:
    r = holdover(quiet_gateway.gw, "deploy", "--revision", "broken", "--env", "FAIL_START=1")
    assert r.returncode == 1
    assert "revision broken failed to start" in r.stderr
    assert "the active revision is unchanged" in r.stderr
    assert "last lines of the failing worker's log" in r.stderr
    assert "FAIL_START=1 set, revision 'broken' refuses to start" in r.stderr
    st = cli_status(quiet_gateway.gw)
    assert rev_of(st, "broken")["state"] == "failed"
    failed = [e for e in events(quiet_gateway.gw) if e["kind"] == "failed"
              and e["revision"] == "broken"]
    assert failed and "refuses to start" in failed[-1]["data"]["log_tail"]
    assert_undisturbed(quiet_gateway)


BAD_API = [
    pytest.param("GET", "/api/status", None, None, 401, r"missing or wrong admin token",
                 id="no-token"),
    pytest.param("GET", "/api/status", None, "not-the-token", 401,
                 r"missing or wrong admin token", id="wrong-token"),
    pytest.param("POST", "/api/deploy", {"revision": 5}, "file", 400,
                 r"revision: expected a string", id="wrong-type"),
    pytest.param("POST", "/api/deploy", {"bogus": "x"}, "file", 400, r"bogus: unknown field",
                 id="unknown-field"),
    pytest.param("POST", "/api/deploy", b"{not json", "file", 400, r"not valid JSON",
                 id="not-json"),
    pytest.param("POST", "/api/deploy", {"revision": "v1"}, "file", 409, r"already exists",
                 id="existing-revision-id"),
    pytest.param("POST", "/api/deploy", {"env": {"FAIL_START": "1"}}, "file", 422,
                 r"failed to start", id="app-exits-at-start"),
    pytest.param("POST", "/api/rollback", None, "file", 409, r"nothing to roll back",
                 id="rollback-nothing"),
    pytest.param("POST", "/api/promote", None, "file", 409, r"no canary", id="promote"),
]


@pytest.mark.parametrize(("method", "path", "body", "token", "code", "message"), BAD_API)
def test_bad_api_request_is_refused(quiet_gateway: SimpleNamespace, method: str, path: str,
                                    body: Any, token: str | None, code: int,
                                    message: str) -> None:
    raw = body if isinstance(body, bytes) else None
    got, headers, answer = api(quiet_gateway.gw, method, path,
                               None if raw is not None else body, token=token, raw=raw)
    assert got == code, answer
    assert answer["error"]["status"] == code
    assert re.search(message, answer["error"]["message"]), answer
    if code == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    if code == 422:
        assert "refuses to start" in answer["error"]["log_tail"]
    assert_undisturbed(quiet_gateway)


def test_two_deploys_at_once(session_gateway) -> None:
    gw = session_gateway(workers=1).wait_ready()
    a = Client(gw.port)
    a_pid = a.login("alice")["pid"]
    slow = subprocess.Popen([sys.executable, "-m", "holdover", "deploy", "-c", str(gw.config),
                             "--revision", "v2", "--env", "START_DELAY=3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: status(gw)["deploying"] is not None, 15,
                 what="the first deploy to be under way")
        r = holdover(gw, "deploy", "--revision", "v3")
        assert r.returncode == 1
        assert "in progress" in r.stderr and "try again" in r.stderr, r.stderr
        r = holdover(gw, "rollback")
        assert r.returncode == 1 and "in progress" in r.stderr, r.stderr
        code, _, answer = api(gw, "POST", "/api/deploy", {"revision": "v4"})
        assert code == 409 and "in progress" in answer["error"]["message"]
        # Meanwhile v1 serves as before.
        info = a.get()
        assert (info["revision"], info["pid"], info["count"]) == ("v1", a_pid, 1)
        assert Client(gw.port).login("x")["revision"] == "v1"
        _out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    assert slow.returncode == 0, err
    st = cli_status(gw)
    assert st["active"] == "v2" and st["deploying"] is None
    assert rev_of(st, "v3") is None and rev_of(st, "v4") is None
    assert a.get()["count"] == 2 and a.get()["revision"] == "v1"


# -- rollback, canary ----------------------------------------------------------------------


def test_rollback_during_drain_keeps_sessions(session_gateway) -> None:
    gw = session_gateway().wait_ready()
    a = Client(gw.port)
    a_pid = a.login("alice")["pid"]
    assert a.get()["count"] == 1 and a.get()["count"] == 2
    # This deploy goes through the admin API directly.
    code, _, res = api(gw, "POST", "/api/deploy", {"revision": "v2"})
    assert code == 200, res
    assert res["revision"] == "v2" and res["previous"] == "v1"
    assert [w["state"] for w in res["workers"]] == ["ready", "ready"]
    b = Client(gw.port)
    info = b.login("bob")
    assert info["revision"] == "v2"
    b_pid = info["pid"]
    assert b.get()["count"] == 1
    # v1's worker without a session drains away; A's stays.
    wait_for(lambda: sorted(w["state"] for w in rev_of(status(gw), "v1")["workers"])
             == ["ready", "stopped"], 15, what="v1's idle worker to stop")

    r = holdover(gw, "rollback")
    assert r.returncode == 0, r.stderr
    assert "revision v1 is active" in r.stdout and "v2 is draining" in r.stdout, r.stdout
    st = cli_status(gw)
    assert st["active"] == "v1"
    assert (rev_of(st, "v1")["state"], rev_of(st, "v2")["state"]) == ("active", "draining")
    assert (rev_of(st, "v1")["sessions"], rev_of(st, "v2")["sessions"]) == (1, 1)

    info = a.get()
    assert (info["revision"], info["pid"], info["user"], info["count"]) == \
        ("v1", a_pid, "alice", 3), "A kept its session through deploy and rollback"
    info = b.get()
    assert (info["revision"], info["pid"], info["user"], info["count"]) == \
        ("v2", b_pid, "bob", 2), "B stays on v2 while it drains"
    for i in range(4):
        assert Client(gw.port).login(f"n{i}")["revision"] == "v1"

    b.logout()
    wait_for(lambda: rev_of(status(gw), "v2")["state"] == "retired", 25,
             what="v2 to retire after its last session")
    assert a.get()["count"] == 4
    assert status(gw)["sessions_lost"] == 0


def test_rollback_brings_back_all_workers(session_gateway) -> None:
    gw = session_gateway().wait_ready()
    a = Client(gw.port)
    a.login("alice")
    assert holdover(gw, "deploy", "--revision", "v2").returncode == 0
    wait_for(lambda: sorted(w["state"] for w in rev_of(status(gw), "v1")["workers"])
             == ["ready", "stopped"], 15, what="v1's idle worker to stop")
    assert holdover(gw, "rollback").returncode == 0
    wait_for(lambda: sum(w["state"] == "ready" for w in rev_of(status(gw), "v1")["workers"])
             == 2, 10, what="v1 to run its 2 workers again")


def test_canary_share_promote_and_abort(session_gateway) -> None:
    gw = session_gateway(workers=1).wait_ready()
    a = Client(gw.port)
    a_pid = a.login("alice")["pid"]

    r = holdover(gw, "deploy", "--revision", "v2", "--canary", "20")
    assert r.returncode == 0, r.stderr
    assert "revision v2 is a 20% canary" in r.stdout, r.stdout
    st = cli_status(gw)
    assert (st["active"], st["canary"]) == ("v1", "v2")
    assert rev_of(st, "v2")["canary_percent"] == 20
    r = holdover(gw, "deploy", "--revision", "v9")
    assert r.returncode == 1 and "canary v2 is running" in r.stderr, r.stderr

    n = 300
    clients: dict[str, list[Client]] = {"v1": [], "v2": []}
    deadline = time.monotonic() + 60
    for i in range(n):
        assert time.monotonic() < deadline, "canary sessions took too long"
        c = Client(gw.port)
        clients[c.login(f"u{i}")["revision"]].append(c)
        c.close()
    share = len(clients["v2"]) / n
    assert 0.12 <= share <= 0.28, f"canary got {share:.0%} of new sessions, wanted 20%±8"
    st = status(gw)
    assert rev_of(st, "v2")["sessions"] == len(clients["v2"])
    assert rev_of(st, "v1")["sessions"] == len(clients["v1"]) + 1
    for rid in ("v1", "v2"):
        for c in clients[rid][:5]:
            info = c.get()
            assert (info["revision"], info["count"]) == (rid, 1), "sessions stay put"

    # Abort the canary: its sessions stay on it while it drains; new ones go to v1.
    r = holdover(gw, "rollback")
    assert r.returncode == 0 and "canary v2 aborted; v1 stays active" in r.stdout, r.stdout
    st = status(gw)
    assert (st["active"], st["canary"], rev_of(st, "v2")["state"]) == ("v1", None, "draining")
    for _ in range(20):
        assert Client(gw.port).login("after-abort")["revision"] == "v1"
    assert clients["v2"][0].get()["revision"] == "v2"

    # A second canary, promoted.
    r = holdover(gw, "deploy", "--revision", "v3", "--canary", "50")
    assert r.returncode == 0, r.stderr
    r = holdover(gw, "promote")
    assert r.returncode == 0 and "revision v3 is active; v1 is draining" in r.stdout, r.stdout
    st = cli_status(gw)
    assert (st["active"], st["canary"]) == ("v3", None)
    assert rev_of(st, "v1")["state"] == "draining"
    for _ in range(10):
        assert Client(gw.port).login("after-promote")["revision"] == "v3"
    info = a.get()
    assert (info["revision"], info["pid"], info["count"]) == ("v1", a_pid, 1)
    r = holdover(gw, "promote")
    assert r.returncode == 1 and "no canary" in r.stderr


# -- forged cookies, idle sessions ------------------------------------------------------


def test_forged_pin_cookie_and_idle_retirement(session_gateway) -> None:
    """Without an app cookie, holdover pins each client with its own signed cookie."""
    gw = session_gateway(workers=1, session_cookie="",
                         extra_app='session_idle_timeout = "1s"\n').wait_ready()
    a = Client(gw.port)
    first = a.request("GET", "/")
    assert first.status == 200 and first.json["revision"] == "v1"
    real = a.cookies["holdover_pin"]
    a_pid = first.json["pid"]
    info = a.login("alice")
    assert (info["pid"], a.cookies["holdover_pin"]) == (a_pid, real)
    with a.websocket() as ws:  # keeps A's session alive however long it idles
        assert ws_ask(ws, "hi")["pid"] == a_pid
        r = holdover(gw, "deploy", "--revision", "v2")
        assert r.returncode == 0, r.stderr
        info = a.get()
        assert (info["revision"], info["pid"], info["count"]) == ("v1", a_pid, 1)

        key, sig = real.split(".")
        foreign = Keys(os.urandom(32), [os.urandom(32)]).sign(key).decode()
        forgeries = [f"{key}.{sig[::-1]}", f"{key}.AAAAAAAAAAAAAAAA", foreign, key,
                     f"{key}.", "x" * 4000, f"{'0' * 32}.{sig}", ""]
        for forged in forgeries:
            f = Client(gw.port)
            sid = a.cookies["sid"]
            r = f.request("GET", "/", headers={"Cookie": f"holdover_pin={forged}; sid={sid}"})
            assert r.status == 200, (forged, r.status)
            assert (r.json["revision"], r.json["user"]) == ("v2", None), forged
            fresh = f.cookies.get("holdover_pin")
            assert fresh and fresh != real, "a forged cookie counts as no pin: a new one"
            f.close()

        # The forgers' sessions idle out; A's, idle for longer (its last request came
        # before theirs) but with its WebSocket open, does not.
        wait_for(lambda: rev_of(status(gw), "v2")["sessions"] == 0, 20,
                 what="idle v2 sessions to end")
        assert rev_of(status(gw), "v1")["sessions"] == 1
        assert ws_ask(ws, "still here")["pid"] == a_pid
        info = a.get()
        assert (info["revision"], info["pid"], info["count"]) == ("v1", a_pid, 2), \
            "forgeries did not disturb the real session"
    # Now A's session idles out too, and v1 retires with it.
    wait_for(lambda: rev_of(status(gw), "v1")["state"] == "retired", 25, what="v1 to retire")
    r = a.request("GET", "/")
    assert (r.json["revision"], r.json["user"]) == ("v2", None), "a stale pin is no pin"
    assert a.cookies["holdover_pin"] != real
    assert status(gw)["sessions_lost"] == 0, "sessions that ended are not lost ones"


# -- gateway restart ----------------------------------------------------------------------


def test_gateway_restart_remembers_revisions_pins_and_events(session_gateway) -> None:
    gw = session_gateway(subdir="gw").wait_ready()
    a = Client(gw.port)
    a.login("alice")
    assert holdover(gw, "deploy", "--revision", "v2").returncode == 0
    b = Client(gw.port)
    assert b.login("bob")["revision"] == "v2"
    st = status(gw)
    assert (rev_of(st, "v1")["sessions"], rev_of(st, "v2")["sessions"]) == (1, 1)
    before = [(e["id"], e["kind"]) for e in events(gw)]
    old_pids = {p.pid for p in gw.workers()}
    assert gw.stop() == 0
    assert not any(alive(p) for p in old_pids)

    gw2 = session_gateway(subdir="gw").wait_ready()
    st = cli_status(gw2)
    assert st["active"] == "v2", "the deployed revision is still the active one"
    assert rev_of(st, "v2")["state"] == "active"
    assert rev_of(st, "v1")["state"] == "retired"
    assert sum(w["state"] == "ready" for w in rev_of(st, "v2")["workers"]) == 2
    # The two pins were remembered: their worker processes are gone, so they count as lost.
    assert st["sessions_lost"] == 2
    after = events(gw2)
    assert before == [(e["id"], e["kind"]) for e in after][:len(before)]
    lost = [e for e in after if e["kind"] == "sessions-lost"]
    assert lost and lost[-1]["data"]["count"] == 2
    for c in (a, b):
        c.port = gw2.port
        c.close()
        assert c.get()["revision"] == "v2", "rule 5: a lost session starts anew on active"
    assert Client(gw2.port).login("carol")["revision"] == "v2"


def test_session_survives_gateway_reload(session_gateway) -> None:
    """A gateway restarted in place (SIGHUP re-exec) keeps its workers, so every pin
    still reaches the process that holds the session (a stop/start cannot: see above)."""
    gw = session_gateway(subdir="gw", workers=1).wait_ready()
    a = Client(gw.port)
    a.login("alice")
    assert a.get()["count"] == 1
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.log.count("holdover: serving") >= 2, timeout=30, what="re-exec")
    a.close()
    info = a.get()
    assert (info["user"], info["count"]) == ("alice", 2)


# -- stateless rolling deploy under load ---------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_stateless_rolling_deploy_under_load(gateway_factory, processes: int) -> None:
    gw = gateway_factory(app=STATEFUL, workers=2, extra_gateway=f"processes = {processes}\n",
                         extra_app='strategy = "rolling"\n').wait_ready()
    results: list[tuple[float, float, Any, str | None]] = []  # start, end, status, revision
    stop = threading.Event()
    hard_deadline = time.monotonic() + 60

    def load() -> None:
        c = Client(gw.port)
        for _ in range(4000):
            if stop.is_set() or time.monotonic() > hard_deadline:
                break
            t0 = time.monotonic()
            try:
                r = c.request("GET", "/")
                rev = r.json["revision"] if r.status == 200 else None
                results.append((t0, time.monotonic(), r.status, rev))
            except Exception as exc:  # a failed request is what this test counts
                results.append((t0, time.monotonic(), repr(exc), None))
                c.close()
        c.close()

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 40, 15, what="load to start")
        t_deploy = time.monotonic()
        r = holdover(gw, "deploy", "--revision", "v2")
        t_done = time.monotonic()
        assert r.returncode == 0, r.stderr
        n_done = len(results)
        wait_for(lambda: len(results) >= n_done + 100, 15, what="load after the deploy")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not any(t.is_alive() for t in threads)
    failed = [x for x in results if x[2] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    during = [x for x in results if t_deploy <= x[0] <= t_done]
    assert len(during) >= 20, "the load did not overlap the deploy"
    assert Counter(x[3] for x in results if x[1] < t_deploy) == Counter(
        {"v1": sum(1 for x in results if x[1] < t_deploy)})
    after = [x for x in results if x[0] > t_done]
    assert after and all(x[3] == "v2" for x in after), Counter(x[3] for x in after)
    st = cli_status(gw)
    assert st["active"] == "v2"
    wait_for(lambda: rev_of(status(gw), "v1")["state"] == "retired", 15, what="v1 retired")
    assert st["sessions"] == 0 and st["sessions_lost"] == 0


def test_deploy_shows_progress_and_waits_until_the_old_revision_retires(session_gateway
                                                                        ) -> None:
    gw = session_gateway().wait_ready()
    v1_pids = {w["pid"] for w in rev_of(status(gw), "v1")["workers"]}
    a = Client(gw.port)
    info = a.login("alice")
    a_pid, a_worker = info["pid"], info["worker"]
    a.close()
    proc = subprocess.Popen([sys.executable, "-m", "holdover", "deploy", "-c", str(gw.config),
                             "--revision", "v2", "--wait-retired"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("v1 is draining with 1 session(s)" in ln for ln in lines),
                 timeout=60, what="the switch")
        assert any("v2: worker v2-1 ready" in ln for ln in lines), lines
        wait_idle_v1_worker_stopped(gw, v1_pids, a_pid)
        assert proc.poll() is None  # still waiting: alice holds v1
        assert alive(a_pid)
        out = a.logout()
        assert (out["revision"], out["pid"], out["worker"], out["logged_out"]) == \
            ("v1", a_pid, a_worker, True), "the logout reached alice's own v1 process"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
    out = "".join(lines)
    assert "v1 draining: 1 session(s) left" in out
    assert "revision v1 retired after" in out
    wait_for(lambda: not alive(a_pid), 10, what="alice's v1 process to exit")


def test_rolling_deploy_lets_an_old_workers_websocket_finish(gateway_factory) -> None:
    """Rolling stops an old worker only once its open WebSocket has ended (no max_drain),
    and the deploy does not wait for that: it drains in the background."""
    gw = gateway_factory(app=STATEFUL, workers=1, extra_app='strategy = "rolling"\n'
                         'stop_grace = "3s"\n').wait_ready()
    with connect(f"ws://127.0.0.1:{gw.port}/ws", proxy=None, open_timeout=10) as ws:
        ws.send("before")
        old_pid = json.loads(ws.recv(timeout=10))["pid"]
        deploy = subprocess.run([sys.executable, "-m", "holdover", "deploy", "-c",
                                 str(gw.config), "--revision", "v2"],
                                capture_output=True, text=True, timeout=60)
        assert deploy.returncode == 0, deploy.stderr
        ws.send("during")  # the old worker still serves it after the deploy
        answer = json.loads(ws.recv(timeout=10))
        assert (answer["pid"], answer["echo"]) == (old_pid, "during")
        assert "worker v1-1 stopped" not in gw.log
    wait_for(lambda: "worker v1-1 stopped (drained)" in gw.log, timeout=30,
             what="v1-1 to stop once its WebSocket ended")
    assert "cut" not in gw.log.split("v2-1 ready")[-1]
