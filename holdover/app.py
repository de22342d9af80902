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
import dataclasses
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from time import monotonic
from typing import Any

from . import config
from .accesslog import AccessLog
from .admin.server import AdminServer, load_or_create_token
from .config import Config
from .control import handover
from .control.facade import Control
from .control.peers import Peers
from .control.planes import PlaneFailed, PlaneSet, bind_group
from .control.revisions import DeployError
from .control.shared import PlanesRouter, SharedTable
from .core.affinity import Keys
from .core.errors import Refused
from .core.peers import ClusterSecret, advertised_host
from .proxy.heap import keep_freed_memory
from .proxy.peer import PeerConnection
from .proxy.ports import Limits, Plane
from .proxy.redirect import RedirectToHttps
from .proxy.server import ClientConnection
from .state import SharedStore, StoreError, open_store
from .state.url import is_redis_url

log = logging.getLogger("holdover.gateway")


class ListenError(OSError):
    """A listener could not be bound; the message names the setting and the address."""


def _addr(address: Any) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _moved(sock: socket.socket, address: tuple[str, int] | None) -> bool:
    """Whether the configured ``address`` is not where ``sock`` listens (port 0: any)."""
    if address is None:
        return True
    host, port = sock.getsockname()[:2]
    if address[1] != 0 and address[1] != port:
        return True
    if address[0] == host:
        return False
    try:  # a name (localhost) is where it resolves to
        found = {a[4][0] for a in socket.getaddrinfo(address[0] or None, port,
                                                      type=socket.SOCK_STREAM)}
    except OSError:
        return True
    return host not in found


