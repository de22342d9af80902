"""The whole cluster as one status, and what this node tells the others about itself.

Each node's heartbeat carries a compact summary of its revisions, workers and sessions
(``summary``); ``status`` on any node lists its own workers live and every other node's
from that summary (at most one heartbeat old), each worker with its ``node``, sessions
per revision summed over the nodes.  A revision's cluster state is what the nodes say
of it together: it is retired only when it is retired on every node (each node retires
its own workers), and this node records that once for the cluster.

It also keeps the store whole from this node's side: when the store lost its data (a
Redis restarted without persistence) this node publishes again what it knows — its
revisions, the active one and the activation stack, its pins — and the heartbeat
follows by itself; when it only fell behind the feed, it follows the store instead.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..core.errors import Refused
from ..core.lifecycle import RevisionState as S
from ..core.lifecycle import WorkerState as W
from ..state import StoreError
from ..state.base import Change

if TYPE_CHECKING:
    from .cluster import Cluster
    from .context import Context as Control

log = logging.getLogger("holdover.cluster")

# Which state a revision shows when the nodes differ on it: the most alive one.
_RANK = {S.ACTIVE: 5, S.CANARY: 4, S.STARTING: 3, S.DRAINING: 2, S.RETIRED: 1, S.FAILED: 0}
RETIRED_ONCE_TTL = 600.0  # the "retired on every node" event is recorded by one node


class ClusterView:
    """Every node's revisions and workers, as this node sees them."""

    def __init__(self, ctl: Control, cluster: Cluster) -> None:
        self.ctl = ctl
        self.cluster = cluster
        self.me = cluster.me
        self.retired_on: dict[str, set[str]] = {}  # revision -> nodes that said it retired
        cluster.on("retired", self._on_retired)
        cluster.on_resync(self.republish)

    # -- what this node says ---------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """This node's revisions still running, their workers and sessions (heartbeat)."""
        ctl = self.ctl
        rm = ctl.revs
        per_rev, per_worker = ctl.sessions.per_revision, ctl.sessions.per_worker
        revisions = {}
        for rev in list(rm.revisions.values()):
            workers = [w for w in rev.workers if w.state not in (W.STOPPED, W.FAILED)]
            if rev.state in (S.RETIRED, S.FAILED) and not workers:
                continue
            revisions[rev.id] = {
                "state": str(rev.state), "sessions": per_rev.get(rev.id, 0),
                "canary_percent": rev.canary_percent if rev is rm.canary else 0,
                "workers": [[w.id, str(w.state), w.pid or 0, w.port or 0, ctl.inflight(w),
                             per_worker.get(w.id, 0)] for w in workers]}
        return {"ready": bool(getattr(ctl, "ready", False)),
                "active": rm.active.id if rm.active else None,
                "canary": rm.canary.id if rm.canary else None,
                "sessions": len(ctl.sessions), "lost": ctl.sessions_lost,
                "busy": rm._busy, "revisions": revisions}

    # -- what the cluster looks like -------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node: name, address, age of its last heartbeat, ready, sessions."""
        c = self.ctl.config
        out = [{"name": self.me, "advertise": c.gateway_advertise or c.gateway_listen[0],
                "age": 0.0, "ready": bool(getattr(self.ctl, "ready", False)), "this": True,
                "sessions": len(self.ctl.sessions)}]
        since = monotonic() - self.cluster.nodes_at
        for name, node in sorted(self.cluster.nodes.items()):
            summary = node.info.get("summary") or {}
            out.append({"name": name, "advertise": node.info.get("advertise"),
                        "age": round(max(0.0, self.cluster.ttl - node.expires_in + since), 1),
                        "ready": bool(summary.get("ready")), "this": False,
                        "sessions": int(summary.get("sessions", 0))})
        return out

    def status(self, st: dict[str, Any]) -> dict[str, Any]:
        """``st`` (this node's RevisionManager.status) extended to the whole cluster."""
        me = self.me
        by_id: dict[str, dict[str, Any]] = {}
        for rev in st["revisions"]:
            by_id[rev["id"]] = rev
            rev["node_states"] = {me: rev["state"]}
            for w in rev["workers"]:
                w["node"] = me
        total, lost = st["sessions"], st["sessions_lost"]
        for name, node in sorted(self.cluster.nodes.items()):
            summary = node.info.get("summary") or {}
            total += int(summary.get("sessions", 0))
            lost += int(summary.get("lost", 0))
            for rid, theirs in (summary.get("revisions") or {}).items():
                rev = by_id.get(rid)
                if rev is None:  # a revision this node never ran (it joined later)
                    rev = by_id[rid] = {"id": rid, "state": theirs["state"], "sessions": 0,
                                        "canary_percent": 0, "created_at": None,
                                        "command": None, "release_dir": None,
                                        "workers": [], "node_states": {}}
                    st["revisions"].append(rev)
                rev["node_states"][name] = theirs["state"]
                rev["sessions"] += int(theirs.get("sessions", 0))
                rev["canary_percent"] = rev["canary_percent"] or theirs.get("canary_percent", 0)
                rev["workers"] += [
                    {"id": w[0], "state": w[1], "pid": w[2], "port": w[3], "inflight": w[4],
                     "sessions": w[5], "node": name} for w in theirs.get("workers", ())]
        for rev in st["revisions"]:
            rev["state"] = self._cluster_state(rev)
        st.update(node=me, nodes=self.nodes(), sessions=total, sessions_lost=lost,
                  sessions_here=st["sessions"])
        # Other nodes' figures are as old as the store's absence; cluster changes wait.
        st["store_away"] = round(self.cluster.store_away_for(), 1)
        if st["store_away"]:
            st["store_error"] = self.cluster.store_error
        return st

    def _cluster_state(self, rev: dict[str, Any]) -> str:
        states = rev["node_states"]
        mine = states.get(self.me)
        if mine in (S.ACTIVE, S.CANARY, S.STARTING) or len(set(states.values())) <= 1:
            return mine or next(iter(states.values()))
        return max(states.values(), key=lambda s: _RANK.get(S(s), 0))

    # -- retirement across nodes -----------------------------------------------------

    def draining_somewhere(self, rid: str) -> bool:
        """Whether ``rid`` drains on this node or on another live node."""
        rev = self.ctl.revs.revisions.get(rid)
        if rev is not None and rev.state is S.DRAINING:
            return True
        return any(_revisions_of(node).get(rid, {}).get("state") == "draining"
                   for node in self.cluster.nodes.values())

    def runs_elsewhere(self, rid: str) -> bool:
        """Whether another live node still runs revision ``rid`` (by its heartbeat)."""
        return any(rid in _revisions_of(node) for node in self.cluster.nodes.values())

    def revision_changed(self, rid: str, after: S) -> None:
        """A revision changed state here; a retirement is told to the others."""
        if after is S.RETIRED:
            self.retired_on.setdefault(rid, set()).add(self.me)
            self.ctl.tasks.spawn(self._tell_retired(rid), "cluster-retired")
        elif after in (S.ACTIVE, S.CANARY, S.STARTING):
            self.retired_on.pop(rid, None)  # running again (a rollback to it)

    async def _tell_retired(self, rid: str) -> None:
        try:
            await self.cluster.publish("retired", {"revision": rid})
        except StoreError as exc:
            log.warning("cannot tell the other nodes revision %s retired here: %s", rid, exc)
        await self._check_retired(rid)

    async def _on_retired(self, change: Change) -> None:
        rid = str(change.data.get("revision", ""))
        self.retired_on.setdefault(rid, set()).add(change.node)
        await self._check_retired(rid)

    def retired_everywhere(self, rid: str) -> bool:
        """Retired here, and every other live node said so or no longer runs it."""
        rev = self.ctl.revs.revisions.get(rid)
        if rev is not None and rev.state is not S.RETIRED:
            return False
        said = self.retired_on.get(rid, set())
        return all(name in said or rid not in _revisions_of(node)
                   for name, node in self.cluster.nodes.items())

    async def _check_retired(self, rid: str) -> None:
        if not self.retired_everywhere(rid):
            return
        store = self.ctl.store
        try:  # one node records it for the cluster
            if await store.acquire(f"retired:{rid}", self.me, RETIRED_ONCE_TTL) != self.me:  # type: ignore[attr-defined]
                return
        except StoreError as exc:
            log.warning("cannot record that revision %s retired everywhere: %s", rid, exc)
            return
        self.retired_on.pop(rid, None)
        await self.ctl.record_event("retired-everywhere", f"revision {rid} retired on every "
                                    f"node: its last worker in the cluster stopped", rid)

    # -- the store lost its data -----------------------------------------------------

    async def republish(self) -> None:
        """Changes were missed: write again what this node knows, or catch up.

        The store came back empty (no active revision recorded): this node's revisions,
        the active one and the activation stack are written again (by every node that
        noticed: the same records).  It fell behind a trimmed feed instead: the store
        holds the cluster's truth, and this node follows its active revision.  Its own
        pins are written again either way (the next pin flush)."""
        ctl = self.ctl
        sessions = ctl.sessions
        sessions.dirty.update(sessions.pins)
        try:
            active = await ctl.store.get_meta("active")
        except StoreError as exc:
            log.warning("cannot read the store after missed changes: %s", exc)
            return
        if not active:
            await ctl.save_revisions()
            log.warning("the store had lost its data: published again this node's revisions "
                        "and %d session pin(s)", len(sessions.pins))
            await ctl.record_event("resync", f"node {self.me} published again what it knows "
                                   f"(the store had lost its data): {len(ctl.revs.revisions)} "
                                   f"revision(s), {len(sessions.pins)} session(s)")
            return
        await self.catch_up(active)

    async def catch_up(self, active: str) -> None:
        """Make the cluster's active revision active here too, if this node missed it."""
        rm = self.ctl.revs
        here = rm.active.id if rm.active else None
        if active == here or rm._busy is not None:
            return
        log.warning("this node missed changes: the cluster's active revision is %s, here %s",
                    active, here)
        if active not in rm.revisions:
            await self.ctl.record_event("out-of-step", f"node {self.me} runs {here} but the "
                                        f"cluster's active revision is {active}, which this "
                                        f"node does not know: restart it to follow", active)
            return
        try:
            await rm.rollback(active)
        except Refused as exc:
            await self.ctl.record_event("out-of-step", f"node {self.me} could not follow the "
                                        f"cluster to {active}: {exc}", active)
            return
        await self.ctl.record_event("caught-up", f"node {self.me} missed changes and made "
                                    f"{active} active, as the cluster has it", active)


def _revisions_of(node: Any) -> dict[str, Any]:
    """The revisions a node's last heartbeat said it runs (its summary, ``summary()``)."""
    return (node.info.get("summary") or {}).get("revisions") or {}
