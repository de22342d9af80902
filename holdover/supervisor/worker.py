"""One worker process: start it, know when it is ready, keep it healthy, stop it.

A worker's life is one coroutine (``Worker.run``) that loops: spawn → wait ready →
serve while health checks pass → on exit or failure restart with capped exponential
back-off, until ``stop()`` is called.  It knows nothing of HTTP traffic: every change of
state or health is reported through ``on_state``, and the control side turns that into
routing (see holdover/proxy/endpoint.py).

States: ``starting`` → ``ready`` → (``unhealthy`` | ``crashed`` → ``backoff`` →
``starting`` …) → ``stopping`` → ``stopped``.  ``failed`` is a worker that never became
ready on its first start: within ``start_timeout``, or sooner when its health path keeps
answering a definite 4xx (a wrong ``health_path`` does not fix itself by waiting).
``start_failure`` says why, in words the deploy shows the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shlex
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..core.lifecycle import WORKER_TRANSITIONS, WorkerEvent, WorkerState, next_state
from .logs import PipeToLog, RotatingLog, tail

log = logging.getLogger("holdover.supervisor")

# A health path that keeps answering one of these is wrong, not slow: give up early once
# it did so this many times in a row, over at least this long.  408 and 429 can pass.
_DEFINITE_4XX = frozenset(range(400, 500)) - {408, 429}
_DEFINITE_REFUSALS = 3
_DEFINITE_MIN_SECONDS = 1.0

_SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%{}\n")
_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    """Ask the kernel to SIGTERM this worker when the gateway dies (the guard SIGKILLs later)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def build_argv(command: str, port: int) -> list[str]:
    """The worker's argv: words of ``command`` with ``{port}`` filled in.

    Commands with shell syntax run under ``/bin/sh -c`` (in their own process group, so
    stopping the group stops the whole pipeline); plain commands are exec'd directly so
    that the parent-death signal reaches the real program.
    """
    command = command.replace("{port}", str(port))
    words = shlex.split(command)
    if any(ch in _SHELL_CHARS for w in words for ch in w) or "$" in command:
        return ["/bin/sh", "-c", command]
    return words


class AdoptedProcess:
    """A worker inherited across a gateway re-exec: still our child, watched by pidfd.

    It offers what the worker's life needs of ``asyncio.subprocess.Process``: ``pid``,
    ``returncode`` and ``wait()``.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        try:
            self._fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            self._fd = -1
            self._reap(block=False)
            if self.returncode is None:
                self.returncode = -1
                self._done.set_result(None)
            return
        self._loop.add_reader(self._fd, self._exited)

    def _reap(self, block: bool) -> None:
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        self.returncode = os.waitstatus_to_exitcode(status)
        if not self._done.done():
            self._done.set_result(None)

    def _exited(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._reap(block=True)

    async def wait(self) -> int | None:
        await asyncio.shield(self._done)
        return self.returncode


@dataclass
class Adoption:
    """What a re-exec'd gateway needs to take over a running worker."""

    pid: int
    port: int
    incarnation: str
    log_fd: int
    restarts: int = 0
    disabled: bool = False  # an operator took it out of rotation before the reload


@dataclass
class WorkerSpec:
    """How to run one worker of a revision."""

    revision: str
    command: str
    cwd: Path
    env: dict[str, str]
    health_path: str
    health_interval: float
    health_timeout: float
    health_failures: int
    start_timeout: float
    stop_grace: float
    backoff_max: float
    crash_loop_restarts: int
    crash_loop_window: float
    log_dir: Path
    log_max_bytes: int
    log_backups: int
    host: str = "127.0.0.1"
    node: str = ""  # the gateway node running it (HOLDOVER_NODE), in a cluster or not


