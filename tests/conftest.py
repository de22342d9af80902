"""Test helpers: a real ``holdover run`` process in front of real worker processes.

Every gateway listens on port 0 (the kernel picks) on 127.0.0.1 and reports the port it
got; every process a test starts is stopped and checked for leftovers at the end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

APPS = Path(__file__).parent / "apps"
PY = sys.executable


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


class GatewayProcess:
    """``holdover run -c FILE`` as a child process, with its stderr collected."""

    def __init__(self, tmp: Path, app: str = "", extra_gateway: str = "", extra_app: str = "",
                 workers: int = 2, health_path: str = "/healthz", env: dict | None = None,
                 mode: str = "stateless"):
        self.dir = tmp
        app = app or f"{PY} {APPS / 'backend.py'} {{port}}"
        self.config = tmp / "holdover.toml"
        self.config.write_text(textwrap.dedent("""\
            [gateway]
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"
            state_dir = "state"
            shutdown_timeout = "10s"
            """) + textwrap.dedent(extra_gateway) + textwrap.dedent(f"""
            [app]
            command = "{app}"
            workers = {workers}
            health_path = "{health_path}"
            health_interval = "1s"
            stop_grace = "5s"
            mode = "{mode}"
            """) + textwrap.dedent(extra_app))
        self.lines: list[str] = []
        self.port = 0
        self.proc = subprocess.Popen(
            [PY, "-m", "holdover", "run", "-c", str(self.config)], cwd=tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> GatewayProcess:
        def serving() -> int:
            m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", self.log)
            if m is None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log}")
            return int(m.group(1)) if m else 0
        self.port = int(wait_for(serving, timeout, what="gateway to serve"))  # type: ignore[arg-type]
        return self

    def workers(self) -> list[psutil.Process]:
        """The worker processes (children of the gateway, not the guard)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if "holdover.supervisor.guard" not in " ".join(k.cmdline())]

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
        kids = gw.all_descendants()
        gw.stop()
        _gone, alive = psutil.wait_procs(kids, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes outlived the gateway: {alive}"


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


def free_port() -> int:
    """A loopback port nobody listens on right now (for a listener the test names itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
