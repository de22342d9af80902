"""Where a request goes, and what its response does to its session.

``Router`` implements the data plane's ports (holdover/proxy/ports.py): it routes an
exchange to a worker's endpoint (its pinned one, or a new one from the balancer), parks
it in the wait queue when none can take it, retries what no worker has seen, takes
connections back, counts finished exchanges and applies the pin policy to responses.
The routing rules it follows are docs/design.md's "Routing rules"; the decisions
themselves (which pin a request names, what a Set-Cookie or a session header does) are
core/policy.py's pure functions.

It also turns the supervisor's worker reports into routing: one ``Endpoint`` per worker,
whose ``routable`` is core.lifecycle.takes_new_sessions of the worker and its revision.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Coroutine
from itertools import islice
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..accesslog import AccessLog
from ..config import Config
from ..core import policy
from ..core.affinity import NODE_COOKIE, PIN_COOKIE, Keys, iter_cookie_values
from ..core.balancer import Balancer, WaitQueue
from ..core.lifecycle import PROCESS_GONE, WorkerState, takes_new_sessions
from ..core.sessions import Pin, SessionTable
from ..proxy.accounting import Accounting
from ..proxy.endpoint import Endpoint
from ..proxy.server import Exchange

if TYPE_CHECKING:
    from ..supervisor.supervisor import Revision
    from ..supervisor.worker import Worker

log = logging.getLogger("holdover.router")

PEER_DOWN_FOR = 2.0  # seconds a node that refused a connection gets no requests

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]
RecordEvent = Callable[..., Coroutine[Any, Any, None]]


class Router(Accounting):
    """The control side's routing and session policy, behind the proxy's ports."""

    def __init__(self, config: Config, keys: Keys, sessions: SessionTable, spawn: Spawn,
                 record_event: RecordEvent) -> None:
        c = config
        self.config = config
        self.keys = keys
        self.sessions = sessions
        self.spawn = spawn
        self.record_event = record_event
        self.balancer = Balancer()  # where new sessions (stateless: all requests) go
        self.canary_balancer = Balancer()
        self.canary_percent = 0.0
        self.queue = WaitQueue(c.gateway_queue_size)
        self.endpoints: dict[str, Endpoint] = {}
        self.sessions_lost = 0
        self.sessions_mode = c.app_mode == "sessions"
        self.app_cookie = c.app_session_cookie.encode() or None
        # Without an app cookie, each client is pinned by holdover's own cookie — unless
        # configured off, or the app speaks the explicit session protocol.
        self.pin_clients = self.app_cookie is None and c.app_pin_clients
        self.protocol_seen = False
        # A load balancer's health checks are not sessions: never pin that path.
        self.health_path = c.app_health_path.encode() or None
        self.latest_header = b""
        self.cookie_attrs = b"; Path=/; HttpOnly; SameSite=Lax"
        self.secure_cookie_attrs = self.cookie_attrs + b"; Secure"  # for https clients
        self.connect_timeout = c.gateway_connect_timeout
        self.queue_timeout = c.gateway_queue_timeout
        self.keepalive = c.gateway_upstream_keepalive
        self.access_log: AccessLog | None = None
        self.closing = False
        self._workers: dict[str, Worker] = {}  # every worker of every revision, by id
        # In a cluster: this node's name (its route cookie) and the other nodes, by name,
        # as endpoints of their peer listeners (control/peers.py keeps them current).
        self.node: str | None = None
        self.peers: dict[str, Any] = {}
        self._route_mine: bytes | None = None  # "holdover_node=NODE.", made once

    # -- routing (the Router port) ---------------------------------------------------

    def route(self, ex: Exchange) -> None:
        """Send ``ex`` to a worker now, or park it until one is ready (then 503).

        In a cluster, a session this node does not hold whose route cookie names another
        live node goes to that node (never what another node sent: no second hop)."""
        if self.sessions_mode and ex.cookie is not None:
            key = self._session_key(ex)
            if key is not None:
                pin = self.sessions.pins.get(key)
                if pin is None and self.sessions.offered:
                    pin = self._returned(key)
                if pin is not None and self.peers and not ex.conn.plane.from_peers and \
                        (ep := self._moved(ex.cookie, key)) is not None:
                    # The client's route cookie names another node for this very session:
                    # it began there again while this node could not be reached.  The
                    # client's newest cookie is the truth; this node's copy is stale.
                    self.sessions.end(key)
                    self.dispatch(ex, ep)
                    return
                if pin is not None:
                    ep = self.endpoints.get(pin.worker)
                    if ep is not None and ep.incarnation == pin.incarnation and ep.ready:
                        # Rule 1: to its worker, whatever its revision's state.
                        ex.pin = pin
                        pin.active += 1
                        pin.last_seen = monotonic()
                        self.sessions.dirty.add(key)
                        self.dispatch(ex, ep)
                        return
                    self._lose(pin, "its worker is gone")
                elif self.peers and not ex.conn.plane.from_peers:
                    ep = self._holder(ex.cookie, key)
                    if ep is not None:
                        self.dispatch(ex, ep)  # a pass-through: no session hooks here
                        return
        ep = None
        if self.canary_percent and random.random() * 100 < self.canary_percent:
            ep = self.canary_balancer.pick()
        if ep is None:
            ep = self.balancer.pick()
        if ep is not None:
            self.dispatch(ex, ep)
            return
        waiter = self.queue.add(lambda e: self._dequeued(ex, e),
                                lambda: ex.conn.fail(ex, 503, retry_after=5),
                                monotonic() + self.queue_timeout)
        if waiter is None:
            ex.conn.fail(ex, 503, retry_after=5)
        else:
            ex.waiter = waiter

    def _holder(self, cookie: bytes, key: str) -> Any:
        """The live node whose route cookie for session ``key`` the request carries.

        As for pin cookies, at most ``MAX_PIN_COOKIES`` are checked: each check costs a
        MAC per signing key, and a head full of forged ones must not cost more than that."""
        for value in islice(iter_cookie_values(cookie, NODE_COOKIE), policy.MAX_PIN_COOKIES):
            node = self.keys.verify_route(value, key)
            if node is not None:
                ep = self.peers.get(node)
                return ep if ep is not None and ep.routable else None
        return None

    def _moved(self, cookie: bytes, key: str) -> Any:
        """The live node a session held here has moved to, by the request's route cookie.

        The common case costs a find and a compare: the cookie names this node."""
        at = cookie.find(NODE_COOKIE + b"=")
        if at < 0:
            return None
        mine = self._route_mine
        if mine is None:
            mine = self._route_mine = NODE_COOKIE + b"=" + str(self.node).encode() + b"."
        if cookie.startswith(mine, at):
            return None
        return self._holder(cookie, key)

    def _returned(self, key: str) -> Pin | None:
        """A client came back with holdover's offered pin: now it is a session."""
        offer = self.sessions.offered.get(key)
        if offer is None:
            return None
        ep = self.endpoints.get(offer.worker)
        if ep is None or ep.incarnation != offer.incarnation or not ep.ready:
            self.sessions.offered.pop(key, None)  # never a session: nothing is lost
            return None
        return self.sessions.promote(key, monotonic())

    def _session_key(self, ex: Exchange) -> str | None:
        """The pin-table key of the session a request names (rule 4), cached per connection.

        Sets ``ex.skey`` to the key of the app's own session cookie, which a response
        may rotate or delete."""
        cookie = ex.cookie
        conn = ex.conn
        cache = conn.cookie_cache
        if cache is not None and cache[0] == cookie:  # keep-alive clients repeat Cookie
            ex.skey = cache[2]
            return cache[1]
        key, skey = policy.request_session_keys(cookie, self.keys, self.app_cookie)
        conn.cookie_cache = (cookie, key, skey)
        ex.skey = skey
        return key

    def _dequeued(self, ex: Exchange, ep: Any) -> None:
        ex.waiter = None
        if ex.conn.current is ex:
            self.dispatch(ex, ep)

    def dispatch(self, ex: Exchange, ep: Any) -> None:
        """Bind ``ex`` to endpoint ``ep`` and send it on a pooled or new connection."""
        ex.worker = ep
        ep.inflight += 1
        up = ep.pool.take()
        if up is not None:
            ex.conn.attach(ex, up)
        else:
            self.spawn(self._connect(ex, ep), "connect")

    async def _connect(self, ex: Exchange, ep: Endpoint) -> None:
        pool = ep.pool
        assert pool is not None
        try:
            up = await pool.connect(self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            if ex.conn.current is not ex or ex.worker is not ep:
                return
            if ep.peer:
                self._peer_unreachable(ex, ep, exc)
                return
            log.warning("cannot connect to worker %s: %s", ep.id, exc or type(exc).__name__)
            self.suspect(ep)
            if not self.retry(ex):
                ex.conn.fail(ex, 502 if not isinstance(exc, TimeoutError) else 504)
            return
        ex.conn.attach(ex, up)

    def _peer_unreachable(self, ex: Exchange, ep: Any, exc: BaseException) -> None:
        """The node holding this session does not answer: the session starts again here.

        Nothing of the request was sent, so it is routed as a new session on this node
        (the old one is lost with its node, and counted once when the node is found
        dead: control/peers.py)."""
        log.warning("cannot reach node %s: %s; its sessions start again here for %.0fs",
                    ep.node, exc or type(exc).__name__, PEER_DOWN_FOR)
        ep.routable = False
        ep.down_until = monotonic() + PEER_DOWN_FOR
        self._undispatch(ex)
        self.route(ex)  # here: the node is out of routing now

    def suspect(self, ep: Endpoint) -> None:
        """A connection was refused: out of rotation until its worker's next health check."""
        ep.routable = False
        w = self._workers.get(ep.id)
        if w is not None:
            w.suspect()

    def _undispatch(self, ex: Exchange) -> Any:
        ep = ex.worker
        if ep is not None:
            ep.inflight -= 1
            ex.worker = None
        if ex.pin is not None:  # routed again, it may be pinned again
            ex.pin.active -= 1
            ex.pin = None
        return ep

    def retry(self, ex: Exchange) -> bool:
        """Send ``ex`` again on another worker; only for requests nothing has seen (rule 7).

        A pinned request never goes to another worker (rule 1): it is tried once more on
        a fresh connection to its own, or fails."""
        pin = ex.pin
        ep = self._undispatch(ex)
        tried = ex.tried if ex.tried is not None else []
        ex.tried = tried
        tried.append(ep)
        if ep is not None and ep.peer:
            # A stale pooled connection to another node: once more on a fresh one.
            ex.body_buf = []
            if len(tried) == 1 and ep.routable:
                ex.worker = ep
                ep.inflight += 1
                self.spawn(self._connect(ex, ep), "connect")
            else:  # it broke twice: out of routing for a while, the session starts here
                ep.routable = False
                ep.down_until = monotonic() + PEER_DOWN_FOR
                self.route(ex)
            return True
        if pin is not None:
            if ep is None or not ep.ready or len(tried) > 1 or \
                    self.sessions.pins.get(pin.key) is not pin:
                return False
            ex.pin = pin
            pin.active += 1
            ex.body_buf = []
            ex.worker = ep
            ep.inflight += 1
            self.spawn(self._connect(ex, ep), "connect")  # a fresh connection, not the pool
            return True
        if len(tried) > 3:
            return False
        nxt = self.balancer.pick(exclude=tried)
        if nxt is None and ep is not None and ep.routable and len(tried) == 1:
            nxt = ep  # a lone worker: the pooled connection was stale, use a fresh one
        if nxt is None:
            if any(self._workers[e.id].state in (WorkerState.STARTING, WorkerState.BACKOFF)
                   for e in self.balancer.workers if e.id in self._workers):
                ex.body_buf = []
                self.route(ex)  # wait in the queue for the restarting worker
                return True
            return False
        ex.body_buf = []
        self.dispatch(ex, nxt)
        return True

    # -- the Releaser and Reporter ports: proxy/accounting.py ---------------------------

    # -- the SessionHooks port (rule 3) -----------------------------------------------

    def _pin_here(self, ex: Exchange, key: str, expires_at: float | None = None) -> Pin | None:
        ep = ex.worker
        if ep is None:
            return None
        return self.sessions.pin(key, ep.id, ep.incarnation, ep.revision, monotonic(),
                                 expires_at)

    def on_set_cookie(self, ex: Exchange, value: bytes) -> None:
        """The worker set a cookie: its session cookie pins or ends a session."""
        if not self.sessions_mode:
            return
        action = policy.set_cookie_action(value, self.app_cookie, self.keys)
        if action is None:
            return
        old = ex.skey
        if action.end:
            if old is not None and self.sessions.end(old) is not None:
                ex.session_event = b"end"
            return
        key = action.key
        if key != old and old is not None:
            self.sessions.end(old)  # the app rotated its session id (e.g. at login)
        if key != old or self.sessions.get(key) is None:
            self._pin_here(ex, key)
            ex.session_event = b"new:" + key.encode()

    def on_session_header(self, ex: Exchange, value: bytes) -> None:
        """The explicit session protocol: ``X-Holdover-Session: <id>; max-age=N | end``."""
        if not self.sessions_mode:
            return
        action = policy.session_header_action(value, self.keys)
        if action is None:  # malformed: ignored whole (it must not switch off pin_clients)
            log.debug("ignoring a malformed X-Holdover-Session header: %r", value[:80])
            return
        self.protocol_seen = True  # the app tells its sessions: stop pinning anonymous clients
        if action.end_current:
            if ex.pin is not None:
                self.sessions.end(ex.pin.key)
                ex.session_event = b"end-pin"
            return
        if action.end:
            self.sessions.end(action.key)
            ex.session_event = b"end-pin"
            return
        expires = monotonic() + action.max_age if action.max_age is not None else None
        if ex.pin is not None and ex.pin.key != action.key:
            self.sessions.end(ex.pin.key)  # a new id for this client replaces the old one
        self._pin_here(ex, action.key, expires)
        ex.session_event = b"pin:" + action.key.encode()

    def response_extra_headers(self, ex: Exchange) -> bytes | None:
        """Headers the gateway adds: its own affinity cookie, and which revision is newest."""
        if not self.sessions_mode:
            return None
        out = b""
        attrs = self.secure_cookie_attrs if ex.secure else self.cookie_attrs
        event = ex.session_event
        if event is not None:
            if event.startswith(b"pin:"):
                out = (b"Set-Cookie: " + PIN_COOKIE + b"=" + self.keys.sign(event[4:].decode())
                       + attrs + b"\r\n")
                if self.node is not None:
                    out += self._route_cookie(event[4:].decode(), attrs)
            elif event == b"end-pin":
                out = b"Set-Cookie: " + PIN_COOKIE + b"=; Max-Age=0" + attrs + b"\r\n"
            elif self.node is not None and event.startswith(b"new:"):
                out = self._route_cookie(event[4:].decode(), attrs)
        elif self.pin_clients and not self.protocol_seen and ex.pin is None \
                and ex.worker is not None and not ex.worker.peer and ex.status < 500 \
                and not self._is_health(ex.url):
            # No app cookie configured: holdover offers each client its own pin cookie;
            # it becomes a session when the client comes back with it.
            key = self.keys.new_key()
            ep = ex.worker
            self.sessions.offer(key, ep.id, ep.incarnation, ep.revision, monotonic())
            out = (b"Set-Cookie: " + PIN_COOKIE + b"=" + self.keys.sign(key)
                   + attrs + b"\r\n")
            if self.node is not None:
                out += self._route_cookie(key, attrs)
        if ex.pin is not None or out:
            ep = ex.worker
            if ep is not None:
                out += b"X-Holdover-Revision: " + ep.revision.encode() + b"\r\n"
            out += self.latest_header
        return out or None

    def _route_cookie(self, key: str, attrs: bytes) -> bytes:
        """In a cluster: the signed cookie that names this node as session ``key``'s."""
        return (b"Set-Cookie: " + NODE_COOKIE + b"=" + self.keys.sign_route(self.node, key)
                + attrs + b"\r\n")

    # -- sessions lost (rule 5) -------------------------------------------------------

    def _lose(self, pin: Pin, why: str) -> None:
        """A pinned session's memory is gone: count it and say so."""
        if self.sessions.end(pin.key) is not None:
            self.sessions_lost += 1
            log.warning("session on worker %s (revision %s) lost: %s", pin.worker,
                        pin.revision, why)

    def end_sessions_of(self, revision: str, reason: str) -> int:
        """End every session of a revision (max_drain, retire); they count as lost."""
        pins = self.sessions.of_revision(revision)
        for p in pins:
            self.sessions.end(p.key)
        self.sessions_lost += len(pins)
        if pins:
            self.spawn(self.record_event(
                "sessions-lost", f"{len(pins)} session(s) of revision {revision} ended "
                f"({reason})", revision, data={"count": len(pins), "reason": reason}),
                "record-event")
        return len(pins)

    # -- workers and the routing table ------------------------------------------------

    def endpoint(self, w: Worker) -> Endpoint:
        """The endpoint of worker ``w`` (created on first sight)."""
        ep = self.endpoints.get(w.id)
        if ep is None:
            ep = self.endpoints[w.id] = Endpoint(w.id, w.spec.revision, w.spec.host)
        return ep

    def worker_changed(self, w: Worker, rev: Revision | None, retiring: bool,
                       rolling_in: bool) -> None:
        """The supervisor reported ``w``: refresh its endpoint, count lost sessions."""
        ep = self.endpoint(w)
        if w.port:
            ep.repoint(w.port, w.incarnation, self.keepalive)
        was_ready = ep.ready
        ep.ready = w.state is WorkerState.READY
        ep.standby = w.standby
        ep.routable = rev is not None and takes_new_sessions(
            rev.state, w.state, w.healthy, w.disabled, retiring, rolling_in)
        if not ep.routable:
            ep.close_pool()
        if was_ready and w.state in PROCESS_GONE and self.sessions.offered:
            self.sessions.drop_offers_of(w.id)  # once, when its process goes
        if w.state in PROCESS_GONE and not self.closing and self.sessions.per_worker.get(w.id):
            # The process that held these sessions' memory is gone (rule 5).
            pins = self.sessions.of_worker(w.id)
            for p in pins:
                self.sessions.end(p.key)
            self.sessions_lost += len(pins)
            msg = f"worker {w.id} {w.state}: {len(pins)} pinned session(s) lost"
            log.warning(msg)
            self.spawn(self.record_event("sessions-lost", msg, w.spec.revision, w.id,
                                         {"count": len(pins)}), "record-event")
        if ep.routable and self.queue._q:
            self.queue.release(self.balancer)

    def rebuild(self, active: Revision | None, canary: Revision | None,
                rolling: Revision | None, workers: dict[str, Worker],
                retiring: set[Any]) -> None:
        """Rebuild what the hot path reads after a revision or worker-set change.

        ``workers`` is every worker of every revision, stopped ones included: their
        endpoints keep the counters the metrics report until the worker is pruned."""
        self._workers = workers
        new: list[Endpoint] = []
        for rev in (active, rolling):
            if rev is not None:
                new += [self.endpoint(w) for w in rev.running() if w not in retiring]
        self.balancer.workers = new
        if canary is not None:
            self.canary_balancer.workers = [self.endpoint(w) for w in canary.running()]
            self.canary_percent = canary.canary_percent
        else:
            self.canary_balancer.workers = []
            self.canary_percent = 0.0
        for wid in [k for k in self.endpoints if k not in workers]:
            self.endpoints.pop(wid).close_pool()
        newest = active.id if active is not None else ""
        self.latest_header = b"X-Holdover-Latest: " + newest.encode() + b"\r\n"
        if self.queue._q:
            self.queue.release(self.balancer)

    def expire_pools(self, cutoff: float) -> None:
        """Close pooled connections idle since before ``cutoff``."""
        for ep in self.endpoints.values():
            if ep.pool is not None:
                ep.pool.expire(cutoff)

    def close_pools(self) -> None:
        for ep in self.endpoints.values():
            ep.close_pool()

