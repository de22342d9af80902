"""Zero-copy response bodies: the kernel moves them from the worker's socket to the client's.

A large response body with a Content-Length is where the proxy does nothing but copy:
on the normal path every byte goes from the kernel into a Python ``bytes`` and back.
``os.splice`` through a pipe moves the socket buffers' pages instead (what HAProxy's
``option splice-auto`` does).  A ``BodySplice`` takes over the rest of such a body once
its head and first bytes are out and the client's write buffer is empty: the worker's
transport stops reading, the event loop watches duplicates of the two sockets'
descriptors (a transport's own descriptor cannot be watched a second time), and every
readiness callback moves what it can, at most ``TURN_BYTES``, so that one fast
download cannot starve the other connections.  When the body is through, the
connection carries on as if the normal path had carried it.  If either side fails,
the splice ends the way the normal path ends: a worker that closes or resets early
aborts its connection (the client's is then cut, so that it sees the body is
incomplete); a client that resets is aborted.

Only plain stream sockets qualify (``stream_fd``): TLS must encrypt in user space, a
chunked body must be parsed, and a rest under ``SPLICE_MIN`` is not worth the setup.
Pipes are kept for reuse (``_IDLE``), one per splice in progress at most, each holding
at most ``PIPE_SIZE``: a client that stops reading holds that much and no more.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from time import monotonic
from typing import Any

__all__ = ["SPLICE_MIN", "BodySplice", "stream_fd"]

SPLICE_MIN = 128 * 1024  # body bytes still to come that make a splice worth its setup
PIPE_SIZE = 256 * 1024  # bytes a pipe holds: the most a splice has in flight
TURN_BYTES = 1024 * 1024  # the most one callback moves before the loop serves others
MAX_IDLE_PIPES = 64

_SPLICE = getattr(os, "splice", None)  # Linux only
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_IDLE: list[tuple[int, int, int]] = []  # empty pipes: (read end, write end, capacity)


def stream_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor of the plain socket under ``transport``, or -1 when there is none
    to splice (TLS, no socket, a platform without ``os.splice``)."""
    if _SPLICE is None or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        return sock.fileno()
    except (OSError, AttributeError):
        return -1


def _take_pipe() -> tuple[int, int, int]:
    if _IDLE:
        return _IDLE.pop()
    rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        cap = fcntl.fcntl(wr, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
        cap = fcntl.fcntl(wr, fcntl.F_GETPIPE_SZ)
    return rd, wr, cap


def _give_pipe(pipe: tuple[int, int, int], empty: bool) -> None:
    if empty and len(_IDLE) < MAX_IDLE_PIPES:
        _IDLE.append(pipe)
    else:  # bytes still in it belong to a body that was cut: never to the next one
        os.close(pipe[0])
        os.close(pipe[1])


class BodySplice:
    """Moves the rest of one response body, ``left`` bytes, from ``up`` to its client.

    ``up`` is the UpstreamConnection (upstream.py) and ``ex`` its Exchange; when the
    body is through it calls ``up.splice_done(ex)``.
    """

    __slots__ = ("_cap", "_dst", "_loop", "_rd", "_reading", "_src", "_wr", "_writing", "ex",
                 "inpipe", "last_out", "left", "up")

    def __init__(self, up: Any, ex: Any, left: int) -> None:
        self.up = up
        self.ex = ex
        self.left = left  # body bytes still to take from the worker
        self.inpipe = 0  # taken from the worker, not yet given to the client
        self.last_out = 0.0  # when the client last took bytes (for send_timeout)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._src = self._dst = self._rd = self._wr = -1
        self._cap = 0
        self._reading = self._writing = False

    def start(self, src_fd: int, dst_fd: int) -> bool:
        """Take over the body; False (and nothing changed) if the pipe or the
        descriptors cannot be had, and the normal path goes on."""
        try:
            pipe = _take_pipe()
        except OSError:
            return False
        try:
            src = os.dup(src_fd)
        except OSError:
            _give_pipe(pipe, True)
            return False
        try:
            dst = os.dup(dst_fd)
        except OSError:
            os.close(src)
            _give_pipe(pipe, True)
            return False
        self._rd, self._wr, self._cap = pipe
        self._src, self._dst = src, dst
        self._loop = asyncio.get_running_loop()
        self.last_out = monotonic()
        self.up.transport.pause_reading()
        self._pump()
        return True

    def stalled(self, now: float, timeout: float) -> bool:
        """Bytes wait for a client that has taken none for ``timeout`` seconds."""
        return self.inpipe > 0 and now - self.last_out > timeout

    def _pump(self) -> None:
        splice = _SPLICE
        src, dst, rd, wr, cap = self._src, self._dst, self._rd, self._wr, self._cap
        left, inpipe = self.left, self.inpipe
        budget = TURN_BYTES
        sent = 0
        while budget > 0:
            moved = 0
            if left and inpipe < cap:
                try:
                    n = splice(src, wr, min(left, cap - inpipe), None, None, _FLAGS)
                except BlockingIOError:
                    n = -1  # nothing to read (or, with bytes in the pipe, no room)
                except OSError:
                    n = 0
                if n == 0:  # the worker closed or reset before its Content-Length
                    self.left, self.inpipe = left, inpipe
                    self._worker_failed()
                    return
                if n > 0:
                    left -= n
                    inpipe += n
                    moved = n
            if inpipe:
                try:
                    n = splice(rd, dst, inpipe, None, None, _FLAGS)
                except BlockingIOError:
                    n = 0
                except OSError:  # the client reset or went away
                    self.left, self.inpipe = left, inpipe
                    self._client_failed()
                    return
                if n:
                    inpipe -= n
                    sent += n
                    moved += n
            elif not left:
                break
            if not moved:
                break
            budget -= moved
        self.left, self.inpipe = left, inpipe
        if sent:
            self.ex.resp_bytes += sent
            self.last_out = monotonic()
        if not left and not inpipe:
            self._stop()
            self.up.splice_done(self.ex)
            return
        # Wait for the client when bytes are in the pipe, else for the worker.
        self._watch(not inpipe, inpipe > 0)

    def _watch(self, read: bool, write: bool) -> None:
        loop = self._loop
        if read != self._reading:
            self._reading = read
            if read:
                loop.add_reader(self._src, self._pump)
            else:
                loop.remove_reader(self._src)
        if write != self._writing:
            self._writing = write
            if write:
                loop.add_writer(self._dst, self._pump)
            else:
                loop.remove_writer(self._dst)

    def _worker_failed(self) -> None:
        up = self.up
        self._stop()
        up.splice = None
        up.transport.abort()  # connection_lost ends the exchange as on the normal path

    def _client_failed(self) -> None:
        ex = self.ex
        self._stop()
        self.up.splice = None
        ex.conn.transport.abort()  # the client's connection_lost ends the exchange

    def stop(self) -> None:
        """End the splice where it is (the exchange ended some other way)."""
        if self._src >= 0:
            self._stop()

    def _stop(self) -> None:
        self._watch(False, False)
        os.close(self._src)
        os.close(self._dst)
        self._src = self._dst = -1
        _give_pipe((self._rd, self._wr, self._cap), self.inpipe == 0)
