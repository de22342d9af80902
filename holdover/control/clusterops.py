"""Operations given on any node, carried out by every node of a cluster.

A deploy, rollback, promote, drain or retire given to one node (the origin) must change
the whole cluster, so that every node starts a new session on the same revision.  The
origin takes the cluster's operations lock (one operation at a time: a second one, on
any node, is refused with 409), decides everything that must be the same everywhere
(the revision id, the rollback target, the release's content hash), publishes the
operation on the change feed (control/cluster.py), carries it out itself, and collects
what every other live node says it did.

A deploy has two phases.  Each node starts the revision's workers and says ``ready``
(or ``failed``); the origin publishes ``activate`` once every live node is ready, or
``fail`` when one failed or stayed silent past the deadline: on every node the new
revision is then failed and the active one stays.  A node that stops answering during
an operation (its heartbeat lapsed) is no longer waited for.

While the store does not answer, no operation starts: the feed that carries it and the
lock that orders it are in the store.  The cluster's view for ``status`` is in
clusterview.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..core.errors import Refused
from ..state import StoreError
from ..state.base import Change, LiveNode
from ..supervisor.supervisor import Revision, RevisionFailed
from .clusterview import ClusterView
from .releases import content_hash, snapshot

if TYPE_CHECKING:
    from .cluster import Cluster
    from .context import Context as Control

log = logging.getLogger("holdover.cluster")

OPS = ("deploy", "rollback", "promote", "drain", "retire")
LOCK = "ops"  # the store lock every cluster-wide operation holds
LOCK_TTL = 15.0  # renewed every third of it while the operation runs
DONE_WAIT = 30.0  # how long the origin waits for the others' results of a quick step


class _Results:
    """What the nodes said about one operation: node -> {"phase": ..., ...}."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.said: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self.decided = False  # the origin published its decision on a deploy

    def add(self, node: str, said: dict[str, Any]) -> None:
        if self.said.get(node, {}).get("phase") != "failed":  # a failure sticks
            self.said[node] = said
        self.changed.set()

    def failed(self) -> list[str]:
        return sorted(n for n in self.expected if self.said.get(n, {}).get("phase") == "failed")

    def missing(self, *phases: str) -> list[str]:
        return sorted(n for n in self.expected if self.said.get(n, {}).get("phase") not in phases)

    def why(self) -> str:
        return "; ".join(f"on node {n}: {self.said[n].get('error', 'failed')}"
                         for n in self.failed())

    def report(self) -> dict[str, dict[str, Any]]:
        """What the HTTP answer says of each node."""
        out = {}
        for n in sorted(self.expected | set(self.said)):
            said = self.said.get(n)
            out[n] = {"state": "no answer"} if said is None else \
                {"state": said["phase"], **{k: v for k, v in said.items() if k != "phase"}}
        return out


def _deploy_done(result: dict[str, Any]) -> dict[str, Any]:
    """What a node says of a deploy done here: its workers, and the sessions the old
    revision keeps here (the origin sums them for the command's answer)."""
    return {"phase": "done", "workers": len(result.get("workers", [])),
            "previous_sessions": result.get("previous_sessions", 0)}


