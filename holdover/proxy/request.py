"""The head of a request: httptools' callbacks up to ``on_headers_complete``.

``ClientConnection`` (server.py) inherits these: each header is sorted by one dict
lookup (``_SPECIAL``) into passed through, dropped (hop-by-hop, forwarding, the gateway's
own names) or remembered (framing, Host, Cookie, Accept, a trusted proxy's forwarding);
the head the worker receives is built once, with our forwarding headers and framing.
Limits on the request line and the head are enforced here as they arrive.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from .exchange import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, PAUSE_PIPELINE, Exchange
from .http1 import (
    _H_CONNECTION,
    _H_CONTENT_LENGTH,
    _H_COOKIE,
    _H_FORWARDED,
    _H_HOST,
    _H_TRANSFER_ENCODING,
    _H_UPGRADE,
    _H_XFF,
    _H_XFH,
    _H_XFP,
    _SPECIAL,
    RequestRejected,
    behind_proxy,
    check_transfer_encoding,
    connection_tokens,
    forwarded_headers,
    split_target,
    valid_host,
)


class RequestHead:
    """Request-head parsing of ``ClientConnection`` (its attributes)."""

    __slots__ = ()
    # Provided by ClientConnection:
    parser: Any
    parsing: Any
    current: Any
    pending: Any
    lim: Any
    client_ip: bytes
    _lines: Any
    _url: bytes
    _head_bytes: int
    _head_raw: int
    _pkt: int
    _hdr_count: int
    _te: Any
    _cl: Any
    _conn_tokens: Any
    _upgrade_value: Any
    _prior_xff: Any
    _prior_fwd: Any
    _prior_xfp: Any
    _prior_xfh: Any
    _trusted: bool
    _fwd: bytes
    _fwd_key: Any
    _fwd_host: bytes
    _route_next: Any
    _chunk_in: int

    def pause_reading_for(self, reason: int) -> None: ...

    def on_message_begin(self) -> None:
        ex = Exchange(self, monotonic())
        self.parsing = ex
        self._lines = []
        self._url = b""
        self._head_bytes = 0
        self._head_raw = 0
        self._hdr_count = 0
        self._te = self._cl = self._conn_tokens = self._upgrade_value = None
        self._prior_xff = self._prior_fwd = self._prior_xfp = self._prior_xfh = None

    def on_url(self, url: bytes) -> None:
        if self._url:  # the target came in more than one read
            url = self._url + url
        self._url = url
        if len(url) > self.lim.max_request_line:
            raise RequestRejected(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _SPECIAL.get(name.lower())
        if kind is None:  # the common case: passed through as it came
            lines = self._lines
            if lines is not None:  # None: a trailer of a chunked body (bodies are re-framed)
                # Name, separator, value, end: one flat list joined once, and the limits
                # on count and size checked once, in on_headers_complete.
                lines += (name, b": ", value, b"\r\n")
            return
        if self._lines is None:
            return
        if kind < _H_HOST:  # hop-by-hop and forwarding headers: not passed on
            self._hdr_count += 1
            self._head_bytes += len(name) + len(value) + 4
            lim = self.lim
            if self._hdr_count > lim.max_headers or self._head_bytes > lim.max_header_size:
                raise RequestRejected(431, "request headers too large")
            if kind == _H_CONTENT_LENGTH:
                self._cl = value
            elif kind == _H_TRANSFER_ENCODING:
                check_transfer_encoding(value)
                self._te = value
            elif kind == _H_CONNECTION:
                self._conn_tokens = value if self._conn_tokens is None else \
                    self._conn_tokens + b"," + value
            elif kind == _H_UPGRADE:
                self._upgrade_value = value
            elif lim.append_forwarded or self._trusted:
                if kind == _H_XFF:
                    prior = self._prior_xff
                    self._prior_xff = value if prior is None else prior + b", " + value
                elif kind == _H_FORWARDED:
                    prior = self._prior_fwd
                    self._prior_fwd = value if prior is None else prior + b", " + value
                elif not self._trusted:
                    pass  # X-Forwarded-Proto/-Host are believed from trusted proxies only
                elif kind == _H_XFP:
                    self._prior_xfp = value
                elif kind == _H_XFH:
                    self._prior_xfh = value
            return
        ex = self.parsing
        if kind == _H_HOST:
            if ex.host is not None:
                raise RequestRejected(400, "more than one Host header")
            ex.host = value
        elif kind == _H_COOKIE:
            ex.cookie = value if ex.cookie is None else ex.cookie + b"; " + value
        else:
            ex.accept = value
        self._lines += (name, b": ", value, b"\r\n")

    def _check_head_size(self, lines: list[bytes]) -> None:
        """The limits on the headers passed on (``lines``) and those dropped."""
        lim = self.lim
        if self._hdr_count + (len(lines) >> 2) > lim.max_headers:
            raise RequestRejected(431, "request headers too large")
        if self._head_raw + self._pkt > lim.max_header_size and \
                self._head_bytes + sum(map(len, lines)) > lim.max_header_size:
            # (The bytes read for this head bound the size: summed only when they could
            # be over.)
            raise RequestRejected(431, "request headers too large")

    def on_headers_complete(self) -> None:
        ex = self.parsing
        lim = self.lim
        parser = self.parser
        ex.method = method = parser.get_method()
        if method == b"TRACE":  # it would echo the request's cookies back (as nginx, 405)
            raise RequestRejected(405, "TRACE is not served")
        url = self._url
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise RequestRejected(505, "unsupported HTTP version")
        ex.http11 = version == "1.1"
        if url[:1] != b"/":
            url = self._origin_form(ex, method, url)
        ex.keep_alive = parser.should_keep_alive()
        ex.url = url
        lines = self._lines
        self._lines = None  # type: ignore[assignment]  # head complete: stop counting head bytes
        self._check_head_size(lines)
        if self._conn_tokens is not None:
            tokens = connection_tokens(self._conn_tokens)
            extra = tokens - {b"close", b"keep-alive", b"upgrade", b"host"}
            if extra:  # headers the client named as hop-by-hop stay with this connection
                lines = _without(lines, extra)
        if ex.host is None and ex.http11:
            raise RequestRejected(400, "HTTP/1.1 request without Host")
        if self._te is not None:
            if not ex.http11:
                raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
            ex.body_mode = BODY_CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self._cl is not None:
            if lim.max_body_size and int(self._cl) > lim.max_body_size:
                raise RequestRejected(413, "request body too large")
            ex.body_mode = BODY_LENGTH if self._cl != b"0" else BODY_NONE
            framing = b"Content-Length: " + self._cl + b"\r\n"
        else:
            framing = b""
        if parser.should_upgrade() and self._upgrade_value is not None:
            ex.upgrade = True
            framing += b"Connection: upgrade\r\nUpgrade: " + self._upgrade_value + b"\r\n"
        host = ex.host
        if host is None:
            lines += (b"Host", b": ", lim.listen_host, b"\r\n")
        elif host != self._fwd_key and not valid_host(host):  # once per new Host value
            raise RequestRejected(400, "invalid Host header")
        if self._prior_xff is None and self._prior_fwd is None and not self._trusted:
            if host != self._fwd_key:  # usually the same for the whole connection
                self._fwd_key = host
                self._fwd_host = forwarded_headers(self.client_ip, self._fwd, lim.proto, host)
            fwd = self._fwd_host
            ex.secure = lim.tls
        else:
            fwd = self._forwarded(ex, host)
        ex.head = b"".join((method, b" ", url, b" HTTP/1.1\r\n", *lines, fwd, framing, b"\r\n"))
        if self.current is None:
            # Routed once this read's bytes are all parsed: a request whose body turns
            # out malformed in the same packet never reaches a worker at all.
            self.current = self._route_next = ex
        else:
            self.pending.append(ex)
            self.pause_reading_for(PAUSE_PIPELINE)

    def _forwarded(self, ex: Exchange, host: bytes | None) -> bytes:
        """Forwarding headers that extend what the client (or the proxy in front) sent."""
        lim = self.lim
        proto = lim.proto
        if self._trusted:
            proto, host, ex.client = behind_proxy(proto, host, self._prior_xfp,
                                                  self._prior_xfh, self._prior_xff, lim.trusts)
        ex.secure = proto == b"https"
        return forwarded_headers(self.client_ip, self._fwd, proto, host, self._prior_xff,
                                 self._prior_fwd)

    def _origin_form(self, ex: Exchange, method: bytes, url: bytes) -> bytes:
        """``http://host/path`` → ``/path`` with that host as Host (RFC 9112 3.2.2)."""
        authority, path = split_target(method, url)
        if authority is None:
            return path
        if ex.host is not None:  # the target's authority wins over the Host header
            self._lines = _without(self._lines, {b"host"})
        ex.host = authority
        self._lines += (b"Host", b": ", authority, b"\r\n")
        return path


def _without(lines: list[bytes], names: set[bytes]) -> list[bytes]:
    """The flat header list (name, ": ", value, CRLF, ...) without the lower-cased
    ``names``."""
    kept: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in names:
            kept += lines[i:i + 4]
    return kept

