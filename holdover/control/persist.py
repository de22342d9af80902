"""Keeping the control side's state in the store, and bringing it back.

Objects become store records here and records become objects again: revisions (with
which one is active or the canary), pins (the table keeps monotonic times, the store
wall-clock ones), and events for operators.  Serving never waits on the store: a
failed write is logged and retried at the next flush, from memory — pins and revisions
as they are then, events queued in order (with the time they happened) up to
``MAX_QUEUED_EVENTS``, so that a store that was away for a while loses nothing.

``restore`` is the start of a gateway over an existing state_dir: after a re-exec the
workers still run and are adopted with their sessions; after a real restart the active
revision starts again and the sessions pinned to the old processes count as lost.  A
state_dir written before canaries had their own state (a canary stored as "active"
beside the meta key ``canary``) is migrated on load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..core.discovery import Target
from ..core.lifecycle import RevisionEvent, RevisionState, WorkerState
from ..core.sessions import Pin
from ..state import PinRecord, RevisionRecord, StoreError
from ..supervisor.external import Source
from ..supervisor.supervisor import RevisionFailed
from ..supervisor.worker import Adoption

if TYPE_CHECKING:
    from .context import Context as Control

log = logging.getLogger("holdover.control")

MAX_QUEUED_EVENTS = 10_000  # events kept while the store does not answer (oldest dropped)


class Persistence:
    """The store side of a running control plane."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl
        self.flushing = False
        self.unsaved_events: deque[tuple[str, str, str | None, str | None, dict]] = deque(
            maxlen=MAX_QUEUED_EVENTS)
        self.revisions_unsaved = False
        self._refusal_told = -60.0

    async def record_event(self, kind: str, message: str, revision: str | None = None,
                           worker: str | None = None, data: dict | None = None) -> None:
        """An event for operators: logged, and kept in the state store (queued while the
        store does not answer; in a cluster it names the node it happened on)."""
        log.info("%s: %s", kind, message)
        store = self.ctl.store
        if store is None:
            return
        cluster = getattr(self.ctl, "cluster", None)
        if cluster is not None:
            data = {**(data or {}), "node": cluster.me}
        if self.unsaved_events:  # after those that wait, in order
            self._queue(kind, message, revision, worker, data)
            return
        try:
            await store.add_event(kind, message, revision=revision, worker=worker, data=data)
        except StoreError as exc:
            log.error("cannot record event (kept until the store answers): %s", exc)
            self._queue(kind, message, revision, worker, data)

    def _queue(self, kind: str, message: str, revision: str | None, worker: str | None,
               data: dict | None) -> None:
        self.unsaved_events.append((kind, message, revision, worker,
                                    {**(data or {}), "happened_at": round(time.time(), 3)}))

    async def flush_events(self) -> None:
        """Write the events queued while the store did not answer, oldest first."""
        queue = self.unsaved_events
        self.flushing = True
        try:
            while queue:
                kind, message, revision, worker, data = queue[0]
                await self.ctl.store.add_event(kind, message, revision=revision,
                                               worker=worker, data=data)
                queue.popleft()
            if self.revisions_unsaved:
                await self.save_revisions()
        except StoreError as exc:
            if monotonic() - self._refusal_told > 30:  # not every second of an outage
                self._refusal_told = monotonic()
                log.warning("the store still refuses the %d queued event(s): %s",
                            len(queue), exc)
        finally:
            self.flushing = False

    async def save_revisions(self) -> None:
        """Write every revision's record and which one is active to the store."""
        rm = self.ctl.revs
        store = self.ctl.store
        self.revisions_unsaved = False
        try:
            for rev in list(rm.revisions.values()):  # it may change while we await
                if rm.revisions.get(rev.id) is not rev:
                    continue  # forgotten meanwhile (forget_old): its record must stay gone
                await store.put_revision(RevisionRecord(
                    id=rev.id, state=str(rev.state), command=rev.spec.command,
                    cwd=str(rev.spec.cwd), env=dict(rev.spec.env), workers=rev.size,
                    created_at=rev.created_at, release_dir=rev.release_dir,
                    updated_at=time.time(), canary_percent=rev.canary_percent,
                    meta=rev.meta, **_source_fields(rev.source)))
            await store.set_meta("active", rm.active.id if rm.active else "")
            await store.set_meta("canary", rm.canary.id if rm.canary else "")
            await store.set_meta("activations", json.dumps(rm.activations))
        except StoreError as exc:
            log.error("cannot save revisions (serving goes on from memory): %s", exc)
            self.revisions_unsaved = True  # written again when the store answers

    async def flush_pins(self) -> None:
        """Write the pin table's changes since the last flush (kept on failure)."""
        sessions = self.ctl.sessions
        changed, removed = sessions.take_changes()
        if not changed and not removed:
            return
        self.flushing = True
        try:
            # The store keeps wall-clock times; the table keeps monotonic ones.
            offset = time.time() - monotonic()
            if changed:
                await self.ctl.store.put_pins([PinRecord(
                    key=p.key, worker=p.worker, incarnation=p.incarnation, revision=p.revision,
                    created_at=p.created_at + offset, last_seen=p.last_seen + offset,
                    expires_at=p.expires_at + offset if p.expires_at is not None else None)
                    for p in changed])
            if removed:
                await self.ctl.store.delete_pins(removed)
        except StoreError as exc:
            log.error("cannot save sessions (serving goes on from memory): %s", exc)
            # Keep them for the next flush: the pins still live in memory.
            sessions.dirty.update(p.key for p in changed if p.key in sessions.pins)
            sessions.removed.update(k for k in removed if k not in sessions.pins)
        finally:
            self.flushing = False

    def tell_config_drift(self, rev: Any) -> None:
        keys = config_drift(self.ctl.config, rev)
        if keys:
            log.warning("the [app] section of %s differs from the running revision %s in: "
                        "%s; they take effect with the next `holdover deploy` (a restart or "
                        "reload keeps the running revision as it was deployed)",
                        self.ctl.config.path, rev.id, ", ".join(keys))

    async def restore(self, inherit: dict[str, Any] | None) -> None:
        """Bring back revisions and pins from the state store after a restart."""
        ctl = self.ctl
        store = ctl.store
        records = await store.list_revisions()
        pins = await store.load_pins()
        active_id = await store.get_meta("active")
        canary_id = await store.get_meta("canary")
        rm = ctl.revs
        sup = ctl.supervisor
        adopted: dict[str, list[tuple[str, bool, Adoption]]] = {}
        external: dict[str, list[dict[str, Any]]] = {}  # workers another engine runs
        for w in (inherit or {}).get("workers", []):
            if w.get("external"):
                external.setdefault(w["revision"], []).append(w)
                continue
            adopted.setdefault(w["revision"], []).append(
                (w["id"], w["standby"], Adoption(w["pid"], w["port"], w["incarnation"],
                                                 w["log_fd"], w["restarts"],
                                                 w.get("disabled", False))))
        for rec in records:
            spec = sup.spec(rec.id, command=rec.command, cwd=Path(rec.cwd), env=rec.env)
            rev = sup.create_revision(spec, rec.workers, rec.created_at, rec.release_dir)
            rev.canary_percent = rec.canary_percent
            rev.source = _stored_source(rec)
            rev.meta = dict(rec.meta or {})
            state = _stored_state(rec.state, rec.id == canary_id)
            if rec.id in adopted or rec.id in external:
                rm.restore_state(rev, state)
                rev.drain_started = monotonic()
                if rec.id in adopted:
                    await sup.adopt_workers(rev, adopted[rec.id])
                for w in external.get(rec.id, []):
                    sup.add_external(rev, Target(w["host"], w["port"]), adopt=w["incarnation"],
                                     wid=w["id"]).listed = w["listed"]
                if rec.id == active_id:
                    rm.active = rev
                elif rec.id == canary_id:
                    rm.canary = rev
            else:
                rm.restore_state(rev, state if state in (RevisionState.FAILED,
                                                         RevisionState.RETIRED)
                                 else RevisionState.RETIRED)
        saved_activations = await store.get_meta("activations")
        live = {(w.id, w.incarnation) for w in sup.all_workers()
                if w.state is WorkerState.READY}
        kept = [p for p in pins if (p.worker, p.incarnation) in live]
        gone = [p for p in pins if (p.worker, p.incarnation) not in live]
        offset = monotonic() - time.time()
        ctl.sessions.restore(Pin(p.key, p.worker, p.incarnation, p.revision,
                                 p.created_at + offset, p.last_seen + offset,
                                 p.expires_at + offset if p.expires_at else None)
                             for p in kept)
        if gone:
            # The workers that held these sessions' memory did not survive the restart.
            ctl.router.sessions_lost += len(gone)
            await store.delete_pins([p.key for p in gone])
            await self.record_event("sessions-lost", f"{len(gone)} session(s) from before the "
                                    f"restart lost: their worker processes were restarted",
                                    data={"count": len(gone)})
        if rm.active is not None:
            rm.restore_activations(saved_activations)
            self.tell_config_drift(rm.active)
            # Adopted: top up workers that were not ready at the handover.
            missing = rm.active.size - len([w for w in rm.active.running() if not w.standby])
            if missing > 0 and rm.active.source is None:
                await sup.start_workers(rm.active, missing)
            ctl.routing_changed()
            await self.record_event("reload", f"gateway re-executed: adopted "
                                    f"{sum(len(v) for v in adopted.values())} worker(s), "
                                    f"{len(kept)} session(s) kept", rm.active.id)
            return
        if active_id and active_id in rm.revisions:
            rev = rm.revisions[active_id]
            await self.record_event("restore", f"restarting revision {rev.id}", rev.id)
            self.tell_config_drift(rev)
            rm.restore_state(rev, RevisionState.STARTING)
            ops = getattr(ctl, "clusterops", None)
            try:
                if ops is not None:  # a node joining a cluster: its own snapshot first
                    await ops.localize(rev)
                await rm.start_workers_of(rev)
            except RevisionFailed as exc:
                await asyncio.gather(*(w.stop() for w in rev.running()))
                rm._apply(rev, RevisionEvent.FAIL)
                await self.record_event("failed", f"revision {rev.id} did not start again "
                                        f"({exc}); starting the configured app instead",
                                        rev.id, exc.worker, {"log_tail": exc.log_tail})
                return
            rm.restore_activations(saved_activations)
            rm._activate(rev)


