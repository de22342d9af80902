"""Several processes, the parts that need no process: the channel's frames, the pin
table's change feed and its copies, a response held until its claim is acknowledged,
and the drain barrier (docs/design.md, "Several processes").

The held response goes through the real client and worker sides of the proxy
(``ClientConnection``, ``UpstreamConnection``) with a plane's real router; only the
transports, the channel and the event loop are fakes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol import FakeTransport

from holdover import config
from holdover.control.planes import PlaneHandle, PlaneSet, limits_to_wire
from holdover.control.shared import PlanesRouter, SharedEndpoint, SharedTable
from holdover.core.affinity import Keys
from holdover.plane.held import HeldTransport
from holdover.plane.process import limits_from
from holdover.plane.router import PlaneRouter
from holdover.plane.wire import MAX_FRAME, ChannelError, decode_frames, encode
from holdover.proxy.ports import Limits, Plane
from holdover.proxy.server import ClientConnection
from holdover.proxy.upstream import UpstreamConnection

KEYS = Keys(b"h" * 32, [b"s" * 32])

# -- the channel's frames ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ops", "ack", "claim", "report"]),
                          st.lists(json_values, max_size=3)), max_size=6),
       st.integers(1, 64))
def test_frames_come_back_whole_however_the_bytes_are_cut(msgs: list, step: int) -> None:
    wire = b"".join(encode([kind, *args]) for kind, args in msgs)
    buf = bytearray()
    got: list[list[Any]] = []
    for i in range(0, len(wire), step):  # the kernel may hand over any piece
        buf += wire[i:i + step]
        out, used = decode_frames(buf)
        del buf[:used]
        got += out
    assert got == [[kind, *args] for kind, args in msgs]
    assert not buf


@pytest.mark.parametrize("raw", [
    b"\x00\x00\x00\x02{}",  # not an array
    b"\x00\x00\x00\x02[]",  # no kind
    b"\x00\x00\x00\x03[1]",  # a kind that is no string
    b"\x00\x00\x00\x03[1,",  # not JSON
    (MAX_FRAME + 1).to_bytes(4, "big"),  # a length no message has
])
def test_a_broken_frame_is_an_error_not_a_guess(raw: bytes) -> None:
    with pytest.raises(ChannelError):
        decode_frames(bytearray(raw))


def test_limits_cross_the_channel_unchanged() -> None:
    import ipaddress
    lim = Limits(proto=b"https", listen_host=b"example.org:443", tls=True, max_body_size=7,
                 trusted=(ipaddress.ip_network("10.0.0.0/8"),
                          ipaddress.ip_network("fd00::/8")))
    import json
    assert limits_from(json.loads(json.dumps(limits_to_wire(lim)))) == lim


# -- the pin table's change feed, and a plane's copy of it ------------------------------------


def replica() -> PlaneRouter:
    chan = SimpleNamespace(send=lambda m: None, pump=lambda: None, loop=None)
    settings_ = {"sessions_mode": True, "app_cookie": "sid", "pin_clients": False,
                 "health_path": "", "cookie_attrs": "; Path=/", "connect_timeout": 1,
                 "queue_size": 4, "queue_timeout": 1, "upstream_keepalive": 2,
                 "upstream_idle_timeout": 4, "lookup_timeout": 0.2, "claim_timeout": 1}
    return PlaneRouter(settings_, KEYS, chan, lambda coro: None)  # type: ignore[arg-type]


def same(table: SharedTable, copy: PlaneRouter) -> None:
    assert {k: (p.worker, p.incarnation) for k, p in copy.pins.items()} == \
        {k: (p.worker, p.incarnation) for k, p in table.pins.items()}
    assert set(copy.offered) == set(table.offered)


actions = st.lists(st.tuples(
    st.sampled_from(["pin", "end", "offer", "promote", "expire", "drop"]),
    st.sampled_from(["k1", "k2", "k3", "k4", "k5"]), st.sampled_from(["w1", "w2"]),
    st.sampled_from(["a", "b"])), max_size=40)


@settings(max_examples=300, deadline=None)
@given(actions, st.integers(2, 6))
def test_a_copy_fed_the_change_feed_is_the_table(steps: list, limit: int) -> None:
    """Whatever happens to the table (pins, re-pins, ends, offers pushed out by the
    limit, promotions refused, expiry), a plane applying its operations has the same
    pins and offers — so every plane routes as the control process would."""
    table = SharedTable(limit=limit)
    copy = replica()
    now = 0.0
    for action, key, worker, inc in steps:
        now += 1.0
        if action == "pin":
            p = table.pin(key, worker, inc, "v1", now)
            if p is not None:
                table.note(p)
        elif action == "end":
            table.end(key)
        elif action == "offer":
            table.offer(key, worker, inc, "v1", now)
        elif action == "promote":
            table.promote(key, now)
        elif action == "expire":
            table.expire_offers(now, 3.0)
        else:
            table.drop_offers_of(worker)
        copy.apply_ops(table.take_ops())
        same(table, copy)


def test_a_claim_that_finds_its_pin_is_told_again() -> None:
    table = SharedTable()
    table.pin("k", "w1", "a", "v1", 1.0)
    table.take_ops()
    p = table.pin("k", "w1", "a", "v1", 2.0)  # the same pin: the table records nothing
    assert table.ops == []
    assert p is not None
    table.note(p)  # ... but the claiming plane must learn it (its copy may lack it)
    assert table.take_ops() == [["+", "k", "w1", "a", "v1"]]


# -- a response held until its claim is acknowledged -------------------------------------------


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any, tuple]] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))

    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        entry = (delay, fn, args)
        self.later.append(entry)
        return SimpleNamespace(cancel=lambda: self.later.remove(entry)
                               if entry in self.later else None)

    def run_soon(self) -> None:
        while self.soon:
            fn, args = self.soon.pop(0)
            fn(*args)


class FakeChannel:
    def __init__(self) -> None:
        self.loop = FakeLoop()
        self.sent: list[list[Any]] = []
        self.pumped = 0

    def send(self, msg: list[Any]) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        pass

    def pump(self) -> None:
        self.pumped += 1


def plane_with_worker() -> tuple[PlaneRouter, FakeChannel, Plane]:
    r = replica()
    chan = FakeChannel()
    r.chan = chan  # type: ignore[assignment]
    r.apply_table(1, [["w1", "v1", "127.0.0.1", 9, "inc1", True, True, False, False]],
                  ["w1"], [], 0.0, "v1", False)
    r.warm = True
    return r, chan, Plane(Limits(), r, r, r, r)


def one_exchange(r: PlaneRouter, plane: Plane, request: bytes, response: bytes
                 ) -> tuple[FakeTransport, UpstreamConnection]:
    """A client connection whose request goes to w1 over a pooled connection, and the
    worker's answer fed in."""
    ep = r.endpoints["w1"]
    up = UpstreamConnection(ep.pool)  # type: ignore[arg-type]
    up.connection_made(FakeTransport())  # type: ignore[arg-type]
    ep.pool.idle.append(up)  # type: ignore[union-attr]
    c = ClientConnection(plane)
    t = FakeTransport()
    c.connection_made(t)  # type: ignore[arg-type]
    c.data_received(request)
    assert up.ex is not None, "the request went to w1"
    up.data_received(response)
    return t, up


