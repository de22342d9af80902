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
import fcntl
import json
import logging
import os
import random
import signal
import socket
import ssl
import sys
import time
from bisect import bisect_left
from collections import deque
from pathlib import Path
from time import monotonic
from typing import Any

from .accesslog import AccessLog
from .admin.server import AdminServer, load_or_create_token
from .config import Config
from .proxy.redirect import RedirectToHttps
from .proxy.server import ClientConnection, Exchange
from .proxy.upstream import UpstreamConnection, UpstreamPool
from .revisions import DeployError, RevisionManager
from .routing.affinity import PIN_COOKIE, Keys, cookie_value, parse_set_cookie
from .routing.balancer import Balancer, WaitQueue
from .routing.sessions import Pin, SessionTable
from .state import PinRecord, RevisionRecord, StateStore, StoreError, open_store
from .supervisor.supervisor import Revision, RevisionFailed, Supervisor
from .supervisor.worker import LATENCY_BOUNDS, Adoption, Worker

log = logging.getLogger("holdover.gateway")

INHERIT_ENV = "HOLDOVER_INHERIT"  # what a re-exec hands to the new image (see reload)

# Worker states in which the process that held a session's memory no longer runs.
_PROCESS_GONE = frozenset({"starting", "backoff", "unhealthy", "restarting", "stopped",
                           "failed"})


