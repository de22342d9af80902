"""A worker whose process another engine runs: Kubernetes, Nomad, systemd on other hosts.

holdover does not start, restart or stop such a process; it only knows its address (an
upstream URL or a DNS answer).  ``ExternalWorker`` has the same lifecycle as a
supervised worker (core/lifecycle.py's worker table) and is health-checked exactly like
one (``Worker.probe``), so routing, pins, draining and metrics treat both alike:

- ``starting`` until it answers its health check (``start_timeout`` for a revision's
  first workers; a worker that joins later is waited for while DNS lists it);
- ``ready`` while it answers; ``health_failures`` failed checks in a row make it
  ``unhealthy`` — its sessions are lost, counted once — and it is a new incarnation
  (``spawn``, back to ``starting``) when it answers again;
- ``stop()`` stops checking and routing (``stopping`` → ``stopped``); the process is
  the engine's to end (the ``on_retire`` hook can tell it).

A worker that has left DNS (``listed`` false) takes no new session and keeps serving
its pins while it answers: a terminating pod in its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from ..core.discovery import Target
from ..core.errors import Refused
from ..core.lifecycle import WorkerEvent, WorkerState
from .logs import RotatingLog
from .worker import Worker

log = logging.getLogger("holdover.supervisor")


@dataclass
class Source:
    """Where a revision's external workers come from: named URLs, or a DNS name."""

    upstreams: tuple[str, ...] = ()
    discover: str = ""  # the resolved name: "dns+srv:NAME" or "dns:NAME:PORT"

    def __str__(self) -> str:
        return self.discover or ", ".join(self.upstreams)


@dataclass(eq=False)
class ExternalWorker(Worker):
    """A worker at ``target`` whose process holdover does not own."""

    target: Target = field(default_factory=lambda: Target("127.0.0.1", 0))
    listed: bool = True  # still named by its revision's upstreams or DNS answer
    external: ClassVar[bool] = True
    _finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _running: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.port = self.target.port

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def leaving(self) -> bool:
        return not self.listed

    def _note(self, text: str) -> None:
        """A line in this worker's log: what holdover saw of it (it has no output here)."""
        if self._log is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._log.write(f"--- holdover {stamp}: {self.url}: {text}\n".encode())

    def restart(self) -> None:
        raise Refused(f"worker {self.id} ({self.url}) is run by another engine: holdover "
                      f"cannot restart its process", 409)

    def kill_now(self) -> None:
        """Nothing to kill: the process is the engine's."""

    def output_fd(self) -> int:
        return -1

    # -- its life -----------------------------------------------------------------

    def adopt(self, incarnation: str) -> None:
        """It was ready under the previous gateway image (``holdover reload``): it is
        ready now, with the same incarnation, so the sessions pinned to it stay."""
        self.incarnation = incarnation
        self.started_at = self.ready_at = time.monotonic()
        self._on(WorkerEvent.READY)

    async def run(self, first_ready: asyncio.Future[bool] | None = None,
                  adopt: object = None) -> None:
        """Check this worker until ``stop()``; resolve ``first_ready`` once.

        (``adopt`` is the supervised worker's; an external one is adopted by ``adopt()``.)"""
        self._running = True
        self._log = RotatingLog(self.log_path, self.spec.log_max_bytes, self.spec.log_backups)
        try:
            if first_ready is not None and self.state is WorkerState.READY:
                first_ready.set_result(True)
            while not self._stopping:
                if self.state is not WorkerState.READY:  # starting, or unhealthy
                    waiting = first_ready is not None and not first_ready.done()
                    ok = await self._wait_answer(self.spec.start_timeout if waiting else None)
                    if self._stopping:
                        break
                    if not ok:
                        assert first_ready is not None
                        first_ready.set_result(False)
                        self._on(WorkerEvent.NEVER_READY)
                        return
                    self.ready_at = time.monotonic()
                    self._on(WorkerEvent.READY)
                    self._note(f"ready in {self.ready_at - self.started_at:.2f}s")
                    log.info("worker %s (%s) ready", self.id, self.url)
                    if first_ready is not None and not first_ready.done():
                        first_ready.set_result(True)
                if not await self._serve_checks():
                    break
                self._on(WorkerEvent.UNHEALTHY)  # its sessions are lost (rule 5)
        finally:
            if self.state is not WorkerState.FAILED:
                self._on(WorkerEvent.STOPPED)
            self._note("no longer checked or routed to")
            if self._log is not None:
                self._log.close()
            self._finished.set()

    async def _wait_answer(self, timeout: float | None) -> bool:
        """Probe until it answers (True), ``timeout`` passes or it is stopped (False).

        A new incarnation: whatever answers at this address now may be a new process,
        so no pin made before can name it (``spawn`` in the worker table)."""
        self.incarnation = uuid.uuid4().hex[:12]
        self.started_at = time.monotonic()
        self._on(WorkerEvent.SPAWN)
        deadline = None if timeout is None else self.started_at + timeout
        delay, last = 0.05, None
        while not self._stopping:
            why = await self.probe()
            if why is None:
                return True
            if why != last:
                self._note(f"not answering yet: {why}")
                last = why
            if deadline is not None and time.monotonic() >= deadline:
                self._note(f"did not answer its health check within {timeout:g}s: {why}")
                log.error("worker %s (%s) did not answer within %.0fs: %s", self.id, self.url,
                          timeout, why)
                return False
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_ev.wait(), min(delay, left) if left is not
                                       None else delay)
            delay = min(delay * 1.5, self.spec.health_interval)
        return False

    async def _serve_checks(self) -> bool:
        """Health-check while it answers; False when stopped, True when it went unhealthy."""
        failures = 0
        while not self._stopping:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.spec.health_interval)
            if self._stopping:
                return False
            why = await self.probe()
            if why is None:
                failures = 0
                if not self.healthy and self.state is WorkerState.READY:
                    self.healthy = True
                    self._note("answers again")
                    if self.on_state is not None:
                        self.on_state(self)
                continue
            failures += 1
            self._note(f"health check failed ({failures}/{self.spec.health_failures}): {why}")
            if self.healthy:
                self.healthy = False
                if self.on_state is not None:
                    self.on_state(self)
            if failures >= self.spec.health_failures:
                log.error("worker %s (%s) failed %d health checks: its sessions are lost",
                          self.id, self.url, failures)
                return True
        return False

    async def stop(self) -> None:
        """Stop checking and routing to it; the engine's process is left alone."""
        self._stopping = True
        self.healthy = False
        if self.state in (WorkerState.READY, WorkerState.STARTING, WorkerState.UNHEALTHY):
            self._on(WorkerEvent.STOP)
        self._wake.set()
        self._stop_ev.set()
        if self._running:
            # A health check under way ends within health_timeout.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), self.spec.health_timeout * 2 + 1)
        elif self.state is WorkerState.STOPPING:
            self._on(WorkerEvent.STOPPED)
