"""How client connections end: their timeouts, and a close the client can read.

``Closing`` is the part of ``ClientConnection`` (server.py) that ends connections: the
once-a-second ``sweep`` that enforces every timeout — header, body, keep-alive,
response, and ``send_timeout`` (a client that stops reading what it asked for is cut
once a write has made no progress that long; with the low write-buffer mark of
server.py, what it holds meanwhile stays small) — and the lingering close.

When the gateway refuses a request it has not read to the end (431 for a huge head, 413
for a large body, 408 in the middle of an upload), closing the socket at once makes the
kernel answer the client's next bytes with a reset, and a reset throws away whatever the
client had not read yet: it sees "connection reset" instead of the 413.  nginx's answer
is the lingering close, and so is this one: send the answer, shut down the writing side
(the client sees the end of it), then read and discard what the client still sends, for
at most ``LINGER_TIME``, ``LINGER_IDLE`` without a byte and ``LINGER_BYTES`` in all,
and close.

``Discard`` takes the place of a tunnel in ``ClientConnection.data_received``, so the
hot path checks nothing new; the connection's sweep ends it when its time is up.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

from .exchange import PAUSE_UPSTREAM

LINGER_TIME = 5.0  # the longest a refused client may go on sending
LINGER_IDLE = 2.0  # ... or pause
LINGER_BYTES = 64 * 1024 * 1024  # ... and the most it may send, all discarded


class Discard:
    """A sink for what a refused client still sends; closes past its bounds."""

    __slots__ = ("last", "left", "transport", "until")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.left = LINGER_BYTES
        self.until = now + LINGER_TIME
        self.last = now

    def write(self, data: bytes) -> None:
        self.left -= len(data)
        self.last = monotonic()
        if self.left < 0:
            self.transport.close()

    def expired(self, now: float) -> bool:
        return now > self.until or now - self.last > LINGER_IDLE

    def close(self) -> None:  # the connection ended: nothing to release
        pass

    abort = close


def linger(transport: asyncio.Transport, now: float) -> Discard:
    """Shut down writing after what is buffered (not over TLS, which cannot half-close);
    the sink that then discards the client's bytes."""
    if transport.can_write_eof():
        transport.write_eof()
    return Discard(transport, now)


MIN_RATE_AFTER = 10.0  # seconds a body may take before min_body_rate is enforced


class Closing:
    """The timeouts and the lingering close of ``ClientConnection`` (its attributes)."""

    __slots__ = ()
    # Provided by ClientConnection:
    transport: asyncio.Transport
    tunnel: Any
    paused: int
    lim: Any
    plane: Any
    current: Any
    parsing: Any
    last_active: float
    served: bool
    _lines: Any
    _wbuf: int
    _wsince: float
    reject: Any
    fail: Any

    def sweep(self, now: float) -> None:
        """Enforce this connection's timeouts (called about once a second)."""
        lim = self.lim
        pending = self.transport.get_write_buffer_size()
        if pending or self._wbuf:  # send_timeout: the client must keep taking our bytes
            last, self._wbuf = self._wbuf, pending
            if not last or pending < last:
                self._wsince = now
            elif now - self._wsince > lim.send_timeout:
                self.transport.abort()
                return
        ex = self.current
        if ex is not None and ex.upstream is not None and ex.upstream.splice is not None and \
                ex.upstream.splice.stalled(now, lim.send_timeout):
            self.transport.abort()  # the same send_timeout for a body spliced to the client
            return
        tunnel = self.tunnel
        if tunnel is not None:
            if type(tunnel) is Discard and (tunnel.expired(now) or self.plane.closing):
                self.transport.close()
            return
        if ex is None:
            if self.parsing is not None:
                if self._lines is not None and now - self.parsing.t0 > lim.header_timeout:
                    self.reject(408, "request head not received in time")
                elif now - self.last_active > lim.body_timeout:
                    self.reject(408, "request body not received in time")
            elif now - self.last_active > (lim.keepalive_timeout if not self.plane.closing else
                                           0 if self.served else 1.0):
                # Closing down: idle keep-alive connections go at once, but a connection
                # just accepted gets a moment to send the request it was opened for.
                self.transport.close()
            return
        if ex.upstream is not None and not ex.resp_started and ex.sent_at and \
                (ex.request_done or self.paused & PAUSE_UPSTREAM) and \
                now - ex.sent_at > lim.response_timeout:
            # From the end of the request, or since the worker stopped reading its body.
            self.fail(ex, 504)
        elif not ex.request_done and not self.paused and (
                now - self.last_active > lim.body_timeout or (
                    lim.min_body_rate and now - ex.t0 > MIN_RATE_AFTER
                    and ex.body_seen < lim.min_body_rate * (now - ex.t0))):
            # No progress for body_timeout, or slower than min_body_rate on average.
            if ex.resp_started:
                self.transport.abort()
            else:
                self.fail(ex, 408)

    def _linger(self) -> None:
        """Close after the last answer so that the client reads all of it (see above)."""
        transport = self.transport
        if transport.is_closing():
            return
        self.tunnel = linger(transport, monotonic())  # type: ignore[assignment]
        if self.paused:
            self.paused = 0
            transport.resume_reading()
