"""This node's place in a cluster: who else is alive, and what they say.

Several nodes share one app's state through a shared store (docs/cluster.md).  Each
node renews a heartbeat carrying what the others need to know about it (where its peer
listener is, a fingerprint of its cluster secret, a summary of its workers), reads the
change feed from its own position and hands each change to the part of the control
plane that registered for its kind, and notices a node whose heartbeat lapsed.  It also
keeps the one answer to "is the store reachable?", which readiness and the deploy side
read: a heartbeat that fails marks the store as away from that moment.

Nothing here decides what a change means; it carries messages and liveness.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any

from ..state import StoreError
from ..state.base import Change, LiveNode, SharedStore

log = logging.getLogger("holdover.cluster")

HEARTBEAT = 2.0  # seconds between heartbeats; a node is gone after TTL_BEATS missed ones
TTL_BEATS = 3
FEED_WAIT = 5.0  # longest one blocking read of the feed
JOINED = "node-joined"  # the change a node publishes when it joins, with its heartbeat info

Handler = Callable[[Change], Awaitable[None] | None]
GoneHandler = Callable[[LiveNode], Awaitable[None] | None]


class Cluster:
    """Membership, the change feed and the store's reachability, for one node."""

    def __init__(self, store: SharedStore, me: str, info: Callable[[], dict[str, Any]],
                 spawn: Callable[..., Any], heartbeat: float = HEARTBEAT) -> None:
        """``info()`` is what this node's heartbeat says (called at every beat);
        ``spawn`` runs a coroutine as a tracked background task (control/ticker.py)."""
        self.store = store
        self.me = me
        self._info = info
        self._spawn = spawn
        self.heartbeat = heartbeat
        self.nodes: dict[str, LiveNode] = {}  # the other live nodes, as of the last beat
        self.nodes_at = monotonic()  # when ``nodes`` was read
        self.position = 0  # the last feed position handled
        self.store_down_since: float | None = None  # monotonic; None while it answers
        self.store_error = ""
        self._handlers: dict[str, list[Handler]] = {}
        self._gone: list[GoneHandler] = []
        self._resync: list[Callable[[], Awaitable[None] | None]] = []
        self._feed_task: asyncio.Task[Any] | None = None
        self._beating = False
        self.closed = False

    @property
    def ttl(self) -> float:
        return self.heartbeat * TTL_BEATS

    # -- registration ------------------------------------------------------------------

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(change)`` for every change of ``kind`` another node publishes."""
        self._handlers.setdefault(kind, []).append(handler)

    def on_gone(self, handler: GoneHandler) -> None:
        """Call ``handler(last_seen)`` once when a live node's heartbeat lapses."""
        self._gone.append(handler)

    def on_resync(self, handler: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``handler()`` when changes were missed (feed trimmed, store emptied)."""
        self._resync.append(handler)

    # -- life --------------------------------------------------------------------------

    async def join(self) -> None:
        """Announce this node and start following the feed.

        Raises StoreError when the store cannot be reached (a node does not start blind)."""
        await self.store.heartbeat(self.me, self._info(), self.ttl)
        self.nodes = {n.name: n for n in await self.store.live_nodes() if n.name != self.me}
        self.nodes_at = monotonic()
        self.position = await self.store.feed_position()
        self._feed_task = self._spawn(self._follow(), "cluster-feed")
        # The others learn of this node now, not at their next heartbeat: until they do,
        # they could not route the sessions it begins.
        try:
            await self.publish(JOINED, self._info())
        except StoreError as exc:
            log.warning("cannot tell the other nodes that this one joined: %s", exc)

    async def leave(self) -> None:
        """This node stops: the others see it gone at once, not a ttl later."""
        self.closed = True
        if self._feed_task is not None:
            self._feed_task.cancel()
        try:
            await self.store.forget_node(self.me)
        except StoreError as exc:
            log.warning("cannot remove this node's heartbeat: %s", exc)

    def tick(self, now: float) -> None:
        """The ticker's job: one heartbeat at a time."""
        if not self._beating and not self.closed:
            self._beating = True
            self._spawn(self._beat(), "cluster-heartbeat")

    async def _beat(self) -> None:
        try:
            await self.store.heartbeat(self.me, self._info(), self.ttl)
            live = {n.name: n for n in await self.store.live_nodes() if n.name != self.me}
        except StoreError as exc:
            self._store_failed(exc)
            return
        finally:
            self._beating = False
        self._store_answered()
        gone = [n for name, n in self.nodes.items() if name not in live]
        self.nodes, self.nodes_at = live, monotonic()
        for node in gone:
            log.warning("node %s is gone: its heartbeat lapsed", node.name)
            for handler in self._gone:
                try:
                    await _call(handler, node)
                except Exception:  # the other handlers and nodes must still hear of it
                    log.exception("handling the lapse of node %s failed", node.name)

    # -- the store's reachability ------------------------------------------------------

    def _store_failed(self, exc: StoreError) -> None:
        if self.store_down_since is None:
            self.store_down_since = monotonic()
            log.warning("the shared store is unreachable: %s", exc)
        self.store_error = str(exc)

    def _store_answered(self) -> None:
        if self.store_down_since is not None:
            log.warning("the shared store answers again after %.0fs",
                        monotonic() - self.store_down_since)
            self.store_down_since = None
            self.store_error = ""

    def store_away_for(self) -> float:
        """Seconds since the store stopped answering (0 while it answers)."""
        return 0.0 if self.store_down_since is None else monotonic() - self.store_down_since

    # -- the feed ----------------------------------------------------------------------

    async def publish(self, kind: str, data: dict[str, Any] | None = None) -> Change:
        """Tell every other node ``kind`` happened (StoreError if the store is away)."""
        return await self.store.publish_change(self.me, kind, data)

    async def _follow(self) -> None:
        while not self.closed:
            try:
                batch = await self.store.read_changes(self.position, 100, FEED_WAIT)
            except StoreError as exc:
                self._store_failed(exc)
                await asyncio.sleep(self.heartbeat)
                continue
            except asyncio.CancelledError:
                raise
            if batch.missed:
                log.warning("missed changes of other nodes (the feed was trimmed or the "
                            "store lost its data): reloading what they share")
                self.position = batch.position
                for handler in self._resync:
                    try:
                        await _call(handler)
                    except Exception:  # the feed goes on: later operations still reach us
                        log.exception("reloading after missed changes failed")
                continue
            for change in batch.changes:
                self.position = change.seq
                if change.node == self.me:
                    continue
                if change.kind == JOINED:
                    self.nodes[change.node] = LiveNode(change.node, change.data, self.ttl)
                for handler in self._handlers.get(change.kind, ()):
                    try:
                        await _call(handler, change)
                    except Exception:  # one bad change must not stop the feed
                        log.exception("handling change %s from node %s failed",
                                      change.kind, change.node)
            self.position = batch.position


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        await result
