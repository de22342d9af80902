"""Test helpers: a real ``holdover run`` process in front of real worker processes.

Every gateway listens on port 0 (the kernel picks) on 127.0.0.1 and reports the port it
got; every process a test starts is stopped and checked for leftovers at the end.

tests/unit/ holds tests that need no socket and no process; the hooks below run each of
them under ``isolation``'s guard.  tests/e2e/ starts real gateways and workers.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import isolation
import psutil
import pytest
import skippolicy
from redisserver import RedisServer

APPS = Path(__file__).parent / "apps"
UNIT = Path(__file__).parent / "unit"
PY = sys.executable


# -- no skip goes unnoticed -------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    skippolicy.watch(config)


# -- unit tests stay in-process ------------------------------------------------------------


def _guarded(item: pytest.Item) -> Iterator[None]:
    if not item.path.is_relative_to(UNIT):
        yield
        return
    mp = pytest.MonkeyPatch()
    isolation.install(mp)
    try:
        yield
    finally:
        mp.undo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


# Test traffic goes to loopback only, whatever HTTP(S)_PROXY the machine sets: urllib
# through this opener, websockets with ``proxy=None``, aiohttp with its default
# ``trust_env=False`` (tests/unit/test_loopback_source.py checks the source for all three).
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require(module: str) -> object:
    """Import a test dependency, failing (never skipping) the test when it is missing.

    Everything the suite needs is in the ``test`` extra, so a missing module is a broken
    setup to report, not an optional part to leave out quietly.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not installed ({exc}): pip install -e '.[test]'")


def wait_for(cond: Callable[[], object], timeout: float = 15.0, interval: float = 0.05,
             what: str = "condition") -> object:
    """Poll ``cond`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string is a JSON string


def render_config(sections: dict[str, dict[str, object]]) -> str:
    """A holdover.toml from ``{section: {key: value}}``."""
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n"
                                              for k, v in table.items())
                     for name, table in sections.items())


def _cmdline(p: psutil.Process) -> list[str]:
    """A process's command line; empty for one that has exited meanwhile."""
    try:
        return p.cmdline()
    except psutil.Error:
        return []


