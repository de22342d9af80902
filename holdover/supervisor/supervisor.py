"""Runs the workers of each revision and tells the proxy which can take traffic.

The supervisor owns processes and nothing else: it starts a revision's workers, waits
until every one of them is ready (or reports the revision failed with the failing
worker's log tail), keeps them running, and stops them in a staged way.  Every change
of a worker's state is reported through ``on_worker_state`` so that the gateway can
update routing at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..core.discovery import Target
from ..core.lifecycle import RUNNING, RevisionState
from .external import ExternalWorker, Source
from .worker import AdoptedProcess, Adoption, Worker, WorkerSpec

log = logging.getLogger("holdover.supervisor")


def _watched(task: asyncio.Task[None]) -> asyncio.Task[None]:
    """A worker's life task whose failure is logged the moment it happens."""
    def done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s: its life task failed: %r", t.get_name(), t.exception(),
                      exc_info=t.exception())
    task.add_done_callback(done)
    return task


class RevisionFailed(Exception):
    """A revision's workers never became ready.

    Carries what the operator needs to fix it: ``reason`` (what the failing worker's
    last health check got, or how its process ended) and its log tail, which ends with
    that reason too, so every place that shows the tail shows why.  ``why`` is the
    whole sentence, for failures that are not one worker's (no worker found in DNS)."""

    def __init__(self, revision: str, worker: str, log_tail: str, reason: str = "",
                 why: str = "") -> None:
        self.why = why or (f"worker {worker} never became ready"
                           + (f": {reason}" if reason else ""))
        super().__init__(f"revision {revision}: {self.why}")
        self.revision = revision
        self.worker = worker
        self.log_tail = log_tail
        self.reason = reason


@dataclass(eq=False)
class Revision:
    """One deployable version of the app and its workers.

    ``state`` is the revision's lifecycle state (core/lifecycle.py); the supervisor
    never changes it: the control side applies its transitions."""

    id: str
    spec: WorkerSpec
    size: int = 1  # workers it should run
    workers: list[Worker] = field(default_factory=list)
    state: RevisionState = RevisionState.STARTING
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    created_at: float = 0.0
    release_dir: str | None = None
    drain_started: float = 0.0
    canary_percent: float = 0.0
    next_index: int = 1
    source: Source | None = None  # external workers: where they are found (None: ours)
    meta: dict[str, Any] = field(default_factory=dict)  # kept in the store with the revision

    def running(self) -> list[Worker]:
        """Workers whose process is (or is about to be) up."""
        return [w for w in self.workers if w.state in RUNNING]


class Guard:
    """The orphan guard process (see guard.py): told of every worker's process group."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._pipe: asyncio.WriteTransport | None = None
        self._fd = -1

    async def start(self) -> None:
        rfd, wfd = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "holdover.supervisor.guard", stdin=rfd,
                start_new_session=True)
        finally:
            os.close(rfd)
        await self.adopt(None, wfd)

    async def adopt(self, pid: int | None, fd: int) -> None:
        """Talk to the guard over ``fd``; with ``pid``, one a previous image started."""
        if pid is not None:
            self._proc = AdoptedProcess(pid)
        self._fd = fd
        self._pipe, _ = await asyncio.get_running_loop().connect_write_pipe(
            asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))

    def handover(self) -> tuple[int, int]:
        """The guard's pid and pipe fd, made inheritable for a re-exec."""
        assert self._proc is not None and self._fd >= 0
        os.set_inheritable(self._fd, True)
        return self._proc.pid, self._fd

    def tell(self, line: str) -> None:
        pipe = self._pipe
        if pipe is not None and not pipe.is_closing():
            pipe.write(line.encode() + b"\n")

    async def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        if self._proc is not None:
            await self._proc.wait()


