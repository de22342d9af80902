"""A state store in process memory: for tests, demos and ``state_store = "memory:"``.

It keeps the exact semantics of the SQLite store (same ordering, same copies, same JSON
rules) so code tested against it behaves the same on disk; it just forgets everything
when the process ends.  JSON fields are kept as JSON text, which both validates them like
the SQLite store does and makes every record handed out a fresh, independent copy.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .base import (
    Event,
    PinRecord,
    RevisionRecord,
    StateStore,
    StoreError,
    check_limits,
    check_meta_value,
    dump_json,
)

_WHERE = "memory state store"


class MemoryStore(StateStore):
    """Dicts and a list; every method completes without awaiting anything."""

    def __init__(self) -> None:
        self._open = False
        # id -> (record with empty env/meta, env JSON, meta JSON); dict order = insertion
        self._revisions: dict[str, tuple[RevisionRecord, str, str]] = {}
        self._pins: dict[str, PinRecord] = {}  # PinRecord is frozen and holds no containers
        self._events: list[tuple[Event, str]] = []  # (event with empty data, data JSON)
        self._event_ids: list[int] = []  # parallel to _events, for bisect
        self._last_event_id = 0
        self._meta: dict[str, str] = {}

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
        self._revisions[rec.id] = (replace(rec, env={}, meta={}), env, meta)

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
