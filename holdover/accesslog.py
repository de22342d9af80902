"""The access log: one line per request, written without stalling the event loop.

Lines are formatted by hand (no logging module, no json.dumps of a dict: both cost more
than proxying a small request) and written in batches of up to 64 KiB, or at least once
a second by the gateway's sweep, with one ``os.write`` to the page cache.

The file is opened with ``O_APPEND``, so ``logrotate``'s ``copytruncate`` is safe: after
the truncation the next write lands at the new end.  ``reopen()`` is what a rotation
signal handler calls instead, after the file was renamed away.
"""

from __future__ import annotations

import os
import time
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C-accelerated
from pathlib import Path

FLUSH_AT = 64 * 1024


class AccessLog:
    """Buffered access-log writer; ``fmt`` is ``json`` or ``combined``."""

    __slots__ = ("_buf", "_fd", "_owns_fd", "_path", "_sec", "_size", "_stamp", "fmt")

    def __init__(self, target: str, fmt: str = "json", base: Path | None = None) -> None:
        self.fmt = fmt
        self._buf: list[str] = []
        self._size = 0
        self._sec = -1
        self._stamp = ""
        self._path: Path | None = None
        if target == "-":
            self._fd, self._owns_fd = 1, False
        else:
            path = Path(target)
            if base is not None and not path.is_absolute():
                path = base / path
            path.parent.mkdir(parents=True, exist_ok=True)
            self._path = path
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._owns_fd = True

    def _stamp_for(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            if self.fmt == "json":
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
            else:
                self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(sec))
        return self._stamp

    def log(self, client: bytes, method: bytes, url: bytes, status: int, nbytes: int,
            duration: float, worker: str, revision: str, note: str | None = None) -> None:
        """Record one finished request (``duration`` in seconds)."""
        stamp = self._stamp_for(time.time())
        if self.fmt == "json":
            line = (f'{{"time":"{stamp}","client":"{client.decode()}",'
                    f'"method":{encode_basestring(method.decode("latin-1"))},'
                    f'"path":{encode_basestring(url.decode("latin-1"))},"status":{status},'
                    f'"bytes":{nbytes},"duration_ms":{duration * 1000:.3f},'
                    f'"worker":"{worker}","revision":"{revision}"'
                    + (f',"error":{encode_basestring(note)}}}\n' if note else "}\n"))
        else:
            req = (method + b" " + url).decode("latin-1").replace('"', "%22")
            line = (f'{client.decode()} - - [{stamp}] "{req}" {status} {nbytes} "-" "-" '
                    f'{duration:.6f} {worker}\n')
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            data = "".join(self._buf).encode("utf-8", "replace")
            self._buf.clear()
            self._size = 0
            try:
                os.write(self._fd, data)
            except OSError:
                pass  # a full disk must not stop the proxy; the lines are dropped

    def reopen(self) -> None:
        """Write what is buffered, then continue in a file of the configured name.

        For log rotation that renames the file (logrotate without ``copytruncate``):
        lines already buffered go to the old file, the next ones to a new file.  If the
        new file cannot be opened, logging goes on in the old one."""
        if self._path is None or not self._owns_fd:
            return
        self.flush()
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            return
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        self.flush()
        if self._owns_fd:
            os.close(self._fd)
            self._owns_fd = False
