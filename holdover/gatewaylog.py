"""The gateway's own log lines: plain text for people, or one JSON object a line.

A person reads ``holdover run`` in a terminal; a log shipper (journald → Loki, Vector,
Fluent Bit) wants fields it need not parse out of prose.  ``log_format = "json"`` gives
it one object a line with ``time``, ``level``, ``logger`` and ``message``, plus the
fields a call site passes with ``extra=`` (see ``FIELDS``).  In that mode anything else
written to standard error — a ``print``, a library's warning — becomes such a line too,
so the stream stays machine-readable from the first line to the last.  The access log
is a separate stream with its own format and is not touched here.
"""

from __future__ import annotations

import io
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

# The ``extra=`` fields holdover's log calls use, with their meaning; a call passes
# those that apply.  Kept here so that every call site names them alike.
FIELDS = {
    "revision": "the revision concerned (e.g. \"v2\")",
    "worker": "the worker concerned (e.g. \"v2-1\")",
    "pid": "the worker's process id",
    "port": "the worker's port",
    "count": "how many: restarts, failed health checks, sessions ended or lost",
    "seconds": "a duration: time to get ready, back-off delay, a timeout",
    "exit_code": "a worker process's exit status",
    "event": "the kind of an operator event (deploy, rollback, canary-failed, retired ...)",
}
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def json_formatter() -> logging.Formatter:
    """time (ISO 8601, UTC), level, logger, message, then whatever ``extra=`` added."""
    return _Json(["asctime", "levelname", "name", "message"],
                 rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


class StderrToLog(io.TextIOBase):
    """A stand-in for ``sys.stderr`` that turns each line written into a log record."""

    def __init__(self, logger: logging.Logger, real: TextIO) -> None:
        self._logger = logger
        self._real = real
        self._buf = ""
        self._busy = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self._busy:  # logging itself complaining: straight to the real stream
            self._real.write(s)
            return len(s)
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._emit(line)
        return len(s)

    def flush(self) -> None:
        if self._buf and not self._busy:
            line, self._buf = self._buf, ""
            self._emit(line)
        self._real.flush()

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self._busy = True
        try:
            self._logger.info(line.removeprefix("holdover: "))
        finally:
            self._busy = False

    def fileno(self) -> int:
        return self._real.fileno()


def setup(fmt: str = "plain", verbose: bool = False) -> None:
    """Log to standard error in ``fmt`` ("plain" or "json")."""
    real = sys.__stderr__ if sys.stderr is None else sys.stderr
    if isinstance(real, StderrToLog):
        real = real._real
    handler = logging.StreamHandler(real)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(PLAIN))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if fmt == "json":
        sys.stderr = StderrToLog(logging.getLogger("holdover"), real)  # type: ignore[assignment]
