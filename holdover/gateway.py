"""The gateway: the proxy and the supervisor wired together in one event loop.

``Gateway`` holds what the proxy's hot path reads (limits, timeouts, the balancer) as
plain attributes, turns the supervisor's worker-state reports into routing changes,
and runs the once-a-second sweep that enforces timeouts for every connection.  It is
also where a request's fate is decided — route, queue, retry, 503 — so that the
protocol classes only move bytes.

``run`` is the whole life of ``holdover run``: start the guard and the workers, listen,
serve until SIGTERM/SIGINT, then shut down in stages (stop accepting, let in-flight
requests and open WebSockets finish up to ``shutdown_timeout``, stop the workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from time import monotonic
from typing import Any

from .accesslog import AccessLog
from .config import Config
from .proxy.server import ClientConnection, Exchange
from .proxy.upstream import UpstreamConnection, UpstreamPool
from .routing.balancer import Balancer, WaitQueue
from .supervisor.supervisor import Revision, RevisionFailed, Supervisor
from .supervisor.worker import Worker

log = logging.getLogger("holdover.gateway")


class Gateway:
    """One running gateway: listener, connections, routing, workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        c = config
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self.balancer = Balancer()
        self.queue = WaitQueue(c.gateway_queue_size)
        self.supervisor = Supervisor(config, self._worker_state)
        self.active: Revision | None = None
        self.closing = False
        # What the hot path reads, as plain attributes.
        self.max_request_line = c.gateway_max_request_line
        self.max_headers = c.gateway_max_headers
        self.max_header_size = c.gateway_max_header_size
        self.max_head_bytes = c.gateway_max_header_size + c.gateway_max_request_line
        self.max_body_size = c.gateway_max_body_size
        self.header_timeout = c.gateway_header_timeout
        self.body_timeout = c.gateway_body_timeout
        self.keepalive_timeout = c.gateway_keepalive_timeout
        self.response_timeout = c.gateway_response_timeout
        self.connect_timeout = c.gateway_connect_timeout
        self.queue_timeout = c.gateway_queue_timeout
        self.append_forwarded = c.gateway_forwarded_headers == "append"
        self.retry_safe = True
        self.proto = b"http"
        host, port = c.gateway_listen
        self.listen_host = f"{host}:{port}".encode()
        self.access_log: AccessLog | None = None
        if c.gateway_access_log != "off":
            self.access_log = AccessLog(c.gateway_access_log, c.gateway_access_log_format,
                                        c.state_dir)
        self.server: asyncio.AbstractServer | None = None
        self.stopped = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None
        self.bound: tuple[str, int] | None = None

    # -- routing ---------------------------------------------------------------------

    def route(self, ex: Exchange) -> None:
        """Send ``ex`` to a worker now, or park it until one is ready (then 503)."""
        w = self.balancer.pick()
        if w is not None:
            self.dispatch(ex, w)
            return
        waiter = self.queue.add(lambda worker: self._dequeued(ex, worker),
                                lambda: ex.conn.fail(ex, 503, retry_after=5),
                                monotonic() + self.queue_timeout)
        if waiter is None:
            ex.conn.fail(ex, 503, retry_after=5)
        else:
            ex.waiter = waiter

    def _dequeued(self, ex: Exchange, worker: Any) -> None:
        ex.waiter = None
        if ex.conn.current is ex:
            self.dispatch(ex, worker)

    def dispatch(self, ex: Exchange, w: Any) -> None:
        """Bind ``ex`` to worker ``w`` and send it on a pooled or new connection."""
        ex.worker = w
        w.inflight += 1
        up = w.pool.take()
        if up is not None:
            ex.conn.attach(ex, up)
        else:
            self.loop.create_task(self._connect(ex, w))

    async def _connect(self, ex: Exchange, w: Any) -> None:
        pool = w.pool
        try:
            up = await pool.connect(self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            if ex.conn.current is not ex or ex.worker is not w:
                return
            log.warning("cannot connect to worker %s: %s", w.id, exc or type(exc).__name__)
            w.suspect()
            if not self.retry(ex):
                ex.conn.fail(ex, 502 if not isinstance(exc, TimeoutError) else 504)
            return
        ex.conn.attach(ex, up)

    def _undispatch(self, ex: Exchange) -> Any:
        w = ex.worker
        if w is not None:
            w.inflight -= 1
            ex.worker = None
        return w

    def retry(self, ex: Exchange) -> bool:
        """Send ``ex`` again on another worker; only for requests nothing has seen."""
        w = self._undispatch(ex)
        tried = ex.tried if ex.tried is not None else []
        ex.tried = tried
        tried.append(w)
        if len(tried) > 3:
            return False
        nxt = self.balancer.pick(exclude=tried)
        if nxt is None and w is not None and w.routable and len(tried) == 1:
            nxt = w  # a lone worker: the pooled connection was stale, use a fresh one
        if nxt is None:
            if any(x.state in ("starting", "backoff") for x in self.balancer.workers):
                ex.body_buf = []
                self.route(ex)  # wait in the queue for the restarting worker
                return True
            return False
        ex.body_buf = []
        ex.head_sent_to_worker = False
        self.dispatch(ex, nxt)
        return True

    def release_upstream(self, up: UpstreamConnection, reusable: bool) -> None:
        w = up.pool.worker
        if reusable and not self.closing and w.pool is up.pool and w.routable:  # type: ignore[attr-defined]
            up.pool.put(up, monotonic())
        else:
            up.transport.close()

    def exchange_done(self, ex: Exchange, note: str | None = None) -> None:
        """Account for a finished exchange: free its worker slot, log it."""
        w = ex.worker
        if w is not None:
            w.inflight -= 1
            ex.worker = None
            if self.queue._q:
                self.queue.release(self.balancer)
        if self.access_log is not None:
            self.access_log.log(ex.conn.client_ip, ex.method, ex.url, ex.status, ex.resp_bytes,
                                monotonic() - ex.t0, w.id if w is not None else "-",
                                w.spec.revision if w is not None else "-", note)

    def tunnel_opened(self, ex: Exchange) -> None:
        """A WebSocket (or other upgraded stream) is open; it holds its worker slot."""

    def on_set_cookie(self, ex: Exchange, value: bytes) -> None:
        """The worker set a cookie (session pinning hooks in here)."""

    def response_extra_headers(self, ex: Exchange) -> bytes | None:
        """Headers the gateway adds to a response (none yet)."""
        return None

    # -- workers ---------------------------------------------------------------------

    def _worker_state(self, w: Worker) -> None:
        if w.pool is None or w.pool.port != w.port:
            if w.pool is not None:
                w.pool.close()
            w.pool = UpstreamPool(w, w.spec.host, w.port, self.config.gateway_upstream_keepalive)
        if not w.routable and w.pool is not None:
            w.pool.close()
        if w.routable and self.queue._q:
            self.queue.release(self.balancer)

    # -- lifecycle -------------------------------------------------------------------

    def _sweep(self) -> None:
        now = monotonic()
        for conn in list(self.connections):
            conn.sweep(now)
        cutoff = now - self.config.gateway_upstream_idle_timeout
        for w in self.balancer.workers:
            if w.pool is not None:
                w.pool.expire(cutoff)
        if self.queue._q:
            self.queue.expire(now)
        if self.access_log is not None:
            self.access_log.flush()
        self._sweeper = self.loop.call_later(1.0 if not self.closing else 0.1, self._sweep)

    async def start(self) -> None:
        """Start the workers of the first revision, then listen. Raises RevisionFailed."""
        self.loop = asyncio.get_running_loop()
        c = self.config
        c.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.supervisor.guard.start()
        spec = self.supervisor.spec("v1")
        log.info("starting revision %s: %d worker(s) of %r", spec.revision, c.app_workers,
                 spec.command)
        self.active = await self.supervisor.start_revision(spec, c.app_workers)
        self.balancer.workers = list(self.active.workers)
        host, port = c.gateway_listen
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.bound = sock.getsockname()[:2]
        self.listen_host = f"{host}:{self.bound[1]}".encode()
        self.server = await self.loop.create_server(lambda: ClientConnection(self), sock=sock,
                                                    backlog=4096)
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        log.info("listening on http://%s:%d/ (revision %s, %d workers)", host, self.bound[1],
                 self.active.id, len(self.active.workers))

    async def shutdown(self) -> None:
        """Stop accepting, let work finish up to shutdown_timeout, then stop workers."""
        self.closing = True
        timeout = self.config.gateway_shutdown_timeout
        if self.server is not None:
            self.server.close()
            log.info("shutting down: waiting up to %.0fs for %d connection(s)", timeout,
                     len(self.connections))
            for conn in list(self.connections):
                conn.sweep(monotonic())  # closes idle keep-alive connections now
            deadline = monotonic() + timeout
            while self.connections and monotonic() < deadline:
                await asyncio.sleep(0.05)
            for conn in list(self.connections):
                conn.transport.abort()
                if conn.tunnel is not None:
                    conn.tunnel.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for w in self.balancer.workers:
            if w.pool is not None:
                w.pool.close()
        await self.supervisor.stop_all()
        await self.supervisor.guard.close()
        if self.access_log is not None:
            self.access_log.close()
        log.info("stopped")

    async def run(self) -> int:
        """The whole life of ``holdover run``; returns the process exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            try:
                await self.start()
            except RevisionFailed as exc:
                log.error("%s; last lines of its log:\n%s", exc, exc.log_tail)
                await self.shutdown()
                return 1
            except OSError as exc:
                log.error("cannot listen on %s: %s", self.config.gateway_listen, exc)
                await self.shutdown()
                return 1
            print(f"holdover: serving http://{self.listen_host.decode()}/", file=sys.stderr,
                  flush=True)
            await stop.wait()
            # A second signal during shutdown stops at once.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._hard_stop)
            await self.shutdown()
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    def _hard_stop(self) -> None:
        log.warning("second signal: stopping now")
        self.supervisor.kill_all()
        sys.exit(1)
