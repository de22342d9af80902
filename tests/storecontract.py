"""The state store contract: every backend must pass these (see tests/unit and tests/e2e).

tests/unit/test_state_store.py runs them on the memory and SQLite stores (in-process);
tests/e2e/test_state_store_redis.py on a real redis-server.  Each of those modules
defines the ``backend`` fixture with its kinds and imports the tests from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from holdover.state import (
    Event,
    MemoryStore,
    PinRecord,
    RedisStore,
    RevisionRecord,
    SQLiteStore,
    StateStore,
    StoreError,
)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def rev(id: str, created_at: float, state: str = "active", **kw: Any) -> RevisionRecord:
    return RevisionRecord(id=id, state=state, command=f"python app.py --rev {id}", cwd="/srv/app",
                          env={"MODE": id}, workers=2, created_at=created_at, release_dir=None,
                          updated_at=created_at, **kw)


def pin(i: int, worker: str = "w1", revision: str = "v1") -> PinRecord:
    key = hashlib.sha256(f"session-{i}".encode()).hexdigest()
    return PinRecord(key=key, worker=worker, incarnation=f"{worker}-inc", revision=revision,
                     created_at=1000.0 + i, last_seen=2000.0 + i,
                     expires_at=None if i % 2 else 3000.0 + i)


class Backend:
    """Makes stores of one kind; ``reopen`` gives a fresh store on the same storage."""

    def __init__(self, kind: str, tmp: Path, redis_url: str | None = None) -> None:
        self.kind = kind
        self.path = tmp / "state" / "holdover.db"
        self.redis_url = redis_url
        self._memory = MemoryStore()

    def make(self) -> StateStore:
        if self.kind == "memory":
            return self._memory
        if self.kind == "redis":
            return RedisStore(self.redis_url)
        return SQLiteStore(self.path)


def with_store(backend: Backend, body: Callable[[StateStore], Coroutine[Any, Any, Any]]) -> Any:
    async def main() -> Any:
        async with backend.make() as store:
            return await body(store)
    return run(main())


# -- the contract, for every backend ---------------------------------------------------


def test_revisions_upsert_get_and_list_in_creation_order(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        assert await store.get_revision("v1") is None
        assert await store.list_revisions() == []
        # put out of creation order; two with the same created_at keep insertion order
        await store.put_revision(rev("v3", 30.0))
        await store.put_revision(rev("v1", 10.0, meta={"git": "abc"}))
        await store.put_revision(rev("v2b", 20.0))
        await store.put_revision(rev("v2a", 20.0))
        assert [r.id for r in await store.list_revisions()] == ["v1", "v2b", "v2a", "v3"]

        got = await store.get_revision("v1")
        assert got == rev("v1", 10.0, meta={"git": "abc"})
        assert got.canary_percent == 0.0 and got.release_dir is None

        # upsert replaces every field, keeps one row, and keeps the position among equals
        newer = dataclasses.replace(rev("v2b", 20.0), state="draining", workers=4,
                                    env={"A": "1", "B": "2"}, release_dir="/rel/v2b",
                                    canary_percent=12.5, updated_at=99.5, meta={"n": [1, 2]})
        await store.put_revision(newer)
        assert await store.get_revision("v2b") == newer
        listed = await store.list_revisions()
        assert [r.id for r in listed] == ["v1", "v2b", "v2a", "v3"]
        assert listed[1] == newer

        # forgetting one leaves the others and their order; twice is harmless
        await store.delete_revision("v2b")
        await store.delete_revision("v2b")
        await store.delete_revision("never-there")
        assert [r.id for r in await store.list_revisions()] == ["v1", "v2a", "v3"]
        assert await store.get_revision("v2b") is None
        await store.put_revision(rev("v2b", 20.0))  # a new record of that id goes last
        assert [r.id for r in await store.list_revisions()] == ["v1", "v2a", "v2b", "v3"]

    with_store(backend, body)


def test_revisions_say_who_runs_their_workers(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        await store.put_revision(rev("v1", 1.0))
        urls = ["http://10.1.0.5:8000", "http://[fd00::6]:8000"]
        await store.put_revision(rev("v2", 2.0, kind="external", upstreams=urls))
        await store.put_revision(rev("v3", 3.0, kind="external",
                                     discover="dns+srv:_http._tcp.app-v3.example"))
        urls.append("http://10.1.0.7:8000")  # the caller's list is not the stored one
        v1, v2, v3 = await store.list_revisions()
        assert (v1.kind, v1.upstreams, v1.discover) == ("supervised", (), "")
        assert v2.kind == "external" and v2.upstreams == ("http://10.1.0.5:8000",
                                                          "http://[fd00::6]:8000")
        assert v3.kind == "external" and v3.discover == "dns+srv:_http._tcp.app-v3.example"
        assert await store.get_revision("v2") == rev("v2", 2.0, kind="external",
                                                     upstreams=v2.upstreams)
        # the kind can change with an upsert (a revision id deployed again another way)
        await store.put_revision(rev("v2", 2.0))
        assert (await store.get_revision("v2")).kind == "supervised"

    with_store(backend, body)


def test_pins_upsert_delete_load_in_batches_of_10k(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        assert await store.load_pins() == []
        pins = [pin(i) for i in range(10_000)]
        started = time.perf_counter()
        await store.put_pins(pins)
        assert time.perf_counter() - started < 1.0
        loaded = await store.load_pins()
        assert loaded == sorted(pins, key=lambda p: p.key)

        # upsert: 100 existing pins move to another worker, 5 new ones appear
        moved = [dataclasses.replace(p, worker="w2", incarnation="w2-inc", last_seen=9e9)
                 for p in pins[:100]]
        fresh = [pin(i, revision="v2") for i in range(10_000, 10_005)]
        await store.put_pins(moved + fresh)
        by_key = {p.key: p for p in await store.load_pins()}
        assert len(by_key) == 10_005
        assert all(by_key[p.key] == p for p in moved + fresh)
        assert by_key[pins[100].key] == pins[100]

        # delete: known keys go, unknown keys are ignored, empty batches are fine
        gone = [p.key for p in pins[:5000]]
        started = time.perf_counter()
        await store.delete_pins([*gone, "no-such-key"])
        assert time.perf_counter() - started < 1.0
        await store.delete_pins([])
        await store.put_pins([])
        left = {p.key for p in await store.load_pins()}
        assert len(left) == 5005
        assert left.isdisjoint(gone)

    with_store(backend, body)


def test_events_have_increasing_ids_and_filter_and_prune(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        assert await store.events() == []
        before = time.time()
        first = await store.add_event("deploy", "v2 deployed", revision="v2",
                                      data={"workers": 2, "from": "v1"})
        assert isinstance(first, Event)
        assert first.kind == "deploy" and first.revision == "v2" and first.worker is None
        assert first.data == {"workers": 2, "from": "v1"}
        assert before <= first.ts <= time.time()
        added = [first]
        for i in range(1, 20):
            kind = "crash" if i % 3 == 0 else "deploy"
            added.append(await store.add_event(kind, f"event {i}", worker=f"w{i}"))
        ids = [e.id for e in added]
        assert ids == sorted(ids) and len(set(ids)) == 20

        assert await store.events() == added  # newest last
        assert await store.events(limit=3) == added[-3:]  # the newest three
        assert await store.events(limit=0) == []
        crashes = [e for e in added if e.kind == "crash"]
        assert await store.events(kind="crash") == crashes
        assert await store.events(kind="crash", limit=2) == crashes[-2:]
        assert await store.events(kind="nothing") == []

        # after_id is a cursor: the first `limit` after it, so paging has no gaps
        assert await store.events(after_id=ids[4], limit=3) == added[5:8]
        assert await store.events(after_id=ids[-1]) == []
        assert await store.events(after_id=ids[0], kind="crash", limit=2) == crashes[:2]
        paged, cursor = [added[0]], ids[0]
        while page := await store.events(after_id=cursor, limit=6):
            paged += page
            cursor = page[-1].id
        assert paged == added
        with pytest.raises(ValueError):
            await store.events(limit=-1)

        assert await store.prune_events(keep=5) == 15
        assert await store.events() == added[-5:]
        assert await store.prune_events(keep=5) == 0
        assert await store.prune_events(keep=0) == 5
        assert await store.events() == []
        # ids are never reused, even after every event was pruned
        later = await store.add_event("rollback", "back to v1")
        assert later.id > ids[-1]
        assert await store.events() == [later]

    with_store(backend, body)


def test_concurrent_calls_all_land_with_unique_increasing_ids(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        events = await asyncio.gather(*(store.add_event("tick", str(i)) for i in range(50)))
        assert len({e.id for e in events}) == 50
        stored = await store.events(limit=100)
        assert [e.id for e in stored] == sorted(e.id for e in events)
        # gather keeps call order, and the store serves calls in call order
        assert [e.message for e in stored] == [str(i) for i in range(50)]

    with_store(backend, body)


def test_meta(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        assert await store.get_meta("active_revision") is None
        await store.set_meta("active_revision", "v1")
        await store.set_meta("other", "x")
        await store.set_meta("active_revision", "v2")
        assert await store.get_meta("active_revision") == "v2"
        assert await store.get_meta("other") == "x"
        await store.set_meta("empty", "")
        assert await store.get_meta("empty") == ""
        with pytest.raises(TypeError):
            await store.set_meta("n", 3)  # type: ignore[arg-type]

    with_store(backend, body)


def test_records_handed_out_are_independent_copies(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        env = {"A": "1"}
        meta: dict[str, Any] = {"tags": ["x"]}
        await store.put_revision(dataclasses.replace(rev("v1", 1.0), env=env, meta=meta))
        env["A"] = "changed by caller"  # the caller's dicts are not the stored ones
        meta["tags"].append("y")
        got = await store.get_revision("v1")
        assert got.env == {"A": "1"} and got.meta == {"tags": ["x"]}
        got.env["A"] = "changed"  # nor are the dicts handed out
        got.meta["tags"].append("z")
        (listed,) = await store.list_revisions()
        listed.env.clear()
        assert (await store.get_revision("v1")).env == {"A": "1"}
        assert (await store.get_revision("v1")).meta == {"tags": ["x"]}

        data = {"k": {"deep": 1}}
        event = await store.add_event("deploy", "m", data=data)
        data["k"]["deep"] = 2
        event.data["k"]["deep"] = 3
        (stored,) = await store.events()
        assert stored.data == {"k": {"deep": 1}}
        stored.data.clear()
        assert (await store.events())[0].data == {"k": {"deep": 1}}

        await store.put_pins([pin(1)])
        (p,) = await store.load_pins()
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.worker = "w9"  # type: ignore[misc]

    with_store(backend, body)


def test_values_json_cannot_hold_are_refused_and_nothing_is_stored(backend: Backend) -> None:
    async def body(store: StateStore) -> None:
        bad = dataclasses.replace(rev("v1", 1.0), meta={"when": object()})
        with pytest.raises(StoreError, match="revision 'v1' meta"):
            await store.put_revision(bad)
        assert await store.get_revision("v1") is None
        with pytest.raises(StoreError, match="JSON"):
            await store.add_event("deploy", "m", data={"x": float("nan")})
        assert await store.events() == []

    with_store(backend, body)


def test_closed_store_refuses_calls_and_reopen_keeps_everything(backend: Backend) -> None:
    pins = [pin(i) for i in range(300)]

    async def main() -> None:
        store = backend.make()
        with pytest.raises(StoreError, match="not open"):
            await store.get_meta("x")
        await store.open()
        await store.open()  # a second open does nothing
        await store.put_revision(rev("v1", 1.0))
        await store.put_revision(rev("v2", 2.0, state="starting", canary_percent=5.0))
        await store.put_pins(pins)
        await store.delete_pins([pins[0].key])
        for i in range(5):
            await store.add_event("deploy", f"e{i}", data={"i": i})
        await store.prune_events(keep=3)
        await store.set_meta("active_revision", "v1")
        before = (await store.list_revisions(), await store.load_pins(), await store.events(),
                  await store.get_meta("active_revision"))
        await store.close()
        await store.close()  # a second close does nothing
        with pytest.raises(StoreError, match="not open"):
            await store.load_pins()

        # SQLite, Redis: a brand-new store object on the same file or Redis (as after a
        # gateway restart).  Memory: the same object opened again (its memory cannot
        # outlive the process).
        again = backend.make()
        if backend.kind != "memory":
            assert again is not store
        async with again:
            after = (await again.list_revisions(), await again.load_pins(),
                     await again.events(), await again.get_meta("active_revision"))
            assert after == before
            assert len(after[1]) == 299 and [e.message for e in after[2]] == ["e2", "e3", "e4"]
            event = await again.add_event("restart", "gateway restarted")
            assert event.id > before[2][-1].id

    run(main())


# -- open_store ------------------------------------------------------------------------
