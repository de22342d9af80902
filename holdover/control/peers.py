"""The other nodes of a cluster as routes, and what happens when one of them dies.

Any node routes any session (docs/cluster.md): a session another node holds is passed
through to that node's peer listener, named by the session's signed route cookie, so no
request needs the store.  This module keeps the router's view of the other nodes
current from their heartbeats (one endpoint per node, at the peer address it
announces), refuses to start beside a node whose cluster secret differs, and decides
what a lapsed heartbeat means:

- the node's peer listener still answers: it is only cut off from the store (a
  partition, or the store was away); it keeps being routed to, and nothing is lost;
- it does not answer: the node is dead.  Exactly one surviving node (an atomic
  ``claim_once`` in the store) counts the sessions its last heartbeat reported as lost,
  records an event, forgets its pins and tells the others, so each node's status shows
  the loss once.  A node that stops cleanly takes that claim itself first: nothing is
  counted for it (its pins wait in the store for its restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..core.peers import ClusterSecret
from ..proxy.peer import PeerEndpoint
from ..state import StoreError
from ..state.base import Change, LiveNode
from .cluster import JOINED

if TYPE_CHECKING:
    from .cluster import Cluster
    from .context import Context

log = logging.getLogger("holdover.cluster")

PROBE_TIMEOUT = 1.0  # seconds a peer listener has to accept a connection
DEATH_CLAIM_TTL = 86400.0  # how long the store remembers who counted a dead node


def split_address(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError if malformed."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {addr!r}")
    return host.strip("[]"), int(port)


def death_key(node: str, started: object) -> str:
    return f"node-dead:{node}:{started}"


class Peers:
    """This node's routes to the other nodes, their authentication and their deaths."""

    def __init__(self, ctl: Context, secret: ClusterSecret, me: str) -> None:
        self.ctl = ctl
        self.secret = secret
        self.me = me
        self.auth = secret.auth(me)
        self.fingerprint = secret.fingerprint()
        self.address = ""  # host:port of this node's peer listener, as others reach it
        self.started = time.time()
        self.cluster: Cluster | None = None
        self.cut_off: dict[str, LiveNode] = {}  # lapsed heartbeat, peer listener answers
        self.lost_nodes: dict[str, dict[str, Any]] = {}  # dead node -> what was counted
        self.uncounted: dict[str, LiveNode] = {}  # dead, but the store could not say who counts
        self._probing: set[str] = set()
        router = ctl.router
        router.node = me
        self.endpoints: dict[str, PeerEndpoint] = router.peers  # shared with the router

    def info(self) -> dict[str, Any]:
        """This node's part of its heartbeat info."""
        return {"peer": self.address, "fingerprint": self.fingerprint,
                "started": self.started, "sessions": len(self.ctl.sessions.pins)}

    # -- joining -----------------------------------------------------------------------

    def check(self, live: list[LiveNode]) -> None:
        """Refuse (StoreError) to join nodes whose cluster secret is another one, or a
        live node of this node's name on another host."""
        for node in live:
            if node.name == self.me:
                # Its own heartbeat from before a crash is on this host; one elsewhere is
                # another node given this name, which would share its pins and heartbeat.
                theirs_at = str(node.info.get("peer", "")).rpartition(":")[0]
                if theirs_at and self.address and \
                        theirs_at != self.address.rpartition(":")[0]:
                    raise StoreError(
                        f"node {self.me} is already live at {theirs_at}: every node of a "
                        f"cluster needs its own name ([gateway] node); give this one "
                        f"another, or stop that node")
                continue
            theirs = node.info.get("fingerprint")
            if theirs is not None and theirs != self.fingerprint:
                raise StoreError(
                    f"node {node.name} of this cluster uses another cluster secret than "
                    f"{self.secret.path} ([gateway] cluster_secret): copy that file from "
                    f"node {node.name} to this node (every node needs the same one), then "
                    f"start again")

    def attach(self, cluster: Cluster) -> None:
        """Follow the cluster: lapsed nodes, and other nodes' findings of a dead one."""
        self.cluster = cluster
        cluster.on_gone(self.node_gone)
        cluster.on("node-lost", self._told_lost)
        cluster.on(JOINED, lambda change: self.sync(monotonic()))  # route to it at once
        self.sync(monotonic())

    async def leaving(self) -> None:
        """This node stops cleanly: no other node may count its sessions as lost."""
        if self.cluster is None:
            return  # it never joined (refused, or the store could not be opened)
        with contextlib.suppress(StoreError):
            await self.ctl.store.claim_once(  # type: ignore[attr-defined]
                death_key(self.me, self.started), DEATH_CLAIM_TTL)

    # -- the routes --------------------------------------------------------------------

    def sync(self, now: float) -> None:
        """The ticker's job: one endpoint per live (or cut-off) node, at its address."""
        cluster = self.cluster
        if cluster is None:
            return
        want = {**self.cut_off, **cluster.nodes}
        for name in [n for n in self.endpoints if n not in want]:
            self.endpoints.pop(name).close_pool()
        keepalive = self.ctl.config.gateway_upstream_keepalive
        for name, node in want.items():
            if name in cluster.nodes:
                self.cut_off.pop(name, None)
            try:
                host, port = split_address(str(node.info.get("peer", "")))
            except ValueError:
                continue  # a node of an older holdover, without a peer listener
            ep = self.endpoints.get(name)
            if ep is None or ep.host != host or ep.port != port:
                if ep is not None:
                    ep.close_pool()
                ep = self.endpoints[name] = PeerEndpoint(name, host, port, keepalive,
                                                         self.auth.token)
            if not ep.routable and now >= ep.down_until:
                ep.routable = True
        cutoff = now - self.ctl.config.gateway_upstream_idle_timeout
        for ep in self.endpoints.values():
            if ep.pool is not None:
                ep.pool.expire(cutoff)
        for name, node in [*self.cut_off.items(), *self.uncounted.items()]:
            if name not in self._probing:
                self._probing.add(name)
                self.ctl.tasks.spawn(self._recheck(node), "peer-probe")

    # -- lapsed nodes ------------------------------------------------------------------

    async def _answers(self, node: LiveNode) -> bool:
        try:
            host, port = split_address(str(node.info.get("peer", "")))
            async with asyncio.timeout(PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError, ValueError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def node_gone(self, node: LiveNode) -> None:
        """A node's heartbeat lapsed: cut off from the store, or dead."""
        if node.name == self.me:
            return
        self.cut_off[node.name] = node  # still routed to while it is asked
        self._probing.add(node.name)
        try:
            answers = await self._answers(node)
        finally:
            self._probing.discard(node.name)
        if answers:
            log.warning("node %s lapsed from the store but its peer listener answers: it "
                        "is cut off from the store, and its sessions are still served "
                        "through it", node.name)
            return
        self.cut_off.pop(node.name, None)
        await self._dead(node)

    async def _recheck(self, node: LiveNode) -> None:
        try:
            if self.cluster is not None and node.name in self.cluster.nodes:
                self.uncounted.pop(node.name, None)
                return
            if node.name in self.uncounted:
                await self._dead(node)
            elif not await self._answers(node):
                self.cut_off.pop(node.name, None)
                await self._dead(node)
        finally:
            self._probing.discard(node.name)

    async def _dead(self, node: LiveNode) -> None:
        ep = self.endpoints.pop(node.name, None)
        if ep is not None:
            ep.close_pool()
        store = self.ctl.store
        try:
            mine = await store.claim_once(  # type: ignore[attr-defined]
                death_key(node.name, node.info.get("started")), DEATH_CLAIM_TTL)
        except StoreError as exc:
            if node.name not in self.uncounted:
                log.warning("node %s does not answer, and the store cannot say who counts "
                            "its sessions (asked again every second): %s", node.name, exc)
            self.uncounted[node.name] = node
            return
        self.uncounted.pop(node.name, None)
        if not mine:
            return  # another node counts it (or it stopped cleanly)
        count = int(node.info.get("sessions", 0) or 0)
        self.ctl.router.sessions_lost += count
        lost = {"node": node.name, "sessions": count, "counted_by": self.me,
                "at": time.time()}
        self.lost_nodes[node.name] = lost
        await self.ctl.record_event(
            "node-lost", f"node {node.name} died (no heartbeat, its peer listener does not "
            f"answer): {count} session(s) lost", data=lost)
        try:
            await store.forget_pins_of(node.name)  # type: ignore[attr-defined]
            if self.cluster is not None:
                await self.cluster.publish("node-lost", lost)
        except StoreError as exc:
            log.warning("cannot tell the other nodes that node %s died: %s", node.name, exc)

    def _told_lost(self, change: Change) -> None:
        data = change.data
        name = str(data.get("node", ""))
        if name and name != self.me:
            self.lost_nodes[name] = dict(data)
            ep = self.endpoints.pop(name, None)
            if ep is not None:
                ep.close_pool()

    def status(self) -> dict[str, Any]:
        """The other nodes as this node routes to them, and the dead ones counted."""
        return {"peers": {name: {"address": f"{ep.host}:{ep.port}", "routable": ep.routable,
                                 "inflight": ep.inflight,
                                 "cut_off": name in self.cut_off}
                          for name, ep in sorted(self.endpoints.items())},
                "lost_nodes": dict(sorted(self.lost_nodes.items()))}

