"""The client side of the proxy: one asyncio Protocol per client connection.

A ``ClientConnection`` parses requests with httptools and turns each into an
``Exchange``: the request head is rebuilt once for the worker (hop-by-hop headers out,
forwarding headers in), a worker is chosen by the gateway's router, and body bytes are
streamed to it as they arrive.  Pipelined requests are parsed ahead, parked in order
and answered in order.  Backpressure is a bitmask of reasons to stop reading the client
(``pause_reading_for``), so that the reasons never undo each other.

Everything that waits is a callback, never a coroutine, except opening a new
connection to a worker; timeouts are enforced by the gateway's once-a-second sweep
(``ClientConnection.sweep``) instead of one timer per request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

import httptools

from .closing import Closing
from .exchange import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    PAUSE_CONNECTING,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    PAUSE_UPSTREAM,
    Exchange,
)
from .http1 import (
    LAST_CHUNK,
    SAFE_METHODS,
    RequestRejected,
    declared_chunk_size,
    error_response,
    forwarded_for_element,
    status_for_parser_error,
    wants_json,
)
from .request import RequestHead
from .splice import stream_fd
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from .ports import Plane


_UNSET = object()

# Bytes buffered towards a client before the worker's side stops being read: kept low,
# so that a client that stops reading holds little memory (and send_timeout cuts it).
CLIENT_WRITE_HIGH_WATER = 64 * 1024


class ClientConnection(RequestHead, Closing, asyncio.Protocol):
    """One client connection: parse, route, stream, answer in order."""

    __slots__ = ("_body_left", "_chunk_in", "_cl", "_conn_tokens", "_fwd", "_fwd_host",
                 "_fwd_key", "_hdr_count", "_head_bytes", "_head_raw", "_lines", "_pkt",
                 "_prior_fwd", "_prior_xff", "_prior_xfh", "_prior_xfp", "_route_next", "_te",
                 "_trusted", "_upgrade_value", "_url", "_wbuf", "_wsince", "client_ip",
                 "cookie_cache", "current", "fd", "last_active", "lim", "parser", "parsing",
                 "paused", "pending", "plane", "served", "transport", "tunnel", "write_paused")

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.lim = plane.limits
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.paused = 0
        self.write_paused = False
        self.tunnel: asyncio.Transport | None = None
        self.fd = -1  # the socket's descriptor, if response bodies can be spliced to it
        self.last_active = 0.0
        self.client_ip = b""
        self._fwd = b""
        self._fwd_key: object = _UNSET
        self._fwd_host = b""
        self._lines: list[bytes] = []
        self._url = b""  # the request target as read so far
        self._head_bytes = 0
        self._head_raw = 0
        self._pkt = 0  # bytes of the read being parsed
        self._hdr_count = 0
        self._te: bytes | None = None
        self._cl: bytes | None = None
        self._conn_tokens: bytes | None = None
        self._upgrade_value: bytes | None = None
        self._prior_xff: bytes | None = None
        self._prior_fwd: bytes | None = None
        self._prior_xfp: bytes | None = None  # from a trusted proxy only
        self._prior_xfh: bytes | None = None
        self._trusted = False
        self._route_next: Exchange | None = None
        self._body_left = 0
        self._chunk_in = -1  # data bytes in this packet of a chunk whose header it holds
        self._wbuf = 0  # bytes waiting for the client at the last sweep
        self._wsince = 0.0  # since when they made no progress
        self.cookie_cache: tuple[bytes | None, str | None, str | None] | None = None
        self.served = False  # has answered a request (for closing idle connections)

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        self.fd = stream_fd(transport)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.client_ip = ip.encode()
        self._fwd = forwarded_for_element(ip)
        self._trusted = self.lim.trusts(ip)  # one of the proxies in front (trusted_proxies)
        self.last_active = monotonic()
        self.plane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        plane = self.plane
        plane.connections.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
            return
        ex = self.current
        self.current = None
        if ex is not None:
            if ex.waiter is not None:
                ex.waiter.cancel()
            up = ex.upstream
            if up is not None:
                up.ex = None
                up.abort()  # the worker may still be sending: do not reuse
            if not ex.resp_started:
                ex.status = 499  # the client went away before its answer
            plane.reporter.exchange_done(ex)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        if self.parsing is not None or self.current is not None:
            # Activity is a request in progress; bytes that start none (blank lines
            # between requests) must not keep an idle connection open for ever.
            self.last_active = monotonic()
        if self._body_left:
            # The fast path for request bodies with a Content-Length: bytes go straight
            # to the worker without the parser (which would copy them once more).
            left = self._body_left
            n = len(data)
            if n <= left:
                self._body_left = left - n
                self._pass_body(data)
                if n == left:
                    self._body_passed()
                return
            self._body_left = 0
            self._pass_body(data[:left])
            self._body_passed()
            data = data[left:]
        try:
            self._pkt = len(data)
            self.parser.feed_data(data)
            ex = self.parsing
            if ex is not None:  # checked before routing: the packet must be all good
                if self._lines is not None:
                    # A head still incomplete after this much input is refused before
                    # llhttp (which buffers partial header lines) is made to hold more.
                    self._head_raw += len(data)
                    if self._head_raw > self.lim.max_head_bytes:
                        self.reject(431, "request head too large")
                elif ex.body_mode == BODY_LENGTH:
                    self._body_left = int(self._cl) - ex.body_seen  # type: ignore[arg-type]
                elif self._chunk_in >= 0:
                    self._check_chunk(ex, data)
            if self._route_next is not None:
                self._route()
        except httptools.HttpParserUpgrade as upg:
            ex = self.current if self.current is not None and self.current.upgrade else None
            if ex is None and self.pending and self.pending[-1].upgrade:
                ex = self.pending[-1]
            if ex is not None:  # hold what follows the head until the worker says 101
                ex.tunnel_early = data[upg.args[0]:]
                self.pause_reading_for(PAUSE_TUNNEL)
            if self._route_next is not None:
                self._route()
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, RequestRejected):
                self.reject(cause.status, cause.reason)
            else:
                raise
        except httptools.HttpParserError as err:
            msg = str(err)
            self.reject(status_for_parser_error(msg), msg)

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            return False  # a WebSocket client that left: close both sides, free the worker
        # A client that half-closes after its request still gets its answer.
        return self.current is not None and self.parsing is None

    def pause_writing(self) -> None:  # the client reads slower than the worker sends
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None and not ex.upstream.closed:
            ex.upstream.transport.resume_reading()

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- httptools callbacks (request body; the head is request.py's) -------------

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        ex.body_seen += len(body)
        limit = self.lim.max_body_size
        if limit and ex.body_seen > limit:
            raise RequestRejected(413, "request body too large")
        if ex.body_mode == BODY_CHUNKED:
            if self._chunk_in >= 0:
                self._chunk_in += len(body)
            body = b"%x\r\n%b\r\n" % (len(body), body)
        self._send_body(ex, body)

    def on_chunk_header(self) -> None:
        if self.lim.max_body_size:
            self._chunk_in = 0  # see _check_chunk

    def on_chunk_complete(self) -> None:
        self._chunk_in = -1

    def _check_chunk(self, ex: Exchange, data: bytes) -> None:
        """A chunk whose header is in this packet runs past its end: refuse it at once
        (413) when its declared size cannot fit ``max_body_size``, instead of forwarding
        it and waiting.  httptools does not give the size, so it is read back from the
        line that ends where this chunk's data in ``data`` begins."""
        declared = declared_chunk_size(data, len(data) - self._chunk_in)
        seen_before = ex.body_seen - self._chunk_in
        self._chunk_in = -1
        if declared is not None and seen_before + declared > self.lim.max_body_size:
            self.reject(413, "request body too large (declared chunk size)")

    def _pass_body(self, body: bytes) -> None:
        ex = self.parsing
        ex.body_seen += len(body)
        self._send_body(ex, body)

    def _send_body(self, ex: Exchange, body: bytes) -> None:
        """To the worker, or held until the connection to it is ready."""
        up = ex.upstream
        if up is not None:
            up.transport.write(body)
        elif ex.body_buf is not None:
            ex.body_buf.append(body)
            if ex is self.current:
                self.pause_reading_for(PAUSE_CONNECTING)

    def _body_passed(self) -> None:
        """The last byte of a passed-through body: finish the request, parse anew."""
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_complete()

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        ex.request_done = True
        if ex.upstream is not None:  # the worker has it all: response_timeout starts now
            ex.sent_at = monotonic()
        if ex.body_mode == BODY_CHUNKED:
            up = ex.upstream
            if up is not None:
                up.transport.write(LAST_CHUNK)
            elif ex.body_buf is not None:
                ex.body_buf.append(LAST_CHUNK)

    def _route(self) -> None:
        ex = self._route_next
        self._route_next = None
        if ex is self.current and not self.transport.is_closing():
            self.plane.router.route(ex)

    # -- driven by the gateway and the worker side -----------------------------------

    def attach(self, ex: Exchange, up: UpstreamConnection) -> None:
        """A connection to the chosen worker is ready: send the request on it."""
        if self.current is not ex or self.transport.is_closing():
            self.plane.releaser.release_upstream(up, reusable=True)
            return
        ex.sent_at = monotonic()
        up.attach(ex)
        self.resume_reading_for(PAUSE_CONNECTING)

    def response_complete(self, ex: Exchange, up: UpstreamConnection, reusable: bool) -> None:
        """The worker finished its answer to ``ex``."""
        ex.upstream = None
        self.resume_reading_for(PAUSE_UPSTREAM)
        self.plane.releaser.release_upstream(up, reusable)
        if not ex.request_done or ex.upgrade:
            # The worker answered before the whole body arrived; the rest of the body
            # cannot be told apart from a next request, so this connection ends here.
            ex.keep_alive = False
        self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        plane = self.plane
        plane.reporter.exchange_done(ex)
        self.served = True
        self.current = None
        if not ex.keep_alive or plane.closing:
            if ex.request_done:
                self.transport.close()
            else:  # the client may still be sending its body: let it read the answer
                self._linger()
            return
        self.last_active = monotonic()
        if self.pending:
            nxt = self.pending.popleft()
            self.current = nxt
            plane.router.route(nxt)
            if nxt.body_buf and not nxt.request_done:
                self.pause_reading_for(PAUSE_CONNECTING)
        if not self.pending:
            self.resume_reading_for(PAUSE_PIPELINE)

    def upstream_broke(self, ex: Exchange, up: UpstreamConnection, malformed: bool) -> None:
        """The worker's connection failed or spoke garbage during ``ex``."""
        ex.upstream = None
        self.resume_reading_for(PAUSE_UPSTREAM)
        plane = self.plane
        if ex.resp_started:  # part of the answer is out: the client must see it broke
            ex.keep_alive = False
            plane.reporter.exchange_done(ex)
            self.current = None
            self.transport.abort()
            return
        if (not malformed and not up.got_bytes and ex.method in SAFE_METHODS
                and ex.body_mode == BODY_NONE and not ex.upgrade):
            # Nothing came back and the request is safe by definition (RFC 9110 9.2.1),
            # so a browser would resend it; do that here, on another worker.
            if plane.router.retry(ex):
                return
        self.fail(ex, 502)

    def fail(self, ex: Exchange, status: int, retry_after: int = 0) -> None:
        """Answer ``ex`` with an error page of our own (if nothing was sent yet)."""
        if ex is not self.current:
            return
        if ex.resp_started:
            self.plane.reporter.exchange_done(ex)
            self.current = None
            self.transport.abort()
            return
        ex.status = status
        ex.resp_started = True
        close = not ex.request_done or not ex.keep_alive or ex.upgrade or status == 504
        if close:
            ex.keep_alive = False
        data = error_response(status, wants_json(ex.accept), close, retry_after)
        ex.resp_bytes = len(data)
        self.transport.write(data)
        up = ex.upstream
        if up is not None:
            ex.upstream = None
            up.ex = None
            up.abort()
        self._finish(ex)

    def reject(self, status: int, reason: str) -> None:
        """A request we refuse before any of it reaches a worker; the connection ends."""
        ex = self.parsing or self.current
        if self.current is not None and self.current is not ex:
            if self.current is self._route_next:
                # The request before it came in the same packet and was not sent to any
                # worker yet: it is dropped with the packet, which gets the answer.
                self.current = None
            else:
                # A bad request behind one already with a worker: answering out of order
                # would confuse the client, so the connection ends here.
                self.transport.abort()
                return
        elif self.current is not None and self.current.resp_started:
            self.transport.abort()
            return
        data = error_response(status, wants_json(ex.accept) if ex else False, True)
        if ex is not None:
            ex.status = status
            ex.resp_started = True
            ex.resp_bytes = len(data)
            up = ex.upstream
            if up is not None:
                ex.upstream = None
                up.ex = None
                up.abort()
            if ex.waiter is not None:
                ex.waiter.cancel()
            if not ex.method:
                ex.method = b"-"
            self.plane.reporter.exchange_done(ex, reason)
        self.current = self.parsing = self._route_next = None
        self.pending.clear()
        self.transport.write(data)
        self._linger()

    def start_tunnel(self, ex: Exchange, early_from_worker: bytes) -> None:
        """The worker switched protocols: splice the two connections."""
        up = ex.upstream
        assert up is not None
        if early_from_worker:
            self.transport.write(early_from_worker)
        self.tunnel = up.transport
        up.tunnel = self.transport
        if ex.tunnel_early:
            up.transport.write(ex.tunnel_early)
            ex.tunnel_early = b""
        # The exchange stays in flight (its worker slot and session kept) until it closes.
        self.resume_reading_for(PAUSE_TUNNEL | PAUSE_PIPELINE | PAUSE_CONNECTING)

    def tunnel_closed(self, ex: Exchange) -> None:
        self.current = None
        self.tunnel = None
        self.transport.close()
        self.plane.reporter.exchange_done(ex)
