"""The state store's records and interface: what holdover must remember across restarts.

A gateway restart must forget no revision, no session pin and no event (SPEC, "Operating
it"), so the supervisor and the router persist them through this one interface, whatever
the backend.  Records are frozen values; a backend copies them in and out (the JSON fields
``env``, ``meta`` and ``data`` included), so nothing a caller holds can change what is
stored, and every backend accepts exactly what JSON can represent.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self


class StoreError(Exception):
    """The store cannot do what was asked; the message says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    """One revision of the app as deployed: how to run it and where it is in its life.

    ``state`` is the revision lifecycle state (starting, active, draining, retired,
    failed); the store does not interpret it.
    """

    id: str
    state: str
    command: str
    cwd: str
    env: dict[str, str]
    workers: int
    created_at: float
    release_dir: str | None
    updated_at: float
    canary_percent: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PinRecord:
    """A session pinned to one worker incarnation (and so one revision).

    ``key`` is opaque to the store and is already a hash: a raw session id or cookie value
    must never be stored.  ``incarnation`` names the worker process the session's memory
    lives in, so that a pin to a restarted worker can be recognised as lost.
    """

    key: str
    worker: str
    incarnation: str
    revision: str
    created_at: float
    last_seen: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened (deploy, rollback, worker crash, lost sessions ...)."""

    id: int
    ts: float
    kind: str
    revision: str | None
    worker: str | None
    message: str
    data: dict[str, Any]


class StateStore(abc.ABC):
    """Where holdover keeps revisions, pins, events and small settings.

    Every method is a coroutine; none blocks the event loop.  Call ``open()`` first (or use
    ``async with store:``); any other call on a store that is not open raises StoreError.
    Failures of the backend (unreadable or read-only file, full disk, corrupt data,
    values JSON cannot represent) raise StoreError; a failed write changes nothing, and
    the store stays usable.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Make the store ready (create it on first use); a second call does nothing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending calls and release resources; a second call does nothing."""

    # -- revisions ---------------------------------------------------------------------

    @abc.abstractmethod
    async def put_revision(self, rec: RevisionRecord) -> None:
        """Insert the revision, or replace every field of the one with the same id."""

    @abc.abstractmethod
    async def get_revision(self, id: str) -> RevisionRecord | None:
        """The revision with this id, or None."""

    @abc.abstractmethod
    async def list_revisions(self) -> list[RevisionRecord]:
        """All revisions in creation order (``created_at``, then first insertion)."""

    # -- pins --------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_pins(self, recs: Sequence[PinRecord]) -> None:
        """Insert or replace (by key) a batch of pins, all or nothing."""

    @abc.abstractmethod
    async def delete_pins(self, keys: Sequence[str]) -> None:
        """Delete the pins with these keys; unknown keys are ignored."""

    @abc.abstractmethod
    async def load_pins(self) -> list[PinRecord]:
        """Every pin, ordered by key."""

    # -- events ------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_event(self, kind: str, message: str, revision: str | None = None,
                        worker: str | None = None, data: dict[str, Any] | None = None) -> Event:
        """Record an event now; ids increase monotonically and are never reused."""

    @abc.abstractmethod
    async def events(self, limit: int = 100, after_id: int = 0,
                     kind: str | None = None) -> list[Event]:
        """Events of ``kind`` (all kinds if None), oldest first (newest last).

        ``after_id=0``: the newest ``limit`` events (a tail).  ``after_id > 0``: the first
        ``limit`` events with a larger id (a cursor: call again with the last id returned
        to get the rest, without gaps).  Ids start at 1, so 0 always means the tail; to
        read all events kept, ask for the tail with a ``limit`` of at least what
        ``prune_events`` keeps.
        """

    @abc.abstractmethod
    async def prune_events(self, keep: int) -> int:
        """Delete all but the newest ``keep`` events; returns how many were deleted."""

    # -- small settings ----------------------------------------------------------------

    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""

    @abc.abstractmethod
    async def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def dump_json(value: Any, where: str, what: str) -> str:
    """``value`` as JSON text, or StoreError naming the store and the field."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: cannot store {what}: not representable as JSON ({e})") from e


def check_limits(limit: int, after_id: int) -> None:
    """Refuse arguments of ``events`` that have no sensible meaning."""
    if limit < 0 or after_id < 0:
        raise ValueError(f"events(): limit and after_id must be >= 0, got {limit}, {after_id}")


def check_meta_value(key: str, value: str) -> None:
    """Meta values are text; anything else is a caller's bug, refused the same everywhere."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(f"set_meta(): key and value must be str, got {key!r}: {value!r}")
