"""Revisions over time: deploy, canary, promote, rollback, drain and retire.

This is the revision lifecycle of docs/design.md: ``starting`` → ``active`` → ``draining`` →
``retired`` (or ``starting`` → ``failed``, leaving the active revision as it was).  The
manager decides and records; the supervisor runs processes; the gateway's routing
tables are refreshed through ``Gateway.routing_changed`` after every change.

Draining is driven by the gateway's once-a-second tick: a draining worker stops as soon
as it holds no pinned session, no request in flight and no open WebSocket or stream;
the revision is retired when its last worker has stopped, or after ``max_drain``, when
the sessions still on it are ended and counted as lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import Refused
from ..core.lifecycle import RevisionEvent as E
from ..core.lifecycle import RevisionState as S
from ..core.lifecycle import WorkerState as W
from ..core.lifecycle import check_revisions, revision_next
from ..supervisor.external import Source
from ..supervisor.supervisor import Revision, RevisionFailed
from .draining import Draining
from .external import choose_source, first_source
from .persist import app_settings
from .releases import REVISION_ID, content_hash, git_short_sha, snapshot

MAX_ACTIVATIONS = 50  # how far back the activation stack (rollback targets) remembers

DeployError = Refused  # a deploy-side request refused: the one "refused" error
Hold = Callable[[Revision], Awaitable[None]]  # a deploy waits on it before activating

if TYPE_CHECKING:
    from .context import Context as Control

log = logging.getLogger("holdover.revisions")

class RevisionManager(Draining):
    """All revisions of the app and the one or two that get new sessions."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        self.config = ctl.config
        self.supervisor = ctl.supervisor
        self.revisions: dict[str, Revision] = self.supervisor.revisions
        self.active: Revision | None = None
        self.canary: Revision | None = None
        self._busy: str | None = None  # what deploy-side action is under way
        self._stopping: set[Any] = set()
        self._canary_samples: deque[tuple[float, int, int]] = deque()
        self.activations: list[str] = []  # revision ids in order of activation (a stack)
        self._drains: dict[Any, asyncio.Task[Any]] = {}  # rolling deploys' old workers
        self.deploys = 0

    # -- the one place a revision's state changes ------------------------------------

    def _apply(self, rev: Revision, event: E) -> None:
        """Apply a lifecycle event (core/lifecycle.py) and check the invariants."""
        new = revision_next(rev.id, rev.state, event)
        check_revisions((r.id, new if r is rev else r.state) for r in self.revisions.values())
        before, rev.state = rev.state, new
        self.ctl.routing_changed()
        self.ctl.revision_changed(rev.id, before, new)  # the hooks (control/hooks.py)

    def restore_state(self, rev: Revision, state: S) -> None:
        """A revision loaded from the state store takes the state it was saved in."""
        rev.state = state

    # -- queries -------------------------------------------------------------------

    def previous(self) -> Revision | None:
        """The revision a rollback returns to: the one active before the current one.

        Activations form a stack: a deploy, a promote or ``rollback REV`` pushes, a plain
        rollback pops.  So after a rollback from v2 to v1, the next rollback does not
        bounce back to v2, and a failed deploy (never active) is never a target."""
        for rid in reversed(self.activations[:-1]):
            rev = self.revisions.get(rid)
            if rev is not None and rev is not self.active and rev is not self.canary and \
                    rev.state in (S.DRAINING, S.RETIRED):
                return rev
        return None

    def _pushed(self, rev: Revision) -> None:
        if not self.activations or self.activations[-1] != rev.id:
            self.activations.append(rev.id)
            del self.activations[:-MAX_ACTIVATIONS]

    def restore_activations(self, saved: str | None) -> None:
        """The activation stack from the store (older state_dirs have none: the active)."""
        try:
            ids = json.loads(saved) if saved else []
        except ValueError:
            ids = []
        ids = [i for i in ids if isinstance(i, str) and i in self.revisions] \
            if isinstance(ids, list) else []
        if self.active is not None and (not ids or ids[-1] != self.active.id):
            ids.append(self.active.id)
        self.activations = ids[-MAX_ACTIVATIONS:]

    def status(self) -> dict[str, Any]:
        gw = self.ctl
        out = []
        for rev in self.revisions.values():
            out.append({
                "id": rev.id, "state": rev.state,
                "canary_percent": rev.canary_percent if rev is self.canary else 0,
                "sessions": gw.sessions.per_revision.get(rev.id, 0),
                "created_at": rev.created_at, "command": rev.spec.command,
                "release_dir": rev.release_dir, **gw.discovery.status(rev),
                "workers": [gw.worker_status(w) for w in rev.workers],
            })
        return {"revisions": out, "active": self.active.id if self.active else None,
                "canary": self.canary.id if self.canary else None,
                "mode": self.config.app_mode, "sessions": len(gw.sessions),
                "sessions_lost": gw.sessions_lost, "deploying": self._busy,
                "rollback_to": prev.id if (prev := self.previous()) is not None else None}

    # -- changes -------------------------------------------------------------------

    def _claim(self, what: str) -> None:
        if self.ctl.closing:
            raise DeployError(f"cannot start {what}: the gateway is reloading or shutting "
                              f"down; try again in a moment", 409)
        if self._busy is not None:
            raise DeployError(f"cannot start {what}: {self._busy} is in progress; try again "
                              f"when it has finished", 409)
        self._busy = what

    def _new_id(self, requested: str | None, source: Path | None) -> str:
        if requested is not None:
            if not REVISION_ID.fullmatch(requested):
                raise DeployError(f"revision id {requested!r} is not valid: use letters, "
                                  f"digits, '.', '_' or '-' (at most 64)", 400)
            if requested in self.revisions:
                raise DeployError(f"revision {requested!r} already exists (state "
                                  f"{self.revisions[requested].state}); choose another id", 409)
            return requested
        base = git_short_sha(source) if source is not None else None
        if base is None:
            n = len(self.revisions) + 1
            while f"v{n}" in self.revisions:
                n += 1
            return f"v{n}"
        rid, n = base, 2
        while rid in self.revisions:
            rid, n = f"{base}-{n}", n + 1
        return rid

    async def start_first(self) -> None:
        """The revision ``holdover run`` starts with when the store has none running.

        Like every other revision it runs from a snapshot of its files (the config's
        ``cwd``), so that editing the live folder never changes it: a restart, a crash
        restart or a rollback to it runs the code it started with (external ones: none)."""
        rid = self._new_id(None, None)
        ext = first_source(self.ctl, rid)
        rev = await self._start(rid, self.config.app_dir if ext is None else None, None, None,
                                None, ext=ext)
        self._activate(rev)
        await self.ctl.record_event("deploy", f"revision {rev.id} is active", rev.id)

    def check_deploy(self, revision: str | None, from_dir: str | None,
                     workers: int | None, canary: float | None) -> Path | None:
        """Refuse (DeployError) a deploy that cannot start; the folder it names, if any."""
        if canary is not None and not 0 < canary < 100:
            raise DeployError("canary must be a percentage between 0 and 100 (exclusive)", 400)
        if workers is not None and workers < 1:
            raise DeployError("workers must be at least 1", 400)
        source = None
        if from_dir is not None:
            source = Path(from_dir)
            if not source.is_absolute():
                source = self.config.base_dir / source
            if not source.is_dir():
                raise DeployError(f"--from {from_dir}: no such directory", 400)
        if self.canary is not None:
            raise DeployError(f"canary {self.canary.id} is running: promote or roll it back "
                              f"first", 409)
        if revision is not None:
            self._new_id(revision, source)
        return source

    async def deploy(self, revision: str | None = None, from_dir: str | None = None,
                     command: str | None = None, workers: int | None = None,
                     env: dict[str, str] | None = None, canary: float | None = None,
                     upstreams: list[str] | None = None, expect_hash: str | None = None,
                     hold: Hold | None = None) -> dict[str, Any]:
        """Start a revision, make it active (or canary) once every worker is ready.

        ``upstreams`` names workers another engine runs; without it and without a
        command or folder, the ``discover`` template finds them (control/external.py).
        In a cluster (control/clusterops.py) ``expect_hash`` is the release's content hash
        on the node that deploys it, and ``hold(rev)`` runs once this node's workers are
        ready: it returns when every node is, or raises RevisionFailed."""
        source = self.check_deploy(revision, from_dir, workers, canary)
        self._claim("a deploy")
        try:
            rid = self._new_id(revision, source)
            ext = choose_source(self.ctl, rid, upstreams, source is not None or
                                command is not None, workers is not None or bool(env))
            old = self.active
            rev = await self._start(rid, source, command, workers, env, canary is not None,
                                    ext, expect_hash, hold)
            if canary is not None:
                rev.canary_percent = float(canary)
                self.canary = rev
                self._apply(rev, E.START_CANARY)
                self.ctl.routing_changed()
                await self.ctl.record_event("canary", f"revision {rid} gets {canary:g}% of new "
                                           f"sessions", rid)
            else:
                self._activate(rev)
                if self.ctl.rolling is rev:  # a rolling deploy is over once rev is active
                    self.ctl.rolling = None
                    self.ctl.routing_changed()
                await self.ctl.record_event(
                    "deploy", f"revision {rid} is active" + (
                        f"; {old.id} is draining" if old is not None else ""), rid)
            self.deploys += 1
            await self.ctl.save_revisions()
            return {"revision": rid, "previous": old.id if old else None,
                    "previous_sessions": self.ctl.sessions.per_revision.get(old.id, 0)
                    if old else 0, "canary_percent": canary or 0,
                    "workers": [self.ctl.worker_status(w) for w in rev.workers]}
        finally:
            self._busy = None

    async def _start(self, rid: str, source: Path | None, command: str | None,
                     workers: int | None, env: dict[str, str] | None,
                     canary: bool = False, ext: Source | None = None,
                     expect_hash: str | None = None, hold: Hold | None = None) -> Revision:
        cfg = self.config
        release = None
        cwd = None
        digest = None
        if source is not None:
            release = cfg.state_dir / "releases" / rid
            await asyncio.to_thread(snapshot, source, release, cfg.state_dir)
            digest = await asyncio.to_thread(content_hash, release, cfg.state_dir)
            if expect_hash is not None and digest != expect_hash:
                await asyncio.to_thread(shutil.rmtree, release, True)
                raise DeployError(f"--from {source}: the release on this node differs from "
                                  f"the deploying node's (content hash {digest[:12]} here, "
                                  f"{expect_hash[:12]} there): every node must have the same "
                                  f"files (shared storage, or copied by CI)", 409)
            cwd = release
        spec = self.supervisor.spec(rid, command=command, cwd=cwd, env=env)
        size = workers or cfg.app_workers
        if ext is not None:  # another engine's workers: as many as it runs
            spec.command, size = "", 0
        rev = self.supervisor.create_revision(spec, size, time.time(),
                                              str(release) if release else None)
        rev.source = ext
        rev.meta["config"] = app_settings(cfg)  # what a later restart compares the config to
        if digest is not None and source != cfg.app_dir:  # --from: the same on every node
            rev.meta.update(release_hash=digest, source=str(source))
        rolling = (cfg.app_mode == "stateless" and cfg.app_strategy == "rolling"
                   and self.active is not None and not canary and ext is None)
        await self.ctl.record_event("starting", f"revision {rid}: starting {size} worker(s)"
                                    if ext is None else f"revision {rid}: looking for its "
                                    f"workers at {ext}", rid)
        try:
            if rolling:
                await self._roll(rev, size, hold)
            else:
                await self.start_workers_of(rev)
                if hold is not None:
                    await hold(rev)
        except RevisionFailed as exc:
            # Its workers that did start (a hot standby failed after them) go too.
            await asyncio.gather(*(w.stop() for w in rev.running()))
            self._apply(rev, E.FAIL)
            await self.ctl.record_event("failed", f"revision {rid} failed: {exc}", rid,
                                       exc.worker, {"log_tail": exc.log_tail})
            await self.forget_old()
            await self.ctl.save_revisions()
            raise DeployError(f"revision {rid} failed to start: {exc.why}; the active "
                              f"revision is unchanged", 422, log_tail=exc.log_tail) from None
        return rev

    async def start_workers_of(self, rev: Revision) -> None:
        """Start a revision's workers and hot standbys (RevisionFailed if any fails)."""
        if rev.source is not None:  # another engine runs them: find them, wait for answers
            await self.ctl.discovery.start(rev)
            return
        await self.supervisor.start_workers(rev, rev.size)
        await self._start_standby(rev)

    async def _start_standby(self, rev: Revision) -> None:
        if self.config.app_standby:
            await self.supervisor.start_workers(rev, self.config.app_standby, standby=True)

    async def _roll(self, rev: Revision, size: int, hold: Hold | None = None) -> None:
        """Stateless rolling deploy: one new worker in, one old worker out, repeated.

        An old worker leaves rotation at once and drains in the background (its requests
        and open streams finish, bounded by max_drain): the deploy does not wait for a
        WebSocket that stays open for hours, and rollback is free meanwhile."""
        old = self.active
        assert old is not None
        try:
            for _ in range(size):
                await self.supervisor.start_workers(rev, 1)
                self.ctl.rolling = rev
                self.ctl.routing_changed()
                victims = [w for w in old.running() if w not in self._stopping]
                if victims:
                    self._drain_in_background(victims[0])
            await self._start_standby(rev)
            if hold is not None:
                await hold(rev)
        except RevisionFailed:
            # Undo: the new revision's workers go, the old ones come back into rotation
            # (their drains called off) and the old revision is brought back to size.
            self.ctl.rolling = None
            self._reclaim(old)
            await asyncio.gather(*(w.stop() for w in rev.running()))
            await self._top_up(old)
            raise
        for w in old.running():
            if w not in self._stopping:
                self._drain_in_background(w)
        # ``ctl.rolling`` stays until the deploy has made ``rev`` active.

    def _drain_in_background(self, w: Any) -> None:
        self._stopping.add(w)  # out of rotation now; _retire_worker keeps it there
        self.ctl.routing_changed()
        self._drains[w] = self.ctl.tasks.spawn(self._retire_worker(w, wait=True),
                                               f"drain {w.id}")

    def _reclaim(self, rev: Revision) -> None:
        """Call off the background drains of ``rev``'s workers: they serve again."""
        for w in rev.workers:
            task = self._drains.pop(w, None)
            if task is not None and not task.done():
                task.cancel()
                self._stopping.discard(w)
        self.ctl.routing_changed()

    def _activate(self, rev: Revision, push: bool = True) -> None:
        if push:
            self._pushed(rev)
        old = self.active
        if old is not None and old is not rev:
            self._apply(old, E.DRAIN)
            old.drain_started = time.monotonic()
        self.active = rev
        self._apply(rev, E.ACTIVATE)
        self.ctl.routing_changed()

    async def promote(self) -> dict[str, Any]:
        """Make the canary the active revision; the old active one starts draining."""
        if self.canary is None:
            raise DeployError("there is no canary to promote", 409)
        self._claim("a promote")
        try:
            rev, old = self.canary, self.active
            self.canary = None
            rev.canary_percent = 0.0
            self._activate(rev)
            await self.ctl.record_event("promote", f"canary {rev.id} promoted", rev.id)
            await self.ctl.save_revisions()
            return {"revision": rev.id, "previous": old.id if old else None}
        finally:
            self._busy = None

    async def rollback(self, revision: str | None = None) -> dict[str, Any]:
        """Abort a canary, or make the previous revision (or ``revision``) active again."""
        target = self._revision(revision) if revision is not None else None
        if target is not None:
            if target is self.active:
                raise DeployError(f"revision {target.id} is already the active one", 409)
            if target is self.canary:
                raise DeployError(f"revision {target.id} is the canary: promote it instead", 409)
            if target.state is S.FAILED:
                raise DeployError(f"revision {target.id} failed to start; deploy it anew "
                                  f"instead", 409)
        self._claim("a rollback")
        try:
            if target is not None:
                return await self._back_to(target, push=True)
            if self.canary is not None:
                rev = self.canary
                self.canary = None
                rev.canary_percent = 0.0
                self._apply(rev, E.DRAIN)
                rev.drain_started = time.monotonic()
                self.ctl.routing_changed()
                await self.ctl.record_event("rollback", f"canary {rev.id} aborted; it drains",
                                           rev.id)
                await self.ctl.save_revisions()
                return {"revision": self.active.id if self.active else None,
                        "aborted_canary": rev.id}
            prev = self.previous()
            if prev is None:
                raise DeployError("nothing to roll back to: no revision was active before "
                                  f"{self.active.id if self.active else 'this one'}", 409)
            return await self._back_to(prev, push=False)
        finally:
            self._busy = None

    async def _back_to(self, prev: Revision, push: bool) -> dict[str, Any]:
        """Make ``prev`` active again, restarting it if it retired."""
        current = self.active
        self._reclaim(prev)  # its workers still draining after a rolling deploy serve again
        if prev.state is S.RETIRED or not prev.running():
            prev = await self._restart_retired(prev)
            if not push:
                self._pop_to(prev)
            self._activate(prev, push=push)
        else:
            if not push:
                self._pop_to(prev)
            self._activate(prev, push=push)  # at once: its sessions never noticed
            await self._top_up(prev)
        await self.ctl.record_event(
            "rollback", f"revision {prev.id} is active again" + (
                f"; {current.id} is draining" if current else ""), prev.id)
        await self.ctl.save_revisions()
        return {"revision": prev.id, "previous": current.id if current else None}

    def _pop_to(self, rev: Revision) -> None:
        """A plain rollback: the stack drops everything above ``rev``."""
        while self.activations and self.activations[-1] != rev.id:
            self.activations.pop()
        if not self.activations:
            self.activations.append(rev.id)

    async def _top_up(self, rev: Revision) -> None:
        """Start the workers a draining revision already let go, back up to its size."""
        if rev.source is not None:  # discovery finds its workers again (control/external.py)
            self.ctl.routing_changed()
            return
        live = [w for w in rev.running() if w not in self._stopping]
        missing = rev.size - len([w for w in live if not w.standby])
        try:
            if missing > 0:
                await self.supervisor.start_workers(rev, missing)
            if self.config.app_standby > len([w for w in live if w.standby]):
                await self.supervisor.start_workers(
                    rev, self.config.app_standby - len([w for w in live if w.standby]),
                    standby=True)
        except RevisionFailed as exc:
            await self.ctl.record_event("failed", f"revision {rev.id}: could not start worker "
                                       f"{exc.worker} again; it serves with fewer", rev.id,
                                       exc.worker, {"log_tail": exc.log_tail})
        self.ctl.routing_changed()

    async def _restart_retired(self, rev: Revision) -> Revision:
        """Start a retired revision again from its release folder (same id)."""
        if rev.release_dir and not Path(rev.release_dir).is_dir():
            raise DeployError(f"revision {rev.id}: its release folder {rev.release_dir} is "
                              f"gone", 409)
        self._apply(rev, E.RESTART)
        rev.workers = [w for w in rev.workers if w.state not in (W.STOPPED, W.FAILED)]
        rev.tasks = [t for t in rev.tasks if not t.done()]
        ops = getattr(self.ctl, "clusterops", None)
        try:
            if ops is not None:  # snapshotted on another node: its own copy first
                await ops.localize(rev)
            await self.start_workers_of(rev)
        except RevisionFailed as exc:
            await asyncio.gather(*(w.stop() for w in rev.running()))
            self._apply(rev, E.RETIRE)
            raise DeployError(f"revision {rev.id} failed to start again: {exc.why}", 422,
                              log_tail=exc.log_tail) from None
        return rev

    def _revision(self, rid: str) -> Revision:
        rev = self.revisions.get(rid)
        if rev is None:
            raise DeployError(f"no revision {rid!r}; known: {', '.join(self.revisions) or 'none'}",
                              404)
        return rev

    async def drain(self, rid: str) -> dict[str, Any]:
        """Stop giving a revision new sessions; it retires when its sessions end."""
        rev = self._revision(rid)
        if rev is self.canary:
            return await self.rollback()
        if rev is self.active:
            raise DeployError(f"revision {rid} is the active one: deploy another revision or "
                              f"roll back instead of draining it", 409)
        if rev.state is not S.DRAINING:
            revision_next(rid, rev.state, E.DRAIN)  # refused with the table's sentence
        return {"revision": rid, "state": rev.state}

    async def retire(self, rid: str) -> dict[str, Any]:
        """Retire a draining revision now: its remaining sessions end (counted as lost)."""
        rev = self._revision(rid)
        if rev.state is not S.DRAINING:  # the table lets a failed restart retire too
            raise DeployError(f"revision {rid} is {rev.state}: cannot retire (only a "
                              f"draining revision can be retired)", 409)
        lost = self.ctl.end_sessions_of(rid, reason="retired by an operator")
        await asyncio.gather(*(self._retire_worker(w) for w in rev.running()
                               if w not in self._stopping))
        return {"revision": rid, "sessions_ended": lost}

    def worker(self, wid: str) -> Any:
        for rev in self.revisions.values():
            for w in rev.workers:
                if w.id == wid and w.state not in (W.STOPPED, W.FAILED):
                    return w
        raise DeployError(f"no running worker {wid!r}", 404)

    def worker_any(self, wid: str) -> Any:
        """A worker by id, stopped ones included (their logs are still there)."""
        for rev in self.revisions.values():
            for w in reversed(rev.workers):
                if w.id == wid:
                    return w
        raise DeployError(f"no worker {wid!r}", 404)

    async def worker_action(self, wid: str, action: str) -> dict[str, Any]:
        """restart / disable / enable / standby / unstandby one worker."""
        w = self.worker(wid)
        if action == "restart":
            lost = self.ctl.sessions.per_worker.get(w.id, 0)
            w.restart()
            await self.ctl.record_event("worker-restart", f"worker {wid} restarted by an "
                                       f"operator ({lost} session(s) lost)", w.spec.revision,
                                       wid)
            return {"worker": wid, "action": action, "sessions_lost": lost}
        if action in ("disable", "enable"):
            w.set_disabled(action == "disable")
        elif action in ("standby", "unstandby"):
            w.standby = action == "standby"
        else:
            raise DeployError(f"unknown worker action {action!r}", 400)
        self.ctl.routing_changed()
        await self.ctl.record_event(f"worker-{action}", f"worker {wid}: {action}",
                                   w.spec.revision, wid)
        return {"worker": wid, "action": action, "state": w.state, "disabled": w.disabled,
                "standby": w.standby}

    async def stop_all(self) -> None:
        await self.supervisor.stop_all()

