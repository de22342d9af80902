"""Per-worker log files: each worker's stdout and stderr, size-rotated.

Workers write into a pipe that the gateway drains on its event loop, so a chatty worker
can never block on a full disk or a slow terminal; the file is rotated at a size limit
(``name.log`` → ``name.log.1`` …) so that logs cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path


class RotatingLog:
    """An append-only file rotated when it reaches ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped = 0
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        """Append ``data`` (small writes to the page cache: no event-loop stall)."""
        if self._closed:
            return
        try:
            if self.max_bytes and self._size + len(data) > self.max_bytes and self._size:
                self._rotate()
            os.write(self._fd, data)
            self._size += len(data)
        except OSError:
            # A full disk must not break the worker's output pipe (its next print would
            # fail); these lines are dropped and writing resumes when there is room.
            self.dropped += len(data)
            if self._fd < 0:  # the rotation failed half-way: reopen the current file
                with contextlib.suppress(OSError):
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (for error messages)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class PipeToLog(asyncio.Protocol):
    """Drains a worker's output pipe into its RotatingLog."""

    def __init__(self, log: RotatingLog) -> None:
        self.log = log
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.log.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
