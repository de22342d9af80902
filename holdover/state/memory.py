"""A state store in process memory: for tests, demos and ``store = "memory:"``.

It keeps the exact semantics of the SQLite store (same ordering, same copies, same JSON
rules) so code tested against it behaves the same on disk; it just forgets everything
when the process ends.  JSON fields are kept as JSON text, which both validates them like
the SQLite store does and makes every record handed out a fresh, independent copy.

It is also a ``SharedStore`` with the Redis store's semantics, so that several gateway
objects in one process (and unit tests) can share heartbeats, a change feed and pins.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .base import (
    Change,
    ChangeBatch,
    Event,
    LiveNode,
    PinEnd,
    PinRecord,
    PinTouch,
    RevisionRecord,
    SharedStore,
    StoreError,
    check_feed_args,
    check_limits,
    check_meta_value,
    check_ttl,
    dump_json,
)

_WHERE = "memory state store"


class MemoryStore(SharedStore):
    """Dicts and a list; every method completes without awaiting anything.

    ``feed_maxlen`` bounds the change feed as the Redis store's does (oldest dropped);
    ``node`` names the node whose pins it keeps.
    """

    def __init__(self, *, feed_maxlen: int = 10_000, node: str = "") -> None:
        self._open = False
        # id -> (record with empty env/meta, env JSON, meta JSON); dict order = insertion
        self._revisions: dict[str, tuple[RevisionRecord, str, str]] = {}
        # node -> key -> pin ("" without a node); PinRecord is frozen, holds no containers
        self._pin_tables: dict[str, dict[str, PinRecord]] = {}
        self.node = node  # whose pins this store saves and loads
        self._once: dict[str, float] = {}  # claim_once key -> monotonic expiry
        self._events: list[tuple[Event, str]] = []  # (event with empty data, data JSON)
        self._event_ids: list[int] = []  # parallel to _events, for bisect
        self._last_event_id = 0
        self._meta: dict[str, str] = {}
        self._nodes: dict[str, tuple[float, str]] = {}  # name -> (monotonic expiry, info JSON)
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (owner, monotonic expiry)
        self._feed: collections.deque[tuple[Change, str]] = collections.deque(
            maxlen=feed_maxlen)  # (change with empty data, data JSON)
        self._feed_seq = 0
        self._feed_waiters: list[asyncio.Future[None]] = []

    @property
    def _pins(self) -> dict[str, PinRecord]:
        return self._pin_tables.setdefault(self.node, {})

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"{_WHERE}: not open (call open() first)")

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    # -- revisions ---------------------------------------------------------------------

    async def put_revision(self, rec: RevisionRecord) -> None:
        self._check_open()
        env = dump_json(rec.env, _WHERE, f"revision {rec.id!r} env")
        meta = dump_json(rec.meta, _WHERE, f"revision {rec.id!r} meta")
        dump_json(list(rec.upstreams), _WHERE, f"revision {rec.id!r} upstreams")
        self._revisions[rec.id] = (replace(rec, env={}, meta={}), env, meta)

    async def delete_revision(self, id: str) -> None:
        self._check_open()
        self._revisions.pop(id, None)

    @staticmethod
    def _revision(entry: tuple[RevisionRecord, str, str]) -> RevisionRecord:
        rec, env, meta = entry
        return replace(rec, env=json.loads(env), meta=json.loads(meta))

    async def get_revision(self, id: str) -> RevisionRecord | None:
        self._check_open()
        entry = self._revisions.get(id)
        return None if entry is None else self._revision(entry)

    async def list_revisions(self) -> list[RevisionRecord]:
        self._check_open()
        entries = sorted(self._revisions.values(), key=lambda e: e[0].created_at)  # stable
        return [self._revision(e) for e in entries]

    # -- pins --------------------------------------------------------------------------

    async def put_pins(self, recs: Sequence[PinRecord]) -> None:
        self._check_open()
        self._pins.update((rec.key, rec) for rec in recs)

    async def delete_pins(self, keys: Sequence[str]) -> None:
        self._check_open()
        for key in keys:
            self._pins.pop(key, None)

    async def load_pins(self) -> list[PinRecord]:
        self._check_open()
        return [self._pins[k] for k in sorted(self._pins)]

    # -- events ------------------------------------------------------------------------

    async def add_event(self, kind: str, message: str, revision: str | None = None,
                        worker: str | None = None, data: dict[str, Any] | None = None) -> Event:
        self._check_open()
        text = dump_json(data or {}, _WHERE, f"event {kind!r} data")
        self._last_event_id += 1
        event = Event(self._last_event_id, time.time(), kind, revision, worker, message, {})
        self._events.append((event, text))
        self._event_ids.append(event.id)
        return replace(event, data=json.loads(text))

    async def events(self, limit: int = 100, after_id: int = 0,
                     kind: str | None = None) -> list[Event]:
        self._check_open()
        check_limits(limit, after_id)
        if limit == 0:
            return []
        found: list[tuple[Event, str]] = []
        if after_id > 0:
            for entry in self._events[bisect.bisect_right(self._event_ids, after_id):]:
                if kind is None or entry[0].kind == kind:
                    found.append(entry)
                    if len(found) == limit:
                        break
        else:
            for entry in reversed(self._events):
                if kind is None or entry[0].kind == kind:
                    found.append(entry)
                    if len(found) == limit:
                        break
            found.reverse()
        return [replace(event, data=json.loads(text)) for event, text in found]

    async def prune_events(self, keep: int) -> int:
        self._check_open()
        if keep < 0:
            raise ValueError(f"prune_events(): keep must be >= 0, got {keep}")
        drop = max(0, len(self._events) - keep)
        del self._events[:drop]
        del self._event_ids[:drop]
        return drop

    # -- small settings ----------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        self._check_open()
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self._check_open()
        check_meta_value(key, value)
        self._meta[key] = value

    # -- nodes -------------------------------------------------------------------------

    async def heartbeat(self, node: str, info: dict[str, Any], ttl: float) -> None:
        self._check_open()
        check_ttl(ttl)
        text = dump_json(info, _WHERE, f"node {node!r} info")
        self._nodes[node] = (time.monotonic() + ttl, text)

    async def live_nodes(self) -> list[LiveNode]:
        self._check_open()
        now = time.monotonic()
        for name in [n for n, (expiry, _) in self._nodes.items() if expiry <= now]:
            del self._nodes[name]
        return [LiveNode(name, json.loads(text), expiry - now)
                for name, (expiry, text) in sorted(self._nodes.items())]

    async def forget_node(self, node: str) -> None:
        self._check_open()
        self._nodes.pop(node, None)

    async def claim_once(self, key: str, ttl: float) -> bool:
        self._check_open()
        check_ttl(ttl)
        now = time.monotonic()
        if self._once.get(key, 0.0) > now:
            return False
        self._once[key] = now + ttl
        return True

    async def forget_pins_of(self, node: str) -> None:
        self._check_open()
        self._pin_tables.pop(node, None)

    # -- change feed -------------------------------------------------------------------

    async def publish_change(self, node: str, kind: str,
                             data: dict[str, Any] | None = None) -> Change:
        self._check_open()
        text = dump_json(data or {}, _WHERE, f"change {kind!r} data")
        self._feed_seq += 1
        change = Change(self._feed_seq, time.time(), node, kind, {})
        self._feed.append((change, text))
        waiters, self._feed_waiters = self._feed_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return replace(change, data=json.loads(text))

    def _batch(self, after: int, limit: int) -> ChangeBatch:
        if after > self._feed_seq or (after < self._feed_seq and (
                not self._feed or self._feed[0][0].seq > after + 1)):
            return ChangeBatch([], self._feed_seq, missed=True)
        first = self._feed[0][0].seq if self._feed else after + 1
        start = max(0, after + 1 - first)
        found = [replace(c, data=json.loads(text))
                 for c, text in list(self._feed)[start:start + limit]]
        return ChangeBatch(found, found[-1].seq if found else after)

    async def read_changes(self, after: int = 0, limit: int = 100,
                           wait: float = 0.0) -> ChangeBatch:
        self._check_open()
        check_feed_args(after, limit, wait)
        batch = self._batch(after, limit)
        if batch.changes or batch.missed or wait <= 0 or limit == 0:
            return batch
        waiter = asyncio.get_running_loop().create_future()
        self._feed_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, wait)
        except TimeoutError:
            pass
        finally:
            if waiter in self._feed_waiters:
                self._feed_waiters.remove(waiter)
        self._check_open()
        return self._batch(after, limit)

    async def feed_position(self) -> int:
        self._check_open()
        return self._feed_seq

    # -- shared pins -------------------------------------------------------------------

    async def get_pin(self, key: str) -> PinRecord | None:
        self._check_open()
        return self._pins.get(key)

    async def claim_pin(self, rec: PinRecord) -> PinRecord:
        self._check_open()
        return self._pins.setdefault(rec.key, rec)

    async def touch_pins(self, touches: Sequence[PinTouch]) -> list[str]:
        self._check_open()
        gone = []
        for key, incarnation, last_seen, expires_at in touches:
            old = self._pins.get(key)
            if old is None or old.incarnation != incarnation:
                gone.append(key)
            elif last_seen >= old.last_seen:
                self._pins[key] = replace(old, last_seen=last_seen, expires_at=expires_at)
        return gone

    async def end_pins(self, ends: Sequence[PinEnd]) -> list[str]:
        self._check_open()
        ended = []
        for key, incarnation in ends:
            old = self._pins.get(key)
            if old is not None and old.incarnation == incarnation:
                del self._pins[key]
                ended.append(key)
        return ended

    # -- locks -------------------------------------------------------------------------

    async def acquire(self, name: str, owner: str, ttl: float) -> str:
        self._check_open()
        check_ttl(ttl)
        held = self._locks.get(name)
        now = time.monotonic()
        if held is None or held[1] <= now or held[0] == owner:
            self._locks[name] = (owner, now + ttl)
            return owner
        return held[0]

    async def release(self, name: str, owner: str) -> bool:
        self._check_open()
        held = self._locks.get(name)
        if held is not None and held[0] == owner and held[1] > time.monotonic():
            del self._locks[name]
            return True
        return False