class Gateway:
    """One running gateway: listeners, the control plane, the data plane, signals."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.processes = config.gateway_processes
        self.planes: PlaneSet | None = None
        if self.processes > 1:
            # Several data-plane processes: this one routes no request, it keeps the one
            # truth they share (holdover/control/planes.py).
            self.ctl = Control(config, router=PlanesRouter,
                               sessions=SharedTable(limit=config.app_max_sessions))
            self.planes = self.ctl.planes = PlaneSet(self.ctl, self.processes)
        else:
            self.ctl = Control(config)
        self.plane: Plane | None = None
        self.server: asyncio.AbstractServer | None = None
        self._listen_socks: list[socket.socket] = []  # several with processes > 1
        self._more_servers: list[asyncio.AbstractServer] = []
        self.redirect_server: asyncio.AbstractServer | None = None
        self.admin: AdminServer | None = None
        self.bound: tuple[str, int] | None = None
        self.proto = b"http"
        self.listen_host = b""
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._lock_fd = -1
        self._admin_sock: socket.socket | None = None
        self._redirect_sock: socket.socket | None = None
        self._peer_sock: socket.socket | None = None  # a cluster node's peer listener
        self.peer_plane: Plane | None = None
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
            min_body_rate=c.gateway_min_body_rate,
            append_forwarded=c.gateway_forwarded_headers == "append", proto=self.proto,
            listen_host=self.listen_host, tls=self.proto == b"https",
            trusted=tuple(ipaddress.ip_network(n, strict=False)
                          for n in c.gateway_trusted_proxies))

    def _peer_limits(self) -> Limits:
        """The public limits, for what another node passes on: the same request may
        arrive with the sending node's four forwarding lines (their size not counted,
        proxy/peer.py; they may repeat the Host twice) and a Host it added to an HTTP/1.0
        request."""
        lim = self._limits()
        return dataclasses.replace(
            lim, tls=False, trusted=(), append_forwarded=False, max_headers=lim.max_headers + 5,
            max_head_bytes=3 * lim.max_header_size + lim.max_request_line + 4096)

    def _bind(self, key: str, address: tuple[str, int], inherited: int | None
              ) -> socket.socket:
        """The listening socket for ``[gateway] key``: inherited across a reload, or bound.

        A taken or forbidden address fails here, before any worker starts, with a
        message naming the setting, the file and the address."""
        if inherited is not None:
            return socket.socket(fileno=inherited)
        host, port = address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(4096)
        except OSError as exc:
            sock.close()
            where = self.config.where("gateway", key)
            raise ListenError(f"cannot listen on {host}:{port} ({where}): "
                              f"{exc.strerror or exc}") from None
        return sock

    async def start(self) -> None:
        """Bind every listener, open the store, start (or restore) the app, then serve.

        Raises DeployError when the first revision's workers never become ready, and
        ListenError (before any worker starts) when a listener cannot be bound."""
        self.loop = asyncio.get_running_loop()
        c = self.config
        ctl = self.ctl
        for private in (c.state_dir, c.state_dir / "logs", c.state_dir / "releases"):
            private.mkdir(parents=True, exist_ok=True, mode=0o700)
        inherit = handover.inherited() or {}
        self._lock_fd = inherit["lock_fd"] if inherit else handover.lock_state_dir(c.state_dir)
        socks = self._listen_socks = self._bind_public(inherit)
        sock = socks[0]
        self._admin_sock = self._bind("admin_listen", c.gateway_admin_listen,
                                      inherit.get("admin_fd"))
        if c.gateway_redirect_listen is not None:
            self._redirect_sock = self._bind("redirect_listen", c.gateway_redirect_listen,
                                             inherit.get("redirect_fd"))
        if c.gateway_access_log != "off" and self.planes is None:
            ctl.router.access_log = AccessLog(c.gateway_access_log,
                                              c.gateway_access_log_format, c.state_dir)
        shared = is_redis_url(c.gateway_store)
        if shared:
            self._join_keys(inherit)
        else:
            ctl.use_keys(Keys.load_or_create(c.state_dir / "secret.json"))
        ctl.store = open_store(c.gateway_store or c.state_dir / "state.db",
                               base_dir=c.base_dir, node=c.node_name if shared else "")
        await ctl.store.open()
        if c.gateway_store and isinstance(ctl.store, SharedStore):
            await ctl.claim_node(self.node_info)
        if inherit:
            await ctl.supervisor.guard.adopt(inherit["guard_pid"], inherit["guard_fd"])
        else:
            await ctl.supervisor.guard.start()
        await ctl.persist.restore(inherit or None)
        if ctl.revs.active is None:
            await ctl.revs.start_first()
        await ctl.save_revisions()
        host = c.gateway_listen[0]
        self.bound = sock.getsockname()[:2]
        self.listen_host = f"{host}:{self.bound[1]}".encode()
        ssl_ctx = None
        if c.gateway_tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(c.base_dir / c.gateway_tls_cert, c.base_dir / c.gateway_tls_key)
            self.proto = b"https"
        router = ctl.router
        if self.planes is not None:
            await self._start_planes(socks)
        else:
            plane = self.plane = Plane(self._limits(), router, router, router, router)
            ctl.connections = plane.connections
            self.server = await self.loop.create_server(lambda: ClientConnection(plane),
                                                        sock=sock, backlog=4096, ssl=ssl_ctx)
            for more in socks[1:]:  # handed over by a gateway that ran several processes
                self._more_servers.append(await self.loop.create_server(
                    lambda: ClientConnection(plane), sock=more, backlog=4096, ssl=ssl_ctx))
            if self._peer_sock is not None and ctl.peers is not None:
                peer_plane = self.peer_plane = Plane(self._peer_limits(), router, router,
                                                     router, router)
                peer_plane.from_peers = True
                peer_plane.connections = plane.connections  # swept and drained as one
                auth = ctl.peers.auth
                self._more_servers.append(await self.loop.create_server(
                    lambda: PeerConnection(peer_plane, auth), sock=self._peer_sock,
                    backlog=4096))
        if self._redirect_sock is not None:
            self.redirect_server = await self.loop.create_server(
                lambda: RedirectToHttps(self.bound[1]), sock=self._redirect_sock)
        ctl.schedule_reload = self.schedule_reload
        ctl.check_reload = self.check_reload
        ctl.add_jobs()
        ctl.ticker.start()
        token, created = load_or_create_token(c.state_dir)
        self.admin = AdminServer(ctl, token)
        await self.admin.start_on(self._admin_sock)
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

    def _bind_public(self, inherit: dict) -> list[socket.socket]:
        """The public listening sockets: inherited across a reload, or bound now.

        One socket for one process; with processes > 1 one per data-plane process, all
        on the same port with SO_REUSEPORT, which spreads connections evenly over them
        (docs/design.md, "Several processes").  This process keeps them all open, so a
        plane that is replaced or a reload never closes one."""
        c = self.config
        if inherit.get("listen_fd") is not None:
            socks = [socket.socket(fileno=fd)
                     for fd in [inherit["listen_fd"], *inherit.get("listen_more", [])]]
            more = self.processes - len(socks)
            if more > 0 and socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
                # More processes than before: each gets a socket of the group too.  (One
                # socket bound by a single process cannot take company: they share it.)
                host, port = socks[0].getsockname()[:2]
                with contextlib.suppress(OSError):
                    socks += bind_group(host, port, more)
            return socks
        if self.planes is None:
            return [self._bind("listen", c.gateway_listen, None)]
        host, port = c.gateway_listen
        if port:
            # Fails on anything already there, another gateway's SO_REUSEPORT group too.
            self._bind("listen", c.gateway_listen, None).close()
        try:
            return bind_group(host, port, self.processes)
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port} "
                              f"({c.where('gateway', 'listen')}): {exc.strerror or exc}"
                              ) from None

    async def _start_planes(self, socks: list[socket.socket]) -> None:
        """processes > 1: the data-plane processes accept on ``socks``, this one does not."""
        c = self.config
        planes = self.planes
        assert planes is not None
        log_target = c.gateway_access_log
        if log_target not in ("-", "off"):
            log_target = str(c.state_dir / log_target)
        tls = (str(c.base_dir / c.gateway_tls_cert), str(c.base_dir / c.gateway_tls_key)) \
            if c.gateway_tls_cert else None
        planes.configure(socks, self._limits(), self.ctl.keys, tls, log_target,
                         self.ctl.router.cookie_attrs)
        try:
            await planes.start()
        except PlaneFailed as exc:
            raise ListenError(str(exc)) from None

    def _join_keys(self, inherit: dict) -> None:
        """A cluster node: the shared secret's keys, and the peer listener bound.

        The secret file is created (0600) on the first node; the others need a copy."""
        c = self.config
        path = c.cluster_secret_path
        secret = ClusterSecret.load_or_create(path)
        if secret.created:
            log.warning("created the cluster secret %s (there was none): copy it (mode "
                        "0600) to every other node of this cluster before starting them; "
                        "if other nodes already run, this node needs a copy of theirs "
                        "instead ([gateway] cluster_secret names where each node reads it)",
                        path)
        self.ctl.use_keys(secret.keys)
        peers = self.ctl.peers = Peers(self.ctl, secret, c.node_name)
        host = advertised_host(c.gateway_advertise or c.gateway_listen[0])
        address = c.gateway_peer_listen
        if address is None:
            try:
                ipaddress.ip_address(host)
                address = (host, 0)
            except ValueError:  # a host name is announced; bind where the proxy listens
                address = (c.gateway_listen[0], 0)
        sock = self._peer_sock = self._bind("peer_listen", address, inherit.get("peer_fd"))
        bound_host, port = sock.getsockname()[:2]
        if c.gateway_peer_listen is not None and bound_host not in ("0.0.0.0", "::"):
            host = bound_host
        peers.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def node_info(self) -> dict[str, object]:
        """What this node's heartbeat tells others: where it is, since when, and a summary
        of its revisions, workers and sessions (the cluster's status, control/clusterview.py)."""
        c = self.config
        ops = self.ctl.clusterops
        info: dict[str, object] = {
            "advertise": c.gateway_advertise or c.gateway_listen[0], "pid": os.getpid(),
            "listen": f"{c.gateway_listen[0]}:{c.gateway_listen[1]}",
            "summary": ops.view.summary() if ops is not None else {}}
        if self.ctl.peers is not None:
            info.update(self.ctl.peers.info())
        return info

    # -- stop -----------------------------------------------------------------------

    def _set_closing(self) -> None:
        self.ctl.start_closing()
        if self.plane is not None:
            self.plane.closing = True
        if self.peer_plane is not None:
            self.peer_plane.closing = True

    async def shutdown(self) -> None:
        """Stop accepting, let work finish up to shutdown_timeout, then stop workers."""
        self._set_closing()
        ctl = self.ctl
        if ctl.peers is not None:  # first: no other node may count this one as dead
            await ctl.peers.leaving()
        timeout = self.config.gateway_shutdown_timeout
        if self.server is not None or self.planes is not None:
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
                await ctl.forget_node()
                await ctl.store.close()
        if ctl.router.access_log is not None:
            ctl.router.access_log.close()
        await ctl.tasks.cancel_all()
        log.info("stopped")

    async def drain_connections(self, timeout: float, cut_streams: bool = False) -> None:
        """Stop accepting; wait for in-flight work to finish; cut what is left.

        ``cut_streams`` (a reload): WebSockets and other tunnels are closed at once —
        their clients reconnect to the same worker — instead of being waited for."""
        self._set_closing()
        if self.server is not None:
            self.server.close()
        for server in self._more_servers:
            server.close()
        if self.redirect_server is not None:
            self.redirect_server.close()
        if self.planes is not None:
            await self.planes.close(timeout)
            return
        await asyncio.sleep(0)  # a connection accepted just before is made (counted) now
        conns = self.ctl.connections
        for conn in list(conns):
            if cut_streams and conn.tunnel is not None:
                conn.tunnel.abort()
                conn.transport.abort()
                continue
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
            self._reloading = True
            self.ctl.tasks.spawn(self.reload(), "reload")

    def check_reload(self) -> config.Config:
        """Refuse (Refused) a reload the new program image would not survive; else the
        configuration it will run with.

        The configuration file is read again first: a re-executed gateway that refused
        it would exit and take every worker and session with it.  So is a listener the
        new configuration moves: the new image could not bind it."""
        try:
            new = config.load(self.config.path)
        except config.ConfigError as exc:
            raise Refused(f"not reloading: {exc}; still serving with the configuration "
                          f"it started with", 400) from None
        socks = self._listen_socks
        if socks and _moved(socks[0], new.gateway_listen):
            raise Refused(f"not reloading: {new.where('gateway', 'listen')} moves the public "
                          f"listener to {_addr(new.gateway_listen)}; it is handed over as it "
                          f"is, so moving it needs a restart (still serving on "
                          f"{_addr(socks[0].getsockname())})", 400)
        peer = self._peer_sock
        if peer is not None and new.gateway_peer_listen is not None and \
                _moved(peer, new.gateway_peer_listen):
            raise Refused(f"not reloading: {new.where('gateway', 'peer_listen')} moves the "
                          f"peer listener to {_addr(new.gateway_peer_listen)}; it is handed "
                          f"over as it is, so moving it needs a restart", 400)
        for key, sock, address in (
                ("admin_listen", self._admin_sock, new.gateway_admin_listen),
                ("redirect_listen", self._redirect_sock, new.gateway_redirect_listen)):
            if address is not None and (sock is None or _moved(sock, address)) and address[1]:
                try:
                    self._bind(key, address, None).close()
                except ListenError as exc:
                    raise Refused(f"not reloading: {exc}", 400) from None
        return new

    async def reload(self) -> None:
        """Replace this gateway's program image without stopping workers or sessions."""
        ctl = self.ctl
        try:
            if ctl.closing or not self._listen_socks or (
                    self.server is None and self.planes is None):
                return
            try:
                new = self.check_reload()
            except Refused as exc:
                log.error("%s", exc)
                await ctl.record_event("reload-refused", str(exc))
                return
            if ctl.revs._busy is not None:
                log.info("reload waits until %s has finished", ctl.revs._busy)
                while ctl.revs._busy is not None and not ctl.closing:
                    await asyncio.sleep(0.1)
                if ctl.closing:
                    return
            log.info("reloading: finishing in-flight requests, then re-executing")
            self._set_closing()  # from here no deploy-side action starts
            await ctl.record_event("reloading", "gateway re-executes itself; workers and "
                                   "sessions are kept")
            socks = self._listen_socks  # their backlogs stay open
            fds: dict[str, Any] = {"listen_fd": os.dup(socks[0].fileno())}
            if len(socks) > 1:
                fds["listen_more"] = [os.dup(s.fileno()) for s in socks[1:]]
            # A listener the new configuration moves or drops is not handed over (the
            # new image binds the new address; check_reload made sure it can).
            if self._admin_sock is not None and not _moved(self._admin_sock,
                                                           new.gateway_admin_listen):
                fds["admin_fd"] = os.dup(self._admin_sock.fileno())
            if self._redirect_sock is not None and new.gateway_redirect_listen is not None \
                    and not _moved(self._redirect_sock, new.gateway_redirect_listen):
                fds["redirect_fd"] = os.dup(self._redirect_sock.fileno())
            if self._peer_sock is not None:
                fds["peer_fd"] = os.dup(self._peer_sock.fileno())

            async def stop_serving() -> None:
                await self.drain_connections(self.config.gateway_shutdown_timeout,
                                             cut_streams=True)
                if self.admin is not None:
                    await self.admin.stop()
            await handover.reexec(ctl, fds, self._lock_fd, stop_serving)
        finally:
            self._reloading = False

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
            except ListenError as exc:
                log.error("%s", exc)
                await self.shutdown()
                return 1
            except OSError as exc:
                log.error("cannot start: %s", exc)
                await self.shutdown()
                return 1
            self.ctl.ready = True
            # Everything built so far lives as long as the gateway: out of the collector's
            # sight, so that its full passes stay short on the hot path.
            gc.collect()
            gc.freeze()
            keep_freed_memory()  # buffers freed are kept for the next reads (proxy/heap.py)
            if on_started is not None:
                on_started()
            print(f"holdover: serving {self.proto.decode()}://{self.listen_host.decode()}/",
                  file=sys.stderr, flush=True)
            await stop.wait()
            # A second signal during shutdown stops at once.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._hard_stop)
            self.ctl.ready = False
            self.ctl.stopping = True
            delay = self.config.gateway_shutdown_delay
            if delay:
                # Unready first, still serving: the balancer in front takes us out.
                log.info("shutting down in %.0fs: /readyz answers 503 meanwhile", delay)
                await asyncio.sleep(delay)
            await self.shutdown()
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    def _hard_stop(self) -> None:
        log.warning("second signal: stopping now")
        if self.planes is not None:
            self.planes.kill_all()
        self.ctl.supervisor.kill_all()
        sys.exit(1)
