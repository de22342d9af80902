"""Telling the engine that runs the workers what became of a revision: the hooks.

With workers another engine runs, holdover knows when a revision has no session left,
and the engine does not: ``on_retire`` (e.g. ``kubectl scale deployment/app-{revision}
--replicas=0``) tells it, ``on_drain`` says a revision takes no new session any more.
Each hook runs in the background with ``{revision}`` substituted and
``HOLDOVER_REVISION`` set, within ``hook_timeout`` (then its process group is killed);
its output goes to the event log.  A hook that fails, cannot start or hangs is an
event and a count (``holdover_hook_failures_total``), never a crash, and nothing waits
for it: a revision is retired whether or not the engine has heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import Config
from ..core.lifecycle import RevisionState
from ..supervisor.worker import build_argv

log = logging.getLogger("holdover.hooks")

OUTPUT_LIMIT = 16 * 1024  # bytes of a hook's output kept for the event log (its end)

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]
RecordEvent = Callable[..., Coroutine[Any, Any, None]]


class Hooks:
    """Runs ``on_drain`` and ``on_retire`` when a revision enters those states."""

    def __init__(self, config: Config, spawn: Spawn, record_event: RecordEvent) -> None:
        self.config = config
        self.spawn = spawn
        self.record_event = record_event
        self.failures: dict[str, int] = {"on_drain": 0, "on_retire": 0}
        self.runs: dict[str, int] = {"on_drain": 0, "on_retire": 0}

    def revision_changed(self, rid: str, before: RevisionState, after: RevisionState) -> None:
        """A revision's state changed (RevisionManager._apply): run its hook, if any."""
        if after is before:
            return
        if after is RevisionState.DRAINING and self.config.app_on_drain:
            self.spawn(self.run("on_drain", self.config.app_on_drain, rid), "hook on_drain")
        elif after is RevisionState.RETIRED and self.config.app_on_retire:
            self.spawn(self.run("on_retire", self.config.app_on_retire, rid), "hook on_retire")

    async def run(self, hook: str, command: str, rid: str) -> bool:
        """Run one hook to its end or its timeout; True if it exited 0."""
        self.runs[hook] += 1
        line = command.replace("{revision}", rid)
        argv = build_argv(line, 0)
        timeout = self.config.app_hook_timeout
        env = dict(os.environ, HOLDOVER_REVISION=rid, HOLDOVER_HOOK=hook)
        started = time.monotonic()
        data: dict[str, Any] = {"hook": hook, "command": line}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=str(self.config.base_dir), env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return await self._failed(hook, rid, f"{hook} for revision {rid} could not start "
                                      f"{argv[0]!r}: {exc.strerror or exc}", data)
        assert proc.stdout is not None
        kept = bytearray()

        async def read() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                kept.extend(chunk)
                del kept[:-OUTPUT_LIMIT]
        reader = asyncio.ensure_future(read())
        try:
            await asyncio.wait_for(asyncio.shield(reader), timeout)
            code = await proc.wait()
        except TimeoutError:
            code = None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        except asyncio.CancelledError:  # the gateway is stopping: do not leave it behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        data["output"] = kept.decode("utf-8", "replace")
        data["seconds"] = round(time.monotonic() - started, 3)
        data["exit"] = code
        if code is None:
            return await self._failed(hook, rid, f"{hook} for revision {rid} did not finish "
                                      f"within {timeout:g}s: killed", data)
        if code != 0:
            return await self._failed(hook, rid, f"{hook} for revision {rid} exited with "
                                      f"{code}", data)
        await self.record_event("hook", f"{hook} for revision {rid} done in "
                                f"{data['seconds']:g}s", rid, data=data)
        return True

    async def _failed(self, hook: str, rid: str, message: str, data: dict[str, Any]) -> bool:
        self.failures[hook] += 1
        log.error("%s%s", message, f"; its output:\n{data['output']}" if data.get("output")
                  else "")
        await self.record_event("hook-failed", message, rid, data=data)
        return False
