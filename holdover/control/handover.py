"""Handing a running gateway over to a new program image, and the state_dir lock.

``holdover reload`` re-executes the gateway process (same pid, so the workers stay its
children, as gunicorn's ``reexec`` does for its master): new connections wait in the
listening socket's backlog, in-flight requests finish first, WebSockets are closed
(clients reconnect to the same worker), and the new image adopts every ready worker,
its output pipe, the orphan guard and the lock — described in the environment
variable ``HOLDOVER_INHERIT``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.lifecycle import WorkerState

if TYPE_CHECKING:
    from .facade import Control

log = logging.getLogger("holdover.control")

INHERIT_ENV = "HOLDOVER_INHERIT"  # what a re-exec hands to the new image


def inherited() -> dict[str, Any] | None:
    """What the previous image handed over, if this process is a re-exec."""
    if INHERIT_ENV not in os.environ:
        return None
    return json.loads(os.environ.pop(INHERIT_ENV))


def lock_state_dir(state_dir: Path) -> int:
    """One gateway per state_dir: two would fight over the same workers and pins."""
    path = state_dir / "gateway.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"another holdover gateway (pid {other}) is already running with "
                         f"state_dir {state_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def reexec(ctl: Control, fds: dict[str, Any], lock_fd: int,
                 stop_serving: Callable[[], Awaitable[None]]) -> None:
    """Finish in-flight work (``stop_serving``), save everything, exec the new image.

    ``fds`` are duplicates of the listening sockets (public — a list of more with several
    processes —, admin, redirect): their
    backlogs stay open, so no listener ever refuses a connection during the hand-over."""
    for value in fds.values():
        for fd in value if isinstance(value, list) else [value]:
            os.set_inheritable(fd, True)
    guard_pid, guard_fd = ctl.supervisor.guard.handover()
    await stop_serving()
    ctl.ticker.stop()
    workers = []
    for w in ctl.supervisor.all_workers():
        if w.state is WorkerState.READY and w.output_fd() >= 0:
            fd = w.output_fd()
            os.set_inheritable(fd, True)
            workers.append({"id": w.id, "revision": w.spec.revision, "pid": w.pid,
                            "port": w.port, "incarnation": w.incarnation,
                            "standby": w.standby, "restarts": w.restarts, "log_fd": fd,
                            "disabled": w.disabled})
        elif w.external and w.state is WorkerState.READY:  # another engine's: an address
            workers.append({"id": w.id, "revision": w.spec.revision, "external": True,
                            "host": w.spec.host, "port": w.port, "incarnation": w.incarnation,
                            "listed": not w.leaving})
        elif w.state not in (WorkerState.STOPPED, WorkerState.FAILED):
            w.kill_now()  # not ready: the new image starts a fresh one
    # Past this point the listeners no longer serve: whatever fails while saving, the
    # exec must happen (the new image restores from what the store has).
    for step in (ctl.save_revisions, ctl.persist.flush_pins, ctl.store.close):
        try:
            await step()
        except Exception:
            log.exception("reload: %s failed; re-executing all the same", step.__name__)
    if ctl.router.access_log is not None:
        ctl.router.access_log.close()
    os.set_inheritable(lock_fd, True)
    inherit = {**fds, "guard_pid": guard_pid, "guard_fd": guard_fd, "lock_fd": lock_fd,
               "workers": workers}
    env = dict(os.environ, **{INHERIT_ENV: json.dumps(inherit)})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "holdover", *sys.argv[1:]], env)