def _source_fields(source: Source | None) -> dict[str, Any]:
    """A revision record's ``kind``, ``upstreams`` and ``discover`` (state/base.py)."""
    if source is None:
        return {"kind": "supervised"}
    return {"kind": "external", "upstreams": source.upstreams, "discover": source.discover}


def _stored_source(rec: RevisionRecord) -> Source | None:
    """Where a stored revision's workers are: ours, or another engine's."""
    if rec.kind != "external":
        return None
    return Source(upstreams=tuple(rec.upstreams), discover=rec.discover)


def app_settings(config: Any) -> dict[str, Any]:
    """The ``[app]`` values a revision takes from the config when it is created."""
    return {"command": config.app_command, "env": dict(config.app_env),
            "workers": config.app_workers, "cwd": str(config.app_dir)}


def config_drift(config: Any, rev: Any) -> list[str]:
    """The ``[app]`` keys changed in the config since revision ``rev`` was created.

    A revision is immutable: its command, environment, worker count and folder are its
    own, so a changed config applies them only to the next deploy.  Everything else in
    ``[app]`` (health checks, timeouts, logs) is read anew at every start and reload.
    A revision from before this was recorded is compared with what it runs."""
    if rev.source is not None:
        return []  # another engine's workers: command, env, workers and cwd are not theirs
    then = rev.meta.get("config")
    if not isinstance(then, dict):
        then = {"command": rev.spec.command, "env": dict(rev.spec.env), "workers": rev.size,
                "cwd": str(rev.spec.cwd)}
    now = app_settings(config)
    return [k for k in ("command", "env", "workers", "cwd") if then.get(k) != now[k]]


def _stored_state(value: str, is_canary: bool) -> RevisionState:
    """A stored revision state, migrating older state_dirs (a canary saved as "active")."""
    try:
        state = RevisionState(value)
    except ValueError:
        log.warning("unknown revision state %r in the store: taken as retired", value)
        return RevisionState.RETIRED
    if is_canary and state is RevisionState.ACTIVE:
        return RevisionState.CANARY
    return state
