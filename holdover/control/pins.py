"""The pin directory: the one interface for "which worker holds session K".

The data plane's router and the control side's sweeps and drain plan use it; what
stands behind it decides how far the truth is shared.  Today's implementation is the
in-process ``SessionTable`` (core/sessions.py).  Several proxy processes on one host and
several nodes on a shared store are further implementations of this same Protocol.

Which facts must be strongly consistent and which may lag is written down in
docs/design.md ("The pin directory").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..core.sessions import Pin, SessionTable


@runtime_checkable
class PinDirectory(Protocol):
    """Lookup, claim, touch, end, counts per worker and revision, and a change feed."""

    pins: dict[str, Pin]
    offered: dict[str, Pin]
    per_worker: dict[str, int]
    per_revision: dict[str, int]

    def __len__(self) -> int: ...

    def get(self, key: str) -> Pin | None:
        """The live pin of session ``key``, or None."""

    def pin(self, key: str, worker: str, incarnation: str, revision: str, now: float,
            expires_at: float | None = None) -> Pin | None:
        """Claim ``key`` for ``worker`` (its first pin wins; a re-pin replaces it).

        None: the directory is full and ``key`` had no pin (the request goes unpinned)."""

    def offer(self, key: str, worker: str, incarnation: str, revision: str, now: float
              ) -> Pin:
        """Holdover's own cookie, offered: it routes, but is no session until it returns."""

    def promote(self, key: str, now: float) -> Pin | None:
        """The client came back with an offered pin: a session from now on."""

    def expire_offers(self, now: float, ttl: float) -> int: ...

    def drop_offers_of(self, worker: str) -> None: ...

    def touch(self, p: Pin, now: float) -> None:
        """The session was seen at ``now`` (may lag across processes and nodes)."""

    def end(self, key: str) -> Pin | None:
        """The session is over; returns its pin if it had one."""

    def restore(self, pins: Iterable[Pin]) -> None:
        """Load pins from the state store after a restart."""

    def idle(self, now: float, idle_timeout: float) -> list[Pin]:
        """Pins whose session ended by time."""

    def of_worker(self, worker: str) -> list[Pin]: ...

    def of_revision(self, revision: str) -> list[Pin]: ...

    def take_changes(self) -> tuple[list[Pin], list[str]]:
        """The change feed: pins changed and keys removed since the last call."""


def local_directory(limit: int = 1_000_000) -> PinDirectory:
    """The in-process pin directory of a single gateway process."""
    return SessionTable(limit=limit)
