"""Faults, end to end: real gateways, real worker processes, real signals, loopback only.

Workers that die, hang, answer garbage, crash-loop or ignore SIGTERM; the gateway killed,
terminated under load, or finding its state store full, unwritable, corrupt or foreign;
resource attacks (thousands of idle connections, slowloris, clients that never read,
file-descriptor exhaustion).  Every wait polls a condition with a deadline; every process
is stopped and checked for leftovers.  What each test saw goes into the fault table
(``tests/faultlog.py`` → ``docs/faults.md``).

``HOLDOVER_FAULT_SCALE=N`` multiplies the connection counts of the resource tests.
The disk-full tests mount a small tmpfs under state_dir when they may (root), else they
cap the gateway's RLIMIT_FSIZE; ``HOLDOVER_FAULTS_NO_MOUNT=1`` forces the latter.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import APPS, PY, GatewayProcess, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

pytest.register_assert_rewrite("faultlog")
import faultlog  # noqa: E402,F401  (rewritten asserts; loaded as a plugin below)

pytest_plugins = ["faultlog"]

FAULTAPP = f"{PY} {APPS / 'faultapp.py'} {{port}}"
HOSTILE = f"{PY} {APPS / 'hostileworker.py'} {{port}}"
BACKEND = f"{PY} {APPS / 'backend.py'} {{port}}"
SCALE = max(1, int(os.environ.get("HOLDOVER_FAULT_SCALE", "1")))
MiB = 1024 * 1024


# -- a gateway whose whole configuration the test chooses ------------------------------------


class FaultGateway(GatewayProcess):
    """``holdover run`` with the settings these tests care about, plus admin helpers."""

    def __init__(self, tmp: Path, app: str = FAULTAPP, workers: int = 1,
                 mode: str = "stateless", gateway: str = "", app_extra: str = "",
                 env: dict[str, str] | None = None, stop_grace: str = "1s",
                 health_path: str = "/healthz") -> None:
        super().__init__(tmp, app=app, workers=workers, mode=mode, extra_gateway=gateway,
                         extra_app=f'stop_grace = "{stop_grace}"\n' + textwrap.dedent(app_extra),
                         env=env, health_path=health_path)

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        code, _, raw = self.admin_request(method, path, body)
        return code, json.loads(raw or b"null")

    def status(self) -> dict:
        code, st = self.api("GET", "/api/status")
        assert code == 200, st
        return st

    def worker(self, wid: str) -> dict | None:
        for rev in self.status()["revisions"]:
            for w in rev["workers"]:
                if w["id"] == wid:
                    return w
        return None

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., FaultGateway]]:
    """Start FaultGateways (``sub=`` reuses a directory: a restart); stop and check all."""
    started: list[FaultGateway] = []

    def make(sub: str | None = None, **kw: Any) -> FaultGateway:
        d = tmp_path / (sub or f"gw{len(started)}")
        d.mkdir(exist_ok=True)
        gw = FaultGateway(d, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        kids = gw.all_descendants()
        for k in kids:  # a worker frozen by a test must be able to die
            with contextlib.suppress(psutil.Error):
                k.resume()
        gw.stop()
        _gone, alive = psutil.wait_procs(kids, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes outlived the gateway: {alive}"


# -- small clients -------------------------------------------------------------------------------


def request(port: int, method: str, path: str, cookie: str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 15,
            body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = dict(headers or {})
        if cookie:
            h["Cookie"] = cookie
        c.request(method, path, headers=h, body=body)
        r = c.getresponse()
        raw = r.read()
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = raw
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def login(port: int, user: str) -> tuple[str, dict]:
    status, headers, body = request(port, "POST", f"/login?user={user}")
    assert status == 200, body
    return headers["set-cookie"].split(";")[0], body


def sessions_on_two_workers(port: int) -> dict[str, tuple[str, dict]]:
    """Log users in until two workers each hold one session: {worker: (cookie, info)}."""
    out: dict[str, tuple[str, dict]] = {}
    for i in range(20):
        cookie, info = login(port, f"user{i}")
        out.setdefault(info["worker"], (cookie, info))
        if len(out) == 2:
            return out
    raise AssertionError(f"sessions all landed on {list(out)}")


def read_all(s: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Everything until the peer closes: (bytes, 'closed' | 'reset' | 'timeout')."""
    s.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return out, "timeout"
        except ConnectionResetError:
            return out, "reset"
        if not chunk:
            return out, "closed"
        out += chunk
    return out, "timeout"


def raw(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s, timeout)


def status_of(resp: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    return int(m.group(1)) if m else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pins_in_store(path: Path) -> int:
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM pins").fetchone()[0]
    finally:
        con.close()


def integrity(path: Path) -> str:
    con = sqlite3.connect(path, timeout=5)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


class Load:
    """Background clients sending GET requests until stopped; every result counted."""

    def __init__(self, port: int, path: str = "/load", threads: int = 3) -> None:
        self.port, self.path = port, path
        self.results: Counter[Any] = Counter()
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 90
        while not self.stop_ev.is_set() and time.monotonic() < deadline:
            try:
                status, _, _ = request(self.port, "GET", self.path, timeout=10)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
            with self.lock:
                self.results[status] += 1
            time.sleep(0.01)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.results.values())

    def stop(self) -> Counter[Any]:
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)
        return self.results


# == worker faults =================================================================================


