"""One ticker for every periodic job, and a tracker for every background task.

A job that raises is logged and counted (``holdover_tick_errors`` in /metrics) and the
others, and the job itself at its next turn, keep running: one bad sweep must never end
every timeout, drain and pin flush for the life of the process.  Every task holdover
starts goes through ``Tasks.spawn``, so a task that dies with an exception is logged at
once, never "exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

log = logging.getLogger("holdover.control")


class Tasks:
    """Background tasks, tracked so that failures are seen and shutdown can wait."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed = 0

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "task") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failed += 1
            log.error("background task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Job:
    name: str
    every: float  # seconds between runs
    fn: Callable[[float], None]
    next_at: float = 0.0
    runs: int = 0
    errors: int = 0


@dataclass
class Ticker:
    """Runs each job every ``job.every`` seconds on one timer of ``resolution``."""

    resolution: float = 1.0
    jobs: list[Job] = field(default_factory=list)
    _handle: asyncio.TimerHandle | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def add(self, name: str, every: float, fn: Callable[[float], None]) -> Job:
        job = Job(name, every, fn)
        self.jobs.append(job)
        return job

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        now = monotonic()
        for job in self.jobs:
            job.next_at = now + job.every
        self._handle = self._loop.call_later(self.resolution, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def run_due(self, now: float) -> None:
        """Run every job whose time has come; each one isolated from the others.

        A job is due half a tick early at most: a timer that fires a hair before its
        time must not push a once-a-second job to every other second."""
        slack = self.resolution / 2
        for job in self.jobs:
            if now + slack < job.next_at:
                continue
            job.next_at = now + job.every
            job.runs += 1
            try:
                job.fn(now)
            except Exception:
                job.errors += 1
                log.exception("periodic job %s failed (it runs again in %.1fs)", job.name,
                              job.every)

    def _tick(self) -> None:
        try:
            self.run_due(monotonic())
        finally:
            if self._loop is not None and self._handle is not None:
                self._handle = self._loop.call_later(self.resolution, self._tick)

    @property
    def errors(self) -> dict[str, int]:
        return {j.name: j.errors for j in self.jobs}
