"""What only a shared store does, as one contract for MemoryStore and RedisStore.

Heartbeats that expire, a change feed that a consumer resumes from its position (and is
told when it fell behind), and pins that many nodes claim at once with one winner.  Each
"node" of a test is a store object of its own: for Redis, its own connections to the one
real redis-server, as separate gateways would have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from holdover.state import MemoryStore, PinRecord, RedisStore, SharedStore, StoreError


class MemoryNode:
    """One node's handle on a memory store shared in-process: closing it closes only it."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._open = False

    async def open(self) -> None:
        await self._store.open()
        self._open = True

    async def close(self) -> None:
        self._open = False

    def __getattr__(self, name: str) -> Any:
        if not self._open:
            raise StoreError("memory node: not open")
        return getattr(self._store, name)

    async def __aenter__(self) -> MemoryNode:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Shared:
    """Makes store objects that share one state: one memory store, or one Redis prefix."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self._memory: dict[int, MemoryStore] = {}

    def make(self, feed_maxlen: int = 10_000) -> SharedStore:
        if self.kind == "redis":
            return RedisStore(self.redis_url, feed_maxlen=feed_maxlen)
        memory = self._memory.setdefault(feed_maxlen, MemoryStore(feed_maxlen=feed_maxlen))
        return MemoryNode(memory)  # type: ignore[return-value]


@pytest.fixture(params=["memory", "redis"])
def shared(request: pytest.FixtureRequest) -> Shared:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Shared(request.param, url)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def eventually(cond: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Await ``cond()`` until it is truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def pin(key: str, worker: str, last_seen: float = 100.0) -> PinRecord:
    return PinRecord(key=key, worker=worker, incarnation=f"{worker}-inc", revision="v1",
                     created_at=50.0, last_seen=last_seen, expires_at=last_seen + 1800)


# -- heartbeats ------------------------------------------------------------------------


def test_heartbeats_list_live_nodes_until_they_expire(shared: Shared) -> None:
    async def main() -> None:
        async with shared.make() as a, shared.make() as b:
            assert await a.live_nodes() == []
            await a.heartbeat("web-1", {"advertise": "10.0.0.1", "started_at": 1.5}, ttl=30)
            await b.heartbeat("web-2", {"advertise": "10.0.0.2"}, ttl=2)
            nodes = await b.live_nodes()
            assert [n.name for n in nodes] == ["web-1", "web-2"]
            assert nodes[0].info == {"advertise": "10.0.0.1", "started_at": 1.5}
            assert 25 < nodes[0].expires_in <= 30
            assert 0 < nodes[1].expires_in <= 2

            # web-2 stops renewing: it disappears from every node's view; web-1 stays
            async def only_web1() -> bool:
                return [n.name for n in await a.live_nodes()] == ["web-1"]
            await eventually(only_web1, 15, "web-2's heartbeat to expire")

            # renewing replaces the info and the expiry
            await b.heartbeat("web-2", {"advertise": "10.0.0.22"}, ttl=60)
            (renewed,) = [n for n in await a.live_nodes() if n.name == "web-2"]
            assert renewed.info == {"advertise": "10.0.0.22"} and renewed.expires_in > 50

            await a.forget_node("web-1")  # a clean shutdown needs no expiry
            assert [n.name for n in await b.live_nodes()] == ["web-2"]
            await a.forget_node("never-seen")
            with pytest.raises(ValueError):
                await a.heartbeat("web-1", {}, ttl=0)
    run(main())


# -- the change feed -------------------------------------------------------------------


def test_change_feed_keeps_order_and_pages_without_gaps(shared: Shared) -> None:
    async def main() -> None:
        async with shared.make() as a, shared.make() as b:
            start = await b.feed_position()
            assert (await b.read_changes(start)).changes == []
            published = []
            for i in range(20):
                node, store = ("web-1", a) if i % 2 else ("web-2", b)
                published.append(await store.publish_change(node, "pin", {"i": i}))
            seqs = [c.seq for c in published]
            assert seqs == sorted(seqs) and len(set(seqs)) == 20
            assert await a.feed_position() == seqs[-1]

            got, position = [], start
            while batch := await b.read_changes(position, limit=7):
                assert not batch.missed
                if not batch.changes:
                    break
                got += batch.changes
                position = batch.position
            assert got == published
            assert position == seqs[-1]
            assert [c.data["i"] for c in got] == list(range(20))
            assert [c.node for c in got[:2]] == ["web-2", "web-1"]
            # 0 is the start of the feed
            assert (await a.read_changes(0, limit=100)).changes == published
            assert (await a.read_changes(seqs[9], limit=3)).changes == published[10:13]
            assert (await a.read_changes(seqs[9], limit=0)).changes == []
    run(main())


def test_a_consumer_resumes_after_a_disconnect(shared: Shared) -> None:
    async def main() -> None:
        producer = shared.make()
        async with producer:
            async with shared.make() as consumer:
                position = await consumer.feed_position()
                first = [await producer.publish_change("web-1", "end", {"n": n})
                         for n in range(3)]
                batch = await consumer.read_changes(position)
                assert batch.changes == first
                position = batch.position
            # the consumer is gone (closed, its connections too) while more happens
            later = [await producer.publish_change("web-1", "end", {"n": n})
                     for n in range(3, 8)]
            async with shared.make() as consumer:  # as after a reconnect or restart
                batch = await consumer.read_changes(position)
                assert not batch.missed
                assert batch.changes == later
    run(main())


def test_a_waiting_consumer_wakes_when_a_change_is_published(shared: Shared) -> None:
    async def main() -> None:
        async with shared.make() as a, shared.make() as b:
            position = await b.feed_position()
            started = time.monotonic()
            empty = await b.read_changes(position, wait=0.3)
            assert empty.changes == [] and not empty.missed and empty.position == position
            assert time.monotonic() - started >= 0.25  # it did wait

            waiting = asyncio.ensure_future(b.read_changes(position, wait=20))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            # other calls of the waiting store go on meanwhile
            assert await b.feed_position() == position
            started = time.monotonic()
            change = await a.publish_change("web-1", "deploy", {"rev": "v2"})
            batch = await asyncio.wait_for(waiting, 10)
            assert batch.changes == [change]
            assert time.monotonic() - started < 5  # woken, not timed out
            with pytest.raises(ValueError):
                await b.read_changes(position, wait=-1)
    run(main())


def test_a_consumer_too_far_behind_is_told_it_missed_changes(shared: Shared) -> None:
    async def main() -> None:
        # Redis trims a stream approximately (whole blocks of 100 entries): publish enough
        async with shared.make(feed_maxlen=5) as store:
            first = await store.publish_change("web-1", "pin", {"n": 0})
            for n in range(1, 400):
                last = await store.publish_change("web-1", "pin", {"n": n})
            behind = await store.read_changes(first.seq)
            assert behind.missed and behind.changes == []
            assert behind.position == last.seq  # reload, then go on from here
            assert (await store.read_changes(0)).missed  # the start is gone too
            assert await store.read_changes(behind.position) == type(behind)([], last.seq)
            # one entry before the last is still kept: no gap
            kept = await store.read_changes(last.seq - 1)
            assert not kept.missed and [c.seq for c in kept.changes] == [last.seq]
            # a position from the future (a store that lost its data) is missed as well
            lost = await store.read_changes(last.seq + 1000)
            assert lost.missed and lost.position == last.seq
    run(main())


# -- pins ------------------------------------------------------------------------------


def test_many_concurrent_claims_of_one_key_have_one_winner(shared: Shared) -> None:
    async def main() -> None:
        nodes = [shared.make() for _ in range(5)]
        for node in nodes:
            await node.open()
        try:
            for round_ in range(3):
                key = f"session-{round_}"
                claims = [pin(key, f"w{n}-{i}") for n, _ in enumerate(nodes)
                          for i in range(10)]
                results = await asyncio.gather(*(nodes[i % 5].claim_pin(c)
                                                 for i, c in enumerate(claims)))
                winners = {r.incarnation for r in results}
                assert len(winners) == 1, winners
                (winner,) = {r for r in results}
                assert winner in claims
                assert await nodes[3].get_pin(key) == winner
                # a retried claim by the winner wins again; a loser still gets the winner
                assert await nodes[0].claim_pin(winner) == winner
                loser = next(c for c in claims if c != winner)
                assert await nodes[1].claim_pin(loser) == winner
        finally:
            for node in nodes:
                await node.close()
    run(main())


def test_touches_never_go_back_nor_revive_and_ends_are_conditional(shared: Shared) -> None:
    async def main() -> None:
        async with shared.make() as a, shared.make() as b:
            first = pin("k1", "w1", last_seen=100.0)
            assert await a.claim_pin(first) == first
            assert await a.get_pin("missing") is None

            # touches from two nodes, arriving out of order: the newest wins
            assert await b.touch_pins([("k1", "w1-inc", 300.0, 2100.0)]) == []
            assert await a.touch_pins([("k1", "w1-inc", 200.0, 2000.0)]) == []
            got = await a.get_pin("k1")
            assert (got.last_seen, got.expires_at) == (300.0, 2100.0)
            assert (got.worker, got.created_at) == ("w1", 50.0)
            assert await a.touch_pins([("k1", "w1-inc", 300.5, None)]) == []
            assert (await b.get_pin("k1")).expires_at is None

            # a touch of a pin that is gone, or now names another incarnation, says so
            assert await a.touch_pins([("nope", "w1-inc", 1.0, None),
                                       ("k1", "w9-inc", 999.0, None)]) == ["nope", "k1"]
            assert await a.get_pin("nope") is None  # a touch never creates a pin
            assert (await a.get_pin("k1")).last_seen == 300.5

            # an end names the incarnation: a stale end keeps a newer claim
            assert await b.end_pins([("k1", "w9-inc")]) == []
            assert await b.end_pins([("k1", "w1-inc"), ("nope", "w1-inc")]) == ["k1"]
            assert await a.get_pin("k1") is None
            assert await a.end_pins([("k1", "w1-inc")]) == []  # ending twice is harmless
            second = pin("k1", "w2", last_seen=400.0)
            assert await b.claim_pin(second) == second  # the key is free again
            assert await a.end_pins([("k1", "w1-inc")]) == []  # the late end of the first
            assert await a.get_pin("k1") == second
            assert await a.touch_pins([]) == [] and await a.end_pins([]) == []

            # claims and the plain pin API see the same pins
            assert second in await b.load_pins()
            await a.put_pins([dataclasses.replace(second, worker="w3", incarnation="w3-inc")])
            assert (await b.claim_pin(second)).incarnation == "w3-inc"
    run(main())


# -- locks -----------------------------------------------------------------------------


def test_a_lock_has_one_holder_until_it_is_released_or_lapses(shared: Shared) -> None:
    async def main() -> None:
        nodes = [shared.make() for _ in range(4)]
        for node in nodes:
            await node.open()
        try:
            got = await asyncio.gather(*(n.acquire("ops", f"node-{i}", 30.0)
                                         for i, n in enumerate(nodes)))
            (holder,) = set(got)  # every caller is told the same one holder
            assert holder in {f"node-{i}" for i in range(4)}
            other = next(f"node-{i}" for i in range(4) if f"node-{i}" != holder)
            # the holder renews; another owner can neither take nor release it
            assert await nodes[0].acquire("ops", holder, 30.0) == holder
            assert await nodes[1].release("ops", other) is False
            assert await nodes[2].acquire("ops", other, 30.0) == holder
            assert await nodes[3].acquire("other-lock", other, 30.0) == other
            assert await nodes[0].release("ops", holder) is True
            assert await nodes[0].release("ops", holder) is False
            assert await nodes[1].acquire("ops", other, 0.3) == other
            # a holder that never releases (a node that died) lets go by expiry
            assert await nodes[2].acquire("ops", "node-late", 30.0) == other
            await eventually(lambda: _is(nodes[2], "node-late"), 5, "the lock to lapse")
        finally:
            for node in nodes:
                await node.close()
    run(main())


async def _is(node: SharedStore, owner: str) -> bool:
    return await node.acquire("ops", owner, 30.0) == owner


# -- steps one node takes for the cluster, and pins per node ------------------------------


def test_claim_once_has_one_winner_among_nodes_until_its_ttl(shared: Shared) -> None:
    async def main() -> None:
        nodes = [shared.make() for _ in range(4)]
        for node in nodes:
            await node.open()
        try:
            results = await asyncio.gather(*(nodes[i % 4].claim_once("node-dead:web-3:1", 0.6)
                                             for i in range(20)))
            assert results.count(True) == 1, results
            assert not await nodes[2].claim_once("node-dead:web-3:1", 0.6)
            assert await nodes[1].claim_once("node-dead:web-3:2", 60), "another key: its own"
            await eventually(lambda: nodes[3].claim_once("node-dead:web-3:1", 60), 5,
                             "the claim to lapse after its ttl")
            with pytest.raises(ValueError):
                await nodes[0].claim_once("k", 0)
        finally:
            for node in nodes:
                await node.close()
    run(main())


def test_each_node_saves_and_loads_only_its_own_pins(redis_url: str) -> None:
    async def main() -> None:
        legacy = RedisStore(redis_url)  # a single gateway of before: pins under "pins"
        a, b = RedisStore(redis_url, node="web-1"), RedisStore(redis_url, node="web-2")
        await legacy.open()
        await legacy.put_pins([pin("old", "w0")])
        await legacy.close()
        await a.open()  # the first node to open takes the single gateway's pins
        await b.open()
        try:
            assert [p.key for p in await a.load_pins()] == ["old"]
            await a.put_pins([pin("s1", "w1"), pin("s2", "w1")])
            await b.put_pins([pin("s3", "w2")])
            assert [p.key for p in await a.load_pins()] == ["old", "s1", "s2"]
            assert [p.key for p in await b.load_pins()] == ["s3"]
            assert await b.get_pin("s1") is None
            await b.forget_pins_of("web-1")  # web-1 died: a survivor forgets its pins
            assert await a.load_pins() == []
            assert [p.key for p in await b.load_pins()] == ["s3"]
        finally:
            await a.close()
            await b.close()
    run(main())
