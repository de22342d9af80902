"""The control channel between the control process and one data-plane process.

A plane and its control process talk over one end each of a UNIX socketpair.  A frame
is a 4-byte big-endian length and a JSON array whose first element names the message
(the vocabulary is docs/design.md's "Several processes").  JSON because the messages
are few and small — routing-table snapshots when something changes, pin claims and
ends, a report every fifth of a second — and a person can read a captured one.

The socket is non-blocking and driven by the event loop's reader and writer callbacks,
never awaited: a plane must not block on its control process.  ``pump`` reads whatever
is queued right now and delivers it; a plane calls it before routing a request that
names a session, so that a pin change the control process sent before it let a
response go out is applied before that session's next request is routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("holdover.channel")

HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024  # a frame larger than this is a broken peer, not a message
READ_SIZE = 256 * 1024
BUFFER_SIZE = 4 * 1024 * 1024  # socket buffers: a burst of claims or pins fits in the kernel

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads


class ChannelError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def encode(msg: list[Any]) -> bytes:
    """One frame: length, then the message as compact JSON."""
    body = _dumps(msg).encode()
    return HEADER.pack(len(body)) + body


def decode_frames(buf: bytearray) -> tuple[list[list[Any]], int]:
    """The complete messages at the start of ``buf`` and how many bytes they took."""
    out = []
    pos = 0
    n = len(buf)
    while n - pos >= 4:
        (size,) = HEADER.unpack_from(buf, pos)
        if size > MAX_FRAME:
            raise ChannelError(f"frame of {size} bytes")
        if n - pos - 4 < size:
            break
        try:
            msg = _loads(bytes(buf[pos + 4:pos + 4 + size]))
        except ValueError as exc:
            raise ChannelError(f"not JSON: {exc}") from None
        if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
            raise ChannelError("a message is a JSON array that starts with its kind")
        out.append(msg)
        pos += 4 + size
    return out, pos


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of channel sockets (control's end, the plane's end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_SIZE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_SIZE)
    return a, b


class Channel:
    """One end of a control channel: frames in (``on_message``), frames out (``send``).

    ``on_closed`` runs once, when the peer hangs up or speaks garbage.  Sends are
    buffered and written at the end of the loop iteration (one syscall for all that
    the iteration produced) or at once by ``flush``; ``pending_out`` is what the
    kernel has not taken yet."""

    def __init__(self, sock: socket.socket, on_message: Callable[[list[Any]], None],
                 on_closed: Callable[[], None]) -> None:
        self.sock = sock
        self.on_message = on_message
        self.on_closed = on_closed
        self.closed = False
        self.on_drained: Callable[[], None] | None = None
        self._in = bytearray()
        self._out: list[bytes] = []
        self._pending = b""  # what a short write left over
        self._flush_scheduled = False
        self._writing = False  # a writer callback waits for the socket
        self._pumping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self.pump)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the channel runs on (timers of its users go there too)."""
        assert self._loop is not None, "the channel is not started"
        return self._loop

    # -- in --------------------------------------------------------------------------

    def pump(self) -> None:
        """Read and deliver every complete message queued in the socket now."""
        if self._pumping or self.closed:
            return  # a handler that routes (and so pumps) runs inside the outer pump
        self._pumping = True
        try:
            while True:
                try:
                    data = self.sock.recv(READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    self.close()
                    return
                if not data:
                    self.close()
                    return
                self._in += data
                try:
                    msgs, used = decode_frames(self._in)
                except ChannelError:
                    self.close()
                    return
                if used:
                    del self._in[:used]
                for msg in msgs:
                    if self.closed:
                        return
                    try:
                        self.on_message(msg)
                    except Exception:  # one bad handler must not stop the channel
                        log.exception("handling a %r message failed", msg[0])
                if len(data) < READ_SIZE:
                    return
        finally:
            self._pumping = False

    # -- out -------------------------------------------------------------------------

    def send(self, msg: list[Any]) -> None:
        """Queue ``msg``; it is written at the end of this loop iteration at the latest."""
        if self.closed:
            return
        self._out.append(encode(msg))
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self.flush)

    @property
    def pending_out(self) -> int:
        return len(self._pending) + sum(map(len, self._out))

    def flush(self) -> None:
        """Hand everything queued to the kernel now, as far as it takes it."""
        self._flush_scheduled = False
        if self.closed or self._writing:
            return
        data = self._pending + b"".join(self._out) if self._out else self._pending
        self._out.clear()
        self._pending = b""
        if not data:
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close()
            return
        if n < len(data):
            self._pending = data[n:]
            self._writing = True
            assert self._loop is not None
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def flush_blocking(self, timeout: float) -> None:
        """Write out everything queued, waiting up to ``timeout`` (a last message)."""
        if self.closed:
            return
        if self._writing:
            assert self._loop is not None
            self._loop.remove_writer(self.sock.fileno())
            self._writing = False
        data = self._pending + b"".join(self._out)
        self._out.clear()
        self._pending = b""
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)

    def _writable(self) -> None:
        assert self._loop is not None
        self._loop.remove_writer(self.sock.fileno())
        self._writing = False
        self.flush()
        if not self._writing and self.on_drained is not None:
            self.on_drained()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            if self._writing:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()
        self.on_closed()

