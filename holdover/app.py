"""The composition root: ``holdover run`` builds everything here and owns its life.

``Gateway`` wires the control plane (holdover/control/) to the data plane
(holdover/proxy/) through the proxy's ports, opens the store, binds the listeners
(public, TLS, redirect, admin), handles signals and shuts down in stages: stop
accepting, let in-flight requests and open WebSockets finish up to
``shutdown_timeout``, stop the workers.  ``reload`` (SIGHUP, ``holdover reload``)
re-executes the program without closing the port or stopping a worker
(holdover/control/handover.py).  Nothing but this module, the CLI and the demo imports
the admin side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from time import monotonic

from .accesslog import AccessLog
from .admin.server import AdminServer, load_or_create_token
from .config import Config
from .control import handover
from .control.facade import Control
from .control.revisions import DeployError
from .core.affinity import Keys
from .proxy.ports import Limits, Plane
from .proxy.redirect import RedirectToHttps
from .proxy.server import ClientConnection
from .state import StoreError, open_store

log = logging.getLogger("holdover.gateway")


class Gateway:
    """One running gateway: listeners, the control plane, the data plane, signals."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctl = Control(config)
        self.plane: Plane | None = None
        self.server: asyncio.AbstractServer | None = None
        self.redirect_server: asyncio.AbstractServer | None = None
        self.admin: AdminServer | None = None
        self.bound: tuple[str, int] | None = None
        self.proto = b"http"
        self.listen_host = b""
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._lock_fd = -1
        self._reloading = False

    # -- start ----------------------------------------------------------------------

    def _limits(self) -> Limits:
        c = self.config
        return Limits(
            max_request_line=c.gateway_max_request_line, max_headers=c.gateway_max_headers,
            max_header_size=c.gateway_max_header_size, max_body_size=c.gateway_max_body_size,
            header_timeout=c.gateway_header_timeout, body_timeout=c.gateway_body_timeout,
            keepalive_timeout=c.gateway_keepalive_timeout,
            response_timeout=c.gateway_response_timeout, send_timeout=c.gateway_send_timeout,
            append_forwarded=c.gateway_forwarded_headers == "append", proto=self.proto,
            listen_host=self.listen_host)

    async def start(self) -> None:
        """Open the store, start (or restore) the app's revision, then listen.

        Raises DeployError when the first revision's workers never become ready."""
        self.loop = asyncio.get_running_loop()
        c = self.config
        ctl = self.ctl
        for private in (c.state_dir, c.state_dir / "logs", c.state_dir / "releases"):
            private.mkdir(parents=True, exist_ok=True, mode=0o700)
        inherit = handover.inherited()
        self._lock_fd = inherit["lock_fd"] if inherit is not None else \
            handover.lock_state_dir(c.state_dir)
        if c.gateway_access_log != "off":
            ctl.router.access_log = AccessLog(c.gateway_access_log,
                                              c.gateway_access_log_format, c.state_dir)
        ctl.use_keys(Keys.load_or_create(c.state_dir / "secret.json"))
        ctl.store = open_store(c.state_dir / "state.db")
        await ctl.store.open()
        if inherit is not None:
            await ctl.supervisor.guard.adopt(inherit["guard_pid"], inherit["guard_fd"])
        else:
            await ctl.supervisor.guard.start()
        await ctl.persist.restore(inherit)
        if ctl.revs.active is None:
            await ctl.revs.start_first()
        await ctl.save_revisions()
        host, port = c.gateway_listen
        if inherit is not None:  # the listening socket the previous image kept open
            sock = socket.socket(fileno=inherit["listen_fd"])
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        self.bound = sock.getsockname()[:2]
        self.listen_host = f"{host}:{self.bound[1]}".encode()
        ssl_ctx = None
        if c.gateway_tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(c.base_dir / c.gateway_tls_cert, c.base_dir / c.gateway_tls_key)
            self.proto = b"https"
            ctl.router.cookie_attrs += b"; Secure"
        router = ctl.router
        plane = self.plane = Plane(self._limits(), router, router, router, router)
        ctl.connections = plane.connections
        self.server = await self.loop.create_server(lambda: ClientConnection(plane), sock=sock,
                                                    backlog=4096, ssl=ssl_ctx)
        if c.gateway_redirect_listen is not None:
            rhost, rport = c.gateway_redirect_listen
            self.redirect_server = await self.loop.create_server(
                lambda: RedirectToHttps(self.bound[1]), rhost, rport, reuse_address=True)
        ctl.schedule_reload = self.schedule_reload
        ctl.add_jobs()
        ctl.ticker.start()
        token, created = load_or_create_token(c.state_dir)
        self.admin = AdminServer(ctl, token)
        await self.admin.start(*c.gateway_admin_listen)
        admin_url = f"http://{c.gateway_admin_listen[0]}:{self.admin.bound[1]}/"
        url_fd = os.open(c.state_dir / "admin.url", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(url_fd, "w") as f:
            f.write(admin_url + "\n")
        # Where the token is, never the token itself: service logs keep standard error.
        print(f"holdover: admin {admin_url} (token in {c.state_dir / 'admin.token'})"
              + ("; a new token was written there" if created else ""), file=sys.stderr,
              flush=True)
        active = ctl.revs.active
        log.info("listening on http://%s:%d/ (revision %s, %d workers, mode %s)", host,
                 self.bound[1], active.id if active else "-",
                 len(active.workers) if active else 0, c.app_mode)

    # -- stop -----------------------------------------------------------------------

    def _set_closing(self) -> None:
        self.ctl.start_closing()
        if self.plane is not None:
            self.plane.closing = True

    async def shutdown(self) -> None:
        """Stop accepting, let work finish up to shutdown_timeout, then stop workers."""
        self._set_closing()
        ctl = self.ctl
        timeout = self.config.gateway_shutdown_timeout
        if self.server is not None:
            log.info("shutting down: waiting up to %.0fs for %d connection(s)", timeout,
                     len(ctl.connections))
            await self.drain_connections(timeout)
        ctl.ticker.stop()
        if self.admin is not None:
            await self.admin.stop()
        ctl.router.close_pools()
        await ctl.revs.stop_all()
        await ctl.supervisor.guard.close()
        if ctl.store is not None:
            with contextlib.suppress(StoreError):
                await ctl.persist.flush_pins()
                await ctl.store.close()
        if ctl.router.access_log is not None:
            ctl.router.access_log.close()
        await ctl.tasks.cancel_all()
        log.info("stopped")

    async def drain_connections(self, timeout: float) -> None:
        """Stop accepting; wait for in-flight work to finish; cut what is left."""
        self._set_closing()
        if self.server is not None:
            self.server.close()
        if self.redirect_server is not None:
            self.redirect_server.close()
        conns = self.ctl.connections
        for conn in list(conns):
            conn.sweep(monotonic())  # closes idle keep-alive connections now
        deadline = monotonic() + timeout
        while conns and monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(conns):
            conn.transport.abort()
            if conn.tunnel is not None:
                conn.tunnel.abort()

    # -- reload -----------------------------------------------------------------------

    def schedule_reload(self) -> None:
        """SIGHUP or the admin ``reload`` command: re-execute (see ``reload``)."""
        if not self.ctl.closing and not self._reloading:
            self.ctl.tasks.spawn(self.reload(), "reload")

    async def reload(self) -> None:
        """Replace this gateway's program image without stopping workers or sessions."""
        if self.ctl.closing or self.server is None:
            return
        if self.ctl.revs._busy is not None:
            log.error("not reloading: %s is in progress", self.ctl.revs._busy)
            return
        self._reloading = True
        log.info("reloading: finishing in-flight requests, then re-executing")
        listen_fd = os.dup(self.server.sockets[0].fileno())  # keeps the backlog open

        async def stop_serving() -> None:
            await self.drain_connections(self.config.gateway_shutdown_timeout)
            if self.admin is not None:
                await self.admin.stop()
        await handover.reexec(self.ctl, listen_fd, self._lock_fd, stop_serving)

    # -- the whole life -------------------------------------------------------------

    async def run(self, on_started: Callable[[], None] | None = None) -> int:
        """The whole life of ``holdover run``; returns the process exit code.

        ``on_started`` runs once the gateway serves (the demo prints its banner then)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.schedule_reload)
        try:
            try:
                await self.start()
            except DeployError as exc:
                log.error("%s; last lines of its log:\n%s", exc, exc.log_tail)
                await self.shutdown()
                return 1
            except (StoreError, ValueError) as exc:
                log.error("%s", exc)
                await self.shutdown()
                return 1
            except OSError as exc:
                log.error("cannot listen on %s: %s", self.config.gateway_listen, exc)
                await self.shutdown()
                return 1
            if on_started is not None:
                on_started()
            print(f"holdover: serving {self.proto.decode()}://{self.listen_host.decode()}/",
                  file=sys.stderr, flush=True)
            await stop.wait()
            # A second signal during shutdown stops at once.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._hard_stop)
            await self.shutdown()
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    def _hard_stop(self) -> None:
        log.warning("second signal: stopping now")
        self.ctl.supervisor.kill_all()
        sys.exit(1)