LOGIN = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: sid=abc; Path=/\r\n\r\nok")


def test_a_claiming_response_waits_for_the_acknowledgement() -> None:
    r, chan, plane = plane_with_worker()
    t, _ = one_exchange(r, plane, b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
                        LOGIN)
    assert t.chunks == [], "nothing reaches the client before control has the pin"
    chan.loop.run_soon()  # the end of the loop iteration: the claim goes out
    (claim,) = [m for m in chan.sent if m[0] == "claim"]
    ((cid, ops),) = claim[1]
    key = KEYS.session_key(b"app", b"abc")
    assert ops == [["+", key, "w1", "inc1", "v1", None]]
    # control's answer: the pin for every plane, then the acknowledgement
    r.apply_ops([["+", key, "w1", "inc1", "v1"]])
    r.acked([cid])
    out = b"".join(t.chunks)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok")
    assert b"Set-Cookie: sid=abc" in out
    assert key in r.pins
    # the session's next request, on another connection: pumped first, then pinned
    pumped = chan.pumped
    t2, _ = one_exchange(r, plane, b"GET / HTTP/1.1\r\nHost: h\r\nCookie: sid=abc\r\n\r\n",
                           b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert chan.pumped == pumped + 1
    assert b"X-Holdover-Revision: v1" in b"".join(t2.chunks)


def test_an_unacknowledged_hold_is_released_after_its_timeout() -> None:
    r, chan, plane = plane_with_worker()
    t, _ = one_exchange(r, plane, b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
                        LOGIN)
    chan.loop.run_soon()
    ((delay, fn, args),) = chan.loop.later
    assert delay == r.claim_timeout
    assert t.chunks == []
    fn(*args)
    assert b"".join(t.chunks).endswith(b"ok")
    assert r.counters["claim_timeouts"] == 1


def test_a_held_transport_keeps_order_close_and_backpressure() -> None:
    events: list[str] = []
    real = FakeTransport()
    conn = SimpleNamespace(transport=real, pause_writing=lambda: events.append("pause"),
                           resume_writing=lambda: events.append("resume"))
    hold = HeldTransport(conn, 1)
    assert conn.transport is hold
    hold.write(b"a")
    hold.write(b"b" * 70_000)  # past the client's high-water mark: the worker side pauses
    hold.write_eof()
    hold.close()
    assert events == ["pause"] and real.chunks == [] and not real.closed
    assert hold.is_closing()
    hold.release()
    assert conn.transport is real
    assert events == ["pause", "resume"]
    assert real.chunks == [b"a" + b"b" * 70_000] and real.eof and real.closing
    hold.write(b"late")  # a tunnel that kept the wrapper writes straight through
    assert real.chunks[-1] == b"late"


def test_a_miss_in_a_copy_still_being_filled_asks_control() -> None:
    r, chan, plane = plane_with_worker()
    r.warm = False
    ep = r.endpoints["w1"]
    up = UpstreamConnection(ep.pool)  # type: ignore[arg-type]
    up.connection_made(FakeTransport())  # type: ignore[arg-type]
    ep.pool.idle.append(up)  # type: ignore[union-attr]
    c = ClientConnection(plane)
    c.connection_made(FakeTransport())  # type: ignore[arg-type]
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: sid=zzz\r\n\r\n")
    (look,) = [m for m in chan.sent if m[0] == "lookup"]
    assert up.ex is None, "parked until control answers"
    key = KEYS.session_key(b"app", b"zzz")
    assert look[2] == key
    r.apply_ops([["+", key, "w1", "inc1", "v1"]])
    r.found(look[1])
    assert up.ex is not None and up.ex.pin is r.pins[key]


# -- draining sees every process ------------------------------------------------------------


def planeset(tmp_path: Path) -> tuple[PlaneSet, SharedEndpoint]:
    cfg = config.from_dict({"app": {"command": "x {port}"}}, path=tmp_path / "holdover.toml")
    table = SharedTable()
    router = PlanesRouter(cfg, KEYS, table, lambda coro, name: None, None)
    ctl = SimpleNamespace(router=router, sessions=table, connections=None, config=cfg)
    ps = PlaneSet(ctl, 2)  # type: ignore[arg-type]
    ep = router.endpoints["w1"] = SharedEndpoint("w1", "v1", "127.0.0.1", router)
    for h in ps.planes:
        h.alive = True
    return ps, ep


def report(h: PlaneHandle, seq: int, inflight: int) -> None:
    h.seq = max(h.seq, seq)
    h.report = {"inflight": {"w1": inflight} if inflight else {}}


def test_a_worker_counts_as_busy_until_every_process_answered_after_it_went_idle(
        tmp_path: Path) -> None:
    ps, ep = planeset(tmp_path)
    a, b = ps.planes
    ep.routable = True
    report(a, 0, 2)
    report(b, 0, 1)
    assert ep.inflight == 3, "a worker taking sessions: the plain sum"
    ep.routable = False  # draining: no new session, no pin
    assert ep.inflight == 4, "the reports predate it: one more, until they are certain"
    ps.sync()  # report request n, sent after everything that made it idle
    seq = ps.next_seq - 1
    report(a, seq, 0)
    assert ep.inflight == 2, "b's 1 in flight, and b has not answered it yet"
    report(b, seq, 0)
    assert ep.inflight == 0
    ps.table.pin("k", "w1", "inc", "v1", 1.0)  # a session claimed on it meanwhile
    ps.table.end("k")
    assert ep.inflight == 1, "idle again: a fresh barrier"
    ps.sync()
    report(a, ps.next_seq - 1, 0)
    report(b, ps.next_seq - 1, 0)
    assert ep.inflight == 0
    a.alive = False  # a process that died counts no more
    report(b, ps.next_seq, 1)
    assert ep.inflight == 1


def test_a_promotion_of_an_offer_control_no_longer_has_is_undone(tmp_path: Path) -> None:
    ps, _ = planeset(tmp_path)
    h = ps.planes[0]
    ps.table.offer("k", "w1", "inc", "v1", 0.0)
    ps._message(h, ["promote", "k"])
    assert "k" in ps.table.pins and ps.table.take_ops()[-1][0] == "+"
    ps._message(h, ["promote", "k2"])  # expired before the client came back
    assert "k2" not in ps.table.pins and ps.table.take_ops() == [["-", "k2"]]
