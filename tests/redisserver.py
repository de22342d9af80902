"""A real ``redis-server`` for the Redis store's tests, on a free loopback port.

Debian's redis-server (installed by scripts/test.sh) runs as a child process with its own
directory, no persistence (``--save ''``, no AOF) and its log in that directory; ``stop``
ends it, and ``start`` again brings up an empty one on the same port (a Redis that
restarted without persistence).  A missing redis-server fails the test: it is a declared
test dependency, not an optional one.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is not installed: the Redis store tests need Debian's "
                    "redis-server package (scripts/test.sh installs it)", pytrace=False)
    return found


class RedisServer:
    """One redis-server child process; ``args`` are extra ``--name value`` options.

    ``tls=True`` serves TLS only, on ``port`` (``tls_args`` then name the files);
    ``unix=True`` also listens on ``socket_path``.
    """

    def __init__(self, dir: Path, *, args: tuple[str, ...] = (), tls: bool = False,
                 unix: bool = False) -> None:
        self.dir = dir
        self.args = args
        self.tls = tls
        self.socket_path = dir / "redis.sock" if unix else None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = dir / "redis.log"

    def command(self) -> list[str]:
        cmd = [redis_server_binary(), "--bind", "127.0.0.1", "--save", "", "--appendonly",
               "no", "--dir", str(self.dir), "--logfile", str(self.log),
               "--daemonize", "no", "--protected-mode", "yes"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port)]
        else:
            cmd += ["--port", str(self.port)]
        if self.socket_path is not None:
            cmd += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return cmd + list(self.args)

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start it (on the port it had, if any) and wait until it accepts connections."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            keep_port = self.port != 0
            if not keep_port:
                self.port = free_port()
            self.log.write_text("")
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = self.log.read_text(errors="replace")
                if "Ready to accept connections" in text:
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            else:
                self.stop()
                raise AssertionError(f"redis-server did not start in {timeout}s:\n{text}")
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.proc = None
            if "Address already in use" in text + err and not keep_port:
                self.port = 0  # another process took the free port meanwhile: pick again
                continue
            raise AssertionError(f"redis-server exited at start:\n{text}\n{err}")
        raise AssertionError("redis-server found no free port in 5 tries")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # in case a test paused it
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections but answers nothing (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def url(self, cluster: str, *, scheme: str = "redis", userinfo: str = "",
            query: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        extra = f"&{query}" if query else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}/0?cluster={cluster}{extra}"
