"""Routing across a cluster's nodes, without sockets: the cluster secret, peer tokens,
the signed route cookie, and the router's choice between its own worker and another node.

The end-to-end behaviour (real nodes, real Redis) is tests/e2e/test_cluster_routing.py;
here each rule is checked on its own, so that a change that breaks one fails by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_sessions_unit import Harness

from holdover.control.peers import Peers
from holdover.core.affinity import NODE_COOKIE, PIN_COOKIE, Keys, cookie_value
from holdover.core.peers import TOKEN_WINDOW, ClusterSecret, PeerAuth
from holdover.proxy.peer import PeerEndpoint
from holdover.proxy.server import Exchange
from holdover.state import Change, LiveNode, MemoryStore, StoreError

# -- the cluster secret ------------------------------------------------------------------


def test_the_cluster_secret_is_created_private_and_read_back_the_same(tmp_path) -> None:
    path = tmp_path / "cluster.secret"
    first = ClusterSecret.load_or_create(path)
    assert first.created and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ClusterSecret.load_or_create(path)
    assert not again.created and again.fingerprint() == first.fingerprint()
    assert again.keys.session_key(b"app", b"x") == first.keys.session_key(b"app", b"x")
    other = ClusterSecret.load_or_create(tmp_path / "other.secret")
    assert other.fingerprint() != first.fingerprint()
    data = json.loads(path.read_text())
    assert all(k not in first.fingerprint() for k in (data["peer_key"], data["hash_key"]))


def test_a_cluster_secret_readable_by_others_is_made_private(tmp_path) -> None:
    path = tmp_path / "cluster.secret"
    ClusterSecret.load_or_create(path)
    os.chmod(path, 0o644)
    ClusterSecret.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("text", ["", "{}", '{"hash_key": "00", "signing_keys": ["00"]}',
                                  '{"hash_key": "00", "signing_keys": ["00"], "peer_key": "ab"}',
                                  "not json"])
def test_a_damaged_cluster_secret_is_refused_naming_the_file(tmp_path, text) -> None:
    path = tmp_path / "cluster.secret"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match=r"cluster\.secret: not a valid holdover cluster"):
        ClusterSecret.load_or_create(path)


# -- peer tokens -------------------------------------------------------------------------


def test_a_peer_token_names_its_node_and_is_good_within_the_window_only() -> None:
    key = b"k" * 32
    sender, receiver = PeerAuth("web-2", key), PeerAuth("web-1", key)
    now = 1_800_000_000.0
    token = sender.token(now)
    assert token.startswith(b"web-2:1800000000:")
    assert sender.token(now + 0.5) is token, "made once a second"
    assert receiver.verify(token, now) == "web-2"
    assert receiver.verify(token, now + TOKEN_WINDOW) == "web-2"  # remembered, still good
    assert receiver.verify(token, now + TOKEN_WINDOW + 1) is None
    assert receiver.verify(sender.token(now - TOKEN_WINDOW - 1), now) is None
    assert receiver.verify(sender.token(now + TOKEN_WINDOW - 1), now) == "web-2"


@pytest.mark.parametrize("value", [b"", b"web-2", b"web-2:1800000000", b"web-2:abc:00",
                                   b"web-2:1800000000:" + b"0" * 32, b":1800000000:00",
                                   b"x" * 500])
def test_a_forged_or_malformed_peer_token_is_refused(value) -> None:
    assert PeerAuth("web-1", b"k" * 32).verify(value, 1_800_000_000.0) is None


def test_a_token_made_with_another_key_or_renamed_is_refused() -> None:
    now = 1_800_000_000.0
    token = PeerAuth("web-2", b"o" * 32).token(now)
    receiver = PeerAuth("web-1", b"k" * 32)
    assert receiver.verify(token, now) is None
    good = PeerAuth("web-2", b"k" * 32).token(now)
    assert receiver.verify(b"web-3" + good[5:], now) is None


# -- the route cookie --------------------------------------------------------------------


def test_the_route_cookie_is_bound_to_its_session_and_survives_key_rotation() -> None:
    old = Keys(b"h" * 32, [b"s" * 32])
    value = old.sign_route("web-1.eu", "a" * 32)
    assert old.verify_route(value, "a" * 32) == "web-1.eu"
    assert old.verify_route(value, "b" * 32) is None, "moved to another session"
    assert old.verify_route(b"web-2" + value[8:], "a" * 32) is None
    assert Keys(b"h" * 32, [b"t" * 32]).verify_route(value, "a" * 32) is None
    rotated = Keys(b"h" * 32, [b"t" * 32, b"s" * 32])  # new key first, old one verifies
    assert rotated.verify_route(value, "a" * 32) == "web-1.eu"
    for junk in (b"", b".", b"web-1", b"web-1.", b"." + value, b"x" * 100 + value[8:]):
        assert old.verify_route(junk, "a" * 32) is None


# -- the router on a cluster node --------------------------------------------------------


@pytest.fixture
def node():
    h = Harness()
    h.gw.router.node = "web-1"
    h.peer = PeerEndpoint("web-2", "127.0.0.12", 1, 4, lambda: b"token")
    h.gw.router.peers["web-2"] = h.peer
    yield h
    h.close()


def send(h: Harness, cookie: bytes | None, set_cookie: bytes | None = None,
         forward: bool = True) -> tuple[Any, Any, bytes]:
    """Route one request and answer it: (exchange, the endpoint it went to, extra headers)."""
    conn = SimpleNamespace(cookie_cache=None, client_ip=b"127.0.0.1", current=None,
                           fail=lambda *a, **kw: None,
                           plane=SimpleNamespace(from_peers=not forward))
    ex = Exchange(conn, time.monotonic())  # type: ignore[arg-type]
    ex.method, ex.url, ex.cookie = b"GET", b"/", cookie
    router = h.gw.router
    router.route(ex)
    ep = ex.worker
    assert ep is not None, "not routed"
    ex.status = 200
    if set_cookie is not None and not ep.peer:
        router.on_set_cookie(ex, set_cookie)
    extra = router.response_extra_headers(ex) or b""
    router.exchange_done(ex)
    return ex, ep, extra


def test_a_new_session_gets_a_route_cookie_naming_this_node(node) -> None:
    _, _, extra = send(node, None, b"sid=abc; Path=/")
    key = node.gw.keys.session_key(b"app", b"abc")
    value = cookie_value(extra.replace(b"\r\nSet-Cookie: ", b"; ").split(b"\r\n")[0]
                         .removeprefix(b"Set-Cookie: "), NODE_COOKIE)
    assert value is not None and node.gw.keys.verify_route(value, key) == "web-1"
    assert b"HttpOnly" in extra
    # A single gateway (no node name) adds no such cookie.
    node.gw.router.node = None
    _, _, extra = send(node, None, b"sid=def; Path=/")
    assert NODE_COOKIE not in extra


def test_a_session_another_node_holds_goes_there_and_the_answer_is_untouched(node) -> None:
    route = node.gw.keys.sign_route("web-2", node.gw.keys.session_key(b"app", b"theirs"))
    _, ep, extra = send(node, b"sid=theirs; holdover_node=" + route)
    assert ep is node.peer, "passed to web-2"
    assert extra == b"", "no cookie, pin or revision header of this node's own"
    assert node.gw.sessions.get(node.gw.keys.session_key(b"app", b"theirs")) is None


def test_a_local_session_with_its_own_route_cookie_stays_here(node) -> None:
    _, first, extra = send(node, None, b"sid=mine; Path=/")
    key = node.gw.keys.session_key(b"app", b"mine")
    route = node.gw.keys.sign_route("web-1", key)
    assert route in extra
    for _ in range(3):
        _, ep, _ = send(node, b"sid=mine; holdover_node=" + route)
        assert ep is first and not ep.peer
    assert node.gw.sessions.get(key) is not None


def test_a_local_session_whose_route_cookie_names_another_node_follows_it(node) -> None:
    # web-1 could not be reached for a moment; the session began again on web-2, which
    # set its route cookie.  web-1's copy is stale: the client's newest cookie wins.
    send(node, None, b"sid=mine; Path=/")
    key = node.gw.keys.session_key(b"app", b"mine")
    route = node.gw.keys.sign_route("web-2", key)
    _, ep, _ = send(node, b"sid=mine; holdover_node=" + route)
    assert ep is node.peer
    assert node.gw.sessions.get(key) is None, "the stale copy here ended"
    # A forged route cookie moves nothing.
    _, mine_again, _ = send(node, None, b"sid=mine2; Path=/")
    key2 = node.gw.keys.session_key(b"app", b"mine2")
    _, ep, _ = send(node, b"sid=mine2; holdover_node=web-2.AAAAAAAAAAAAAAAA")
    assert ep is mine_again and node.gw.sessions.get(key2) is not None


@pytest.mark.parametrize("why", ["forged", "other session", "down", "unknown node", "self",
                                 "no forwarding"])
def test_a_route_cookie_that_cannot_be_followed_starts_the_session_here(node, why) -> None:
    keys = node.gw.keys
    key = keys.session_key(b"app", b"s1")
    route = {"forged": b"web-2.AAAAAAAAAAAAAAAA",
             "other session": keys.sign_route("web-2", keys.session_key(b"app", b"s2")),
             "unknown node": keys.sign_route("web-9", key),
             "self": keys.sign_route("web-1", key)}.get(why, keys.sign_route("web-2", key))
    if why == "down":
        node.peer.routable = False
    _, ep, _ = send(node, b"sid=s1; holdover_node=" + route, forward=why != "no forwarding")
    assert not ep.peer, why


def test_holdovers_own_pin_cookie_carries_a_route_cookie_too() -> None:
    h = Harness(cookie="")  # no app cookie: holdover offers its own pin cookie
    try:
        h.gw.router.node = "web-1"
        _, _, extra = send(h, None)
        assert PIN_COOKIE in extra and NODE_COOKIE in extra
        lines = [ln for ln in extra.split(b"\r\n") if ln.startswith(b"Set-Cookie: ")]
        pin = cookie_value(lines[0][12:].split(b";")[0], PIN_COOKIE)
        key = h.gw.keys.verify(pin)
        route = cookie_value(lines[1][12:].split(b";")[0], NODE_COOKIE)
        assert key is not None and h.gw.keys.verify_route(route, key) == "web-1"
    finally:
        h.close()


# -- a dead node, counted once -----------------------------------------------------------


class _Store(MemoryStore):
    """A memory store that can be made to fail, as a Redis that went away."""

    away = False

    async def claim_once(self, key: str, ttl: float) -> bool:
        if self.away:
            raise StoreError("the store is away")
        return await super().claim_once(key, ttl)


def _peers(store: MemoryStore, me: str, answers: bool) -> tuple[Peers, list[dict]]:
    events: list[dict] = []

    async def record_event(kind: str, message: str, revision: object = None,
                           worker: object = None, data: dict | None = None) -> None:
        events.append({"kind": kind, **(data or {})})
    ctl = SimpleNamespace(
        router=SimpleNamespace(node=None, peers={}, sessions_lost=0),
        sessions=SimpleNamespace(pins={}), store=store, record_event=record_event,
        config=SimpleNamespace(gateway_upstream_keepalive=4, gateway_upstream_idle_timeout=4.0),
        tasks=SimpleNamespace(spawn=lambda coro, name: asyncio.ensure_future(coro)))
    secret = ClusterSecret(Keys(b"h" * 32, [b"s" * 32]), b"p" * 32, Path("cluster.secret"))
    peers = Peers(ctl, secret, me)  # type: ignore[arg-type]

    async def probe(node: LiveNode) -> bool:
        return answers
    peers._answers = probe  # type: ignore[method-assign]
    return peers, events


DEAD = LiveNode("web-3", {"peer": "127.0.0.13:1", "started": 5.0, "sessions": 7}, 0.0)


def test_a_dead_node_is_counted_once_whichever_nodes_notice_it() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        (a, ev_a), (b, ev_b) = _peers(store, "web-1", False), _peers(store, "web-2", False)
        await asyncio.gather(a.node_gone(DEAD), b.node_gone(DEAD), a.node_gone(DEAD))
        lost = [p.ctl.router.sessions_lost for p in (a, b)]
        assert sorted(lost) == [0, 7], lost
        assert len(ev_a + ev_b) == 1 and (ev_a + ev_b)[0]["kind"] == "node-lost"
        counter = a if lost[0] else b
        assert counter.lost_nodes["web-3"]["sessions"] == 7
        other = b if counter is a else a
        other._told_lost(Change(1, 0.0, counter.me, "node-lost",
                                counter.lost_nodes["web-3"]))
        assert other.lost_nodes["web-3"]["counted_by"] == counter.me
        assert other.ctl.router.sessions_lost == 0, "told, not counted again"
    asyncio.run(main())


def test_a_node_that_answers_or_stopped_cleanly_costs_nothing() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        cut, _ = _peers(store, "web-1", True)  # lapsed, but its peer listener answers
        await cut.node_gone(DEAD)
        assert cut.ctl.router.sessions_lost == 0 and "web-3" in cut.cut_off
        leaving, _ = _peers(store, "web-3", False)
        leaving.started = 9.0
        await leaving.leaving()  # never joined: nothing to claim (and no store call)
        assert await store.claim_once("node-dead:web-3:9.0", 1)
        leaving.started = 10.0
        leaving.cluster = SimpleNamespace(nodes={})  # type: ignore[assignment]
        await leaving.leaving()  # it stops cleanly: it takes the claim itself
        b, events = _peers(store, "web-2", False)
        await b.node_gone(LiveNode("web-3", {**DEAD.info, "started": 10.0}, 0.0))
        assert b.ctl.router.sessions_lost == 0 and events == []
    asyncio.run(main())


def test_a_death_the_store_cannot_settle_is_settled_when_it_answers() -> None:
    async def main() -> None:
        store = _Store()
        await store.open()
        store.away = True
        a, events = _peers(store, "web-1", False)
        await a.node_gone(DEAD)
        assert a.ctl.router.sessions_lost == 0 and "web-3" in a.uncounted
        store.away = False
        a.cluster = SimpleNamespace(nodes={}, publish=_publish)  # type: ignore[assignment]
        a.sync(time.monotonic())  # the ticker's job asks again
        for _ in range(20):
            await asyncio.sleep(0)
        assert a.ctl.router.sessions_lost == 7 and not a.uncounted
        assert [e["kind"] for e in events] == ["node-lost"]
    asyncio.run(main())


async def _publish(kind: str, data: dict) -> None:
    return None


def test_a_head_full_of_route_cookies_costs_a_few_checks_only(node) -> None:
    """Each route cookie checked costs a MAC per signing key: a request stuffed with
    forged ones (a 64 KiB head holds thousands) is not allowed to cost thousands."""
    calls: list[bytes] = []

    class Counting(Keys):
        def verify_route(self, value: bytes, pin_key: str) -> str | None:
            calls.append(value)
            return super().verify_route(value, pin_key)
    keys = node.gw.router.keys = Counting.from_secrets(node.gw.keys.secrets())
    key = keys.session_key(b"app", b"s1")
    real = b"holdover_node=" + keys.sign_route("web-2", key)
    forged = b"; ".join(b"holdover_node=web-%d.AAAAAAAAAAAAAAAA" % i for i in range(2000))
    _, ep, _ = send(node, b"sid=s1; " + forged + b"; " + real)
    assert not ep.peer, "a genuine cookie behind thousands of forged ones is not looked for"
    assert 0 < len(calls) <= 8, len(calls)
    calls.clear()
    # A browser's few cookies (one per path or domain it was set for) are all read.
    few = b"; ".join(b"holdover_node=web-%d.AAAAAAAAAAAAAAAA" % i for i in range(5))
    _, ep, _ = send(node, b"sid=s1; " + few + b"; " + real)
    assert ep is node.peer and len(calls) == 6


def test_a_live_node_of_the_same_name_elsewhere_is_refused() -> None:
    # Two nodes given one name (a copied config) would share one pin table and
    # heartbeat and skip each other's changes as their own: the second is refused.
    peers, _ = _peers(MemoryStore(), "web-1", True)
    peers.address = "10.0.0.1:7070"
    other = LiveNode("web-1", {"peer": "10.0.0.2:7070", "fingerprint": peers.fingerprint}, 5.0)
    with pytest.raises(StoreError, match=r"node web-1 .* 10\.0\.0\.2"):
        peers.check([other])
    # Its own heartbeat from before a crash, on the same host, is no reason to refuse.
    peers.check([LiveNode("web-1", {"peer": "10.0.0.1:41000"}, 5.0)])
