"""A client's response held back until the control process has recorded its pin.

When a response creates or ends a session (the app's Set-Cookie, the session header,
holdover's own pin cookie), the plane tells the control process and keeps the response
from the client until the control process acknowledges: by the time the client can
send its next request — on any connection, to any process — the pin is known
everywhere (docs/design.md, "Several processes").

The hold sits between the client connection and its transport: ``HeldTransport`` takes
the connection's writes (and a close) into a buffer while the rest of the proxy goes on
as usual — the worker's answer is parsed, the exchange finishes, the next pipelined
request is routed — and ``release`` writes it all out in order.  A held answer larger
than the write buffer's high-water mark pauses the worker side, as a slow client does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..proxy.server import CLIENT_WRITE_HIGH_WATER


class HeldTransport:
    """Stands in for a client transport while a pin claim waits for its acknowledgement."""

    __slots__ = ("_buf", "_close", "_eof", "_paused", "_size", "conn", "done", "id", "ops", "real",
                 "sent")

    def __init__(self, conn: Any, claim_id: int) -> None:
        self.conn = conn
        self.real: asyncio.Transport = conn.transport
        self.id = claim_id
        self.ops: list[list[Any]] = []  # the pin changes this hold waits for
        self.sent = False  # the claim went to the control process: no more ops join it
        self.done = False
        self._buf: list[bytes] = []
        self._size = 0
        self._close = False
        self._eof = False
        self._paused = False
        conn.transport = self

    # -- what the proxy calls on a transport ------------------------------------------

    def write(self, data: bytes) -> None:
        if self.done:
            self.real.write(data)
            return
        self._buf.append(data)
        self._size += len(data)
        if self._size > CLIENT_WRITE_HIGH_WATER and not self._paused:
            self._paused = True
            self.conn.pause_writing()

    def close(self) -> None:
        if self.done:
            self.real.close()
        else:
            self._close = True

    def can_write_eof(self) -> bool:
        return self.real.can_write_eof()

    def write_eof(self) -> None:
        if self.done:
            self.real.write_eof()
        else:
            self._eof = True

    def abort(self) -> None:
        self._buf.clear()
        self._size = 0
        self.real.abort()
        self.release()

    def is_closing(self) -> bool:
        return self._close or self.real.is_closing()

    def pause_reading(self) -> None:
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.real.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._size + self.real.get_write_buffer_size()

    # -- the hold ----------------------------------------------------------------------

    def release(self) -> None:
        """The claim is acknowledged (or timed out): write out what was held, in order."""
        if self.done:
            return
        self.done = True
        conn = self.conn
        if conn.transport is self:
            conn.transport = self.real
        if self._paused:
            # Resumed before writing: if the real transport then fills up, it pauses the
            # worker side itself, and that pause is not undone by this one.
            self._paused = False
            conn.resume_writing()
        if self._buf and not self.real.is_closing():
            self.real.write(b"".join(self._buf))
        self._buf.clear()
        self._size = 0
        if self._eof and not self.real.is_closing():
            self.real.write_eof()
        if self._close:
            self.real.close()
