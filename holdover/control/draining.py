"""Draining and retiring: what the once-a-second tick does to revisions that wind down.

A draining worker stops as soon as it holds no pinned session, no request in flight and
no open WebSocket or stream; a revision is retired when its last worker has stopped, or
after ``max_drain``, when the sessions still on it are ended and counted as lost.  The
canary's error budget is judged here too, and finished revisions beyond
``keep_retired`` are forgotten.  ``RevisionManager`` (revisions.py) inherits this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.errors import Refused
from ..core.lifecycle import RevisionEvent as E
from ..core.lifecycle import RevisionState as S
from ..core.policy import drain_expired, judge_canary, workers_to_stop
from ..core.retention import to_forget
from ..state import StoreError
from .retention import remove_files

if TYPE_CHECKING:
    from ..supervisor.supervisor import Revision
    from .context import Context

log = logging.getLogger("holdover.revisions")


class Draining:
    """The draining side of the revision manager (its attributes)."""

    # Provided by RevisionManager:
    ctl: Context
    config: Any
    revisions: dict[str, Revision]
    canary: Revision | None
    activations: list[str]
    _busy: str | None
    _stopping: set[Any]
    _drains: dict[Any, asyncio.Task[Any]]
    _canary_samples: deque[tuple[float, int, int]]

    def _apply(self, rev: Revision, event: E) -> None: ...

    def previous(self) -> Revision | None: ...

    async def rollback(self, revision: str | None = None) -> dict[str, Any]: ...

    def _judge_canary(self, now: float) -> None:
        """Abort the canary when its 5xx ratio over the window exceeds the budget."""
        rev = self.canary
        budget = self.config.app_canary_max_error_ratio
        if rev is None or not budget or self._busy is not None:
            self._canary_samples.clear()
            return
        stats = [self.ctl.stats(w) for w in rev.workers]
        samples = self._canary_samples
        samples.append((now, sum(s.requests for s in stats), sum(s.errors for s in stats)))
        verdict, drop = judge_canary(samples, now, self.config.app_canary_window,
                                     self.config.app_canary_min_requests, budget)
        for _ in range(drop):
            samples.popleft()
        if verdict.abort:
            n, bad = verdict.requests, verdict.errors
            self._canary_samples.clear()
            msg = (f"canary {rev.id} answered {bad} of {n} requests with 5xx "
                   f"({bad / n:.0%} > {budget:.0%}): aborting it")
            log.error(msg)
            self.ctl.tasks.spawn(self._abort_canary(rev, msg), "abort-canary")

    async def _abort_canary(self, rev: Revision, why: str) -> None:
        await self.ctl.record_event("canary-failed", why, rev.id)
        if self.canary is not rev:  # promoted or aborted meanwhile: nothing to undo
            log.warning("canary %s was no longer the canary; not rolling back", rev.id)
            return
        ops = getattr(self.ctl, "clusterops", None)  # in a cluster: on every node
        try:
            await (ops.run("rollback", {}) if ops is not None else self.rollback())
        except Refused as exc:
            log.error("could not abort the canary: %s", exc)

    def tick(self, now: float) -> None:
        """Stop idle workers of draining revisions; retire revisions left with none."""
        if self.canary is not None:
            self._judge_canary(now)
        max_drain = self.config.app_max_drain
        sessions = self.ctl.sessions
        for rev in list(self.revisions.values()):
            if rev.state is not S.DRAINING:
                continue
            if drain_expired(now, rev.drain_started, max_drain):
                lost = self.ctl.end_sessions_of(rev.id, reason="max_drain")
                if lost:
                    log.warning("revision %s: max_drain reached, %d session(s) ended", rev.id,
                                lost)
            running = {w.id: w for w in rev.running()}
            plan = workers_to_stop(
                ((w.id, self.ctl.inflight(w), sessions.per_worker.get(w.id, 0))
                 for w in running.values()), (w.id for w in self._stopping))
            for wid in plan:
                self.ctl.tasks.spawn(self._retire_worker(running[wid], idle=True),
                                     "retire-worker")
            if not running and not any(w in self._stopping for w in rev.workers):
                self._apply(rev, E.RETIRE)
                self.ctl.tasks.spawn(self._retired(rev), "retired")

    async def _retired(self, rev: Revision) -> None:
        await self.ctl.record_event("retired", f"revision {rev.id} retired: its last worker "
                                   f"stopped", rev.id)
        await self.forget_old()
        await self.ctl.save_revisions()

    async def forget_old(self) -> list[str]:
        """Forget finished revisions beyond ``keep_retired`` (core/retention.py): out of
        status, metrics and the store, their release snapshot and logs removed from disk;
        their events stay."""
        keep = self.config.app_keep_retired
        # Never the rollback target, and failed deploys (a bad release tried five times)
        # never push out revisions that once served.
        prev = self.previous()
        states = [(r.id, str(r.state)) for r in self.revisions.values()]
        gone = [rid for rid in (to_forget([x for x in states if x[1] == "retired"], keep)
                                + to_forget([x for x in states if x[1] == "failed"], keep))
                if prev is None or rid != prev.id]
        for rid in gone:
            rev = self.revisions.pop(rid)
            if rev.running():  # never the case for a finished revision; keep it if so
                self.revisions[rid] = rev
                continue
            try:
                # In a cluster the record is shared: it goes once no node runs it.
                if not self.ctl.runs_elsewhere(rid):
                    await self.ctl.store.delete_revision(rid)
                await asyncio.to_thread(remove_files, self.config.state_dir, rid)
            except (StoreError, OSError) as exc:
                log.error("cannot forget revision %s: %s", rid, exc)
        if gone:
            log.info("forgot finished revision(s) %s (keep_retired = %d); their events stay",
                     ", ".join(gone), self.config.app_keep_retired)
            self.ctl.routing_changed()
        return gone

    async def _retire_worker(self, w: Any, wait: bool = False, idle: bool = False) -> None:
        """Take ``w`` out of service; stop it when nothing runs on it any more.

        ``idle``: the drain plan chose it as idle a moment ago; if a request or a session
        reached it since (a returning client), it is not stopped this time."""
        if idle and (self.ctl.inflight(w) or self.ctl.sessions.per_worker.get(w.id)):
            return
        self._stopping.add(w)
        try:
            self.ctl.routing_changed()  # retiring: it takes no new session
            if wait:
                # A rolling deploy lets the old worker drain like a draining revision: its
                # requests and open WebSockets finish, bounded only by max_drain.
                limit = self.config.app_max_drain
                deadline = time.monotonic() + limit if limit else None
                while self.ctl.inflight(w) and (deadline is None or time.monotonic() < deadline):
                    await asyncio.sleep(0.1)
            cut = self.ctl.inflight(w)
            await w.stop()
            await self.ctl.record_event(
                "worker-stopped", f"worker {w.id} stopped (drained)" if not cut else
                f"worker {w.id} stopped after max_drain with {cut} open request(s) or "
                f"stream(s) cut", w.spec.revision, w.id)
        finally:
            self._stopping.discard(w)
            self._drains.pop(w, None)