def test_kill9_mid_request_fails_only_that_request(gateways, observe):
    gw = gateways(workers=2, mode="sessions", app_extra='session_cookie = "sid"\n').wait_ready()
    (wa, (ca, a)), (_wb, (cb, b)) = sorted(sessions_on_two_workers(gw.port).items())
    assert request(gw.port, "GET", "/", ca)[2]["count"] == 1
    assert request(gw.port, "GET", "/", cb)[2]["count"] == 1
    # A POST whose body is still coming: it has reached the app, so it must not be resent.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nCookie: %b\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" % ca.encode())
    wait_for(lambda: gw.worker(wa)["inflight"] >= 1, what="the POST in flight on its worker")
    os.kill(a["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    resp, end = read_all(s, 10)
    s.close()
    took = time.monotonic() - t0
    b_after = request(gw.port, "GET", "/", cb)[2]
    a_after = request(gw.port, "GET", "/", ca)[2]
    wait_for(lambda: (w := gw.worker(wa)) and w["state"] == "ready" and w["pid"] != a["pid"],
             timeout=20, what="a new process for the killed worker")
    lost = gw.status()["sessions_lost"]
    observe("worker-kill9-mid-request",
            f"in-flight POST: {status_of(resp)} after {took:.1f} s, connection {end}; "
            f"other session: count {b_after['count']} on "
            f"{'its own process' if b_after['pid'] == b['pid'] else 'ANOTHER process'}; "
            f"killed worker's session: user "
            f"{a_after['user']!r} (new session), sessions_lost {lost}; replacement ready")
    assert status_of(resp) == 502 and end in ("closed", "reset")
    assert b"Connection: close" in resp
    assert (b_after["pid"], b_after["user"], b_after["count"]) == (b["pid"], b["user"], 2)
    assert a_after["user"] is None and lost == 1
    assert alive(b["pid"])


def test_kill9_mid_websocket_closes_only_that_websocket(gateways, observe):
    gw = gateways(workers=2, mode="sessions", app_extra='session_cookie = "sid"\n').wait_ready()
    (_, (ca, a)), (_, (cb, b)) = sorted(sessions_on_two_workers(gw.port).items())
    url = f"ws://127.0.0.1:{gw.port}/ws"
    with ws_connect(url, proxy=None, additional_headers={"Cookie": ca}, open_timeout=10) as wsa, \
            ws_connect(url, proxy=None, additional_headers={"Cookie": cb}, open_timeout=10) as wsb:
        wsa.send("a1")
        wsb.send("b1")
        assert json.loads(wsa.recv(timeout=10))["pid"] == a["pid"]
        assert json.loads(wsb.recv(timeout=10))["pid"] == b["pid"]
        os.kill(a["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        closed_how = "still open"
        try:
            wsa.recv(timeout=10)
        except ConnectionClosed as exc:
            closed_how = f"closed (code {exc.rcvd.code if exc.rcvd else 'none: connection cut'})"
        except TimeoutError:
            closed_how = "still open after 10 s"
        took = time.monotonic() - t0
        echoes = []
        for i in range(5):
            wsb.send(f"b{i}")
            echoes.append(json.loads(wsb.recv(timeout=10)))
    with ws_connect(url, proxy=None, additional_headers={"Cookie": ca}, open_timeout=10) as again:
        again.send("back")
        reconnect = json.loads(again.recv(timeout=10))
    observe("worker-kill9-mid-websocket",
            f"killed worker's WebSocket {closed_how} after {took:.1f} s; other WebSocket "
            f"answered {len(echoes)}/5 from "
            f"{'its own process' if echoes[0]['pid'] == b['pid'] else 'ANOTHER process'}; "
            f"reconnect answered by a live worker as user {reconnect['user']!r} (a new "
            f"session)")
    assert closed_how.startswith("closed") and took < 5
    assert all(e["pid"] == b["pid"] and e["user"] == b["user"] for e in echoes)
    assert reconnect["echo"] == "back" and reconnect["pid"] != a["pid"]


def test_frozen_worker_gets_504_and_is_replaced(gateways, observe):
    gw = gateways(workers=2, gateway='response_timeout = "2s"\n',
                  app_extra='health_timeout = "1s"\nhealth_failures = 2\n').wait_ready()
    w1 = gw.worker("v1-1")
    frozen = psutil.Process(w1["pid"])
    frozen.suspend()  # SIGSTOP: the kernel still accepts its connections; nobody answers
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.monotonic()
        try:
            status = request(gw.port, "GET", "/slow?delay=0.1", timeout=20)[0]
        except OSError:
            status = -1
        with lock:
            results.append((status, time.monotonic() - t0))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    t0 = time.monotonic()
    wait_for(lambda: (w := gw.worker("v1-1")) and w["state"] == "ready" and
             w["pid"] != w1["pid"], timeout=30, what="the frozen worker replaced")
    replaced_after = time.monotonic() - t0
    after = [request(gw.port, "GET", "/slow?delay=0", timeout=10)[0] for _ in range(10)]
    by = Counter(s for s, _ in results)
    slow504 = [round(d, 1) for s, d in results if s == 504]
    observe("worker-hangs",
            f"8 concurrent requests: {dict(by)}; the 504s after {min(slow504, default=0)}-"
            f"{max(slow504, default=0)} s; frozen worker replaced {replaced_after:.0f} s "
            f"later (health checks, then SIGKILL after stop_grace); then 10/10 "
            f"{set(after)}")
    assert set(by) <= {200, 504} and by[504] >= 1 and by[200] >= 1
    assert all(2 <= d < 5 for d in slow504)
    assert after == [200] * 10
    assert not alive(w1["pid"])


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory) -> Iterator[FaultGateway]:  # type: ignore[no-untyped-def]
    gw = FaultGateway(tmp_path_factory.mktemp("hostile"), app=HOSTILE, workers=1,
                      gateway='response_timeout = "2s"\n').wait_ready()
    yield gw
    kids = gw.all_descendants()
    gw.stop()
    _gone, left = psutil.wait_procs(kids, timeout=15)
    assert not left


def _ok_on(port: int, conn: http.client.HTTPConnection) -> bool:
    conn.request("GET", "/ok")
    r = conn.getresponse()
    return r.status == 200 and r.read() == b"ok"


CLOSE = b"Connection: close\r\n"
BAD_ANSWERS = [
    # case id, request, check(resp, how the connection ended)
    pytest.param("worker-garbage", b"GET /garbage HTTP/1.1\r\nHost: a\r\n" + CLOSE,
                 lambda r, e: status_of(r) == 502, id="worker-garbage"),
    pytest.param("worker-close-no-answer",
                 b"POST /close HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n" + CLOSE,
                 lambda r, e: status_of(r) == 502, id="worker-close-no-answer"),
    pytest.param("worker-half-response", b"GET /half HTTP/1.1\r\nHost: a\r\n",
                 lambda r, e: status_of(r) == 200 and r.endswith(b"only-part")
                 and e in ("closed", "reset"), id="worker-half-response"),
    pytest.param("worker-close-mid-chunked", b"GET /chunked-cut HTTP/1.1\r\nHost: a\r\n",
                 lambda r, e: status_of(r) == 200 and b"hello" in r
                 and not r.endswith(b"0\r\n\r\n") and e in ("closed", "reset"),
                 id="worker-close-mid-chunked"),
    pytest.param("worker-bad-chunk", b"GET /bad-chunk HTTP/1.1\r\nHost: a\r\n" + CLOSE,
                 lambda r, e: status_of(r) == 502, id="worker-bad-chunk"),
    pytest.param("worker-stray-101", b"GET /stray-101 HTTP/1.1\r\nHost: a\r\n" + CLOSE,
                 lambda r, e: status_of(r) == 502 and b"101" not in r, id="worker-stray-101"),
    pytest.param("worker-cl-te", b"GET /cl-te HTTP/1.1\r\nHost: a\r\n" + CLOSE,
                 lambda r, e: status_of(r) == 502, id="worker-cl-te"),
    pytest.param("worker-bare-lf", b"GET /bare-lf HTTP/1.1\r\nHost: a\r\n" + CLOSE,
                 lambda r, e: status_of(r) == 502, id="worker-bare-lf"),
]


@pytest.mark.parametrize("case,req,check", BAD_ANSWERS)
def test_bad_worker_answer(hostile_gateway, observe, case, req, check):
    gw = hostile_gateway
    keep = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    assert _ok_on(gw.port, keep)
    t0 = time.monotonic()
    resp, end = raw(gw.port, req + b"\r\n", timeout=8)
    took = time.monotonic() - t0
    _head, _, body = resp.partition(b"\r\n\r\n")
    other = _ok_on(gw.port, keep)
    fresh = raw(gw.port, b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")[0]
    observe(case, f"client got {status_of(resp) or 'nothing'}"
            f"{' + ' + repr(body[:20].decode('latin-1')) if body and status_of(resp) == 200 else ''}"
            f", connection {end} after {took:.1f} s; another client's keep-alive "
            f"connection {'unaffected' if other else 'BROKEN'}; next request "
            f"{status_of(fresh)}")
    assert check(resp, end), resp[:300]
    assert other and status_of(fresh) == 200 and took < 5
    assert gw.proc.poll() is None


def test_worker_sending_two_responses_cannot_poison_the_next_client(hostile_gateway, observe):
    gw = hostile_gateway
    first, end1 = raw(gw.port, b"GET /double HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3)
    # The next request, from another client, is likely to get the same pooled connection.
    second, _ = raw(gw.port, b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    timeout=5)
    observe("worker-two-responses",
            f"first client got {first.count(b'HTTP/1.1 ')} responses "
            f"({'with' if b'X-Injected' in first else 'without'} the injected one), "
            f"connection {end1}; next client's answer starts {second[:16]!r}")
    assert first.count(b"HTTP/1.1 ") == 1 and b"X-Injected" not in first
    assert second.startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize("method,path,status", [("HEAD", "/head-body", 200),
                                                ("GET", "/204-body", 204)])
def test_a_body_sent_where_none_belongs_never_reaches_the_next_answer(
        hostile_gateway, method, path, status):
    # The worker writes the body a moment after the head: a pooled connection reused
    # at once would hand those bytes to the next request as the start of its answer.
    c = http.client.HTTPConnection("127.0.0.1", hostile_gateway.port, timeout=10)
    for _ in range(3):
        c.request(method, path)
        r = c.getresponse()
        assert r.status == status and r.read() == b""
        c.request("GET", "/ok")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"ok")


def test_endless_response_head_is_capped(hostile_gateway, observe):
    gw = hostile_gateway
    before = gw.rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], gw.rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    resp, _end = raw(gw.port, b"GET /endless-head?mb=48 HTTP/1.1\r\nHost: a\r\n\r\n", timeout=8)
    took = time.monotonic() - t0
    done.set()
    sampler.join()
    grew = (peak[0] - before) / MiB
    observe("worker-endless-head",
            f"client got {status_of(resp)} after {took:.1f} s; gateway memory grew "
            f"{grew:.0f} MiB while the head streamed in")
    assert gw.proc.poll() is None
    assert grew < 16, f"gateway grew {grew:.0f} MiB"
    assert status_of(resp) == 502


def test_deploy_of_a_crash_looping_revision_changes_nothing(gateways, observe):
    gw = gateways(workers=1).wait_ready()
    v1_pid = gw.worker("v1-1")["pid"]
    load = Load(gw.port)
    wait_for(lambda: load.total > 20, what="load")
    t0 = time.monotonic()
    r = subprocess.run([PY, "-m", "holdover", "deploy", "-c", str(gw.config), "--revision",
                        "v2", "--env", "CRASH_AT_START=1"], capture_output=True, text=True,
                       timeout=120)
    took = time.monotonic() - t0
    n = load.total
    wait_for(lambda: load.total > n + 20, what="load after the failed deploy")
    results = load.stop()
    st = gw.status()
    states = {rev["id"]: rev["state"] for rev in st["revisions"]}
    leftovers = [p for p in gw.workers() if p.pid != v1_pid]
    observe("worker-crash-loop-deploy",
            f"deploy exit {r.returncode} after {took:.1f} s, "
            f"{'with' if 'crashing at start on purpose' in r.stderr else 'WITHOUT'} the "
            f"worker's log tail; revisions {states}; load {dict(results)}; "
            f"{len(leftovers)} v2 processes left")
    assert r.returncode == 1 and "crashing at start on purpose" in r.stderr
    assert states == {"v1": "active", "v2": "failed"} and st["active"] == "v1"
    assert set(results) == {200}
    assert not leftovers


def test_one_crash_looping_worker_does_not_fail_requests(gateways, tmp_path, observe):
    marker = tmp_path / "crash-v1-1"
    gw = gateways(workers=2, env={"CRASH_WORKER": "v1-1", "CRASH_MARKER": str(marker)},
                  app_extra='crash_loop_restarts = 3\nrestart_backoff_max = "2s"\n').wait_ready()
    load = Load(gw.port)
    wait_for(lambda: load.total > 20, what="load")
    marker.write_text("crash")
    os.kill(gw.worker("v1-1")["pid"], signal.SIGKILL)
    wait_for(lambda: "crash-looping" in gw.log, timeout=30, what="crash loop detection")
    n = load.total
    wait_for(lambda: load.total > n + 20, what="load during the crash loop")
    results = load.stop()
    delays = [float(x) for x in re.findall(r"worker v1-1 restarts in ([\d.]+)s", gw.log)]
    marker.unlink()
    wait_for(lambda: gw.worker("v1-1")["state"] == "ready", timeout=20,
             what="the worker back once it can start")
    observe("worker-crash-loop-one",
            f"crash loop logged with the log tail: "
            f"{'crashing at start on purpose' in gw.log}; back-off {delays[:4]} s; load "
            f"{dict(results)}; worker ready again once it could start")
    assert set(results) == {200}
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert "crashing at start on purpose" in gw.log


def test_worker_ignoring_sigterm_is_killed_after_stop_grace(gateways, observe):
    gw = gateways(workers=1, env={"IGNORE_SIGTERM": "1"}, stop_grace="2s").wait_ready()
    wait_for(lambda: "ignoring SIGTERM" in (gw.state / "logs" / "v1" / "v1-1.log").read_text(),
             what="the worker to ignore SIGTERM")
    pid = gw.worker("v1-1")["pid"]
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    code = gw.proc.wait(30)
    took = time.monotonic() - t0
    observe("worker-ignores-sigterm",
            f"gateway exit {code} after {took:.1f} s; "
            f"{'logged' if 'did not stop within 2s; killing it' in gw.log else 'NOT logged'}"
            f" 'did not stop within 2s; killing it'; worker "
            f"{'still alive' if alive(pid) else 'gone'}")
    assert code == 0 and 2 <= took < 10
    assert "did not stop within 2s; killing it" in gw.log
    assert not alive(pid)


# == the gateway ====================================================================================


def test_sigterm_under_load_lets_in_flight_requests_finish(gateways, observe):
    gw = gateways(workers=2, gateway='shutdown_timeout = "20s"\n').wait_ready()
    workers = gw.workers()
    idle = []
    for _ in range(3):
        c = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        c.sendall(b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
        c.recv(65536)
        idle.append(c)
    results: list[tuple[int | None, bool]] = []
    lock = threading.Lock()

    def slow() -> None:
        resp, _ = raw(gw.port, b"GET /slow?delay=2 HTTP/1.1\r\nHost: a\r\n\r\n", timeout=20)
        with lock:
            results.append((status_of(resp), b"Connection: close" in resp))

    threads = [threading.Thread(target=slow) for _ in range(12)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(w["inflight"] for w in gw.status()["revisions"][0]["workers"]) == 12,
             what="12 requests in flight")
    gw.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, timeout=5, what="new connections refused")
    idle_closed = sum(read_all(c, 5)[1] in ("closed", "reset") for c in idle)
    for t in threads:
        t.join(20)
    code = gw.proc.wait(20)
    took = time.monotonic() - t0
    _gone, left = psutil.wait_procs(workers, timeout=10)
    observe("gateway-sigterm-under-load",
            f"in-flight: {Counter(s for s, _ in results)} (Connection: close on "
            f"{sum(c for _, c in results)}); idle keep-alive closed {idle_closed}/3; new "
            f"connections refused; exit {code} after {took:.1f} s; workers left {len(left)}")
    assert [s for s, _ in results] == [200] * 12 and all(c for _, c in results)
    assert idle_closed == 3 and code == 0 and not left


def test_sigkill_and_restart_keeps_revisions_and_pins(gateways, observe):
    gw = gateways(sub="gw", workers=1, mode="sessions",
                  app_extra='session_cookie = "sid"\n').wait_ready()
    ca, a = login(gw.port, "alice")
    r = subprocess.run([PY, "-m", "holdover", "deploy", "-c", str(gw.config), "--revision",
                        "v2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _cb, b = login(gw.port, "bob")
    assert (a["revision"], b["revision"]) == ("v1", "v2")
    db = gw.state / "state.db"
    wait_for(lambda: pins_in_store(db) == 2, what="both pins in the store")
    procs = gw.all_descendants()
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    _gone, left = psutil.wait_procs(procs, timeout=15)
    check = integrity(db)
    gw2 = gateways(sub="gw", workers=1, mode="sessions",
                   app_extra='session_cookie = "sid"\n').wait_ready()
    st = gw2.status()
    states = {rev["id"]: rev["state"] for rev in st["revisions"]}
    _code, ev = gw2.api("GET", "/api/events?limit=100")
    kinds = [e["kind"] for e in ev["events"]]
    after = request(gw2.port, "GET", "/", ca)[2]
    observe("gateway-sigkill-restart",
            f"processes left after kill -9: {len(left)}; integrity_check {check}; restart "
            f"ok; revisions {states}, active {st['active']}; sessions_lost {st['sessions_lost']}"
            f" (both pins were remembered); events kept: {sorted(set(kinds))}; alice starts "
            f"anew on {after['revision']}")
    assert not left and check == "ok"
    assert states == {"v1": "retired", "v2": "active"} and st["active"] == "v2"
    assert st["sessions_lost"] == 2 and "deploy" in kinds
    assert after["revision"] == "v2" and after["user"] is None


# -- the state store: disk full, unwritable, corrupt --------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[str]:
    """A tmpfs of ``size`` at ``path`` if this machine lets us mount one; yields the method."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.environ.get("HOLDOVER_FAULTS_NO_MOUNT") != "1" and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True).returncode == 0
    try:
        yield "tmpfs" if mounted else "rlimit"
    finally:
        if mounted and subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


class DiskFull:
    """Fill the disk under state_dir (tmpfs) or cap the gateway's file size (RLIMIT_FSIZE)."""

    def __init__(self, gw: FaultGateway, method: str) -> None:
        self.gw, self.method = gw, method
        self.filler = gw.state / "filler"

    def __enter__(self) -> DiskFull:
        if self.method == "tmpfs":
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            finally:
                os.close(fd)
        else:  # every write past the first byte of any file fails (EFBIG), like ENOSPC
            psutil.Process(self.gw.proc.pid).rlimit(psutil.RLIMIT_FSIZE,
                                                    (1, psutil.RLIM_INFINITY))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "tmpfs":
            self.filler.unlink(missing_ok=True)
        elif self.gw.proc.poll() is None:
            psutil.Process(self.gw.proc.pid).rlimit(
                psutil.RLIMIT_FSIZE, (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY))


SESSIONS_APP = 'session_cookie = "sid"\n'


def test_state_store_disk_full_keeps_serving(gateways, tmp_path, observe):
    with small_disk(tmp_path / "gw" / "state") as method:
        gw = gateways(sub="gw", workers=2, mode="sessions", app_extra=SESSIONS_APP).wait_ready()
        db = gw.state / "state.db"
        ca, a = login(gw.port, "alice")
        wait_for(lambda: pins_in_store(db) == 1, what="alice's pin stored")
        users: dict[str, tuple[str, dict]] = {}
        with DiskFull(gw, method):
            for i in range(40):
                users[f"u{i}"] = login(gw.port, f"u{i}")
                if "cannot save sessions" in gw.log:
                    break
                time.sleep(0.3)
            wait_for(lambda: "cannot save sessions" in gw.log, what="the store error")
            during = [request(gw.port, "GET", "/", c)[2] for c, _ in users.values()]
            alice = request(gw.port, "GET", "/", ca)[2]
        error = next(ln for ln in gw.log.splitlines() if "cannot save sessions" in ln)
        error = error.split("ERROR ")[-1].replace(str(gw.state), "STATE_DIR")
        # Room again: the sessions are used again, and the store catches up.
        for c, _ in users.values():
            request(gw.port, "GET", "/", c)
        wait_for(lambda: pins_in_store(db) == len(users) + 1, timeout=10,
                 what="every live pin stored once there is room")
        stored = pins_in_store(db)
        assert gw.stop() == 0
        check = integrity(db)
    observe("state-disk-full",
            f"({method}) logged: {error}; {len(users)} sessions "
            f"started while full all pinned ({sum(d['count'] == 1 for d in during)}/"
            f"{len(during)} back on their worker), alice's count {alice['count']}; after room "
            f"came back {stored} pins stored; integrity_check {check}")
    assert "state store" in error and ("full" in error or "disk" in error)
    assert all(d["count"] == 1 and d["pid"] == info["pid"]
               for d, (_, info) in zip(during, users.values(), strict=True))
    assert alice["count"] == 1 and alice["pid"] == a["pid"]
    assert check == "ok"


def test_sessions_started_while_disk_full_survive_a_reload(gateways, tmp_path, observe):
    with small_disk(tmp_path / "gw" / "state") as method:
        gw = gateways(sub="gw", workers=2, mode="sessions", app_extra=SESSIONS_APP).wait_ready()
        with DiskFull(gw, method):
            users = []
            for i in range(40):
                users.append(login(gw.port, f"u{i}"))
                if "cannot save sessions" in gw.log:
                    break
                time.sleep(0.3)
            wait_for(lambda: "cannot save sessions" in gw.log, what="the store error")
        wait_for(lambda: pins_in_store(gw.state / "state.db") == len(users), timeout=15,
                 what="the pins of the sessions started while full stored once there is room")
        before = gw.status()["sessions"]
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.log.count("holdover: serving") >= 2, timeout=30, what="re-exec")
        after = gw.status()["sessions"]
        # X-Holdover-Revision is added only to a response that a session's pin routed.
        pinned = [("x-holdover-revision" in request(gw.port, "GET", "/", c)[1]) for c, _ in users]
        observe("state-disk-full-then-reload",
                f"({method}) live sessions {before} before the reload, {after} after; "
                f"{sum(pinned)} of {len(users)} sessions started while the disk was full still "
                f"routed by their pin")
        assert after == before and all(pinned)


def test_state_file_made_unwritable_keeps_serving(gateways, observe):
    gw = gateways(sub="gw", workers=1, mode="sessions", app_extra=SESSIONS_APP).wait_ready()
    db = gw.state / "state.db"
    ca, _a = login(gw.port, "alice")
    wait_for(lambda: pins_in_store(db) == 1 and db.with_name("state.db-wal").exists(),
             what="alice's pin stored")
    files = [str(db), str(db.with_name("state.db-wal"))]
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        users = [login(gw.port, f"u{i}") for i in range(3)]
        wait_for(lambda: "cannot save sessions" in gw.log, what="the store error")
        during = [request(gw.port, "GET", "/", c)[2] for c, _ in users]
        alice = request(gw.port, "GET", "/", ca)[2]
        error = next(ln for ln in gw.log.splitlines() if "cannot save sessions" in ln)
        error = error.split("ERROR ")[-1].replace(str(gw.state), "STATE_DIR")
    finally:
        subprocess.run(["chattr", "-i", *files], capture_output=True)
    assert gw.stop() == 0
    check = integrity(db)
    observe("state-file-unwritable",
            f"logged: {error}; sessions pinned and served "
            f"{sum(d['count'] == 1 for d in during)}/{len(during)}, alice count "
            f"{alice['count']}; integrity_check {check}")
    assert "state store" in error
    assert [d["count"] for d in during] == [1, 1, 1] and alice["count"] == 1
    assert check == "ok"


def _holdover_db(path: Path) -> None:
    from holdover.state.base import RevisionRecord
    from holdover.state.sqlite import SQLiteStore

    async def make() -> None:
        store = SQLiteStore(path)
        await store.open()
        for i in range(50):
            await store.put_revision(RevisionRecord(f"r{i}", "retired", "x" * 500, "/", {},
                                                    1, float(i), None, float(i)))
        await store.close()

    asyncio.run(make())


def _not_sqlite(state: Path) -> None:
    (state / "state.db").write_bytes(os.urandom(8192))


def _foreign(state: Path) -> None:
    con = sqlite3.connect(state / "state.db")
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users (name) VALUES ('someone else''s data')")
    con.commit()
    con.close()


def _damaged(state: Path) -> None:
    db = state / "state.db"
    _holdover_db(db)
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page:] = os.urandom(len(data) - 2 * page)  # every page after the schema's
    db.write_bytes(bytes(data))


def _newer(state: Path) -> None:
    db = state / "state.db"
    _holdover_db(db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.close()


def _bad_secret(state: Path) -> None:
    (state / "secret.json").write_text("{not json")


BAD_STATE = [
    ("state-file-not-sqlite", _not_sqlite, "state.db", "not a holdover state database"),
    ("state-file-foreign", _foreign, "state.db", "another application"),
    ("state-file-damaged", _damaged, "state.db", "malformed"),
    ("state-file-newer", _newer, "state.db", "newer holdover"),
    ("secret-file-corrupt", _bad_secret, "secret.json", "not a valid holdover secret file"),
]


@pytest.mark.parametrize("case,make,name,message", BAD_STATE, ids=[c[0] for c in BAD_STATE])
def test_bad_state_file_at_start_is_refused_clearly(tmp_path, observe, case, make, name,
                                                    message):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    make(state)
    before = (state / name).read_bytes()
    gw = FaultGateway(tmp_path, workers=1)
    try:
        code = gw.proc.wait(30)
    finally:
        gw.stop()
    errors = [ln.split(" ERROR ", 1)[1].replace(str(state), "STATE_DIR")
              for ln in gw.log.splitlines() if " ERROR " in ln]
    observe(case, f"exit {code}; said: {errors[0] if errors else gw.log[-200:]!r}; "
            f"traceback: {'Traceback' in gw.log}; file "
            f"{'untouched' if (state / name).read_bytes() == before else 'MODIFIED'}; "
            f"workers started: {gw.log.count('started pid=')}")
    assert code == 1 and errors and message in errors[0]
    assert "Traceback" not in gw.log
    assert (state / name).read_bytes() == before
    assert "started pid=" not in gw.log


# == resources =======================================================================================


def _connect_many(port: int, n: int, request_bytes: bytes | None) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if request_bytes:
            s.sendall(request_bytes)
        socks.append(s)
    return socks


def _read_responses(socks: list[socket.socket], timeout: float) -> int:
    """Read one (small) response from each socket; returns how many got a 200."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, b"")
    ok = 0
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            data = key.data + key.fileobj.recv(65536)  # type: ignore[union-attr]
            if data.startswith(b"HTTP/1.1 200") and data.endswith(b"}"):
                ok += 1
                sel.unregister(key.fileobj)
            elif not data[len(key.data):]:
                sel.unregister(key.fileobj)
            else:
                sel.modify(key.fileobj, selectors.EVENT_READ, data)
    sel.close()
    return ok


def _wait_closed(socks: list[socket.socket], timeout: float) -> int:
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except ConnectionResetError:
                data = b""
            if not data:
                closed += 1
                sel.unregister(key.fileobj)
    sel.close()
    return closed


def test_thousands_of_idle_keepalive_connections(gateways, observe):
    n = 3000 * SCALE
    gw = gateways(workers=1, gateway='keepalive_timeout = "3s"\n').wait_ready()
    before = gw.rss()
    socks: list[socket.socket] = []
    try:
        ok = 0
        for i in range(0, n, 250):
            batch = _connect_many(gw.port, min(250, n - i),
                                  b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
            ok += _read_responses(batch, 20)
            socks += batch
        held = gw.rss()
        t0 = time.monotonic()
        fresh = request(gw.port, "GET", "/fresh")[0]
        answer = time.monotonic() - t0
        closed = _wait_closed(socks, 20)
    finally:
        for s in socks:
            s.close()
    grew = (held - before) / MiB
    observe("idle-keepalive-thousands",
            f"{ok}/{n} answered and held open; gateway memory +{grew:.0f} MiB "
            f"({(held - before) / n / 1024:.1f} KiB per connection); a new client answered "
            f"{fresh} in {answer * 1000:.0f} ms; {closed}/{n} closed by keepalive_timeout")
    assert ok == n and fresh == 200 and answer < 1.0
    assert grew < 100 * SCALE
    assert closed == n


def test_slowloris_head_gets_408(gateways, observe):
    n = 200 * SCALE
    gw = gateways(workers=1, gateway='header_timeout = "2s"\n').wait_ready()
    head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Trickle: " + b"a" * 100
    socks = _connect_many(gw.port, n, None)
    got: dict[int, tuple[float, bytes]] = {}
    t0 = time.monotonic()
    served = None
    try:
        for s in socks:
            s.setblocking(False)
        i = 0
        while len(got) < n and time.monotonic() - t0 < 8:
            for k, s in enumerate(socks):
                if k in got:
                    continue
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionError):
                    if i < len(head):
                        s.send(head[i:i + 1])
                    data = s.recv(65536)
                    got[k] = (time.monotonic() - t0, data)
            if served is None and i == 3:
                t1 = time.monotonic()
                served = (request(gw.port, "GET", "/meanwhile")[0], time.monotonic() - t1)
            i += 1
            time.sleep(0.3)
    finally:
        for s in socks:
            s.close()
    statuses = Counter(status_of(d) for _, d in got.values())
    times = [t for t, _ in got.values()]
    observe("slowloris-head",
            f"{n} trickling clients: {dict(statuses)} after {min(times, default=0):.1f}-"
            f"{max(times, default=0):.1f} s; a normal client meanwhile: {served[0]} in "
            f"{served[1] * 1000:.0f} ms" if served else "no normal request made")
    assert statuses == {408: n}
    assert min(times) >= 2 and max(times) < 5
    assert served is not None and served[0] == 200 and served[1] < 1


def test_blank_lines_do_not_keep_a_connection_open(gateways, observe):
    gw = gateways(workers=1, gateway='keepalive_timeout = "1s"\nheader_timeout = "1s"\n'
                  ).wait_ready()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.setblocking(False)
    t0 = time.monotonic()
    closed_at = None
    try:
        while time.monotonic() - t0 < 4:
            try:
                s.send(b"\r\n")
                if s.recv(100) == b"":
                    closed_at = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionError):
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.3)
    finally:
        s.close()
    observe("slowloris-blank-lines",
            f"closed after {closed_at:.1f} s" if closed_at else
            "still open after 4 s (keepalive_timeout and header_timeout 1 s)")
    assert closed_at is not None and closed_at < 3


def test_slowloris_body(gateways, observe):
    n = 50 * SCALE
    gw = gateways(workers=1, gateway='body_timeout = "2s"\n').wait_ready()
    head = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
    stalled = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    stalled.sendall(head + b"0123456789")
    t0 = time.monotonic()
    trickle = _connect_many(gw.port, n, head)
    for s in trickle:
        s.setblocking(False)
    stalled.setblocking(False)
    stalled_got = None
    cut = 0
    served = None
    try:
        while time.monotonic() - t0 < 4:
            for s in trickle:
                try:
                    s.send(b"x")
                except (BlockingIOError, BrokenPipeError, ConnectionError):
                    cut += 1
            if stalled_got is None:
                with contextlib.suppress(BlockingIOError):
                    data = stalled.recv(65536)
                    stalled_got = (time.monotonic() - t0, data)
            if served is None and time.monotonic() - t0 > 1:
                t1 = time.monotonic()
                served = (request(gw.port, "GET", "/meanwhile")[0], time.monotonic() - t1)
            time.sleep(0.3)
        open_after = sum(1 for s in trickle if _still_open(s))
    finally:
        for s in [*trickle, stalled]:
            s.close()
    observe("slowloris-body",
            f"stalled body: {status_of(stalled_got[1]) if stalled_got else 'nothing'} after "
            f"{stalled_got[0] if stalled_got else 0:.1f} s; {open_after}/{n} trickling bodies "
            f"still open after 4 s (no minimum rate); a normal client meanwhile: "
            f"{served[0] if served else '-'} in {served[1] * 1000 if served else 0:.0f} ms")
    assert stalled_got is not None and status_of(stalled_got[1]) == 408
    assert 2 <= stalled_got[0] < 4.5
    assert served is not None and served[0] == 200 and served[1] < 1
    assert open_after == n and cut == 0


def _still_open(s: socket.socket) -> bool:
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_client_that_never_reads_is_backpressured(gateways, observe):
    gw = gateways(app=BACKEND, workers=1).wait_ready()
    before = gw.rss()
    socks = []
    for _ in range(5):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.connect(("127.0.0.1", gw.port))
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % (512 * MiB))
        socks.append(s)
    try:
        gw.wait_upstream_paused(5)  # every transfer has filled the buffers it may
        first = gw.rss()
        time.sleep(1.5)  # the property itself: 1.5 s more of stalled transfers, no growth
        second = gw.rss()
        t0 = time.monotonic()
        other = request(gw.port, "GET", "/echo")[0]
        answer = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    grew, still = (second - before) / MiB, (second - first) / MiB
    observe("client-never-reads",
            f"gateway memory +{grew:.0f} MiB with 5 stalled 512 MiB downloads (+{still:.1f} "
            f"MiB in the last 1.5 s); another client: {other} in {answer * 1000:.0f} ms")
    assert grew < 64 and still < 8
    assert other == 200 and answer < 1


def test_worker_that_never_reads_the_body_is_backpressured(hostile_gateway, observe):
    gw = hostile_gateway
    before = gw.rss()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    size = 256 * MiB
    sent = [0]

    def upload() -> None:
        chunk = b"u" * MiB
        try:
            s.sendall(b"POST /hang HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            while sent[0] < size:
                s.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    peak = before
    resp, end = b"", "timeout"
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < 8:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, gw.rss())
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            end = "reset"
            break
        if not data:
            end = "closed"
            break
        resp += data
    took = time.monotonic() - t0
    s.close()
    t.join(10)
    grew = (peak - before) / MiB
    observe("worker-never-reads-body",
            f"{sent[0] // MiB} of 256 MiB accepted before the gateway stopped reading; "
            f"gateway memory +{grew:.0f} MiB; client got "
            f"{status_of(resp) or 'no response'}, connection {end} after {took:.1f} s")
    assert grew < 64 and sent[0] < 128 * MiB
    assert status_of(resp) == 504 or end == "reset"
    assert gw.proc.poll() is None


def _exhaust(gw: FaultGateway, limit: int, flood: int) -> tuple[socket.socket, list]:
    keep = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    keep.sendall(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n")
    assert keep.recv(65536).startswith(b"HTTP/1.1 200")
    proc = psutil.Process(gw.proc.pid)
    proc.rlimit(psutil.RLIMIT_NOFILE, (limit, proc.rlimit(psutil.RLIMIT_NOFILE)[1]))
    socks = _connect_many(gw.port, flood, None)
    wait_for(lambda: proc.num_fds() >= limit - 2, timeout=10, what="the gateway out of fds")
    return keep, socks


def test_fd_exhaustion_refuses_new_connections_cleanly(gateways, observe):
    gw = gateways(workers=1, gateway='keepalive_timeout = "60s"\n').wait_ready()
    keep, socks = _exhaust(gw, 256, 400)
    try:
        proc = psutil.Process(gw.proc.pid)
        t0 = time.monotonic()
        late, late_end = raw(gw.port, b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
        late_took = time.monotonic() - t0
        keep.sendall(b"GET /during HTTP/1.1\r\nHost: a\r\n\r\n")
        keep.settimeout(5)
        during = keep.recv(65536)
        cpu = proc.cpu_percent(1.0)
        fds = proc.num_fds()
    finally:
        for s in socks:
            s.close()
        keep.close()
    observe("fd-exhaustion",
            f"gateway at {fds} fds (limit 256); a new connection: "
            f"{status_of(late) or 'no response'}, {late_end} after {late_took:.1f} s; "
            f"existing keep-alive client: {status_of(during)}; gateway CPU {cpu:.0f}% "
            f"(no spin), still running: {gw.proc.poll() is None}")
    assert late_end in ("closed", "reset") and late_took < 2
    assert status_of(during) == 200
    assert cpu < 50 and gw.proc.poll() is None


def test_fd_exhaustion_does_not_kill_healthy_workers(gateways, observe):
    gw = gateways(workers=1, gateway='keepalive_timeout = "60s"\n').wait_ready()
    pid = gw.worker("v1-1")["pid"]
    keep, socks = _exhaust(gw, 256, 400)
    try:
        # Hold the exhaustion through three health checks of the worker, each of which
        # finds the gateway out of file descriptors.
        n0 = gw.log.count("cannot health-check worker v1-1")
        wait_for(lambda: gw.log.count("cannot health-check worker v1-1") - n0 >= 3
                 or not alive(pid), timeout=20, what="three health checks during exhaustion")
        killed = not alive(pid)
    finally:
        for s in socks:
            s.close()
        keep.close()
    # The gateway notices the flood's closes one by one; until it has, a new connection is
    # past the limit and closed at once (fd-exhaustion), so a client retries for 5 s.
    t0 = time.monotonic()
    tries: list[object] = []
    while time.monotonic() - t0 < 5 and 200 not in tries:
        try:
            tries.append(request(gw.port, "GET", "/after", timeout=5)[0])
        except (OSError, http.client.HTTPException) as exc:
            tries.append(type(exc).__name__)
            time.sleep(0.1)  # a client's pause between attempts
    status = tries[-1]
    took = time.monotonic() - t0
    emfile = [ln for ln in gw.log.splitlines() if "Too many open files" in ln]
    restarts = re.findall(r"worker v1-1 (?:failed \d+ health checks|cannot start)", gw.log)
    observe("fd-exhaustion-workers",
            f"healthy worker {'KILLED' if killed else 'kept'} through 3 health checks during "
            f"the exhaustion "
            f"({len(restarts)} health-check failures / failed starts logged); a new client "
            f"after the flood: {status} in {took:.1f} s ({len(tries)} attempt(s)); 'Too many "
            f"open files' logged "
            f"{len(emfile)} times ({sum('cannot start' in ln for ln in emfile)} of them "
            f"failed worker starts)")
    assert not killed
    assert status == 200 and took < 5


def test_worker_log_on_a_full_disk_does_not_break_the_worker(gateways, tmp_path, observe):
    with small_disk(tmp_path / "gw" / "state") as method:
        gw = gateways(sub="gw", workers=1).wait_ready()
        assert request(gw.port, "GET", "/log?n=1")[0] == 200
        with DiskFull(gw, method):
            full = [request(gw.port, "GET", "/log?n=50")[0] for _ in range(5)]
        later = [request(gw.port, "GET", "/log?n=2")[0] for _ in range(3)]
        assert gw.stop() == 0
    observe("worker-log-disk-full",
            f"({method}) requests that print while the disk is full: {full}; after it has "
            f"room again: {later}")
    assert full == [200] * 5 and later == [200] * 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
