"""One data-plane process: accept on the public port, proxy, report.

The control process starts it (``python -m holdover.plane``, holdover/control/planes.py)
with inherited file descriptors: its listening socket (its own of the SO_REUSEPORT
group, which the control process keeps open) and its end of the control channel.
Everything else — limits, routing settings, the access log, TLS files, the gateway's
keys — comes as the channel's first message, never on the command line or in the
environment.  Then it serves until the control process says ``close`` (finish what is
in flight, up to a timeout) or goes away (the channel reaches end-of-file: this process
exits at once; so it does when its parent dies, by the parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from time import monotonic
from typing import Any

from ..accesslog import AccessLog
from ..core.affinity import Keys
from ..proxy.heap import keep_freed_memory
from ..proxy.ports import Limits, Plane
from ..proxy.server import ClientConnection
from .router import PlaneRouter
from .wire import Channel

log = logging.getLogger("holdover.plane")

_PR_SET_PDEATHSIG = 1
PIPE_CHUNK = 4096  # writes to a shared pipe up to this size are never interleaved


def die_with_parent() -> None:
    """SIGKILL this process when the control process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


class PipeAccessLog(AccessLog):
    """The access log on a standard output that several planes share: whole lines only.

    A write to a pipe is atomic up to PIPE_BUF bytes, so batches are cut at line ends
    into pieces no longer than that, and no plane's line lands inside another's."""

    __slots__ = ()

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        self._buf.clear()
        self._size = 0
        start = 0
        while start < len(data):
            end = start + PIPE_CHUNK
            if end < len(data):
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else end
            try:
                os.write(self._fd, data[start:end])
            except OSError:
                return
            start = end


def limits_from(d: dict[str, Any]) -> Limits:
    """The inverse of control/planes.py's ``limits_to_wire``."""
    kw = dict(d)
    for k in ("proto", "listen_host"):
        kw[k] = kw[k].encode("latin-1")
    kw["trusted"] = tuple(ipaddress.ip_network(n, strict=False) for n in kw.get("trusted", ()))
    return Limits(**kw)