class ClusterOps:
    """This node's side of cluster-wide operations: as origin, and as a follower."""

    def __init__(self, ctl: Control, cluster: Cluster) -> None:
        self.ctl = ctl
        self.cluster = cluster
        self.me = cluster.me
        self.view = ClusterView(ctl, cluster)
        self._results: dict[str, _Results] = {}  # operation id -> what the nodes said
        self._decisions: dict[str, dict[str, Any]] = {}  # deploy id -> the origin's word
        self._decided = asyncio.Event()
        self.running: str | None = None  # the operation this node carries out now
        cluster.on("op", self._on_op)
        cluster.on("op-result", self._on_result)
        cluster.on("op-decision", self._on_decision)
        cluster.on_gone(self._on_gone)

    # -- the origin ----------------------------------------------------------------------

    def refuse_while_store_away(self, op: str) -> None:
        """503 naming the store and how long it has been away, while it does not answer."""
        away = self.cluster.store_away_for()
        if away > 0:
            raise Refused(f"cannot {op}: the shared store {store_name(self.ctl)} has not "
                          f"answered for {away:.0f}s ({self.cluster.store_error or 'no answer'}"
                          f"); changes to the cluster wait until it answers again (sessions "
                          f"are still served)", 503)

    async def run(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out ``op`` on every live node; what happened on each is in ``nodes``."""
        if op not in OPS:
            raise Refused(f"unknown cluster operation {op!r}", 400)
        self.refuse_while_store_away(op)
        rm = self.ctl.revs
        if rm._busy is not None or self.running is not None:
            raise Refused(f"cannot start a {op}: {rm._busy or self.running} is in progress on "
                          f"this node; try again when it has finished", 409)
        decided = await self._decide(op, args)
        op_id = uuid.uuid4().hex[:16]
        owner = f"{self.me} {op} {op_id}"
        holder = await self._store("take the operations lock",
                                   self.ctl.store.acquire(LOCK, owner, LOCK_TTL))  # type: ignore[attr-defined]
        if holder != owner:
            node, _, rest = holder.partition(" ")
            raise Refused(f"cannot start a {op}: node {node} is carrying out a "
                          f"{rest.partition(' ')[0] or 'change'} for the whole cluster; try "
                          f"again when it has finished", 409)
        renew = self.ctl.tasks.spawn(self._renew(owner), "cluster-lock")
        self.running = f"a cluster {op}"
        expected = {self.me, *self.cluster.nodes}
        results = self._results[op_id] = _Results(expected)
        try:
            await self._store(f"publish the {op}", self.cluster.publish("op", {
                "id": op_id, "op": op, "args": decided, "nodes": sorted(expected)}))
            log.info("cluster %s %s: carried out by %s", op, op_id, ", ".join(sorted(expected)))
            if op == "deploy":
                return await self._deploy_as_origin(op_id, decided, results)
            return await self._step_as_origin(op, decided, results)
        finally:
            self.running = None
            self._results.pop(op_id, None)
            self._decisions.pop(op_id, None)
            renew.cancel()
            try:
                await self.ctl.store.release(LOCK, owner)  # type: ignore[attr-defined]
            except StoreError as exc:  # it lapses by itself within LOCK_TTL
                log.warning("cannot release the operations lock: %s", exc)

    async def settle(self) -> None:
        """A node that joins waits for an operation already under way to end.

        Its first position on the feed was just read: an operation published after it
        is carried out here, but one published before (still holding the lock) would be
        missed, and restoring the cluster before that one ends would keep this node on
        the revision it replaces.  So this waits (bounded) until the holder it found
        lets the lock go, then the restore reads what that operation left."""
        owner = f"{self.me} join {uuid.uuid4().hex[:16]}"
        store = self.ctl.store
        deadline = monotonic() + self.ready_timeout({}) + LOCK_TTL
        first = None
        beat = monotonic()
        while True:
            if monotonic() - beat >= self.cluster.heartbeat:
                beat = monotonic()
                self.cluster.tick(beat)  # the ticker runs only once this node serves
            try:
                holder = await store.acquire(LOCK, owner, 1.0)  # type: ignore[attr-defined]
                if holder == owner:  # no operation: let it go at once
                    await store.release(LOCK, owner)  # type: ignore[attr-defined]
                    return
            except StoreError as exc:
                log.warning("cannot see whether a cluster operation is under way: %s", exc)
                return
            if first is None:
                first = holder
                log.info("a cluster operation is under way (%s): this node starts when it "
                         "has ended", holder)
            elif holder != first:
                return  # a later one: published after this node's position, followed
            if monotonic() > deadline:
                log.warning("the cluster operation %s did not end in time: starting anyway",
                            holder)
                return
            await asyncio.sleep(0.5)

    async def _store(self, what: str, call: Any) -> Any:
        try:
            return await call
        except StoreError as exc:
            raise Refused(f"cannot {what}: {exc}", 503) from None

    async def _renew(self, owner: str) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL / 3)
            try:
                holder = await self.ctl.store.acquire(LOCK, owner, LOCK_TTL)  # type: ignore[attr-defined]
            except StoreError as exc:
                log.warning("cannot renew the operations lock: %s", exc)
                continue
            if holder != owner:  # it lapsed while the store was away, and was taken
                log.error("the operations lock lapsed during this %s and node %s holds it "
                          "now: two cluster operations may overlap; check `holdover status` "
                          "on every node", owner.split(" ")[1], holder.partition(" ")[0])
                return

    async def _decide(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """What every node must do the same: refused here (nothing published) if it can't."""
        rm = self.ctl.revs
        if op == "deploy":
            source = rm.check_deploy(args.get("revision"), args.get("from"),
                                     args.get("workers"), args.get("canary"))
            # ``from`` as given: the CLI sends an absolute path; a relative one (the API)
            # is relative to each node's config file.
            out = dict(args)
            out["revision"] = args.get("revision") or rm._new_id(None, source)
            if source is not None:
                out["hash"] = await asyncio.to_thread(content_hash, source,
                                                      self.ctl.config.state_dir)
            return out
        if op == "rollback":
            if args.get("revision"):
                rm._revision(args["revision"])
                return {"revision": args["revision"]}
            if rm.canary is not None:
                return {"canary": rm.canary.id}
            prev = rm.previous()
            if prev is None:
                raise Refused("nothing to roll back to: no revision was active before "
                              f"{rm.active.id if rm.active else 'this one'}", 409)
            return {"previous": prev.id}
        if op == "promote":
            if rm.canary is None:
                raise Refused("there is no canary to promote", 409)
            return {"canary": rm.canary.id}
        rid = args["revision"]
        rm._revision(rid)
        if op == "retire" and not self.view.draining_somewhere(rid):
            rev = rm.revisions[rid]
            raise Refused(f"revision {rid} is {rev.state} on every node: cannot retire (only a "
                          f"draining revision can be retired)", 409)
        return {"revision": rid}

    def ready_timeout(self, args: dict[str, Any]) -> float:
        """How long a node may take to start a revision's workers (then it failed)."""
        c = self.ctl.config
        workers = args.get("workers") or c.app_workers
        return c.app_start_timeout * (workers + c.app_standby + 1) + 30.0

    async def _wait(self, results: _Results, done: Callable[[], bool], timeout: float) -> bool:
        """Until ``done()``, nodes that left no longer awaited; False past ``timeout``."""
        end = monotonic() + timeout
        while True:
            live = {self.me, *self.cluster.nodes}
            results.expected &= live
            if done():
                return True
            left = end - monotonic()
            if left <= 0:
                return False
            results.changed.clear()
            try:
                await asyncio.wait_for(results.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    async def _deploy_as_origin(self, op_id: str, args: dict[str, Any], results: _Results
                                ) -> dict[str, Any]:
        timeout = self.ready_timeout(args)

        async def hold(rev: Revision) -> None:
            results.add(self.me, {"phase": "ready", "workers": len(rev.running())})
            await self._wait(results, lambda: bool(results.failed()) or not results.missing(
                "ready", "done"), timeout)
            results.decided = True
            why = results.why()
            if not why and results.missing("ready", "done"):
                why = (f"node(s) {', '.join(results.missing('ready', 'done'))} did not say "
                       f"ready within {timeout:.0f}s")
            try:
                await self.cluster.publish("op-decision", {"id": op_id, "activate": not why,
                                                           "why": why})
            except StoreError as exc:
                why = why or f"cannot tell the other nodes to activate it: {exc}"
            if why:
                raise RevisionFailed(rev.id, "", "", why=why)

        try:
            result = await self._carry_out("deploy", args, hold)
        except Refused as exc:
            results.add(self.me, {"phase": "failed", "error": str(exc)})
            if not results.decided:  # failed here before every node was asked to decide
                results.decided = True
                try:
                    await self.cluster.publish("op-decision", {
                        "id": op_id, "activate": False, "why": f"on node {self.me}: {exc}"})
                except StoreError as err:
                    log.warning("cannot tell the other nodes the deploy failed: %s", err)
            await self._wait(results, lambda: not results.missing("failed", "done"), 10.0)
            raise Refused(str(exc), exc.status, field=exc.field, log_tail=exc.log_tail,
                          detail={**exc.detail, "nodes": results.report()}) from None
        results.add(self.me, _deploy_done(result))
        await self._wait(results, lambda: not results.missing("failed", "done"), DONE_WAIT)
        report = results.report()
        if "previous_sessions" in result:  # what the old revision keeps on every node
            result["previous_sessions"] = sum(n.get("previous_sessions", 0)
                                              for n in report.values())
        return {**result, "nodes": report}

    async def _step_as_origin(self, op: str, args: dict[str, Any], results: _Results
                              ) -> dict[str, Any]:
        try:
            result = await self._carry_out(op, args, None)
        except Refused as exc:
            results.add(self.me, {"phase": "failed", "error": str(exc)})
            await self._wait(results, lambda: not results.missing("failed", "done"), DONE_WAIT)
            raise Refused(str(exc), exc.status, field=exc.field, log_tail=exc.log_tail,
                          detail={**exc.detail, "nodes": results.report()}) from None
        results.add(self.me, {"phase": "done", "result": result})
        wait = self.ready_timeout({}) if op == "rollback" else DONE_WAIT
        await self._wait(results, lambda: not results.missing("failed", "done"), wait)
        failed = results.failed()
        if failed:
            first = results.said[failed[0]]
            done = [n for n in sorted(results.expected) if n not in failed]
            raise Refused(f"{op} done on node(s) {', '.join(done)}, failed {results.why()}",
                          int(first.get("status", 409)), detail={"nodes": results.report()})
        return {**result, "nodes": results.report()}

    # -- carrying it out here ------------------------------------------------------------

    async def _carry_out(self, op: str, args: dict[str, Any], hold: Any) -> dict[str, Any]:
        """``op`` on this node, as decided by the origin (the same on every node)."""
        rm = self.ctl.revs
        if op == "deploy":
            return await rm.deploy(revision=args["revision"], from_dir=args.get("from"),
                                   command=args.get("command"), workers=args.get("workers"),
                                   env=args.get("env"), canary=args.get("canary"),
                                   upstreams=args.get("upstreams"),
                                   expect_hash=args.get("hash"), hold=hold)
        if op == "rollback":
            if args.get("revision"):
                return await rm.rollback(args["revision"])
            if args.get("canary"):
                self._expect("canary", rm.canary.id if rm.canary else None, args["canary"])
            else:
                prev = rm.previous()
                self._expect("rollback target", prev.id if prev else None, args["previous"])
            return await rm.rollback()
        if op == "promote":
            self._expect("canary", rm.canary.id if rm.canary else None, args["canary"])
            return await rm.promote()
        if op == "drain":
            return await rm.drain(args["revision"])
        if op == "retire":
            rev = rm.revisions.get(args["revision"])
            if rev is None or str(rev.state) in ("retired", "failed"):  # done here already
                return {"revision": args["revision"], "sessions_ended": 0,
                        "here": str(rev.state) if rev else "unknown"}
            return await rm.retire(args["revision"])
        raise Refused(f"unknown cluster operation {op!r}", 400)

    async def localize(self, rev: Revision) -> None:
        """A revision another node took the snapshot of: take this node's own, from the
        same source, and check it holds the same files (RevisionFailed if it cannot).

        A revision started from the config's folder (the first one, or a deploy without
        ``--from``) runs from this node's own config's folder, as it did on each node."""
        c = self.ctl.config
        mine = c.state_dir / "releases" / rev.id
        if rev.source is not None or (rev.release_dir and Path(rev.release_dir) == mine):
            return
        if rev.release_dir is None:
            rev.spec.cwd = c.app_dir
            return
        source = rev.meta.get("source")
        if source is None:
            source = str(c.app_dir)  # no content to compare: each node's own config
        elif not Path(source).is_dir():
            raise RevisionFailed(rev.id, "", "", why=f"its release was snapshotted on another "
                                 f"node from {source or 'a folder not recorded'}, which this "
                                 f"node does not have")
        await asyncio.to_thread(snapshot, Path(source), mine, c.state_dir)
        digest = await asyncio.to_thread(content_hash, mine, c.state_dir)
        want = rev.meta.get("release_hash")
        if want and digest != want:
            await asyncio.to_thread(shutil.rmtree, mine, True)
            raise RevisionFailed(rev.id, "", "", why=f"{source} on this node differs from the "
                                 f"release the cluster runs (content hash {digest[:12]} here, "
                                 f"{want[:12]} there)")
        log.info("revision %s: took this node's own snapshot of %s", rev.id, source)
        rev.release_dir = str(mine)
        rev.spec.cwd = mine

    def _expect(self, what: str, here: str | None, there: str) -> None:
        if here != there:
            raise Refused(f"this node's {what} is {here or 'none'}, the origin's {there}: "
                          f"the nodes disagree (see holdover status on each)", 409)

    # -- a follower ----------------------------------------------------------------------

    def _on_op(self, change: Change) -> None:
        """Every node carries it out, one that joined after the origin asked too (the
        origin does not wait for it, but it ends up where the others are)."""
        data = change.data
        self.ctl.tasks.spawn(self._follow(change.node, data), f"cluster-{data.get('op')}")

    async def _follow(self, origin: str, data: dict[str, Any]) -> None:
        op, op_id, args = data.get("op"), data.get("id", ""), data.get("args") or {}
        deadline = monotonic() + self.ready_timeout(args)
        while not self.ctl.ready and not self.ctl.closing and monotonic() < deadline:
            # still restoring at its start: the operation follows what it restores
            await asyncio.sleep(0.1)
        self.running = f"a cluster {op} from node {origin}"
        try:
            if op not in OPS:
                raise Refused(f"unknown cluster operation {op!r} (an older or newer holdover "
                              f"on node {origin}?)", 400)
            log.info("cluster %s %s from node %s: carrying it out", op, op_id, origin)
            hold = self._follower_hold(op_id, origin, args) if op == "deploy" else None
            result = await self._carry_out(op, args, hold)
        except Refused as exc:
            said = {"phase": "failed", "error": str(exc), "status": exc.status}
        except Exception as exc:  # reported to the origin, which fails it everywhere
            log.exception("cluster %s from node %s failed here", op, origin)
            said = {"phase": "failed", "error": f"{type(exc).__name__}: {exc}", "status": 500}
        else:
            said = _deploy_done(result) if op == "deploy" else {"phase": "done",
                                                                "result": result}
        finally:
            self.running = None
        try:
            await self.cluster.publish("op-result", {"id": op_id, **said})
        except StoreError as exc:
            log.error("cannot tell node %s how its %s went here: %s", origin, op, exc)
        self._decisions.pop(op_id, None)

    def _follower_hold(self, op_id: str, origin: str, args: dict[str, Any]) -> Any:
        timeout = self.ready_timeout(args) + 30.0

        async def hold(rev: Revision) -> None:
            try:
                await self.cluster.publish("op-result", {
                    "id": op_id, "phase": "ready", "workers": len(rev.running())})
            except StoreError as exc:
                raise RevisionFailed(rev.id, "", "", why=f"cannot tell node {origin} it is "
                                     f"ready here: {exc}") from None
            end = monotonic() + timeout
            while op_id not in self._decisions:
                if origin not in self.cluster.nodes:
                    raise RevisionFailed(rev.id, "", "", why=f"node {origin}, which deploys "
                                         f"it, left the cluster before deciding")
                if monotonic() > end:
                    raise RevisionFailed(rev.id, "", "", why=f"node {origin} decided nothing "
                                         f"within {timeout:.0f}s")
                self._decided.clear()
                try:
                    await asyncio.wait_for(self._decided.wait(), 1.0)
                except TimeoutError:
                    pass
            decision = self._decisions[op_id]
            if not decision.get("activate"):
                raise RevisionFailed(rev.id, "", "", why=f"the cluster failed it "
                                     f"({decision.get('why') or 'no reason given'})")
        return hold

    # -- the feed ------------------------------------------------------------------------

    def _on_result(self, change: Change) -> None:
        results = self._results.get(change.data.get("id", ""))
        if results is not None:
            results.add(change.node, {k: v for k, v in change.data.items() if k != "id"})

    def _on_decision(self, change: Change) -> None:
        while len(self._decisions) >= 100:  # those nobody waited for (failed before)
            del self._decisions[next(iter(self._decisions))]
        self._decisions[change.data.get("id", "")] = change.data
        self._decided.set()

    def _on_gone(self, node: LiveNode) -> None:
        for results in self._results.values():
            results.changed.set()
        self._decided.set()


def store_name(ctl: Control) -> str:
    """The store as operators know it, never with its password."""
    url = getattr(ctl.store, "url", None)
    return getattr(url, "display", None) or type(ctl.store).__name__
