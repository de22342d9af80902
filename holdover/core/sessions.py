"""Sessions and their pins, as plain data.

A *pin* binds a session to the worker process that created it (docs/design.md, "Routing rules").
The table answers three questions fast and without I/O: which worker holds this
session, how many sessions each worker and revision holds (so a draining revision
knows when it is unused), and which sessions have gone idle.  Persistence is someone
else's job: the table marks changed pins ``dirty`` and the gateway flushes them to the
state store in batches.

Keys are opaque strings — a keyed hash of the app's session id, never the id itself —
so neither the table nor the store can leak a usable session cookie.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Pin:
    """One live session, pinned to one incarnation of one worker."""

    key: str
    worker: str
    incarnation: str
    revision: str
    created_at: float
    last_seen: float
    expires_at: float | None = None  # set by the explicit session protocol
    active: int = 0  # requests and streams of this session in flight right now


@dataclass
class SessionTable:
    """All pins, with counts per worker and per revision kept up to date.

    Holdover's own pin cookie is first only *offered* (``offer``): such a pin routes the
    client's next requests, but it is no session — not counted, not stored, keeping no
    worker alive — until the client comes back with it (``promote``).  A client that
    never returns (a crawler, junk traffic, a forged cookie) costs one bounded entry
    that expires.  Both kinds are bounded by ``limit``: past it, offers push out the
    oldest offer, and new sessions are refused (counted in ``refused``) rather than
    ending anyone's live session.
    """

    pins: dict[str, Pin] = field(default_factory=dict)
    per_worker: dict[str, int] = field(default_factory=dict)
    per_revision: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    offered: dict[str, Pin] = field(default_factory=dict)  # oldest first
    limit: int = 1_000_000
    refused: int = 0  # new sessions not pinned because the table was full

    def __len__(self) -> int:
        return len(self.pins)

    def offer(self, key: str, worker: str, incarnation: str, revision: str, now: float
              ) -> Pin:
        """An offered pin: it routes, but counts as a session only once the client returns."""
        offered = self.offered
        if len(offered) >= self.limit:
            self._drop_offer(next(iter(offered)))  # the oldest offer goes first
        p = Pin(key, worker, incarnation, revision, now, now)
        offered[key] = p
        return p

    def promote(self, key: str, now: float) -> Pin | None:
        """The client came back with an offered pin: from now on it is a session."""
        p = self.offered.pop(key, None)
        if p is None:
            return None
        if len(self.pins) >= self.limit:
            self.refused += 1
            return None
        p.last_seen = now
        self._add(p)
        return p

    def expire_offers(self, now: float, ttl: float) -> int:
        """Forget offers older than ``ttl`` (offers are kept oldest first)."""
        offered = self.offered
        n = 0
        while offered:
            key = next(iter(offered))
            if now - offered[key].created_at < ttl:
                break
            self._drop_offer(key)
            n += 1
        return n

    def drop_offers_of(self, worker: str) -> None:
        """A worker's process is gone: its offers go (they were never sessions)."""
        for key in [k for k, p in self.offered.items() if p.worker == worker]:
            self._drop_offer(key)

    def _drop_offer(self, key: str) -> None:
        """An offer is gone unanswered (the one place; a shared table records it)."""
        del self.offered[key]

    def get(self, key: str) -> Pin | None:
        return self.pins.get(key)

    def pin(self, key: str, worker: str, incarnation: str, revision: str, now: float,
            expires_at: float | None = None) -> Pin | None:
        """Pin ``key`` to ``worker`` (replacing any older pin of the same key).

        Returns None when the table is full and ``key`` has no pin yet (``refused``)."""
        self.offered.pop(key, None)
        old = self.pins.get(key)
        if old is not None:
            if old.worker == worker and old.incarnation == incarnation:
                old.last_seen = now
                old.expires_at = expires_at
                self.dirty.add(key)
                return old
            self._forget(old)
        elif len(self.pins) >= self.limit:
            self.refused += 1
            return None
        p = Pin(key, worker, incarnation, revision, now, now, expires_at)
        self._add(p)
        return p

    def restore(self, pins: Iterable[Pin]) -> None:
        """Load pins from the state store (not marked dirty)."""
        for p in pins:
            if p.key in self.pins:
                self._forget(self.pins[p.key])
            self._add(p)
        self.dirty.clear()

    def _add(self, p: Pin) -> None:
        self.pins[p.key] = p
        self.per_worker[p.worker] = self.per_worker.get(p.worker, 0) + 1
        self.per_revision[p.revision] = self.per_revision.get(p.revision, 0) + 1
        self.dirty.add(p.key)
        self.removed.discard(p.key)

    def _forget(self, p: Pin) -> None:
        del self.pins[p.key]
        for counts, name in ((self.per_worker, p.worker), (self.per_revision, p.revision)):
            n = counts.get(name, 0) - 1
            if n > 0:
                counts[name] = n
            else:
                counts.pop(name, None)
        self.dirty.discard(p.key)
        self.removed.add(p.key)

    def end(self, key: str) -> Pin | None:
        """The session is over (logout, expiry, lost worker); returns its pin."""
        self.offered.pop(key, None)
        p = self.pins.get(key)
        if p is not None:
            self._forget(p)
        return p

    def touch(self, p: Pin, now: float) -> None:
        p.last_seen = now
        self.dirty.add(p.key)

    def idle(self, now: float, idle_timeout: float) -> list[Pin]:
        """Pins whose session ended by time: idle too long, or past their expiry.

        A session with a request or stream in flight is never idle: a WebSocket that
        stays open keeps its session (and so its worker) alive.
        """
        return [p for p in self.pins.values() if not p.active and (
            (p.expires_at is not None and p.expires_at <= now)
            or (p.expires_at is None and now - p.last_seen >= idle_timeout))]

    def of_worker(self, worker: str) -> list[Pin]:
        return [p for p in self.pins.values() if p.worker == worker]

    def of_revision(self, revision: str) -> list[Pin]:
        return [p for p in self.pins.values() if p.revision == revision]

    def take_changes(self) -> tuple[list[Pin], list[str]]:
        """Pins changed and keys removed since the last call (for the state store)."""
        changed = [self.pins[k] for k in self.dirty if k in self.pins]
        removed = list(self.removed)
        self.dirty.clear()
        self.removed.clear()
        return changed, removed
