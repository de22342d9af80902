"""The state store's records and interface: what holdover must remember across restarts.

A gateway restart must forget no revision, no session pin and no event (SPEC, "Operating
it"), so the supervisor and the router persist them through this one interface, whatever
the backend.  Records are frozen values; a backend copies them in and out (the JSON fields
``env``, ``meta`` and ``data`` included), so nothing a caller holds can change what is
stored, and every backend accepts exactly what JSON can represent.

``SharedStore`` adds what only a store that several gateway nodes share needs (a cluster,
docs/cluster.md): who is alive, a feed of changes between nodes, and pins that two nodes
cannot both claim.
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
    failed); the store does not interpret it.  ``kind`` says who runs its workers:
    holdover (``"supervised"``: ``command``, ``cwd``, ``env``) or another engine
    (``"external"``: the URLs in ``upstreams``, or the DNS name in ``discover``).
    Records stored before external workers existed load as supervised.
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
    kind: str = "supervised"
    upstreams: tuple[str, ...] = ()
    discover: str = ""

    def __post_init__(self) -> None:
        # A tuple, whatever was passed (JSON gives lists): nothing outside can change it.
        object.__setattr__(self, "upstreams", tuple(self.upstreams))


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

    @abc.abstractmethod
    async def delete_revision(self, id: str) -> None:
        """Forget a revision's record (an old finished one); its events stay."""

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


