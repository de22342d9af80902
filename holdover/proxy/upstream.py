"""The worker side of the proxy: keep-alive connections to one worker, and their pool.

An ``UpstreamConnection`` carries one exchange at a time.  It parses the worker's
response with httptools, rewrites only the response head (hop-by-hop headers out,
framing chosen for the client), and passes body bytes straight to the client's
transport.  Everything one ``data_received`` produces for the client goes out in a
single write: the head and a small body share one syscall.  The rest of a large body
with a Content-Length is spliced socket to socket by the kernel (splice.py).

Reads land in one buffer that every worker connection of the process shares
(``_Reads``, an ``asyncio.BufferedProtocol``): a read is handled to the end before the
next one starts, so the bytes are never copied into a fresh object first.  Whatever
passes a view of that buffer to a transport checks that the transport did not keep it
(a write that could not go out at once); if it did, the buffer is left to it and a new
one is made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

import httptools

from ..core.affinity import PIN_COOKIE
from .http1 import HOLDOVER_HEADERS, LAST_CHUNK, status_line
from .splice import SPLICE_MIN, BodySplice, stream_fd

if TYPE_CHECKING:
    from .exchange import Exchange

# Response headers that need more than passing through, by lower-cased name: one dict
# lookup per header decides.  Hop-by-hop and framing headers are rewritten by the proxy;
# the gateway's own names (X-Holdover-*) and its pin cookie are the gateway's to send,
# never the app's: an app's are read (the session header) or dropped.
(_R_DROP, _R_CONTENT_LENGTH, _R_TRANSFER_ENCODING, _R_CONNECTION, _R_UPGRADE, _R_SESSION,
 _R_SET_COOKIE) = range(7)
_RESPONSE_SPECIAL: dict[bytes, int] = {
    **{h: _R_DROP for h in (b"keep-alive", b"proxy-connection", b"te", b"trailer")},
    **{h: _R_DROP for h in HOLDOVER_HEADERS},
    b"content-length": _R_CONTENT_LENGTH, b"transfer-encoding": _R_TRANSFER_ENCODING,
    b"connection": _R_CONNECTION, b"upgrade": _R_UPGRADE,
    b"x-holdover-session": _R_SESSION, b"set-cookie": _R_SET_COOKIE,
}

# How the response body is framed towards the client.
(BODY_NONE, BODY_RAW, BODY_CHUNKED, BODY_UNTIL_CLOSE_CHUNKED, BODY_UNTIL_CLOSE_RAW,
 BODY_DECHUNKED) = range(6)

WRITE_HIGH_WATER = 256 * 1024
READ_SIZE = 256 * 1024  # the shared read buffer: the most one read takes in
SPLIT_AT = 8 * 1024  # a read this large starting a response has its head parsed apart
MAX_RESPONSE_HEAD = 256 * 1024  # a worker's response head larger than this gets 502


class _ExtraResponse(Exception):
    """A worker sent more than one response to one request."""


class _Reads:
    """The read buffer of every worker connection (see above)."""

    __slots__ = ("buf", "view")

    def __init__(self) -> None:
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)

    def kept_by(self, transport: asyncio.BaseTransport) -> None:
        """``transport`` was just given a view of the buffer: if it holds on to it, the
        next reads go to a new buffer."""
        if transport.get_write_buffer_size():  # type: ignore[attr-defined]
            self.buf = bytearray(READ_SIZE)
            self.view = memoryview(self.buf)


_READS = _Reads()


def _head_end(data: bytes | memoryview) -> int:
    """Where the response head in ``data`` ends (after its blank line), or 3."""
    if type(data) is memoryview:  # a view from the start of the shared buffer
        return data.obj.find(b"\r\n\r\n", 0, len(data)) + 4  # type: ignore[union-attr]
    return data.find(b"\r\n\r\n") + 4


class UpstreamConnection(asyncio.BufferedProtocol):
    """One TCP connection to a worker, reused across exchanges."""

    __slots__ = (
        "_cl",
        "_close",
        "_done",
        "_head_raw",
        "_interim",
        "_left",
        "_lines",
        "_mode",
        "_pkt",
        "_reason",
        "_sent",
        "_upgrade",
        "closed",
        "ex",
        "fd",
        "got_bytes",
        "idle_since",
        "out",
        "parser",
        "pool",
        "splice",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.out: list[bytes] = []
        self.tunnel: asyncio.Transport | None = None
        self.splice: BodySplice | None = None  # the body being spliced, if one is
        self.fd = -1  # the socket's descriptor, if the body can be spliced from it
        self.closed = False
        self.got_bytes = False
        self.idle_since = 0.0
        self._lines: list[bytes] = []
        self._reason = b""
        self._cl: bytes | None = None
        self._mode = BODY_NONE
        self._close = False
        self._done = False
        self._interim = False
        self._upgrade: bytes | None = None
        self._left = 0  # body bytes still to pass through without the parser
        self._sent = False  # some of the current answer has been written to the client
        self._head_raw = 0  # bytes of the current response head (bounded)
        self._pkt = 0  # bytes of the read being parsed

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.fd = stream_fd(transport)

    def attach(self, ex: Exchange) -> None:
        """Send ``ex``'s request on this connection (head and any body read so far)."""
        self.ex = ex
        ex.upstream = self
        self.got_bytes = False
        self._sent = False
        self._head_raw = 0
        pending = ex.body_buf
        if pending:
            ex.body_buf = None
            self.transport.write(ex.head + b"".join(pending))
        else:
            ex.body_buf = None
            self.transport.write(ex.head)
        if ex.conn.write_paused:
            self.transport.pause_reading()

    def get_buffer(self, sizehint: int) -> bytearray:
        return _READS.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READS.view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """``data`` from the worker: bytes, or a view of the shared read buffer."""
        if self.tunnel is not None:
            self.tunnel.write(data)
            _READS.kept_by(self.tunnel)
            return
        ex = self.ex
        if ex is None:  # a worker talking out of turn on an idle connection
            self.transport.close()
            return
        self.got_bytes = True
        left = self._left
        if left:
            # The fast path for bodies with a Content-Length: bytes go straight from
            # the worker's socket to the client's, with no parsing and no copy.
            self._pass(ex, data, left)
            return
        # A large read that starts a response: only its head goes through the parser,
        # so that a Content-Length body after it is passed on without being copied.
        head_end = _head_end(data) if not ex.resp_started and len(data) >= SPLIT_AT else 0
        base = 0  # where in ``data`` the bytes last fed to the parser start
        self._pkt = len(data)
        try:
            if head_end > 4:
                view = memoryview(data)
                self.parser.feed_data(view[:head_end])
                if self._mode == BODY_RAW and ex.resp_started and not self._done and \
                        self.ex is ex:
                    self._pass(ex, view[head_end:], int(self._cl))  # type: ignore[arg-type]
                    return
                base = head_end
                self.parser.feed_data(view[head_end:])
            else:
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upg:
            self._flush(ex)
            if self._upgrade is not None and self.ex is ex:
                ex.conn.start_tunnel(ex, bytes(data[base + upg.args[0]:]))
            return
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, _ExtraResponse):
                # A second answer to one request: the first is complete and goes out;
                # the connection, now out of step, is never reused.
                self._close = True
            else:
                self._broke(ex)
                return
        if not ex.resp_started:
            self._head_raw += len(data)
            if self._head_raw > MAX_RESPONSE_HEAD:  # a head that never ends
                self._broke(ex)
                return
        self._flush(ex)
        if self._mode == BODY_RAW and not self._done and self.ex is ex:
            self._left = left = int(self._cl) - ex.resp_bytes  # type: ignore[arg-type]
            if left >= SPLICE_MIN:
                self._splice(ex)
        if self._done:
            self._done = False
            if self._mode == BODY_NONE and ex.method == b"HEAD":
                self.parser = httptools.HttpResponseParser(self)
            reusable = not self._close and ex.request_done
            self.ex = None
            ex.conn.response_complete(ex, self, reusable)

    def _pass(self, ex: Exchange, data: bytes | memoryview, left: int) -> None:
        """Body bytes of a Content-Length response, ``left`` of them still to come,
        to the client as they are (after the head, if that waits in ``out``)."""
        n = len(data)
        out = self.out
        transport = ex.conn.transport
        if n < left:
            self._left = left = left - n
            ex.resp_bytes += n
            if out:
                out.append(data)
                transport.writelines(out)  # one writev, the body not copied
                out.clear()
                self._sent = True
            else:
                transport.write(data)
            _READS.kept_by(transport)
            if left >= SPLICE_MIN:
                self._splice(ex)
            return
        self._left = 0
        ex.resp_bytes += left
        if n > left:
            data = memoryview(data)[:left]
        if out:
            out.append(data)
            transport.writelines(out)
            out.clear()
            self._sent = True
        else:
            transport.write(data)
        _READS.kept_by(transport)
        # The parser saw only the start of this body: a fresh one for the next answer.
        self.parser = httptools.HttpResponseParser(self)
        self.ex = None
        ex.conn.response_complete(ex, self, n == left and not self._close and ex.request_done)

    def _splice(self, ex: Exchange) -> None:
        """Hand the rest of the body to the kernel, if both sockets allow it and
        nothing of the answer still waits in the client's write buffer."""
        conn = ex.conn
        if self.fd < 0 or conn.fd < 0 or conn.write_paused or \
                conn.transport.get_write_buffer_size():
            return
        sp = BodySplice(self, ex, self._left)
        self.splice = sp
        self._left = 0
        if not sp.start(self.fd, conn.fd):
            self.splice = None
            self._left = sp.left

    def splice_done(self, ex: Exchange) -> None:
        """The spliced body is through: the answer is complete."""
        self.splice = None
        self.parser = httptools.HttpResponseParser(self)  # it saw only the body's start
        self.ex = None
        ex.conn.response_complete(ex, self, not self._close and ex.request_done)

    def abort(self) -> None:
        """Drop the connection now, and any splice of it (the exchange is over)."""
        sp = self.splice
        if sp is not None:
            self.splice = None
            sp.stop()
        self.transport.abort()

    def _broke(self, ex: Exchange) -> None:
        """The worker spoke garbage: 502 if none of its answer reached the client yet."""
        self.out.clear()
        if not self._sent:
            ex.resp_started = False
            ex.status = 0
        self.ex = None
        self.transport.abort()
        ex.conn.upstream_broke(ex, self, malformed=True)

    def _flush(self, ex: Exchange) -> None:
        out = self.out
        if out:
            ex.conn.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
            self._sent = True

    def pause_writing(self) -> None:  # the worker is slow to read the request body
        ex = self.ex
        if ex is not None:
            ex.sent_at = monotonic()  # response_timeout runs while it does not read on
            ex.conn.pause_reading_for(2)

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.conn.resume_reading_for(2)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.splice is not None:
            self.splice.stop()
            self.splice = None
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            ex = self.ex
            self.ex = None
            if ex is not None:
                ex.conn.tunnel_closed(ex)
            return
        ex = self.ex
        if ex is None:
            return
        self.ex = None
        if ex.resp_started and self._mode in (BODY_UNTIL_CLOSE_CHUNKED, BODY_UNTIL_CLOSE_RAW):
            # The worker framed its response by closing the connection: that is the end.
            if self._mode == BODY_UNTIL_CLOSE_CHUNKED:
                self.out.append(LAST_CHUNK)
            else:
                ex.keep_alive = False
            self._flush(ex)
            ex.conn.response_complete(ex, self, False)
            return
        ex.conn.upstream_broke(ex, self, malformed=False)

    # -- httptools callbacks (response) ---------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:
            raise _ExtraResponse  # a second response in the same read: see data_received
        self._lines = []
        self._head_raw = 0
        self._reason = b""
        self._cl = None
        self._mode = BODY_NONE
        self._close = False
        self._upgrade = None

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _RESPONSE_SPECIAL.get(name.lower())
        if kind is None:  # the common case: passed through as it came
            # Name, separator, value, end: one flat list, joined once with the head (its
            # size is checked once, in on_headers_complete).
            self._lines += (name, b": ", value, b"\r\n")
            return
        if kind == _R_SET_COOKIE:
            if value.partition(b"=")[0].strip() == PIN_COOKIE:
                return  # only the gateway sets its pin cookie
            self._lines += (name, b": ", value, b"\r\n")
            ex = self.ex
            if ex is not None:
                ex.conn.plane.hooks.on_set_cookie(ex, value)
        elif kind == _R_CONTENT_LENGTH:
            self._cl = value
        elif kind == _R_TRANSFER_ENCODING:
            self._mode = BODY_CHUNKED
        elif kind == _R_CONNECTION:
            if b"close" in value.lower():
                self._close = True
        elif kind == _R_UPGRADE:
            self._upgrade = value
        elif kind == _R_SESSION:  # the app talking to us: never to the client
            ex = self.ex
            if ex is not None:
                ex.conn.plane.hooks.on_session_header(ex, value)

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        status = self.parser.get_status_code()
        ex.status = status
        if not self.parser.should_keep_alive():
            self._close = True
        lines = self._lines
        if self._head_raw + self._pkt > MAX_RESPONSE_HEAD and \
                sum(map(len, lines)) > MAX_RESPONSE_HEAD:  # summed only if it could be over
            raise ValueError("response head too large")
        head = [status_line(status, self._reason)]
        head += lines
        if status < 200:
            if status == 101 and not (ex.upgrade and self._upgrade is not None):
                raise ValueError("101 Switching Protocols to a request that asked for none")
            if status == 101:
                # A WebSocket can start a session.
                extra = ex.conn.plane.hooks.response_extra_headers(ex)
                if extra:
                    head.append(extra)
                head.append(b"Connection: upgrade\r\nUpgrade: " + self._upgrade + b"\r\n\r\n")
                ex.resp_started = True
            else:  # 100 Continue, 103 Early Hints: pass on, the final answer follows
                self._interim = True
                self._upgrade = None
                head.append(b"\r\n")
            self.out.append(b"".join(head))
            return
        self._upgrade = None
        client_11 = ex.http11
        if ex.method == b"HEAD" or status in (204, 304):
            if (ex.method == b"HEAD" or status == 204) and (self._mode == BODY_CHUNKED or (
                    self._cl is not None and self._cl.strip() != b"0")):
                # Some apps send a body after a HEAD answer or a 204 anyway; bytes that
                # arrive after this read would be taken for the next answer: never reuse.
                self._close = True
            self._mode = BODY_NONE
            if self._cl is not None and status != 204:
                head.append(b"Content-Length: " + self._cl + b"\r\n")
            if ex.method == b"HEAD":
                self._done = True
        elif self._mode == BODY_CHUNKED:
            if client_11:
                head.append(b"Transfer-Encoding: chunked\r\n")
            else:  # an HTTP/1.0 client cannot take chunks: plain bytes, then close
                self._mode = BODY_DECHUNKED
                ex.keep_alive = False
        elif self._cl is not None:
            self._mode = BODY_RAW
            head.append(b"Content-Length: " + self._cl + b"\r\n")
        elif client_11:
            self._mode = BODY_UNTIL_CLOSE_CHUNKED
            head.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self._mode = BODY_UNTIL_CLOSE_RAW
            ex.keep_alive = False
        extra = ex.conn.plane.hooks.response_extra_headers(ex)
        if extra:
            head.append(extra)
        if not ex.keep_alive or ex.conn.plane.closing:
            ex.keep_alive = False
            head.append(b"Connection: close\r\n\r\n")
        elif not client_11:
            head.append(b"Connection: keep-alive\r\n\r\n")
        else:
            head.append(b"\r\n")
        ex.resp_started = True
        self.out.append(b"".join(head))

    def on_body(self, body: bytes) -> None:
        if self._mode == BODY_NONE:
            return  # bytes after a HEAD/204/304 head are not part of any answer
        ex = self.ex
        assert ex is not None
        ex.resp_bytes += len(body)
        if self._mode == BODY_CHUNKED or self._mode == BODY_UNTIL_CLOSE_CHUNKED:
            self.out.append(b"%x\r\n" % len(body))
            self.out.append(body)
            self.out.append(b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._mode == BODY_CHUNKED:
            self.out.append(LAST_CHUNK)
        elif self._mode in (BODY_UNTIL_CLOSE_CHUNKED, BODY_UNTIL_CLOSE_RAW):
            return  # llhttp never completes these; connection_lost does
        if not self.parser.should_keep_alive():
            self._close = True
        self._done = True


class UpstreamPool:
    """Idle keep-alive connections to one worker, most recently used first."""

    __slots__ = ("endpoint", "host", "idle", "limit", "port")

    def __init__(self, endpoint: object, host: str, port: int, limit: int) -> None:
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.limit = limit
        self.idle: deque[UpstreamConnection] = deque()

    def take(self) -> UpstreamConnection | None:
        """A live idle connection, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    def put(self, conn: UpstreamConnection, now: float) -> None:
        """Keep ``conn`` for reuse, or close it when the pool is full."""
        if conn.closed or len(self.idle) >= self.limit:
            conn.transport.close()
            return
        conn.idle_since = now
        conn.transport.resume_reading()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def expire(self, cutoff: float) -> None:
        """Close connections idle since before ``cutoff`` (oldest sit at the left)."""
        idle = self.idle
        while idle and idle[0].idle_since < cutoff:
            idle.popleft().transport.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().transport.close()

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
            timeout)
        return conn