class PlaneProcess:
    """The life of one plane process."""

    def __init__(self, listen_fds: list[int], channel_fd: int, index: int) -> None:
        self.index = index
        self.listen_fds = listen_fds
        self.chan = Channel(socket.socket(fileno=channel_fd), self._message, self._lost)
        self.router: PlaneRouter | None = None
        self.plane: Plane | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hello: asyncio.Future[list[Any]] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._table: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("plane task failed: %r", task.exception(), exc_info=task.exception())

    # -- the channel ---------------------------------------------------------------

    def _message(self, msg: list[Any]) -> None:
        kind = msg[0]
        r = self.router
        if kind == "ops":
            assert r is not None
            r.apply_ops(msg[1])
        elif kind == "ack":
            assert r is not None
            r.acked(msg[1])
        elif kind == "found":
            assert r is not None
            r.found(msg[1])
        elif kind == "table":
            assert r is not None
            r.apply_table(*msg[1:])
            if self._table is not None and not self._table.done():
                self._table.set_result(None)
        elif kind == "sync":
            self._report(msg[1])
        elif kind == "warm":
            assert r is not None
            r.warm = True
        elif kind == "hello":
            assert self._hello is not None
            if not self._hello.done():  # set up at once: the next message needs the router
                try:
                    self._ssl = self._setup(msg[1])
                except Exception as exc:
                    self._hello.set_exception(exc)
                else:
                    self._hello.set_result(msg)
        elif kind == "close":
            if not self._closing:
                self.spawn(self._close(float(msg[1])))
        else:
            log.error("unknown message from the control process: %r", kind)

    def _lost(self) -> None:
        """The control process is gone: so is this process, at once."""
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if not self._closing:
            os._exit(0)

    def _report(self, seq: int) -> None:
        r = self.router
        if r is None:
            return
        rep = r.report()
        rep["connections"] = len(self.plane.connections) if self.plane is not None else 0
        rep["table"] = r.table_version
        self.chan.send(["report", seq, rep])

    # -- start -----------------------------------------------------------------------

    def _setup(self, hello: dict[str, Any]) -> ssl.SSLContext | None:
        level = hello.get("log_level", logging.INFO)
        root = logging.getLogger()
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            if hello.get("log_format") == "json":
                from ..gatewaylog import json_formatter
                handler.setFormatter(json_formatter())
            else:
                handler.setFormatter(logging.Formatter(
                    f"%(asctime)s %(levelname)s %(name)s[{self.index}]: %(message)s"))
            root.addHandler(handler)
        root.setLevel(level)
        keys = Keys.from_secrets(hello["keys"])
        r = self.router = PlaneRouter(hello["routing"], keys, self.chan, self.spawn)
        target = hello.get("access_log", "off")
        if target == "-":
            r.access_log = PipeAccessLog("-", hello["access_log_format"])
        elif target != "off":
            r.access_log = AccessLog(target, hello["access_log_format"])
        self.plane = Plane(limits_from(hello["limits"]), r, r, r, r)
        if not hello.get("tls_cert"):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(hello["tls_cert"], hello["tls_key"])
        return ctx

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._table = loop.create_future()
        self._done = loop.create_future()
        # Ctrl-C in a terminal, or a service manager signalling every process of the
        # service: the control process decides when this one stops (and if it dies,
        # so does this one), so that a shutdown drains as one.
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)
        self.chan.start()
        await self._hello
        ctx = self._ssl
        await self._table
        plane = self.plane
        assert plane is not None
        for fd in self.listen_fds:
            self.servers.append(await loop.create_server(
                lambda: ClientConnection(plane), sock=socket.socket(fileno=fd), backlog=4096,
                ssl=ctx))
        self.chan.send(["up", os.getpid()])
        self._timer = loop.call_later(1.0, self._tick)
        await self._done
        return 0

    # -- periodic work -------------------------------------------------------------------

    def _tick(self) -> None:
        """Timeouts of connections, idle pooled connections, the wait queue, the log."""
        loop = asyncio.get_running_loop()
        r = self.router
        plane = self.plane
        now = monotonic()
        try:
            if plane is not None:
                for conn in list(plane.connections):
                    conn.sweep(now)
            if r is not None:
                r.expire_pools(now - r.upstream_idle_timeout)
                if r.queue._q:
                    r.queue.expire(now)
                if r.access_log is not None:
                    r.access_log.flush()
        except Exception:
            log.exception("periodic job of the plane failed (it runs again)")
        finally:
            self._timer = loop.call_later(0.1 if self._closing else 1.0, self._tick)

    # -- stop ------------------------------------------------------------------------

    async def _close(self, timeout: float) -> None:
        """Stop accepting, let in-flight work finish up to ``timeout``, then exit."""
        self._closing = True
        plane = self.plane
        r = self.router
        for server in self.servers:
            server.close()
        # A connection accepted just before is made (connection_made) in the next loop
        # iteration: let it join plane.connections before they are counted.
        await asyncio.sleep(0)
        if plane is not None and r is not None:
            plane.closing = r.closing = True
            now = monotonic()
            for conn in list(plane.connections):
                conn.sweep(now)  # idle keep-alive connections go now
            deadline = now + timeout
            while plane.connections and monotonic() < deadline and not self.chan.closed:
                await asyncio.sleep(0.05)
            for conn in list(plane.connections):
                conn.transport.abort()
                if conn.tunnel is not None:
                    conn.tunnel.abort()
            r.release_all()
            r.close_pools()
            if r.access_log is not None:
                r.access_log.close()
        self._report(-1)  # the last counters, then goodbye
        self.chan.flush_blocking(2.0)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


def main(argv: list[str]) -> int:
    """``python -m holdover.plane LISTEN_FDS CHANNEL_FD INDEX`` (LISTEN_FDS: 3,4,...)."""
    die_with_parent()
    listen_fds = [int(fd) for fd in argv[0].split(",")]
    channel_fd, index = int(argv[1]), int(argv[2])
    keep_freed_memory()  # buffers freed are kept for the next reads (proxy/heap.py)
    import uvloop

    return uvloop.run(PlaneProcess(listen_fds, channel_fd, index).run())
