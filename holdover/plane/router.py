"""The data plane's ports in a plane process: routing from a copy, pins from control.

With ``[gateway] processes = N`` every plane process routes on its own, from a copy of
the routing table and of the pin table that its control process keeps current
(holdover/plane/process.py applies what the channel brings).  The routing rules are
docs/design.md's, as in the one-process router (holdover/control/router.py), and the
decisions are the same pure functions of core/policy.py.  What differs is where a pin
comes from and where it goes:

- a pin change a response makes (a claim: the app's Set-Cookie, the session header,
  holdover's own cookie; or an end) goes to the control process, and the response is
  held (holdover/plane/held.py) until the control process acknowledges it, so the
  session's next request finds the pin in whichever process accepts it;
- before a request that names a session is routed, the channel is pumped (what control
  sent is applied); a miss in a copy that is still being filled asks control, waiting
  at most ``lookup_timeout`` (then: no pin, counted);
- last-seen times and per-worker counters go to control in the periodic report.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any

from ..accesslog import AccessLog
from ..core import policy
from ..core.affinity import PIN_COOKIE, Keys
from ..core.balancer import Balancer, WaitQueue
from ..proxy.accounting import Accounting
from ..proxy.endpoint import Endpoint
from ..proxy.exchange import Exchange
from .held import HeldTransport
from .wire import Channel

log = logging.getLogger("holdover.plane")

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


class CachedPin:
    """A plane's copy of one pin (or offer) of the control process's table."""

    __slots__ = ("active", "incarnation", "key", "revision", "worker")

    def __init__(self, key: str, worker: str, incarnation: str, revision: str) -> None:
        self.key = key
        self.worker = worker
        self.incarnation = incarnation
        self.revision = revision
        self.active = 0  # this plane's requests and streams of the session in flight


class Lookup:
    """A request parked while its pin is asked of the control process (a cold copy)."""

    __slots__ = ("done", "ex", "key", "timer")

    def __init__(self, ex: Exchange, key: str) -> None:
        self.ex = ex
        self.key = key
        self.done = False
        self.timer: Any = None

    def cancel(self) -> None:  # the client went away (ClientConnection.connection_lost)
        self.done = True
        if self.timer is not None:
            self.timer.cancel()


class PlaneRouter(Accounting):
    """Router, Releaser, Reporter and SessionHooks of one plane process."""

    def __init__(self, settings: dict[str, Any], keys: Keys, chan: Channel, spawn: Spawn
                 ) -> None:
        s = settings
        self.keys = keys
        self.chan = chan
        self.spawn = spawn
        self.sessions_mode = bool(s["sessions_mode"])
        self.app_cookie = s["app_cookie"].encode() if s["app_cookie"] else None
        self.pin_clients = bool(s["pin_clients"])
        self.health_path = s["health_path"].encode() if s["health_path"] else None
        self.cookie_attrs = s["cookie_attrs"].encode()
        self.secure_cookie_attrs = self.cookie_attrs + b"; Secure"  # for https clients
        self.connect_timeout = float(s["connect_timeout"])
        self.queue_timeout = float(s["queue_timeout"])
        self.keepalive = int(s["upstream_keepalive"])
        self.upstream_idle_timeout = float(s["upstream_idle_timeout"])
        self.lookup_timeout = float(s["lookup_timeout"])
        self.claim_timeout = float(s["claim_timeout"])
        self.queue = WaitQueue(int(s["queue_size"]))
        self.balancer = Balancer()
        self.canary_balancer = Balancer()
        self.canary_percent = 0.0
        self.latest_header = b""
        self.protocol_seen = False
        self.endpoints: dict[str, Endpoint] = {}
        self.waiting_workers: set[str] = set()  # starting or backing off: worth waiting for
        self.pins: dict[str, CachedPin] = {}
        self.offered: dict[str, CachedPin] = {}
        self.warm = False  # the copy of the pin table is complete
        self.access_log: AccessLog | None = None
        self.closing = False
        self.table_version = -1
        # what the next report tells control
        self.seen: set[str] = set()
        self.busy: set[CachedPin] = set()
        self.counters = {"lookups": 0, "lookup_timeouts": 0, "claims": 0,
                         "claim_timeouts": 0}
        self._holds: dict[int, HeldTransport] = {}
        self._unsent: list[HeldTransport] = []
        self._lookups: dict[int, Lookup] = {}
        self._next_id = 0

    # -- routing (the Router port) ---------------------------------------------------

    def route(self, ex: Exchange) -> None:
        """Send ``ex`` to a worker now, park it, or ask control for its pin first."""
        self._route(ex, False)

    def _route(self, ex: Exchange, asked: bool) -> None:
        if self.sessions_mode and ex.cookie is not None:
            key = self._session_key(ex)
            if key is not None:
                self.chan.pump()  # pin changes control sent before this request was made
                pin = self.pins.get(key)
                if pin is None and self.offered:
                    pin = self._returned(key)
                if pin is None and not self.warm and not asked:
                    self._ask(ex, key)
                    return
                if pin is not None:
                    ep = self.endpoints.get(pin.worker)
                    if ep is not None and ep.incarnation == pin.incarnation and ep.ready:
                        ex.pin = pin  # rule 1: to its worker, whatever its revision's state
                        pin.active += 1
                        self.busy.add(pin)
                        self.dispatch(ex, ep)
                        return
                    self._lose(pin, "its worker is gone")
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

    def _returned(self, key: str) -> CachedPin | None:
        """A client came back with holdover's offered pin: now it is a session."""
        offer = self.offered.get(key)
        if offer is None:
            return None
        ep = self.endpoints.get(offer.worker)
        if ep is None or ep.incarnation != offer.incarnation or not ep.ready:
            del self.offered[key]  # never a session: nothing is lost
            return None
        # Routed by the offer at once; control counts the session and tells every plane.
        del self.offered[key]
        self.pins[key] = offer
        self.chan.send(["promote", key])
        return offer

    def _ask(self, ex: Exchange, key: str) -> None:
        """A miss while the copy of the pin table is still being filled: ask control."""
        self._next_id += 1
        lid = self._next_id
        look = Lookup(ex, key)
        ex.waiter = look
        self._lookups[lid] = look
        self.counters["lookups"] += 1
        look.timer = self.chan.loop.call_later(
            self.lookup_timeout, self._lookup_timed_out, lid)
        self.chan.send(["lookup", lid, key])

    def found(self, lid: int) -> None:
        """Control answered a lookup (the pin, if any, came just before)."""
        look = self._lookups.pop(lid, None)
        if look is None or look.done:
            return
        look.cancel()
        self._resume(look)

    def _lookup_timed_out(self, lid: int) -> None:
        look = self._lookups.pop(lid, None)
        if look is None or look.done:
            return
        look.done = True
        self.counters["lookup_timeouts"] += 1
        log.warning("pin lookup unanswered after %.0f ms: routed as a new session",
                    self.lookup_timeout * 1000)
        self._resume(look)

    def _resume(self, look: Lookup) -> None:
        ex = look.ex
        if ex.waiter is look:
            ex.waiter = None
        if ex.conn.current is ex and not ex.conn.transport.is_closing():
            self._route(ex, True)

    def _session_key(self, ex: Exchange) -> str | None:
        """The pin key a request names (rule 4), cached per connection."""
        cookie = ex.cookie
        conn = ex.conn
        cache = conn.cookie_cache
        if cache is not None and cache[0] == cookie:
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
            self.spawn(self._connect(ex, ep))

    async def _connect(self, ex: Exchange, ep: Endpoint) -> None:
        pool = ep.pool
        assert pool is not None
        try:
            up = await pool.connect(self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            if ex.conn.current is not ex or ex.worker is not ep:
                return
            log.warning("cannot connect to worker %s: %s", ep.id, exc or type(exc).__name__)
            self.suspect(ep)
            if not self.retry(ex):
                ex.conn.fail(ex, 502 if not isinstance(exc, TimeoutError) else 504)
            return
        ex.conn.attach(ex, up)

    def suspect(self, ep: Endpoint) -> None:
        """A refused connection: out of this plane's rotation; control checks the worker."""
        ep.routable = False
        self.chan.send(["suspect", ep.id])

    def _undispatch(self, ex: Exchange) -> Any:
        ep = ex.worker
        if ep is not None:
            ep.inflight -= 1
            ex.worker = None
        pin = ex.pin
        if pin is not None:
            pin.active -= 1
            if not pin.active:
                self.busy.discard(pin)
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
        if pin is not None:
            if ep is None or not ep.ready or len(tried) > 1 or self.pins.get(pin.key) is not pin:
                return False
            ex.pin = pin
            pin.active += 1
            self.busy.add(pin)
            ex.body_buf = []
            ex.worker = ep
            ep.inflight += 1
            self.spawn(self._connect(ex, ep))  # a fresh connection, not the pool
            return True
        if len(tried) > 3:
            return False
        nxt = self.balancer.pick(exclude=tried)
        if nxt is None and ep is not None and ep.routable and len(tried) == 1:
            nxt = ep  # a lone worker: the pooled connection was stale, use a fresh one
        if nxt is None:
            if any(e.id in self.waiting_workers for e in self.balancer.workers):
                ex.body_buf = []
                self._route(ex, True)  # wait in the queue for the restarting worker
                return True
            return False
        ex.body_buf = []
        self.dispatch(ex, nxt)
        return True

    # -- the Releaser and Reporter ports: proxy/accounting.py ---------------------------

    def pin_released(self, pin: Any) -> None:
        """A request of ``pin``'s session finished: it was seen (reported to control)."""
        if not pin.active:
            self.busy.discard(pin)
        self.seen.add(pin.key)

    # -- pin changes, held until control has them -------------------------------------

    def _claim(self, ex: Exchange, op: list[Any]) -> None:
        """Tell control of a pin change; hold ``ex``'s response until it is acknowledged."""
        conn = ex.conn
        hold = conn.transport
        if not isinstance(hold, HeldTransport) or hold.sent:
            self._next_id += 1
            hold = HeldTransport(conn, self._next_id)
            self._holds[hold.id] = hold
            self._unsent.append(hold)
            if len(self._unsent) == 1:
                self.chan.loop.call_soon(self._send_claims)
        hold.ops.append(op)

    def _send_claims(self) -> None:
        """One message for every claim this loop iteration made."""
        holds, self._unsent = self._unsent, []
        batch = []
        for h in holds:
            h.sent = True
            if not h.done:
                batch.append([h.id, h.ops])
        if batch:
            self.counters["claims"] += len(batch)
            self.chan.send(["claim", batch])
            self.chan.flush()
            self.chan.loop.call_later(  # one timer per batch
                self.claim_timeout, self._claims_timed_out, [cid for cid, _ in batch])

    def acked(self, ids: list[int]) -> None:
        for cid in ids:
            hold = self._holds.pop(cid, None)
            if hold is not None:
                hold.release()

    def _claims_timed_out(self, ids: list[int]) -> None:
        for cid in ids:
            hold = self._holds.pop(cid, None)
            if hold is not None and not hold.done:
                self.counters["claim_timeouts"] += 1
                log.warning("pin change unacknowledged after %.0f ms: the response goes out",
                            self.claim_timeout * 1000)
                hold.release()

    def release_all(self) -> None:
        """Closing down: nothing more will be acknowledged."""
        for hold in list(self._holds.values()):
            hold.release()
        self._holds.clear()

    def _pin_here(self, ex: Exchange, key: str, max_age: float | None = None) -> None:
        ep = ex.worker
        if ep is not None:
            self._claim(ex, ["+", key, ep.id, ep.incarnation, ep.revision, max_age])

    def _end(self, ex: Exchange, key: str) -> bool:
        """End session ``key`` (strong: before the response leaves); True if it was known."""
        known = self.pins.pop(key, None) is not None
        self.offered.pop(key, None)
        self._claim(ex, ["-", key])
        return known

    # -- the SessionHooks port (rule 3) -----------------------------------------------

    def on_set_cookie(self, ex: Exchange, value: bytes) -> None:
        if not self.sessions_mode:
            return
        action = policy.set_cookie_action(value, self.app_cookie, self.keys)
        if action is None:
            return
        old = ex.skey
        if action.end:
            if old is not None and self._end(ex, old):
                ex.session_event = b"end"
            return
        key = action.key
        assert key is not None
        if key != old and old is not None:
            self._end(ex, old)  # the app rotated its session id (e.g. at login)
        if key != old or key not in self.pins:
            self._pin_here(ex, key)
            ex.session_event = b"new"

    def on_session_header(self, ex: Exchange, value: bytes) -> None:
        if not self.sessions_mode:
            return
        action = policy.session_header_action(value, self.keys)
        if action is None:  # malformed: ignored whole (it must not switch off pin_clients)
            return
        if not self.protocol_seen:
            self.protocol_seen = True  # stop pinning anonymous clients, in every plane
            self.chan.send(["protocol"])
        if action.end_current:
            if ex.pin is not None:
                self._end(ex, ex.pin.key)
                ex.session_event = b"end-pin"
            return
        if action.end:
            self._end(ex, action.key)
            ex.session_event = b"end-pin"
            return
        if ex.pin is not None and ex.pin.key != action.key:
            self._end(ex, ex.pin.key)  # a new id for this client replaces the old one
        self._pin_here(ex, action.key, action.max_age)
        ex.session_event = b"pin:" + action.key.encode()

    def response_extra_headers(self, ex: Exchange) -> bytes | None:
        if not self.sessions_mode:
            return None
        out = b""
        attrs = self.secure_cookie_attrs if ex.secure else self.cookie_attrs
        event = ex.session_event
        if event is not None:
            if event.startswith(b"pin:"):
                out = (b"Set-Cookie: " + PIN_COOKIE + b"=" + self.keys.sign(event[4:].decode())
                       + attrs + b"\r\n")
            elif event == b"end-pin":
                out = b"Set-Cookie: " + PIN_COOKIE + b"=; Max-Age=0" + attrs + b"\r\n"
        elif self.pin_clients and not self.protocol_seen and ex.pin is None \
                and ex.worker is not None and ex.status < 500 and not self._is_health(ex.url):
            key = self.keys.new_key()
            ep = ex.worker
            self._claim(ex, ["o", key, ep.id, ep.incarnation, ep.revision])
            out = (b"Set-Cookie: " + PIN_COOKIE + b"=" + self.keys.sign(key)
                   + attrs + b"\r\n")
        if ex.pin is not None or out:
            ep = ex.worker
            if ep is not None:
                out += b"X-Holdover-Revision: " + ep.revision.encode() + b"\r\n"
            out += self.latest_header
        return out or None

    def _lose(self, pin: CachedPin, why: str) -> None:
        """A pinned session's worker is gone (rule 5): control counts it, once."""
        self.pins.pop(pin.key, None)
        self.chan.send(["lose", pin.key, pin.worker, pin.incarnation, why])

    # -- what control sends ------------------------------------------------------------

    def apply_ops(self, ops: list[list[Any]]) -> None:
        """Pin changes of the control process's table, in its order."""
        pins = self.pins
        offered = self.offered
        for op in ops:
            kind = op[0]
            key = op[1]
            if kind == "-":
                pins.pop(key, None)
                offered.pop(key, None)
            elif kind == "x":
                offered.pop(key, None)
            elif kind == "+":
                offered.pop(key, None)
                old = pins.get(key)
                if old is not None and old.worker == op[2] and old.incarnation == op[3]:
                    continue  # keeps this plane's in-flight count
                pins[key] = CachedPin(key, op[2], op[3], op[4])
            elif kind == "o":
                offered[key] = CachedPin(key, op[2], op[3], op[4])

    def apply_table(self, version: int, endpoints: list[list[Any]], balancer: list[str],
                    canary: list[str], canary_percent: float, latest: str,
                    protocol_seen: bool) -> None:
        """A new routing table: endpoints, who takes new sessions, the newest revision."""
        self.table_version = version
        seen = set()
        waiting = set()
        for wid, revision, host, port, incarnation, ready, routable, standby, wait in endpoints:
            seen.add(wid)
            ep = self.endpoints.get(wid)
            if ep is None:
                ep = self.endpoints[wid] = Endpoint(wid, revision, host)
            if port:
                ep.repoint(port, incarnation, self.keepalive)
            ep.ready = ready
            ep.routable = routable
            ep.standby = standby
            if not routable:
                ep.close_pool()
            if wait:
                waiting.add(wid)
        for wid in [k for k in self.endpoints if k not in seen]:
            self.endpoints.pop(wid).close_pool()
        self.waiting_workers = waiting
        eps = self.endpoints
        self.balancer.workers = [eps[w] for w in balancer if w in eps]
        self.canary_balancer.workers = [eps[w] for w in canary if w in eps]
        self.canary_percent = canary_percent if self.canary_balancer.workers else 0.0
        self.latest_header = b"X-Holdover-Latest: " + latest.encode() + b"\r\n"
        self.protocol_seen = self.protocol_seen or protocol_seen
        if self.queue._q:
            self.queue.release(self.balancer)

    def report(self) -> dict[str, Any]:
        """Counters and activity since the last report (cumulative where it is a count)."""
        seen = self.seen
        self.seen = set()
        for p in self.busy:  # open streams keep their sessions alive
            seen.add(p.key)
        inflight = {}
        stats = {}
        for wid, ep in self.endpoints.items():
            s = ep.stats
            if ep.inflight:
                inflight[wid] = ep.inflight
            if s.requests:
                stats[wid] = [s.requests, s.errors, s.status_classes, s.bytes_out,
                              s.latency_counts, s.latency_sum]
        return {"inflight": inflight, "stats": stats, "seen": list(seen),
                "queue": len(self.queue), "counters": self.counters}

    def expire_pools(self, cutoff: float) -> None:
        for ep in self.endpoints.values():
            if ep.pool is not None:
                ep.pool.expire(cutoff)

    def close_pools(self) -> None:
        for ep in self.endpoints.values():
            ep.close_pool()