@dataclass(eq=False)
class Worker:
    """A worker process of a revision: its state, health and restarts."""

    id: str
    spec: WorkerSpec
    standby: bool = False
    state: WorkerState = WorkerState.STARTING
    port: int = 0
    pid: int = 0
    restarts: int = 0
    incarnation: str = ""
    healthy: bool = False  # the last health check passed (and no connection was refused)
    disabled: bool = False  # an operator took it out of rotation (pinned sessions still served)
    started_at: float = 0.0
    ready_at: float = 0.0
    last_exit: int | None = None
    crash_loop: bool = False
    last_check: str = ""  # what the last failed health check got ("" after a pass)
    last_check_status: int = 0  # its HTTP status (0: no HTTP answer)
    start_failure: str = ""  # why the last start never got ready
    on_state: Callable[[Worker], None] | None = None
    guard: Callable[[str], None] | None = None
    _proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _stopping: bool = field(default=False, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _stop_ev: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _restart_times: deque[float] = field(default_factory=deque, repr=False)
    _log: RotatingLog | None = field(default=None, repr=False)
    _out_fd: int = field(default=-1, repr=False)
    _restart_requested: bool = field(default=False, repr=False)
    external: ClassVar[bool] = False  # its process is another engine's (supervisor/external.py)

    @property
    def leaving(self) -> bool:
        """Takes no new session but serves its pins (an external worker gone from DNS)."""
        return False

    @property
    def log_path(self) -> Path:
        return self.spec.log_dir / f"{self.id}.log"

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def fields(self, **more: object) -> dict[str, object]:
        """The ``extra=`` of this worker's log lines (names in gatewaylog.FIELDS)."""
        out: dict[str, object] = {"revision": self.spec.revision, "worker": self.id}
        if self.pid:
            out.update(pid=self.pid, port=self.port)
        out.update(more)
        return out

    def _on(self, event: WorkerEvent) -> None:
        """Apply a lifecycle event (core/lifecycle.py's table) and report the new state."""
        state = next_state(WORKER_TRANSITIONS, self.state, event, f"worker {self.id}")
        self.state = state  # type: ignore[assignment]
        self.healthy = state is WorkerState.READY
        if self.on_state is not None:
            self.on_state(self)

    def set_disabled(self, disabled: bool) -> None:
        """Take this worker out of rotation for new sessions, or put it back."""
        self.disabled = disabled
        if self.on_state is not None:
            self.on_state(self)

    def restart(self) -> None:
        """Replace the process (the health loop ends, the life loop starts a new one)."""
        if self._proc is not None and self._proc.returncode is None and not self._stopping:
            self._restart_requested = True
            self._wake.set()

    def suspect(self) -> None:
        """The proxy could not connect: leave rotation and get checked at once."""
        if self.state == "ready":
            log.warning("worker %s refused a connection; checking it", self.id,
                        extra=self.fields())
            self.healthy = False
            if self.on_state is not None:
                self.on_state(self)
            self._wake.set()

    # -- the life of a worker -------------------------------------------------------

    async def run(self, first_ready: asyncio.Future[bool] | None = None,
                  adopt: Adoption | None = None) -> None:
        """Keep this worker running until ``stop()``; resolve ``first_ready`` once.

        With ``adopt``, the first process is the one a previous gateway image left
        running (see Gateway.reload); later ones are started as usual."""
        failures = 0
        self._log = RotatingLog(self.log_path, self.spec.log_max_bytes, self.spec.log_backups)
        try:
            while not self._stopping:
                if adopt is not None:
                    ok = await self._adopted_once(adopt, first_ready)
                    adopt = None
                else:
                    ok = await self._run_once(first_ready)
                if first_ready is not None and not first_ready.done():
                    first_ready.set_result(ok)
                    if not ok:
                        self._on(WorkerEvent.NEVER_READY)
                        return
                if self._stopping:
                    break
                if self.state == "restarting":  # asked for: no crash, no back-off
                    self.restarts += 1
                    continue
                now = time.monotonic()
                if self.ready_at and now - self.ready_at > self.spec.crash_loop_window:
                    failures = 0
                failures += 1
                self.restarts += 1
                self._restart_times.append(now)
                while self._restart_times and now - self._restart_times[0] > \
                        self.spec.crash_loop_window:
                    self._restart_times.popleft()
                was_loop = self.crash_loop
                self.crash_loop = len(self._restart_times) >= self.spec.crash_loop_restarts
                if self.crash_loop and not was_loop:
                    log.error("worker %s is crash-looping (%d restarts in %.0fs); last log "
                              "lines:\n%s", self.id, len(self._restart_times),
                              self.spec.crash_loop_window, self.log_tail(10),
                              extra=self.fields(event="crash-loop",
                                                count=len(self._restart_times),
                                                seconds=self.spec.crash_loop_window))
                delay = min(self.spec.backoff_max, 0.5 * 2 ** (failures - 1))
                self._on(WorkerEvent.EXITED)
                log.info("worker %s restarts in %.1fs", self.id, delay,
                         extra=self.fields(count=self.restarts, seconds=delay))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_ev.wait(), delay)
        finally:
            if self.state is not WorkerState.FAILED:
                self._on(WorkerEvent.STOPPED)
            if self._log is not None:
                self._log.close()

    async def _run_once(self, first_ready: asyncio.Future[bool] | None) -> bool:
        """Spawn, wait until ready, serve until the process ends; True if it was ready."""
        self.port = free_port(self.spec.host)
        self.ready_at = 0.0
        self.start_failure = ""
        self.incarnation = uuid.uuid4().hex[:12]  # sessions pinned to the old process are gone
        self._on(WorkerEvent.SPAWN)
        env = dict(os.environ)
        env.update(self.spec.env)
        env.update(PORT=str(self.port), HOLDOVER_REVISION=self.spec.revision,
                   HOLDOVER_WORKER=self.id, HOLDOVER_NODE=self.spec.node)
        argv = build_argv(self.spec.command, self.port)
        assert self._log is not None
        self._log.write(f"--- holdover: starting {' '.join(argv)} (port {self.port})\n".encode())
        rfd, wfd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=str(self.spec.cwd), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=wfd, stderr=wfd, start_new_session=True, preexec_fn=_child_setup)
        except OSError as exc:
            os.close(rfd)
            self.start_failure = f"cannot start {argv[0]!r}: {exc}"
            self._log.write(f"--- holdover: {self.start_failure}\n".encode())
            log.error("worker %s %s", self.id, self.start_failure, extra=self.fields())
            return False
        finally:
            os.close(wfd)
        self._proc = proc
        self.pid = proc.pid
        self.started_at = time.monotonic()
        if self.guard:
            self.guard(f"+{proc.pid}")
        drain = await self._drain_output(rfd)
        log.info("worker %s started pid=%d port=%d", self.id, proc.pid, self.port,
                 extra=self.fields())
        ready = await self._wait_ready(proc)
        if ready:
            self.ready_at = time.monotonic()
            self._on(WorkerEvent.READY)
            took = self.ready_at - self.started_at
            log.info("worker %s ready in %.2fs", self.id, took,
                     extra=self.fields(seconds=round(took, 3)))
            if first_ready is not None and not first_ready.done():
                first_ready.set_result(True)
            await self._serve(proc)
        elif not self._stopping and proc.returncode is None:
            self._log.write(f"--- holdover: never became ready: {self.start_failure}\n".encode())
            if first_ready is not None and not first_ready.done():
                # The deploy (or `holdover run`) shows the log tail itself, once.
                log.error("worker %s never became ready: %s", self.id, self.start_failure,
                          extra=self.fields())
            else:
                log.error("worker %s never became ready: %s; last log lines:\n%s", self.id,
                          self.start_failure, self.log_tail(10), extra=self.fields())
        await self._ended(proc, drain)
        if not ready and not self._stopping and not self.start_failure:
            self.start_failure = f"exited with {proc.returncode} before it was ready"
        return ready

    async def _drain_output(self, rfd: int) -> PipeToLog:
        assert self._log is not None
        drain = PipeToLog(self._log)
        self._out_fd = rfd
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: drain, os.fdopen(rfd, "rb", buffering=0))
        return drain

    def output_fd(self) -> int:
        """The read end of this worker's output pipe (handed over on a re-exec)."""
        return self._out_fd

    async def _adopted_once(self, adopt: Adoption, first_ready: asyncio.Future[bool] | None
                            ) -> bool:
        """Serve with a process inherited from the previous gateway image."""
        proc = AdoptedProcess(adopt.pid)
        self._proc = proc  # type: ignore[assignment]
        self.pid, self.port, self.incarnation = adopt.pid, adopt.port, adopt.incarnation
        self.restarts = adopt.restarts
        self.started_at = self.ready_at = time.monotonic()
        drain = await self._drain_output(adopt.log_fd)
        if self.guard:
            self.guard(f"+{proc.pid}")
        ready = proc.returncode is None
        if ready:
            self._on(WorkerEvent.READY)
            log.info("worker %s adopted pid=%d port=%d", self.id, proc.pid, self.port,
                     extra=self.fields())
            if first_ready is not None and not first_ready.done():
                first_ready.set_result(True)
            await self._serve(proc)  # type: ignore[arg-type]
        await self._ended(proc, drain)  # type: ignore[arg-type]
        return ready

    async def _ended(self, proc: asyncio.subprocess.Process, drain: PipeToLog) -> None:
        assert self._log is not None
        await self._terminate(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain.closed, 1.0)
        self.last_exit = proc.returncode
        if not self._stopping:
            log.warning("worker %s exited with %s", self.id, proc.returncode,
                        extra=self.fields(exit_code=proc.returncode))
            self._log.write(f"--- holdover: worker exited with {proc.returncode}\n".encode())

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        """Health-check until ready; False (``start_failure`` says why) on giving up."""
        deadline = time.monotonic() + self.spec.start_timeout
        delay = 0.02
        refusals, refused_since = 0, 0.0
        self.last_check = ""
        while not self._stopping and proc.returncode is None and time.monotonic() < deadline:
            if await self.check():
                return True
            if self.last_check_status in _DEFINITE_4XX:
                now = time.monotonic()
                if not refusals:
                    refused_since = now
                refusals += 1
                if refusals >= _DEFINITE_REFUSALS and now - refused_since >= \
                        _DEFINITE_MIN_SECONDS:
                    self.start_failure = (f"{self.last_check} {refusals} times in a row "
                                          f"(is [app] health_path right?)")
                    return False
            else:
                refusals = 0  # not answering yet, or a 5xx: normal while an app starts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), delay)
            delay = min(delay * 1.5, 0.5)
        if not self._stopping and proc.returncode is None:  # (else the exit says why)
            self.start_failure = (f"no passing health check within "
                                  f"{self.spec.start_timeout:g}s (start_timeout); the last "
                                  f"one: {self.last_check or 'none made'}")
        return False

    async def _serve(self, proc: asyncio.subprocess.Process) -> None:
        """While the process runs: health-check it; return when it exits, fails or stops."""
        failures = 0
        wait = asyncio.ensure_future(proc.wait())
        try:
            while not self._stopping:
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({wait, wake}, timeout=self.spec.health_interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if wait in done or self._stopping:
                    return
                if self._restart_requested:
                    self._restart_requested = False
                    log.info("worker %s: restart requested", self.id, extra=self.fields())
                    self._on(WorkerEvent.RESTART)
                    return
                if await self.check():
                    failures = 0
                    if self.state == "ready" and not self.healthy:
                        self.healthy = True
                        if self.on_state:
                            self.on_state(self)
                    continue
                failures += 1
                if self.healthy:
                    self.healthy = False
                    if self.on_state:
                        self.on_state(self)
                if failures >= self.spec.health_failures:
                    log.error("worker %s failed %d health checks (last: %s); restarting",
                              self.id, failures, self.last_check,
                              extra=self.fields(count=failures))
                    if self._log is not None:
                        self._log.write(f"--- holdover: {failures} failed health checks "
                                        f"(last: {self.last_check}); restarting\n".encode())
                    self._on(WorkerEvent.UNHEALTHY)
                    return
        finally:
            if not wait.done():
                wait.cancel()

    async def check(self) -> bool:
        """One health check: a 2xx from ``health_path``, or an accepted TCP connection.

        A failed check leaves what it got in ``last_check`` (and the HTTP status in
        ``last_check_status``), for the operator; a passing one costs nothing extra."""
        self.last_check_status = 0
        host, port = self.spec.host, self.port
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self.spec.health_timeout)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # The gateway itself is out of file descriptors: that says nothing about
                # the worker, and killing it would lose its sessions for nothing.
                log.warning("cannot health-check worker %s: %s", self.id, exc,
                            extra=self.fields())
                return True
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            self.last_check = f"could not connect to {self.spec.host}:{self.port}: {why}"
            return False
        except TimeoutError:
            self.last_check = (f"could not connect to {self.spec.host}:{self.port} within "
                               f"{self.spec.health_timeout:g}s")
            return False
        try:
            if not self.spec.health_path:
                self.last_check = ""
                return True
            name = f"[{host}]" if ":" in host else host
            writer.write(b"GET %b HTTP/1.1\r\nHost: %b:%d\r\nUser-Agent: holdover-health\r\n"
                         b"Connection: close\r\n\r\n" % (self.spec.health_path.encode(),
                                                          name.encode(), port))
            line = await asyncio.wait_for(reader.readline(), self.spec.health_timeout)
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] == b"2":
                self.last_check = ""
                return True
            self._failed_answer(line, parts)
            return False
        except TimeoutError:
            self.last_check = (f"health check GET {self.spec.health_path} got no answer "
                               f"within {self.spec.health_timeout:g}s")
            return False
        except (OSError, ValueError) as exc:
            self.last_check = f"health check GET {self.spec.health_path} failed: {exc}"
            return False
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def probe(self) -> str | None:
        """One health check; None if it passed, else what it got (``last_check``)."""
        if await self.check():
            return None
        return self.last_check or "health check failed"

    def _failed_answer(self, line: bytes, parts: list[bytes]) -> None:
        """Put a non-2xx (or non-HTTP) answer of ``health_path`` into words."""
        what = f"health check GET {self.spec.health_path}"
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            self.last_check_status = int(parts[1])
            status = line.decode("latin-1").split(None, 1)[1].strip()[:80]
            self.last_check = f"{what} answered {status}"
        elif not line:
            self.last_check = f"{what}: the connection closed without an answer"
        else:
            self.last_check = f"{what} got something that is not HTTP: {line[:60]!r}"

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the worker's process group, wait ``stop_grace``, then SIGKILL it."""
        pgid = proc.pid
        if proc.returncode is None:
            self._signal_group(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.spec.stop_grace)
            except TimeoutError:
                log.warning("worker %s did not stop within %.0fs; killing it", self.id,
                            self.spec.stop_grace, extra=self.fields(seconds=self.spec.stop_grace))
        self._signal_group(pgid, signal.SIGKILL)  # whatever it left behind in its group
        await proc.wait()
        if self.guard:
            self.guard(f"-{pgid}")

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    async def stop(self) -> None:
        """Stop for good: no restart; returns when the process is gone."""
        self._stopping = True
        self.healthy = False
        if self.state in (WorkerState.READY, WorkerState.STARTING, WorkerState.UNHEALTHY):
            self._on(WorkerEvent.STOP)
        self._wake.set()
        self._stop_ev.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await self._terminate(proc)

    def kill_now(self) -> None:
        """SIGKILL at once (gateway exit path when no loop is left to wait)."""
        if self._proc is not None and self._proc.returncode is None:
            self._signal_group(self._proc.pid, signal.SIGKILL)
