"""The orphan guard: makes sure no worker outlives the gateway, even after SIGKILL.

A worker gets SIGKILL from the kernel when the gateway dies (PR_SET_PDEATHSIG), but its
own children would survive it.  So the gateway also starts this tiny process and tells
it, over a pipe, each worker's process group.  When the pipe reaches end-of-file — the
gateway exited, however it died — the guard sends SIGTERM and then SIGKILL to every
process group it still knows, then exits.  It runs in its own session, ignoring SIGINT,
so a Ctrl-C in the terminal reaches the gateway (which stops workers gracefully) only.

Protocol on stdin, one line each: ``+PGID`` (watch) or ``-PGID`` (forget).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if len(line) > 1 and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        live = [g for g in groups if _alive(g)]
        for g in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            time.sleep(0.05)
            live = [g for g in live if _alive(g)]
        if not live:
            break


if __name__ == "__main__":
    main()