class Supervisor:
    """All revisions' workers."""

    def __init__(self, config: Config, on_worker_state: Callable[[Worker], None]) -> None:
        self.config = config
        self.on_worker_state = on_worker_state
        self.revisions: dict[str, Revision] = {}
        self.guard = Guard()

    def spec(self, revision: str, command: str | None = None, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> WorkerSpec:
        """How to run a worker of ``revision``, from the config and any overrides."""
        c = self.config
        return WorkerSpec(
            revision=revision, command=command or c.app_command, cwd=cwd or c.app_dir,
            env={**c.app_env, **(env or {})}, health_path=c.app_health_path,
            health_interval=c.app_health_interval, health_timeout=c.app_health_timeout,
            health_failures=c.app_health_failures, start_timeout=c.app_start_timeout,
            stop_grace=c.app_stop_grace, backoff_max=c.app_restart_backoff_max,
            crash_loop_restarts=c.app_crash_loop_restarts,
            crash_loop_window=c.app_crash_loop_window,
            log_dir=c.state_dir / "logs" / revision, log_max_bytes=c.app_log_max_bytes,
            log_backups=c.app_log_backups, node=c.node_name)

    def create_revision(self, spec: WorkerSpec, size: int, created_at: float = 0.0,
                        release_dir: str | None = None) -> Revision:
        rev = Revision(spec.revision, spec, size=size, created_at=created_at,
                       release_dir=release_dir)
        self.revisions[rev.id] = rev
        return rev

    async def start_workers(self, rev: Revision, count: int, standby: bool = False
                            ) -> list[Worker]:
        """Start ``count`` more workers of ``rev``; return once all are ready.

        Raises RevisionFailed (after stopping the new workers) if any never gets ready.
        """
        loop = asyncio.get_running_loop()
        ready: list[asyncio.Future[bool]] = []
        new: list[Worker] = []
        for _ in range(count):
            w = Worker(id=f"{rev.id}-{rev.next_index}", spec=rev.spec, standby=standby,
                       on_state=self.on_worker_state, guard=self.guard.tell)
            rev.next_index += 1
            rev.workers.append(w)
            new.append(w)
            fut: asyncio.Future[bool] = loop.create_future()
            ready.append(fut)
            rev.tasks.append(_watched(loop.create_task(w.run(fut), name=f"worker {w.id}")))
        results = await asyncio.gather(*ready)
        if not all(results):
            bad = new[results.index(False)]
            await asyncio.gather(*(w.stop() for w in new))
            raise RevisionFailed(rev.id, bad.id, bad.log_tail(20), bad.start_failure)
        return new

    # -- workers another engine runs (external.py) ----------------------------------

    def add_external(self, rev: Revision, target: Target,
                     ready: asyncio.Future[bool] | None = None, adopt: str | None = None,
                     wid: str | None = None) -> ExternalWorker:
        """Start checking one more external worker of ``rev`` at ``target``."""
        if wid is None:
            wid = f"{rev.id}-{rev.next_index}"
            rev.next_index += 1
        else:
            suffix = wid.rsplit("-", 1)[-1]
            if suffix.isdigit():
                rev.next_index = max(rev.next_index, int(suffix) + 1)
        spec = dataclasses.replace(rev.spec, host=target.host)
        w = ExternalWorker(id=wid, spec=spec, target=target, on_state=self.on_worker_state)
        rev.workers.append(w)
        if adopt is not None:
            w.adopt(adopt)  # its pins stay valid (see Persistence.restore)
        rev.tasks.append(_watched(asyncio.get_running_loop().create_task(
            w.run(ready), name=f"worker {w.id}")))
        return w

    async def start_external(self, rev: Revision, targets: list[Target]
                             ) -> list[ExternalWorker]:
        """Check ``rev``'s external workers; return once every one answers.

        Raises RevisionFailed (after they are stopped) if one does not within
        ``start_timeout``."""
        loop = asyncio.get_running_loop()
        ready: list[asyncio.Future[bool]] = [loop.create_future() for _ in targets]
        new = [self.add_external(rev, t, fut) for t, fut in zip(targets, ready, strict=True)]
        results = await asyncio.gather(*ready)
        if not all(results):
            bad = new[results.index(False)]
            await asyncio.gather(*(w.stop() for w in new))
            raise RevisionFailed(rev.id, bad.id, bad.log_tail(20),
                                 why=f"worker {bad.id} ({bad.url}) did not answer its health "
                                 f"check within {rev.spec.start_timeout:g}s")
        return new

    async def adopt_workers(self, rev: Revision, adopted: list[tuple[str, bool, Adoption]]
                            ) -> None:
        """Take over workers a previous gateway image left running (see Gateway.reload)."""
        loop = asyncio.get_running_loop()
        ready = []
        for wid, standby, info in adopted:
            w = Worker(id=wid, spec=rev.spec, standby=standby, on_state=self.on_worker_state,
                       guard=self.guard.tell, disabled=info.disabled)
            suffix = wid.rsplit("-", 1)[-1]
            if suffix.isdigit():
                rev.next_index = max(rev.next_index, int(suffix) + 1)
            rev.workers.append(w)
            fut: asyncio.Future[bool] = loop.create_future()
            ready.append(fut)
            rev.tasks.append(_watched(loop.create_task(w.run(fut, adopt=info),
                                                       name=f"worker {w.id}")))
        await asyncio.gather(*ready)

    async def stop_revision(self, rev: Revision) -> None:
        """Stop every worker of ``rev`` (SIGTERM, grace, SIGKILL) in parallel."""
        await asyncio.gather(*(w.stop() for w in rev.workers))
        for t in rev.tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*rev.tasks, return_exceptions=True)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop_revision(r) for r in self.revisions.values()))

    def all_workers(self) -> list[Worker]:
        return [w for rev in self.revisions.values() for w in rev.workers]

    def kill_all(self) -> None:
        for rev in self.revisions.values():
            for w in rev.workers:
                w.kill_now()