class GatewayProcess:
    """``holdover run -c FILE`` as a child process, with its stderr collected.

    The config is the test defaults below, overridden by ``mode``/``workers``/... and
    by the TOML snippets ``extra_gateway``/``extra_app`` (which may repeat a default key).
    ``command=False`` leaves ``command`` out (workers another engine runs).
    """

    def __init__(self, tmp: Path, app: str = "", extra_gateway: str = "", extra_app: str = "",
                 workers: int = 2, health_path: str = "/healthz", env: dict | None = None,
                 mode: str = "stateless", command: bool = True):
        self.dir = tmp
        gateway: dict[str, object] = {
            "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "state_dir": "state",
            "shutdown_timeout": "10s"}
        application: dict[str, object] = {
            "command": app or f"{PY} {APPS / 'backend.py'} {{port}}", "workers": workers,
            "health_path": health_path, "health_interval": "1s", "stop_grace": "5s",
            "mode": mode}
        if not command:
            del application["command"]
        gateway.update(tomllib.loads(textwrap.dedent(extra_gateway)))
        application.update(tomllib.loads(textwrap.dedent(extra_app)))
        self.config = tmp / "holdover.toml"
        self.config.write_text(render_config({"gateway": gateway, "app": application}))
        self._start(env)

    def _start(self, env: dict | None = None) -> None:
        """``holdover run -c self.config`` in ``self.dir``, its stderr collected."""
        self.lines: list[str] = []
        self.port = 0
        self.host = "127.0.0.1"
        self.proc = subprocess.Popen(
            [PY, "-m", "holdover", "run", "-c", str(self.config)], cwd=self.dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A ``holdover`` command against this gateway's config."""
        return subprocess.run([PY, "-m", "holdover", *args, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    # -- the admin side ----------------------------------------------------------

    @property
    def admin_url(self) -> str:
        return (self.dir / "state" / "admin.url").read_text().strip()

    @property
    def admin_token(self) -> str:
        return (self.dir / "state" / "admin.token").read_text().strip()

    def admin_request(self, method: str, path: str, body: object = None,
                      token: str | None = None, auth: bool = True, timeout: float = 60
                      ) -> tuple[int, dict[str, str], bytes]:
        """One admin API call: (status, headers, body); ``token`` overrides the real one."""
        host, _, port = self.admin_url.split("//")[1].rstrip("/").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        headers = {"Authorization": f"Bearer {token or self.admin_token}"} if auth else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, dict(r.headers), r.read()
        finally:
            conn.close()

    def stop_and_check(self) -> None:
        """Stop the gateway; fail if any process it started outlived it."""
        kids = self.all_descendants()
        self.stop()
        _gone, alive = psutil.wait_procs(kids, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes outlived the gateway: {alive}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> GatewayProcess:
        """Wait until it serves; ``port`` (and ``host``, a loopback address) say where."""
        def serving() -> int:
            m = re.search(r"serving http://(127(?:\.\d+){3}):(\d+)/", self.log)
            if m is None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log}")
            if m:
                self.host = m.group(1)
            return int(m.group(2)) if m else 0
        self.port = int(wait_for(serving, timeout, what="gateway to serve"))  # type: ignore[arg-type]
        return self

    def workers(self) -> list[psutil.Process]:
        """The worker processes (children of the gateway, not the guard nor a plane).

        A worker just killed may be a zombie until the gateway reaps it: it is left out."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if (cmd := " ".join(_cmdline(k))) and not any(
            m in cmd for m in ("holdover.supervisor.guard", "holdover.plane"))]

    def planes(self) -> list[psutil.Process]:
        """The data-plane processes (``[gateway] processes`` > 1)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if "holdover.plane" in " ".join(_cmdline(k))]

    def worker_ports(self) -> set[int]:
        """The ports the workers listen on, as the admin status reports them."""
        code, _, body = self.admin_request("GET", "/api/status")
        assert code == 200, body
        return {w["port"] for rev in json.loads(body)["revisions"] for w in rev["workers"]}

    def wait_upstream_paused(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the gateway has stopped reading ``count`` worker connections.

        That is backpressure engaged: at least ``PAUSED_UNREAD`` bytes the gateway has
        not read sit in the kernel's receive queue of each, unchanged since the last poll.
        A gateway that kept reading (and buffering) never gets there.
        """
        ports = self.worker_ports()
        last: dict[int, int] = {}

        def paused() -> bool:
            now = unread_from(self.proc.pid, ports)
            still = [ino for ino, q in now.items() if q >= PAUSED_UNREAD and last.get(ino) == q]
            last.clear()
            last.update(now)
            return len(still) >= count
        wait_for(paused, timeout, interval=0.2,
                 what=f"the gateway to stop reading {count} worker connection(s)")

    def all_descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[tuple[GatewayProcess, list[psutil.Process]]] = []

    def make(**kw: object) -> GatewayProcess:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gw = GatewayProcess(sub, **kw)  # type: ignore[arg-type]
        started.append((gw, []))
        return gw

    yield make
    for gw, _ in started:
        gw.stop_and_check()


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    return gateway_factory().wait_ready()


def raw_request(port: int, data: bytes, timeout: float = 10.0, read_until_close: bool = True
                ) -> bytes:
    """Send raw bytes; return everything received until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out


def status_of(response: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    assert m, f"not an HTTP response: {response[:200]!r}"
    return int(m.group(1))


PAUSED_UNREAD = 32 * 1024


def unread_from(pid: int, remote_ports: set[int]) -> dict[int, int]:
    """``{socket inode: bytes queued unread}`` of ``pid``'s TCP connections to those ports.

    Read from /proc (Linux): the receive queue of a socket its owner has stopped reading
    fills up, which is how a test sees backpressure without waiting on a clock.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
            if m:
                inodes.add(int(m.group(1)))
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                port = int(cols[2].rsplit(":", 1)[1], 16)
                inode = int(cols[9])
                if port in remote_ports and inode in inodes:
                    out[inode] = int(cols[4].split(":")[1], 16)
    return out


def free_port() -> int:
    """A loopback port nobody listens on right now (for a listener the test names itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a real Redis for the Redis store's tests (tests/redisserver.py) --------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; each test keeps to its own cluster name."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL of the session's Redis under a cluster name (key prefix) of this test's own."""
    return redis_server.url(f"t{uuid.uuid4().hex[:12]}")