class Gateway:
    """One running gateway: listener, connections, routing, sessions, revisions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        c = config
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self.balancer = Balancer()  # where new sessions (stateless: all requests) go
        self.canary_balancer = Balancer()
        self.canary_percent = 0.0
        self.queue = WaitQueue(c.gateway_queue_size)
        self.supervisor = Supervisor(config, self._worker_state)
        self.revs = RevisionManager(self)
        self.rolling: Revision | None = None  # a stateless rolling deploy in progress
        self.workers_by_id: dict[str, Worker] = {}
        self.sessions = SessionTable()
        self.sessions_lost = 0
        self.session_history: deque[tuple[float, dict[str, int]]] = deque(maxlen=720)
        self.sessions_mode = c.app_mode == "sessions"
        self.app_cookie = c.app_session_cookie.encode() or None
        # Without an app cookie, each client is pinned by holdover's own cookie — unless
        # configured off, or the app speaks the explicit session protocol.
        self.pin_clients = self.app_cookie is None and c.app_pin_clients
        self.protocol_seen = False
        self.keys: Keys = None  # type: ignore[assignment]  # loaded at start
        self.store: StateStore = None  # type: ignore[assignment]
        self.latest_header = b""
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
        self.idle_timeout = c.app_session_idle_timeout
        self.append_forwarded = c.gateway_forwarded_headers == "append"
        self.retry_safe = True
        self.proto = b"http"
        self.cookie_attrs = b"; Path=/; HttpOnly; SameSite=Lax"
        host, port = c.gateway_listen
        self.listen_host = f"{host}:{port}".encode()
        self.access_log: AccessLog | None = None
        for private in (c.state_dir, c.state_dir / "logs", c.state_dir / "releases"):
            private.mkdir(parents=True, exist_ok=True, mode=0o700)
        if c.gateway_access_log != "off":
            self.access_log = AccessLog(c.gateway_access_log, c.gateway_access_log_format,
                                        c.state_dir)
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._flushing = False
        self.bound: tuple[str, int] | None = None
        self.admin: AdminServer | None = None
        self._lock_fd = -1
        self.redirect_server: asyncio.AbstractServer | None = None

    # -- routing ---------------------------------------------------------------------

    def _session_key(self, ex: Exchange) -> str | None:
        """The pin-table key of the session a request belongs to, if it names one.

        Sets ``ex.skey`` to the key of the app's own session cookie, which a response
        may rotate or delete."""
        cookie = ex.cookie
        conn = ex.conn
        cache = conn.cookie_cache
        if cache is not None and cache[0] == cookie:  # keep-alive clients repeat Cookie
            ex.skey = cache[2]
            return cache[1]
        key = skey = None
        value = cookie_value(cookie, PIN_COOKIE)
        if value is not None:
            key = self.keys.verify(value)  # forged, foreign or stale: no pin (rule 4)
        if self.app_cookie is not None:
            value = cookie_value(cookie, self.app_cookie)
            if value:
                skey = self.keys.session_key(b"app", value)
                if key is None:
                    key = skey
        conn.cookie_cache = (cookie, key, skey)
        ex.skey = skey
        return key

    def route(self, ex: Exchange) -> None:
        """Send ``ex`` to a worker now, or park it until one is ready (then 503)."""
        if self.sessions_mode and ex.cookie is not None:
            key = self._session_key(ex)
            if key is not None:
                pin = self.sessions.pins.get(key)
                if pin is not None:
                    w = self.workers_by_id.get(pin.worker)
                    if w is not None and w.incarnation == pin.incarnation and \
                            w.state == "ready":
                        # SPEC rule 1: to its worker, whatever its revision's state.
                        ex.pin = pin
                        pin.active += 1
                        pin.last_seen = monotonic()
                        self.sessions.dirty.add(key)
                        self.dispatch(ex, w)
                        return
                    self._lose(pin, "its worker is gone")
        w = None
        if self.canary_percent and random.random() * 100 < self.canary_percent:
            w = self.canary_balancer.pick()
        if w is None:
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
        if ex.pin is not None:  # routed again, it may be pinned again
            ex.pin.active -= 1
            ex.pin = None
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
        self.dispatch(ex, nxt)
        return True

    def release_upstream(self, up: UpstreamConnection, reusable: bool) -> None:
        w = up.pool.worker
        if reusable and not self.closing and w.pool is up.pool and w.state == "ready":  # type: ignore[attr-defined]
            up.pool.put(up, monotonic())
        else:
            up.transport.close()

    def exchange_done(self, ex: Exchange, note: str | None = None) -> None:
        """Account for a finished exchange: free its worker slot, count it, log it."""
        w = ex.worker
        duration = monotonic() - ex.t0
        if w is not None:
            w.inflight -= 1
            w.requests += 1
            status = ex.status
            if status >= 500:
                w.errors += 1
            w.status_classes[status // 100 if 0 < status < 600 else 0] += 1
            w.bytes_out += ex.resp_bytes
            w.latency_counts[bisect_left(LATENCY_BOUNDS, duration)] += 1
            w.latency_sum += duration
            ex.worker = None
            if self.queue._q:
                self.queue.release(self.balancer)
        pin = ex.pin
        if pin is not None:
            ex.pin = None
            pin.active -= 1
            pin.last_seen = monotonic()
        if self.access_log is not None:
            self.access_log.log(ex.conn.client_ip, ex.method, ex.url, ex.status, ex.resp_bytes,
                                duration, w.id if w is not None else "-",
                                w.spec.revision if w is not None else "-", note)

    # -- sessions ---------------------------------------------------------------------

    def _pin_here(self, ex: Exchange, key: str, expires_at: float | None = None) -> Pin | None:
        w = ex.worker
        if w is None:
            return None
        pin = self.sessions.pin(key, w.id, w.incarnation, w.spec.revision, monotonic(),
                                expires_at)
        return pin

    def on_set_cookie(self, ex: Exchange, value: bytes) -> None:
        """The worker set a cookie: its session cookie pins or ends a session (rule 3)."""
        name = self.app_cookie
        if name is None or not self.sessions_mode or not value.startswith(name + b"="):
            return
        _, val, deleted = parse_set_cookie(value)
        old = ex.skey
        if deleted:
            if old is not None and self.sessions.end(old) is not None:
                ex.session_event = b"end"
            return
        key = self.keys.session_key(b"app", val)
        if key != old and old is not None:
            self.sessions.end(old)  # the app rotated its session id (e.g. at login)
        if key != old or self.sessions.get(key) is None:
            self._pin_here(ex, key)
            ex.session_event = b"new"

    def on_session_header(self, ex: Exchange, value: bytes) -> None:
        """The explicit session protocol: ``X-Holdover-Session: <id>; max-age=N | end``.

        A bare ``end`` ends the session the request was pinned to."""
        if not self.sessions_mode:
            return
        self.protocol_seen = True  # the app tells its sessions: stop pinning anonymous clients
        sid, _, params = value.partition(b";")
        sid = sid.strip()
        params = params.strip().lower()
        if not sid or (sid.lower() == b"end" and not params):
            if ex.pin is not None:
                self.sessions.end(ex.pin.key)
                ex.session_event = b"end-pin"
            return
        key = self.keys.session_key(b"sp", sid)
        if params.startswith(b"end"):
            self.sessions.end(key)
            ex.session_event = b"end-pin"
            return
        expires = None
        if params.startswith(b"max-age="):
            try:
                expires = monotonic() + max(0.0, float(params[8:].split(b";")[0]))
            except ValueError:
                expires = None
        if ex.pin is not None and ex.pin.key != key:
            self.sessions.end(ex.pin.key)  # a new id for this client replaces the old one
        self._pin_here(ex, key, expires)
        ex.session_event = b"pin:" + key.encode()

    def response_extra_headers(self, ex: Exchange) -> bytes | None:
        """Headers the gateway adds: its own affinity cookie, and which revision is newest."""
        if not self.sessions_mode:
            return None
        out = b""
        event = ex.session_event
        if event is not None:
            if event.startswith(b"pin:"):
                out = (b"Set-Cookie: " + PIN_COOKIE + b"=" + self.keys.sign(event[4:].decode())
                       + self.cookie_attrs + b"\r\n")
            elif event == b"end-pin":
                out = b"Set-Cookie: " + PIN_COOKIE + b"=; Max-Age=0" + self.cookie_attrs + b"\r\n"
        elif self.pin_clients and not self.protocol_seen and ex.pin is None \
                and ex.worker is not None and ex.status < 500:
            # No app cookie configured: holdover pins each client with its own cookie.
            key = self.keys.new_key()
            if self._pin_here(ex, key) is not None:
                out = (b"Set-Cookie: " + PIN_COOKIE + b"=" + self.keys.sign(key)
                       + self.cookie_attrs + b"\r\n")
        if ex.pin is not None or out:
            w = ex.worker
            if w is not None:
                out += b"X-Holdover-Revision: " + w.spec.revision.encode() + b"\r\n"
            out += self.latest_header
        return out or None

    def _lose(self, pin: Pin, why: str) -> None:
        """A pinned session's memory is gone (SPEC rule 5): count it and say so."""
        if self.sessions.end(pin.key) is not None:
            self.sessions_lost += 1
            log.warning("session on worker %s (revision %s) lost: %s", pin.worker,
                        pin.revision, why)

    def end_sessions_of(self, revision: str, reason: str) -> int:
        """End every session of a revision (max_drain); they count as lost."""
        pins = self.sessions.of_revision(revision)
        for p in pins:
            self.sessions.end(p.key)
        self.sessions_lost += len(pins)
        if pins:
            self.loop.create_task(self.record_event(
                "sessions-lost", f"{len(pins)} session(s) of revision {revision} ended "
                f"({reason})", revision, data={"count": len(pins), "reason": reason}))
        return len(pins)

    # -- workers ---------------------------------------------------------------------

    def _worker_state(self, w: Worker) -> None:
        if w.pool is None or w.pool.port != w.port:
            if w.pool is not None:
                w.pool.close()
            w.pool = UpstreamPool(w, w.spec.host, w.port, self.config.gateway_upstream_keepalive)
        if not w.routable and w.pool is not None:
            w.pool.close()
        if w.state in _PROCESS_GONE and not self.closing and self.sessions.per_worker.get(w.id):
            # The process that held these sessions' memory is gone (SPEC rule 5).
            pins = self.sessions.of_worker(w.id)
            for p in pins:
                self.sessions.end(p.key)
            self.sessions_lost += len(pins)
            msg = f"worker {w.id} {w.state}: {len(pins)} pinned session(s) lost"
            log.warning(msg)
            if self.store is not None:
                self.loop.create_task(self.record_event(
                    "sessions-lost", msg, w.spec.revision, w.id, {"count": len(pins)}))
        self.workers_by_id[w.id] = w
        if w.routable and self.queue._q:
            self.queue.release(self.balancer)

    def routing_changed(self) -> None:
        """Rebuild what the hot path reads after a revision or worker-set change."""
        rm = self.revs
        stopping = rm._stopping
        workers = []
        if rm.active is not None:
            workers += [w for w in rm.active.running() if w not in stopping]
        if self.rolling is not None:
            workers += [w for w in self.rolling.running() if w not in stopping]
        self.balancer.workers = workers
        if rm.canary is not None:
            self.canary_balancer.workers = rm.canary.running()
            self.canary_percent = rm.canary.canary_percent
        else:
            self.canary_balancer.workers = []
            self.canary_percent = 0.0
        self.workers_by_id = {w.id: w for r in rm.revisions.values() for w in r.workers
                              if w.state not in ("stopped", "failed")}
        newest = rm.active.id if rm.active is not None else ""
        self.latest_header = b"X-Holdover-Latest: " + newest.encode() + b"\r\n"
        if self.queue._q:
            self.queue.release(self.balancer)

    def worker_status(self, w: Worker) -> dict[str, Any]:
        return {"id": w.id, "pid": w.pid, "port": w.port, "state": w.state,
                "inflight": w.inflight, "restarts": w.restarts, "standby": w.standby,
                "disabled": w.disabled, "requests": w.requests, "errors": w.errors,
                "sessions": self.sessions.per_worker.get(w.id, 0),
                "uptime": round(monotonic() - w.ready_at, 1) if w.ready_at and
                w.state == "ready" else 0.0, "crash_loop": w.crash_loop}

    # -- state -----------------------------------------------------------------------

    async def record_event(self, kind: str, message: str, revision: str | None = None,
                           worker: str | None = None, data: dict | None = None) -> None:
        """An event for operators: logged, and kept in the state store."""
        log.info("%s: %s", kind, message)
        if self.store is None:
            return
        try:
            await self.store.add_event(kind, message, revision=revision, worker=worker,
                                       data=data)
        except StoreError as exc:
            log.error("cannot record event: %s", exc)

    async def save_revisions(self) -> None:
        """Write every revision's record and which one is active to the store."""
        rm = self.revs
        try:
            for rev in rm.revisions.values():
                await self.store.put_revision(RevisionRecord(
                    id=rev.id, state=rev.state, command=rev.spec.command,
                    cwd=str(rev.spec.cwd), env=dict(rev.spec.env), workers=rev.size,
                    created_at=rev.created_at, release_dir=rev.release_dir,
                    updated_at=time.time(), canary_percent=rev.canary_percent))
            await self.store.set_meta("active", rm.active.id if rm.active else "")
            await self.store.set_meta("canary", rm.canary.id if rm.canary else "")
        except StoreError as exc:
            log.error("cannot save revisions (serving goes on from memory): %s", exc)

    async def _flush_pins(self) -> None:
        changed, removed = self.sessions.take_changes()
        if not changed and not removed:
            return
        self._flushing = True
        try:
            # The store keeps wall-clock times; the table keeps monotonic ones.
            offset = time.time() - monotonic()
            if changed:
                await self.store.put_pins([PinRecord(
                    key=p.key, worker=p.worker, incarnation=p.incarnation, revision=p.revision,
                    created_at=p.created_at + offset, last_seen=p.last_seen + offset,
                    expires_at=p.expires_at + offset if p.expires_at is not None else None)
                    for p in changed])
            if removed:
                await self.store.delete_pins(removed)
        except StoreError as exc:
            log.error("cannot save sessions (serving goes on from memory): %s", exc)
            # Keep them for the next flush: the pins still live in memory.
            self.sessions.dirty.update(p.key for p in changed if p.key in self.sessions.pins)
            self.sessions.removed.update(k for k in removed if k not in self.sessions.pins)
        finally:
            self._flushing = False

    async def _restore(self, inherit: dict[str, Any] | None) -> None:
        """Bring back revisions and pins from the state store after a restart.

        After a re-exec (``inherit``) the workers still run: they are adopted and their
        sessions go on.  After a real restart they were stopped with the old gateway, so
        the active revision starts again and the sessions pinned to it count as lost.
        """
        records = await self.store.list_revisions()
        pins = await self.store.load_pins()
        active_id = await self.store.get_meta("active")
        canary_id = await self.store.get_meta("canary")
        rm = self.revs
        adopted: dict[str, list[tuple[str, bool, Adoption]]] = {}
        for w in (inherit or {}).get("workers", []):
            adopted.setdefault(w["revision"], []).append(
                (w["id"], w["standby"], Adoption(w["pid"], w["port"], w["incarnation"],
                                                 w["log_fd"], w["restarts"])))
        for rec in records:
            spec = self.supervisor.spec(rec.id, command=rec.command, cwd=Path(rec.cwd),
                                        env=rec.env)
            rev = self.supervisor.create_revision(spec, rec.workers, rec.created_at,
                                                  rec.release_dir)
            rev.canary_percent = rec.canary_percent
            if rec.id in adopted:
                rev.state = rec.state
                rev.drain_started = monotonic()
                await self.supervisor.adopt_workers(rev, adopted[rec.id])
                if rec.id == active_id:
                    rm.active = rev
                elif rec.id == canary_id:
                    rm.canary = rev
            else:
                rev.state = rec.state if rec.state in ("failed", "retired") else "retired"
        live = {(w.id, w.incarnation) for w in self.supervisor.all_workers() if w.state == "ready"}
        kept = [p for p in pins if (p.worker, p.incarnation) in live]
        gone = [p for p in pins if (p.worker, p.incarnation) not in live]
        offset = monotonic() - time.time()
        self.sessions.restore(Pin(p.key, p.worker, p.incarnation, p.revision,
                                  p.created_at + offset, p.last_seen + offset,
                                  p.expires_at + offset if p.expires_at else None)
                              for p in kept)
        if gone:
            # The workers that held these sessions' memory did not survive the restart.
            self.sessions_lost += len(gone)
            await self.store.delete_pins([p.key for p in gone])
            await self.record_event("sessions-lost", f"{len(gone)} session(s) from before the "
                                    f"restart lost: their worker processes were restarted",
                                    data={"count": len(gone)})
        if rm.active is not None:
            # Adopted: top up workers that were not ready at the handover.
            missing = rm.active.size - len([w for w in rm.active.running() if not w.standby])
            if missing > 0:
                await self.supervisor.start_workers(rm.active, missing)
            self.routing_changed()
            await self.record_event("reload", f"gateway re-executed: adopted "
                                    f"{sum(len(v) for v in adopted.values())} worker(s), "
                                    f"{len(kept)} session(s) kept", rm.active.id)
            return
        if active_id and active_id in rm.revisions:
            rev = rm.revisions[active_id]
            await self.record_event("restore", f"restarting revision {rev.id}", rev.id)
            rev.state = "starting"
            try:
                await rm.start_workers_of(rev)
            except RevisionFailed as exc:
                rev.state = "failed"
                await self.record_event("failed", f"revision {rev.id} did not start again "
                                        f"({exc}); starting the configured app instead",
                                        rev.id, exc.worker, {"log_tail": exc.log_tail})
                return
            rm._activate(rev)

    async def reload(self) -> None:
        """Replace this gateway's program image without stopping workers or sessions.

        The process re-executes itself (same pid, so the workers stay its children):
        new connections wait in the listening socket's backlog, in-flight requests
        finish first, WebSockets are closed (clients reconnect to the same worker), and
        the new image adopts every worker, its output pipe and the orphan guard.
        """
        if self.closing or self.server is None:
            return
        if self.revs._busy is not None:
            log.error("not reloading: %s is in progress", self.revs._busy)
            return
        log.info("reloading: finishing in-flight requests, then re-executing")
        guard_pid, guard_fd = self.supervisor.guard.handover()
        listen_fd = os.dup(self.server.sockets[0].fileno())  # keeps the backlog open
        os.set_inheritable(listen_fd, True)
        await self._drain_connections(self.config.gateway_shutdown_timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.admin is not None:
            await self.admin.stop()
        workers = []
        for w in self.supervisor.all_workers():
            if w.state == "ready" and w.output_fd() >= 0:
                fd = w.output_fd()
                os.set_inheritable(fd, True)
                workers.append({"id": w.id, "revision": w.spec.revision, "pid": w.pid,
                                "port": w.port, "incarnation": w.incarnation,
                                "standby": w.standby, "restarts": w.restarts, "log_fd": fd})
            elif w.state not in ("stopped", "failed"):
                w.kill_now()  # not ready: the new image starts a fresh one
        await self.save_revisions()
        await self._flush_pins()
        await self.store.close()
        if self.access_log is not None:
            self.access_log.close()
        os.set_inheritable(self._lock_fd, True)
        inherit = {"listen_fd": listen_fd, "guard_pid": guard_pid, "guard_fd": guard_fd,
                   "lock_fd": self._lock_fd, "workers": workers}
        env = dict(os.environ, **{INHERIT_ENV: json.dumps(inherit)})
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "holdover", *sys.argv[1:]], env)

    # -- lifecycle -------------------------------------------------------------------

    def _sweep(self) -> None:
        now = monotonic()
        self._ticks += 1
        for conn in list(self.connections):
            conn.sweep(now)
        cutoff = now - self.config.gateway_upstream_idle_timeout
        for w in self.workers_by_id.values():
            if w.pool is not None:
                w.pool.expire(cutoff)
        if self.queue._q:
            self.queue.expire(now)
        if self._ticks % 5 == 0:
            if self.sessions_mode and self.sessions.pins:
                for p in self.sessions.idle(now, self.idle_timeout):
                    self.sessions.end(p.key)  # an idle session has ended (rule 3)
            self.session_history.append((time.time(), dict(self.sessions.per_revision)))
        if not self.closing:
            self.revs.tick(now)
        if self.store is not None and not self._flushing and (
                self.sessions.dirty or self.sessions.removed):
            self.loop.create_task(self._flush_pins())
        if self.access_log is not None:
            self.access_log.flush()
        self._sweeper = self.loop.call_later(1.0 if not self.closing else 0.1, self._sweep)

    async def start(self) -> None:
        """Open the store, start (or restore) the app's revision, then listen.

        Raises DeployError when the first revision's workers never become ready."""
        self.loop = asyncio.get_running_loop()
        c = self.config
        c.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        inherit = None
        if INHERIT_ENV in os.environ:
            inherit = json.loads(os.environ.pop(INHERIT_ENV))
            self._lock_fd = inherit["lock_fd"]
        else:
            self._lock_fd = self._lock_state_dir()
        self.keys = Keys.load_or_create(c.state_dir / "secret.json")
        self.store = open_store(c.state_dir / "state.db")
        await self.store.open()
        if inherit is not None:
            await self.supervisor.guard.adopt(inherit["guard_pid"], inherit["guard_fd"])
        else:
            await self.supervisor.guard.start()
        await self._restore(inherit)
        if self.revs.active is None:
            await self.revs.start_first()
        await self.save_revisions()
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
            self.cookie_attrs += b"; Secure"
        self.server = await self.loop.create_server(lambda: ClientConnection(self), sock=sock,
                                                    backlog=4096, ssl=ssl_ctx)
        if c.gateway_redirect_listen is not None:
            rhost, rport = c.gateway_redirect_listen
            self.redirect_server = await self.loop.create_server(
                lambda: RedirectToHttps(self.bound[1]), rhost, rport, reuse_address=True)
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        token, created = load_or_create_token(c.state_dir)
        self.admin = AdminServer(self, token)
        await self.admin.start(*c.gateway_admin_listen)
        admin_url = f"http://{c.gateway_admin_listen[0]}:{self.admin.bound[1]}/"
        url_fd = os.open(c.state_dir / "admin.url", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(url_fd, "w") as f:
            f.write(admin_url + "\n")
        # Where the token is, never the token itself: service logs keep standard error.
        print(f"holdover: admin {admin_url} (token in {c.state_dir / 'admin.token'})"
              + ("; a new token was written there" if created else ""), file=sys.stderr,
              flush=True)
        active = self.revs.active
        log.info("listening on http://%s:%d/ (revision %s, %d workers, mode %s)", host,
                 self.bound[1], active.id if active else "-",
                 len(active.workers) if active else 0, c.app_mode)

    def _lock_state_dir(self) -> int:
        """One gateway per state_dir: two would fight over the same workers and pins."""
        path = self.config.state_dir / "gateway.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"another holdover gateway (pid {other}) is already running with "
                             f"state_dir {self.config.state_dir}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    async def shutdown(self) -> None:
        """Stop accepting, let work finish up to shutdown_timeout, then stop workers."""
        self.closing = True
        timeout = self.config.gateway_shutdown_timeout
        if self.server is not None:
            log.info("shutting down: waiting up to %.0fs for %d connection(s)", timeout,
                     len(self.connections))
            await self._drain_connections(timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.admin is not None:
            await self.admin.stop()
        for w in self.workers_by_id.values():
            if w.pool is not None:
                w.pool.close()
        await self.revs.stop_all()
        await self.supervisor.guard.close()
        if self.store is not None:
            with contextlib.suppress(StoreError):
                await self._flush_pins()
                await self.store.close()
        if self.access_log is not None:
            self.access_log.close()
        log.info("stopped")

    async def _drain_connections(self, timeout: float, tunnels: bool = True) -> None:
        """Stop accepting; wait for in-flight work to finish; cut what is left."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        if self.redirect_server is not None:
            self.redirect_server.close()
        for conn in list(self.connections):
            conn.sweep(monotonic())  # closes idle keep-alive connections now
        deadline = monotonic() + timeout
        while self.connections and monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
            if conn.tunnel is not None:
                conn.tunnel.abort()

    async def run(self) -> int:
        """The whole life of ``holdover run``; returns the process exit code."""
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

    def schedule_reload(self) -> None:
        """SIGHUP or the admin ``reload`` command: re-execute (see ``reload``)."""
        if not self.closing:
            self.loop.create_task(self.reload())

    def _hard_stop(self) -> None:
        log.warning("second signal: stopping now")
        self.supervisor.kill_all()
        sys.exit(1)
