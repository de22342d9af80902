"""The one error type for "holdover refuses this", whoever asked.

A deploy, an admin command or a lifecycle event that cannot be done raises ``Refused``
with a sentence saying why; the admin API answers it with ``status`` (400 for a bad
request, 404 for an unknown name, 409 for a state that does not allow it, 422 for a
revision that failed) and the CLI prints the sentence.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A request holdover will not carry out; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 409, *, field: str | None = None,
                 log_tail: str = "", detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field  # the request field that is wrong, if one is
        self.log_tail = log_tail  # a failing worker's last log lines, if any
        self.detail = detail or {}