@dataclass(frozen=True, slots=True)
class LiveNode:
    """A node whose last heartbeat has not expired.

    ``info`` is what the node sent with its heartbeat (advertise address, start time ...);
    ``expires_in`` is how many seconds the heartbeat has left, by the store's own clock, so
    it means the same on every node whatever their clocks say.
    """

    name: str
    info: dict[str, Any]
    expires_in: float


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed: ``node`` says ``kind`` happened, with ``data``.

    ``seq`` is the entry's position in the feed; positions increase, and a consumer
    resumes after the last one it has handled.
    """

    seq: int
    ts: float
    node: str
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """What ``read_changes`` found: the changes after the position asked for, in order.

    ``position`` is what to pass as ``after`` next time.  ``missed`` is True when changes
    after the position asked for are gone (trimmed from a bounded feed, or lost with the
    store's data): ``changes`` is then empty, and the consumer must reload what it keeps
    from the store and go on from ``position``.  A reload may see changes that the feed
    delivers again afterwards, so applying a change must be idempotent.
    """

    changes: list[Change]
    position: int
    missed: bool = False


PinTouch = tuple[str, str, float, float | None]
"""``(key, incarnation, last_seen, expires_at)``: a pin was used again (``touch_pins``)."""

PinEnd = tuple[str, str]
"""``(key, incarnation)``: the session pinned to this worker incarnation ended."""


class SharedStore(StateStore):
    """A state store that several gateway nodes share: the facts a cluster agrees on.

    Beyond ``StateStore`` it keeps:

    - heartbeats: each node renews its own with a time to live; ``live_nodes`` lists the
      nodes whose heartbeat has not expired, so a node that dies is noticed within a ttl;
    - a change feed: a node publishes what it changed, the others read it from their own
      position, and resume from that position after a disconnect.  The feed is bounded;
      a consumer that fell too far behind is told it missed changes (``ChangeBatch``);
    - pins that are claimed atomically: two nodes seeing a new session at once agree on
      one worker (``claim_pin``); touches and ends are conditional, so a late or repeated
      one cannot resurrect an ended session or end a newer one.

    Pins are per node: a store opened for a node (``node=``) saves, loads and claims
    that node's pins only, so that one node's restart never loads another's.

    Consistency (docs/cluster.md): a pin's first claim and a session's end are strong (one
    atomic step in the store); last-seen times converge (a touch never moves them back).
    """

    # -- nodes -------------------------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(self, node: str, info: dict[str, Any], ttl: float) -> None:
        """Say that ``node`` is alive for the next ``ttl`` seconds, with ``info``."""

    @abc.abstractmethod
    async def live_nodes(self) -> list[LiveNode]:
        """The nodes whose heartbeat has not expired, ordered by name."""

    @abc.abstractmethod
    async def forget_node(self, node: str) -> None:
        """Drop ``node``'s heartbeat at once (it shut down cleanly)."""

    @abc.abstractmethod
    async def claim_once(self, key: str, ttl: float) -> bool:
        """True for exactly one caller of ``key`` (over every node) for ``ttl`` seconds.

        For a step that one node must take for the whole cluster (count a dead node's
        sessions once)."""

    @abc.abstractmethod
    async def forget_pins_of(self, node: str) -> None:
        """Drop every pin ``node`` saved (it died: its sessions are gone with it)."""

    # -- change feed -------------------------------------------------------------------

    @abc.abstractmethod
    async def publish_change(self, node: str, kind: str,
                             data: dict[str, Any] | None = None) -> Change:
        """Append a change to the feed; returns it with its position."""

    @abc.abstractmethod
    async def read_changes(self, after: int = 0, limit: int = 100,
                           wait: float = 0.0) -> ChangeBatch:
        """The first ``limit`` changes after position ``after`` (0: the feed's start).

        With none yet and ``wait > 0``, waits up to ``wait`` seconds for one.  Pass the
        ``position`` of the batch as ``after`` next time; start a new consumer from
        ``feed_position()`` after loading the state it keeps.
        """

    @abc.abstractmethod
    async def feed_position(self) -> int:
        """The position of the newest change (reading after it waits for the next one)."""

    # -- pins --------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_pin(self, key: str) -> PinRecord | None:
        """The pin of ``key``, or None."""

    @abc.abstractmethod
    async def claim_pin(self, rec: PinRecord) -> PinRecord:
        """Pin ``rec.key`` to ``rec``'s worker unless it already has a pin; returns the winner.

        The winner is ``rec`` if the key had no pin, else the pin it has (unchanged).  The
        claim succeeded when the winner names ``rec``'s worker incarnation; a repeated
        claim of the same pin (a retry) therefore succeeds too.
        """

    @abc.abstractmethod
    async def touch_pins(self, touches: Sequence[PinTouch]) -> list[str]:
        """Record that pins were used again; returns the keys whose pin is gone.

        A touch applies only to a pin that still names its incarnation (else the key is
        returned: that session ended, or was claimed again elsewhere).  It never creates a
        pin and never moves ``last_seen`` back: a touch older than the stored one is
        ignored, so touches from several nodes can arrive in any order.
        """

    @abc.abstractmethod
    async def end_pins(self, ends: Sequence[PinEnd]) -> list[str]:
        """End the pins that still name the given incarnation; returns the keys ended.

        A pin claimed again meanwhile (another incarnation) is kept, so a late end cannot
        end a newer session.
        """

    # -- locks -------------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire(self, name: str, owner: str, ttl: float) -> str:
        """Hold lock ``name`` for ``ttl`` seconds unless another owner holds it.

        Returns the holder after the call: ``owner`` when it got (or already held, and
        so renewed) the lock, else the other owner.  The lock lapses by the store's own
        clock, so a node that died holding it frees it within ``ttl``."""

    @abc.abstractmethod
    async def release(self, name: str, owner: str) -> bool:
        """Let go of lock ``name`` if ``owner`` holds it; True if it did."""


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


def check_ttl(ttl: float) -> None:
    """A heartbeat must live for some time; anything else is a caller's bug."""
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl < 1e9:
        raise ValueError(f"heartbeat(): ttl must be a number of seconds > 0, got {ttl!r}")


def check_feed_args(after: int, limit: int, wait: float) -> None:
    """Refuse arguments of ``read_changes`` that have no sensible meaning."""
    if after < 0 or limit < 0 or not 0 <= wait <= MAX_FEED_WAIT:
        raise ValueError(f"read_changes(): after and limit must be >= 0 and wait from 0 to "
                         f"{MAX_FEED_WAIT}, got {after}, {limit}, {wait}")


MAX_FEED_WAIT = 60.0
"""Longest ``read_changes`` may wait; a consumer that wants longer calls again."""
