"""Revisions whose workers another engine runs: finding them, and following the engine.

A deploy names a revision's workers (``--upstream URL``) or finds them with the
``discover`` template (core/discovery.py); either way no process is started.  The
revision is started like any other (RevisionManager._start): it becomes active only
when every worker found answers its health check within ``start_timeout``.

Afterwards the ``discovery`` job asks DNS again every ``discover_interval`` for the
active and canary revisions, and carries out core.discovery.plan_discovery: a new
address joins (and takes new sessions once it answers), a vanished one takes no new
session but keeps serving its pins while it answers, and is stopped — checking and
routing only — once it holds none (the ``leavers`` job).  A failed or empty answer
keeps the last known set: it is logged and counted, never applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..core.discovery import Target, parse_discover, parse_upstream, plan_discovery
from ..core.errors import Refused
from ..core.lifecycle import RevisionState, WorkerState
from ..supervisor.dns import DiscoveryError, Resolver
from ..supervisor.external import ExternalWorker, Source
from ..supervisor.supervisor import Revision, RevisionFailed

if TYPE_CHECKING:
    from .context import Context as Control

log = logging.getLogger("holdover.discovery")

FOLLOWED = (RevisionState.ACTIVE, RevisionState.CANARY)  # revisions discovery keeps current


def choose_source(ctl: Control, rid: str, upstreams: list[str] | None, supervised: bool,
                  process_options: bool = False) -> Source | None:
    """Who runs a new revision's workers: the URLs given, the discover template, or us.

    ``supervised``: a command or a folder was given, so holdover runs it;
    ``process_options``: a worker count or environment was given, which only processes
    holdover starts can have.  Refused (400) with the reason when the request cannot
    name any workers, or mixes the two kinds."""
    source = _choose(ctl, rid, upstreams, supervised)
    if source is not None and process_options:
        raise Refused(f"--workers and --env are for processes holdover starts; the workers "
                      f"at {source} are another engine's to size and configure", 400,
                      field="workers")
    return source


def _choose(ctl: Control, rid: str, upstreams: list[str] | None, supervised: bool
            ) -> Source | None:
    cfg = ctl.config
    if upstreams:
        if supervised:
            raise Refused("--upstream names workers another engine runs: it does not go "
                          "with --command or --from", 400, field="upstreams")
        for url in upstreams:
            try:
                parse_upstream(url)
            except ValueError as exc:
                raise Refused(f"upstreams: {exc}", 400, field="upstreams") from None
        return Source(upstreams=tuple(dict.fromkeys(upstreams)))
    if upstreams is not None:
        raise Refused("upstreams: give at least one URL", 400, field="upstreams")
    if supervised:
        if not cfg.app_command:
            raise Refused("no command to run: give --command (the configuration has none, "
                          "its workers are another engine's)", 400, field="command")
        return None
    if cfg.app_discover:
        try:
            return Source(discover=str(parse_discover(cfg.app_discover).of(rid)))
        except ValueError as exc:
            raise Refused(f"{exc}; choose a revision id of letters, digits and '-'", 400,
                          field="revision") from None
    if cfg.app_command:
        return None
    raise Refused("no workers to deploy: give --upstream URL (or --command), or set "
                  "discover in the configuration", 400, field="upstreams")


def first_source(ctl: Control, rid: str) -> Source | None:
    """The source of the revision ``holdover run`` starts with: upstreams, command, discover."""
    cfg = ctl.config
    if cfg.app_upstreams:
        return Source(upstreams=tuple(dict.fromkeys(cfg.app_upstreams)))
    if cfg.app_command:
        return None
    return choose_source(ctl, rid, None, False)


class Discovery:
    """External revisions of one gateway: starting them and following DNS."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        cfg = ctl.config
        self.resolver = Resolver([tuple(s) for s in cfg.app_dns_servers],
                                 timeout=min(5.0, max(1.0, cfg.app_discover_interval)))
        self.failures: dict[str, int] = {}  # per revision: DNS rounds not applied
        self._failing: dict[str, str] = {}  # revision -> the reason, while it fails
        self._busy: set[str] = set()  # revisions being looked up now

    # -- starting a revision ------------------------------------------------------

    async def targets(self, rev: Revision, timeout: float) -> list[Target]:
        """The workers ``rev``'s source names now; for DNS, asked until ``timeout``.

        Raises RevisionFailed saying what DNS answered when it named no worker."""
        src = rev.source
        assert src is not None
        if not src.discover:
            return [parse_upstream(u) for u in src.upstreams]
        d = parse_discover(src.discover, template=False)
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                return sorted(await self.resolver.resolve(d, d.template))
            except DiscoveryError as exc:
                why = str(exc)
            if time.monotonic() + delay > deadline:
                raise RevisionFailed(rev.id, "-", "", why=f"found no worker at {src.discover} "
                                     f"within {timeout:g}s: {why}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def start(self, rev: Revision) -> None:
        """Find ``rev``'s workers and wait until every one answers (RevisionFailed if not)."""
        found = await self.targets(rev, rev.spec.start_timeout)
        await self.ctl.record_event(
            "discovered", f"revision {rev.id}: {len(found)} worker(s) at {rev.source}: "
            + ", ".join(t.url for t in found), rev.id,
            data={"workers": [t.url for t in found]})
        rev.size = len(found)
        await self.ctl.supervisor.start_external(rev, found)

    # -- following DNS ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Look up the active and canary revisions found by DNS again (in the background)."""
        if self.ctl.revs._busy is not None:
            return  # a deploy, rollback or promote is changing which revisions those are
        for rev in list(self.ctl.revs.revisions.values()):
            src = rev.source
            if src is not None and src.discover and rev.state in FOLLOWED \
                    and rev.id not in self._busy:
                self._busy.add(rev.id)
                self.ctl.tasks.spawn(self._refresh(rev), f"discover {rev.id}")

    async def _refresh(self, rev: Revision) -> None:
        try:
            assert rev.source is not None
            d = parse_discover(rev.source.discover, template=False)
            try:
                found = await self.resolver.resolve(d, d.template)
            except DiscoveryError as exc:
                await self._not_applied(rev, str(exc))
                return
            if rev.state not in FOLLOWED:
                return  # it started draining meanwhile
            was = self._failing.pop(rev.id, None)
            if was is not None:
                await self.ctl.record_event("discovery", f"revision {rev.id}: {rev.source} "
                                            f"answers again", rev.id)
            await self.apply(rev, found)
        finally:
            self._busy.discard(rev.id)

    async def _not_applied(self, rev: Revision, why: str) -> None:
        """Keep the last known workers; say so once per streak of failures."""
        self.failures[rev.id] = self.failures.get(rev.id, 0) + 1
        if self._failing.get(rev.id) is None:
            self._failing[rev.id] = why
            log.warning("revision %s: %s; keeping its %d known worker(s)", rev.id, why,
                        len(self._known(rev)))
            await self.ctl.record_event("discovery-failed", f"revision {rev.id}: {why}; its "
                                        f"known workers stay as they are", rev.id,
                                        data={"reason": why})
        else:
            log.debug("revision %s: discovery still failing: %s", rev.id, why)

    @staticmethod
    def _known(rev: Revision) -> list[ExternalWorker]:
        return [w for w in rev.running() if isinstance(w, ExternalWorker)]

    async def apply(self, rev: Revision, found: set[Target]) -> None:
        """Carry out what a DNS answer means for ``rev`` (core.discovery.plan_discovery)."""
        stopping = self.ctl.revs._stopping
        known = {w.id: w for w in self._known(rev) if w not in stopping}
        plan = plan_discovery(((w.id, w.target, w.listed) for w in known.values()), found)
        if not plan:
            return
        for wid in plan.leave:
            w = known[wid]
            w.listed = False
            n = self.ctl.sessions.per_worker.get(wid, 0)
            await self.ctl.record_event(
                "worker-left", f"worker {wid} ({w.url}) left {rev.source}: it takes no new "
                f"session" + (f" and keeps serving its {n} session(s) while it answers" if n
                              else ""), rev.id, wid)
        for wid in plan.rejoin:
            known[wid].listed = True
            await self.ctl.record_event("worker-back", f"worker {wid} ({known[wid].url}) is "
                                        f"back in {rev.source}", rev.id, wid)
        for target in plan.add:
            w = self.ctl.supervisor.add_external(rev, target)
            await self.ctl.record_event("worker-found", f"worker {w.id} ({w.url}) joined "
                                        f"revision {rev.id}", rev.id, w.id)
        rev.size = len([w for w in self._known(rev) if w.listed])
        self.ctl.routing_changed()
        await self.ctl.save_revisions()

    def leavers(self, now: float) -> None:
        """Stop following workers that left DNS once they hold nothing (or stopped answering).

        Draining revisions need no help: their idle workers stop by the drain plan."""
        rm = self.ctl.revs
        for rev in rm.revisions.values():
            if rev.source is None or rev.state not in FOLLOWED:
                continue
            for w in self._known(rev):
                if not w.leaving or w in rm._stopping:
                    continue
                idle = not self.ctl.sessions.per_worker.get(w.id, 0) and not self.ctl.inflight(w)
                if idle or w.state is not WorkerState.READY:
                    self.ctl.tasks.spawn(rm._retire_worker(w), "retire-worker")

    def status(self, rev: Revision) -> dict[str, Any]:
        """What the status of ``rev`` says about its workers' source."""
        src = rev.source
        if src is None:
            return {"kind": "supervised"}
        return {"kind": "external", "upstreams": list(src.upstreams),
                "discover": src.discover, "discovery_failing": self._failing.get(rev.id)}
