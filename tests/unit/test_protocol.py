"""The proxy's HTTP/1.1 core driven with bytes alone: no sockets, no event loop.

``ClientConnection`` gets a fake gateway (the attributes and hooks the code reads) and a
fake transport; ``UpstreamConnection`` gets a fake pool and an ``Exchange`` whose
``conn`` is a recorder.  Requests and responses are fed with ``data_received`` and what
comes out (the request head built for the worker, the bytes written to the client, the
calls made on the gateway) is checked.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from fakes import PORTS, FakePorts, signature_drift
from hypothesis import given, settings
from hypothesis import strategies as st

from holdover.proxy.http1 import forwarded_headers
from holdover.proxy.server import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    PAUSE_CONNECTING,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    ClientConnection,
    Exchange,
)
from holdover.proxy.upstream import UpstreamConnection

# -- fakes ------------------------------------------------------------------------------


class FakeTransport:
    """Records what the protocol does to its socket."""

    def __init__(self, peer: Any = ("127.0.0.1", 5555)) -> None:
        self.peer = peer
        self.chunks: list[bytes] = []
        self.closing = False
        self.eof = False  # the writing side shut down (a lingering close)
        self.aborted = False
        self.reading = True
        self.pauses = 0
        self.limits: dict[str, Any] | None = None
        self.writes_after_close = 0
        self.buffered = 0  # what get_write_buffer_size reports

    @property
    def closed(self) -> bool:
        """The gateway ended its side of the connection (close, abort or EOF)."""
        return self.closing or self.eof

    def write(self, data: bytes) -> None:
        if self.closed:
            self.writes_after_close += 1
        self.chunks.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self.write(c)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = {"high": high, "low": low}

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


FakeGateway = FakePorts  # the ports' fake, shared with the fuzz tests


def client(peer: Any = ("127.0.0.1", 5555), **gw: Any
           ) -> tuple[FakeGateway, ClientConnection, FakeTransport]:
    g = FakeGateway(**gw)
    c = ClientConnection(g.plane)
    t = FakeTransport(peer)
    c.connection_made(t)  # type: ignore[arg-type]
    return g, c, t


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert head.endswith(b"\r\n\r\n"), head
    first, *rest = head[:-4].split(b"\r\n")
    headers = []
    for line in rest:
        name, sep, value = line.partition(b": ")
        assert sep, line
        headers.append((name, value))
    return first, headers


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name.lower()]


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """Decode a chunked body; returns (payload, bytes after the last chunk)."""
    out = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        assert sep, "truncated chunk size line"
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while True:  # trailer section
                tline, sep, data = data.partition(b"\r\n")
                assert sep, "truncated trailer section"
                if not tline:
                    return out, data
        out += data[:size]
        assert data[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
        data = data[size + 2:]


def one_request(raw: bytes, **gw: Any) -> tuple[FakeGateway, ClientConnection, FakeTransport,
                                                Exchange]:
    g, c, t = client(**gw)
    c.data_received(raw)
    assert len(g.routed) == 1, (t.data, g.done)
    return g, c, t, g.routed[0]


# -- the request head built for the worker ------------------------------------------


def test_simple_get_head_exactly() -> None:
    g, c, t, ex = one_request(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n"
                              b"User-Agent: t/1\r\nAccept: */*\r\n\r\n")
    assert ex.head == (b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n"
                       b"Accept: */*\r\nX-Forwarded-For: 127.0.0.1\r\n"
                       b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\n"
                       b'Forwarded: for=127.0.0.1;proto=http;host="example.com"\r\n\r\n')
    assert ex.method == b"GET" and ex.url == b"/a?b=1" and ex.host == b"example.com"
    assert ex.http11 and ex.keep_alive and ex.request_done
    assert ex.body_mode == BODY_NONE
    assert t.chunks == [] and not t.closed
    assert c in g.connections
    assert t.limits is not None and t.limits["high"]


def test_hop_by_hop_and_connection_named_headers_removed() -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
           b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
           b"TE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nX-Kept: a\r\n"
           b"connection: X-Other\r\nx-other: 2\r\nX-OTHER-not: 3\r\nX-Kept: b\r\n\r\n")
    _, _, _, ex = one_request(raw)
    line, headers = split_head(ex.head)
    assert line == b"GET / HTTP/1.1"
    for gone in (b"connection", b"x-secret", b"keep-alive", b"proxy-connection", b"te",
                 b"trailer", b"upgrade", b"x-other", b"transfer-encoding", b"content-length"):
        assert gone not in names(headers), gone
    assert values(headers, b"X-Kept") == [b"a", b"b"]  # order of repeated headers kept
    assert values(headers, b"X-OTHER-not") == [b"3"]
    assert values(headers, b"Host") == [b"h"]
    assert not ex.upgrade


def test_client_forwarding_headers_dropped_in_replace_mode() -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: shop:8443\r\nX-Forwarded-For: 6.6.6.6\r\n"
           b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n"
           b"x-forwarded-for: 7.7.7.7\r\n\r\n")
    _, _, _, ex = one_request(raw)
    _, headers = split_head(ex.head)
    assert values(headers, b"X-Forwarded-For") == [b"127.0.0.1"]
    assert values(headers, b"X-Forwarded-Proto") == [b"http"]
    assert values(headers, b"X-Forwarded-Host") == [b"shop:8443"]
    assert values(headers, b"Forwarded") == [b'for=127.0.0.1;proto=http;host="shop:8443"']
    assert b"6.6.6.6" not in ex.head and b"7.7.7.7" not in ex.head and b"evil" not in ex.head


def test_client_forwarding_headers_appended_in_append_mode() -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n"
           b"Forwarded: for=10.0.0.1;proto=https\r\nX-Forwarded-Proto: https\r\n\r\n")
    _, _, _, ex = one_request(raw, append_forwarded=True)
    _, headers = split_head(ex.head)
    assert values(headers, b"X-Forwarded-For") == [b"10.0.0.1, 127.0.0.1"]
    assert values(headers, b"Forwarded") == [
        b'for=10.0.0.1;proto=https, for=127.0.0.1;proto=http;host="h"']
    assert values(headers, b"X-Forwarded-Proto") == [b"http"]  # proto is ours, not claimed


def test_append_mode_without_client_headers_is_like_replace() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", append_forwarded=True)
    _, headers = split_head(ex.head)
    assert values(headers, b"X-Forwarded-For") == [b"127.0.0.1"]
    assert values(headers, b"Forwarded") == [b'for=127.0.0.1;proto=http;host="h"']


def test_append_mode_keeps_every_client_xff_line() -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n"
           b"X-Forwarded-For: 2.2.2.2\r\n\r\n")
    _, _, _, ex = one_request(raw, append_forwarded=True)
    _, headers = split_head(ex.head)
    assert values(headers, b"X-Forwarded-For") == [b"1.1.1.1, 2.2.2.2, 127.0.0.1"]


@pytest.mark.parametrize(("peer", "xff", "fwd_for"), [
    (("::1", 5555, 0, 0), b"::1", b'for="[::1]"'),
    (("10.1.2.3", 1), b"10.1.2.3", b"for=10.1.2.3"),
    ("", b"unix", b"for=unix"),
])
def test_forwarded_for_by_peer_address(peer: Any, xff: bytes, fwd_for: bytes) -> None:
    g, c, _ = client(peer=peer)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    _, headers = split_head(g.routed[0].head)
    assert values(headers, b"X-Forwarded-For") == [xff]
    assert values(headers, b"Forwarded") == [fwd_for + b';proto=http;host="h"']


def test_proto_and_quoted_host_in_forwarded() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.1\r\nHost: a,b;for=c\r\n\r\n", proto=b"https")
    _, headers = split_head(ex.head)
    assert values(headers, b"X-Forwarded-Proto") == [b"https"]
    assert values(headers, b"Forwarded") == [b'for=127.0.0.1;proto=https;host="a,b;for=c"']


def test_forwarded_host_is_escaped_inside_its_quotes() -> None:
    """A quote or backslash never gets this far (an invalid Host is a 400), but the
    Forwarded element stays well-formed whatever it is given."""
    line = forwarded_headers(b"1.2.3.4", b"for=1.2.3.4", b"http", b'a"b\\c')
    assert b'Forwarded: for=1.2.3.4;proto=http;host="a\\"b\\\\c"\r\n' in line


def test_content_length_framing() -> None:
    _, _, _, ex = one_request(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    line, headers = split_head(ex.head)
    assert line == b"POST /p HTTP/1.1"
    assert values(headers, b"Content-Length") == [b"5"]
    assert b"transfer-encoding" not in names(headers)
    assert ex.body_mode == BODY_LENGTH
    assert ex.body_buf == [b"hello"]


def test_content_length_zero_means_no_body() -> None:
    _, _, _, ex = one_request(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert ex.body_mode == BODY_NONE
    assert values(split_head(ex.head)[1], b"Content-Length") == [b"0"]
    assert ex.request_done


def test_chunked_framing_rechunks_and_drops_extensions() -> None:
    raw = (b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    _, _, _, ex = one_request(raw)
    _, headers = split_head(ex.head)
    assert values(headers, b"Transfer-Encoding") == [b"chunked"]
    assert b"content-length" not in names(headers)
    assert ex.body_mode == BODY_CHUNKED
    body = b"".join(ex.body_buf)
    assert b"ext" not in body
    assert dechunk(body) == (b"hello world", b"")


def test_chunked_request_with_trailer_fields() -> None:
    g, c, _ = client()
    c.data_received(b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n")
    assert len(g.routed) == 1
    assert dechunk(b"".join(g.routed[0].body_buf))[0] == b"hello"
    assert g.routed[0].request_done


def test_upgrade_keeps_connection_upgrade_and_holds_early_bytes() -> None:
    raw = (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
           b"Upgrade: websocket\r\nSec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    g, c, t = client()
    c.data_received(raw + b"\x81\x02hi")
    assert len(g.routed) == 1
    ex = g.routed[0]
    assert ex.upgrade
    _, headers = split_head(ex.head)
    assert values(headers, b"Connection") == [b"upgrade"]
    assert values(headers, b"Upgrade") == [b"websocket"]
    assert values(headers, b"Sec-WebSocket-Key") == [b"abc=="]
    assert ex.tunnel_early == b"\x81\x02hi"  # sent only once the worker says 101
    assert c.paused & PAUSE_TUNNEL and not t.reading


def test_upgrade_header_without_connection_upgrade_is_plain_request() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    assert not ex.upgrade
    assert b"upgrade" not in names(split_head(ex.head)[1])
    assert b"connection" not in names(split_head(ex.head)[1])


def test_http10_request_is_sent_as_http11_with_gateway_host() -> None:
    _, _, _, ex = one_request(b"GET /old HTTP/1.0\r\nX-A: 1\r\n\r\n")
    line, headers = split_head(ex.head)
    assert line == b"GET /old HTTP/1.1"
    assert values(headers, b"Host") == [b"gw.test:8080"]
    assert not ex.http11 and not ex.keep_alive


def test_http10_keep_alive_and_host() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    assert not ex.http11 and ex.keep_alive
    _, headers = split_head(ex.head)
    assert values(headers, b"Host") == [b"h"]
    assert values(headers, b"X-Forwarded-For") == [b"127.0.0.1"]


def test_http10_without_host_still_gets_forwarding_headers() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.0\r\n\r\n")
    _, headers = split_head(ex.head)
    assert values(headers, b"X-Forwarded-For") == [b"127.0.0.1"]
    assert values(headers, b"X-Forwarded-Proto") == [b"http"]
    assert values(headers, b"Forwarded") == [b"for=127.0.0.1;proto=http"]


def test_connection_naming_host_does_not_strip_host() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n")
    _, headers = split_head(ex.head)
    assert len(values(headers, b"Host")) == 1


def test_cookies_collected_and_forwarded() -> None:
    _, _, _, ex = one_request(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n")
    assert ex.cookie == b"a=1; b=2"
    assert values(split_head(ex.head)[1], b"Cookie") == [b"a=1", b"b=2"]


def test_each_pipelined_request_gets_its_own_forwarded_host() -> None:
    g, c, _ = client()
    c.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n"
                    b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    heads = [g.routed[0].head] + [ex.head for ex in c.pending]
    hosts = [values(split_head(h)[1], b"X-Forwarded-Host") for h in heads]
    assert hosts == [[b"a"], [b"b"], [b"a"]]


# -- when route() is called ---------------------------------------------------------


def test_route_after_whole_packet_parsed() -> None:
    g, c, _ = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    assert g.route_state == [(True, [b"hello"])]


def test_route_once_when_body_arrives_later() -> None:
    g, c, t = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhel")
    assert g.route_state == [(False, [b"hel"])]
    assert c.paused & PAUSE_CONNECTING and not t.reading  # no worker yet: stop reading
    c.data_received(b"lo worl")
    c.data_received(b"d")
    assert len(g.routed) == 1
    ex = g.routed[0]
    assert ex.request_done and b"".join(ex.body_buf) == b"hello world"


def test_bad_body_in_same_packet_never_reaches_route() -> None:
    g, c, t = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\nzz\r\n")
    assert g.routed == []
    assert t.data.startswith(b"HTTP/1.1 400 ") and t.closed


def test_bad_body_after_routing_answers_400() -> None:
    g, c, t = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert len(g.routed) == 1
    c.data_received(b"zz\r\n")
    assert t.data.startswith(b"HTTP/1.1 400 ") and t.closed
    assert [ex.status for ex, _ in g.done] == [400]


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         " =;,./:_-", min_size=1, max_size=40).map(str.strip).filter(bool)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(raw request bytes, body payload) with random headers and framing."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))
    path = b"/" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/?=&%._-",
                               max_size=300)).encode()
    headers = [(b"x-" + draw(TOKEN).encode(), draw(VALUE).encode())
               for _ in range(draw(st.integers(0, 6)))]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    raw = method + b" " + path + b" HTTP/1.1\r\nHost: h.test\r\n"
    raw += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    if framing == "none":
        body = b""
        raw += b"\r\n"
    elif framing == "length":
        raw += b"Content-Length: %d\r\n\r\n" % len(body) + body
    else:
        raw += b"Transfer-Encoding: chunked\r\n\r\n"
        rest = body
        while rest:
            n = draw(st.integers(1, len(rest)))
            raw += b"%x\r\n%b\r\n" % (n, rest[:n])
            rest = rest[n:]
        raw += b"0\r\n\r\n"
    return raw, body


def segments(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def received_body(ex: Exchange) -> bytes:
    data = b"".join(ex.body_buf or [])
    if ex.body_mode == BODY_CHUNKED:
        payload, rest = dechunk(data)
        assert rest == b""
        return payload
    return data


@settings(max_examples=150, deadline=None)
@given(reqs=st.lists(requests(), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 3000), max_size=12))
def test_any_segmentation_gives_same_exchanges(reqs: list[tuple[bytes, bytes]],
                                               cuts: list[int]) -> None:
    """Requests (pipelined when several) cut anywhere give the same exchanges."""
    want = []
    for raw, _ in reqs:  # each request alone, in one packet: the reference
        g0, c0, _ = client()
        c0.data_received(raw)
        assert len(g0.routed) == 1
        want.append(g0.routed[0])

    stream = b"".join(raw for raw, _ in reqs)
    first_head_end = stream.index(b"\r\n\r\n") + 4
    g, c, t = client()
    seen = 0
    for part in segments(stream, cuts):
        c.data_received(part)
        seen += len(part)
        assert len(g.routed) == (1 if seen >= first_head_end else 0)
    got = g.routed + list(c.pending)
    assert len(got) == len(reqs)
    for ex, ref, (_, body) in zip(got, want, reqs, strict=True):
        assert ex.head == ref.head
        assert ex.request_done
        assert received_body(ex) == received_body(ref) == body
    assert t.chunks == [] and not t.closed


# -- smuggling shapes and malformed requests ------------------------------------------

SMUGGLING = [
    ("CL+TE", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE+CL", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("duplicate CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                     b"Content-Length: 5\r\n\r\nhello", 400),
    ("different CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                     b"Content-Length: 6\r\n\r\nhello!", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("signed CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("negative CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL overflow", b"POST / HTTP/1.1\r\nHost: h\r\n"
                    b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk longer than size", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    ("HTTP/1.0 with TE", b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"0\r\n\r\n", 400),
    ("two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two Host differing case", b"GET / HTTP/1.1\r\nHost: a\r\nhOsT: a\r\n\r\n", 400),
    ("missing Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("space before colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n"
                           b"0\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: h\n\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: h\rX-A: 1\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("gzip, chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                      b"0\r\n\r\n", 501),
    ("identity", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    ("xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n"
                 b"0\r\n\r\n", 501),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
]


@pytest.mark.parametrize(("raw", "status"), [s[1:] for s in SMUGGLING],
                         ids=[s[0] for s in SMUGGLING])
@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "byte-by-byte"])
def test_smuggling_shapes_rejected(raw: bytes, status: int, split: bool) -> None:
    g, c, t = client()
    for part in ([raw[i:i + 1] for i in range(len(raw))] if split else [raw]):
        if t.closed:
            break
        c.data_received(part)
    assert t.data.startswith(b"HTTP/1.1 %d " % status), t.data[:60]
    head = t.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nConnection: close" in head
    assert t.closed and t.writes_after_close == 0
    assert len(g.done) == 1 and g.done[0][0].status == status
    assert c.current is None and c.parsing is None and not c.pending
    if not split:
        assert g.routed == []  # the whole packet was seen before routing: never routed
    else:
        # byte by byte, a request whose head was complete and valid is routed before its
        # bad body arrives (and then answered with the error); a bad head never is
        g2, c2, _ = client()
        c2.data_received(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        assert len(g.routed) == len(g2.routed) <= 1


def test_bad_request_behind_unrouted_good_one_refuses_the_packet() -> None:
    g, c, t = client()
    c.data_received(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                    b"GET /2 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert g.routed == []  # the packet was bad: nothing of it goes to a worker
    assert not t.aborted and t.closed  # one clear 400 for the packet, then close
    assert t.data.startswith(b"HTTP/1.1 400 ") and t.data.count(b"HTTP/1.1") == 1


def test_bad_request_while_first_is_answered_aborts_without_reply() -> None:
    g, c, t = client()
    c.data_received(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(g.routed) == 1
    c.data_received(b"GET /2 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert t.aborted and t.data == b""


def test_error_page_is_json_for_json_clients() -> None:
    _, c, t = client(max_body_size=10)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nAccept: application/json\r\n"
                    b"Content-Length: 11\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 413 ")
    assert b"Content-Type: application/json" in t.data
    assert t.data.endswith(b'{"error": {"status": 413, "message": '
                           b'"The request body is larger than this gateway accepts."}}\n')


# -- pipelining -------------------------------------------------------------------------


class FakeUp:
    """Stands in for an UpstreamConnection where only identity matters."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.ex = None
        self.closed = False
        self.splice = None

    def abort(self) -> None:
        self.transport.abort()


def test_pipelined_requests_in_order_only_first_routed() -> None:
    g, c, t = client()
    c.data_received(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                    b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                    b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [ex.url for ex in g.routed] == [b"/1"]
    assert [ex.url for ex in c.pending] == [b"/2", b"/3"]
    assert c.pending[0].body_buf == [b"abc"] and c.pending[0].request_done
    assert c.paused & PAUSE_PIPELINE and not t.reading

    first = g.routed[0]
    up = FakeUp()
    first.resp_started = True
    first.status = 200
    c.response_complete(first, up, True)  # type: ignore[arg-type]
    assert g.released == [(up, True)]
    assert [ex.url for ex, _ in g.done] == [b"/1"]
    assert [ex.url for ex in g.routed] == [b"/1", b"/2"]
    assert c.current is g.routed[1]
    assert not t.reading  # /3 still waits

    c.response_complete(g.routed[1], FakeUp(), True)  # type: ignore[arg-type]
    assert [ex.url for ex in g.routed] == [b"/1", b"/2", b"/3"]
    assert not c.pending
    assert t.reading and c.paused == 0  # nothing parked any more: read again
    c.response_complete(g.routed[2], FakeUp(), True)  # type: ignore[arg-type]
    assert [ex.url for ex, _ in g.done] == [b"/1", b"/2", b"/3"]
    assert c.current is None and not t.closed


def test_connection_close_request_ends_connection_after_answer() -> None:
    g, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    ex = g.routed[0]
    assert not ex.keep_alive
    assert b"close" not in ex.head.lower()
    c.response_complete(ex, FakeUp(), True)  # type: ignore[arg-type]
    assert t.closed


def test_keepalive_next_request_routed_after_previous_finished() -> None:
    g, c, t = client()
    c.data_received(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    c.response_complete(g.routed[0], FakeUp(), True)  # type: ignore[arg-type]
    c.data_received(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [ex.url for ex in g.routed] == [b"/1", b"/2"]
    assert not t.closed


def test_upstream_broke_before_answer_gives_502_or_retries() -> None:
    g, c, t = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    up = FakeUp()
    up.got_bytes = False  # type: ignore[attr-defined]
    c.upstream_broke(g.routed[0], up, malformed=False)  # type: ignore[arg-type]
    assert g.retried == []  # a POST may have reached the app: never resent
    assert t.data.startswith(b"HTTP/1.1 502 ")

    g, c, t = client(retry_result=True)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.upstream_broke(g.routed[0], up, malformed=False)  # type: ignore[arg-type]
    assert g.retried == [g.routed[0]]
    assert t.data == b""

    g, c, t = client(retry_result=True)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.upstream_broke(g.routed[0], up, malformed=True)  # type: ignore[arg-type]
    assert g.retried == []  # garbage came back: the worker saw the request
    assert t.data.startswith(b"HTTP/1.1 502 ")


def test_connection_lost_mid_exchange_is_accounted() -> None:
    g, c, _ = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    c.connection_lost(None)
    assert len(g.done) == 1 and g.done[0][0].status == 499
    assert c not in g.connections


# -- limits -------------------------------------------------------------------------------


def test_request_line_limit_414() -> None:
    g, c, t = client(max_request_line=100)
    c.data_received(b"GET /" + b"a" * 99 + b" HTTP/1.1\r\nHost: h\r\n\r\n")  # exactly 100
    assert len(g.routed) == 1
    g, c, t = client(max_request_line=100)
    c.data_received(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 414 ") and t.closed and g.routed == []


def test_request_line_limit_414_across_packets() -> None:
    g, c, t = client(max_request_line=100)
    c.data_received(b"GET /")
    for _ in range(30):
        if t.closed:
            break
        c.data_received(b"a" * 10)
    assert t.data.startswith(b"HTTP/1.1 414 ") and t.closed and g.routed == []


def test_header_count_limit_431() -> None:
    hdrs = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    g, c, t = client(max_headers=5)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n" + hdrs + b"\r\n")  # 5 headers
    assert len(g.routed) == 1
    g, c, t = client(max_headers=5)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n" + hdrs + b"X-9: v\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 431 ") and t.closed and g.routed == []


def test_header_size_limit_431() -> None:
    g, c, t = client(max_header_size=200)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 300 + b"\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 431 ") and t.closed and g.routed == []


def test_endless_header_line_is_cut_off_431() -> None:
    g, c, t = client(max_head_bytes=1000)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ")
    sent = 0
    while not t.closed and sent < 10_000:
        c.data_received(b"v" * 100)
        sent += 100
    assert t.data.startswith(b"HTTP/1.1 431 ") and g.routed == []
    assert sent <= 1100


def test_head_limit_counts_first_packet() -> None:
    _, c, t = client(max_head_bytes=1000)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 900)
    c.data_received(b"v" * 200)  # 1100+ bytes of an unfinished head
    assert t.data.startswith(b"HTTP/1.1 431 ")


def test_body_limit_413_by_content_length() -> None:
    g, c, t = client(max_body_size=10)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
    assert len(g.routed) == 1
    g, c, t = client(max_body_size=10)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 413 ") and t.closed and g.routed == []


def test_body_limit_413_chunked_same_packet() -> None:
    g, c, t = client(max_body_size=10)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 413 ") and t.closed and g.routed == []


def test_body_limit_413_chunked_after_routing() -> None:
    g, c, t = client(max_body_size=10)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert len(g.routed) == 1
    c.data_received(b"6\r\nabcdef\r\n")
    assert not t.closed
    c.data_received(b"6\r\nghijkl\r\n")
    assert t.data.startswith(b"HTTP/1.1 413 ") and t.closed
    assert [ex.status for ex, _ in g.done] == [413]


# -- the worker side: UpstreamConnection --------------------------------------------


class FakePool:
    def __init__(self) -> None:
        self.forgotten: list[UpstreamConnection] = []

    def forget(self, conn: UpstreamConnection) -> None:
        self.forgotten.append(conn)


class FakeClientConn:
    """What an Exchange's ``conn`` offers the worker side."""

    def __init__(self, **gw: Any) -> None:
        self.transport = FakeTransport()
        self.gw = FakeGateway(**gw)
        self.plane = self.gw.plane
        self.write_paused = False
        self.completed: list[tuple[Exchange, bool]] = []
        self.broke: list[tuple[Exchange, bool]] = []
        self.tunnels: list[tuple[Exchange, bytes]] = []

    def response_complete(self, ex: Exchange, up: UpstreamConnection, reusable: bool) -> None:
        self.completed.append((ex, reusable))

    def upstream_broke(self, ex: Exchange, up: UpstreamConnection, malformed: bool) -> None:
        self.broke.append((ex, malformed))

    def start_tunnel(self, ex: Exchange, early: bytes) -> None:
        self.tunnels.append((ex, early))

    def tunnel_closed(self, ex: Exchange) -> None:
        pass


def exchange(conn: FakeClientConn, method: bytes = b"GET", http11: bool = True,
             keep_alive: bool = True, upgrade: bool = False) -> Exchange:
    ex = Exchange(conn, 0.0)  # type: ignore[arg-type]
    ex.method = method
    ex.http11 = http11
    ex.keep_alive = keep_alive
    ex.upgrade = upgrade
    ex.request_done = True
    ex.head = method + b" / HTTP/1.1\r\nHost: h\r\n\r\n"
    return ex


def worker(resp: bytes | list[bytes], method: bytes = b"GET", http11: bool = True,
           keep_alive: bool = True, upgrade: bool = False, **gw: Any
           ) -> tuple[UpstreamConnection, FakeClientConn, Exchange, FakeTransport]:
    conn = FakeClientConn(**gw)
    ex = exchange(conn, method, http11, keep_alive, upgrade)
    up = UpstreamConnection(FakePool())  # type: ignore[arg-type]
    ut = FakeTransport()
    up.connection_made(ut)  # type: ignore[arg-type]
    up.attach(ex)
    for part in resp if isinstance(resp, list) else [resp]:
        up.data_received(part)
    return up, conn, ex, ut


def test_attach_sends_head_and_buffered_body() -> None:
    conn = FakeClientConn()
    ex = exchange(conn, b"POST")
    ex.body_buf = [b"abc", b"def"]
    up = UpstreamConnection(FakePool())  # type: ignore[arg-type]
    ut = FakeTransport()
    up.connection_made(ut)  # type: ignore[arg-type]
    conn.write_paused = True
    up.attach(ex)
    assert ut.data == ex.head + b"abcdef"
    assert ex.upstream is up and ex.body_buf is None
    assert not ut.reading  # the client is not reading: do not read the worker either


def test_response_hop_by_hop_removed_and_length_kept() -> None:
    _, conn, ex, ut = worker(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: x\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 5\r\nX-App: 1\r\n\r\nhello")
    assert len(conn.transport.chunks) == 1  # head and small body in one write
    head, _, body = conn.transport.data.partition(b"\r\n\r\n")
    line, headers = split_head(head + b"\r\n\r\n")
    assert line == b"HTTP/1.1 200 OK"
    for gone in (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                 b"upgrade", b"transfer-encoding"):
        assert gone not in names(headers), gone
    assert values(headers, b"Content-Length") == [b"5"]
    assert values(headers, b"Content-Type") == [b"text/plain"]
    assert values(headers, b"X-App") == [b"1"]
    assert body == b"hello"
    assert ex.status == 200 and ex.resp_started and ex.resp_bytes == 5
    assert conn.completed == [(ex, True)]
    assert not ut.closed


def test_chunked_response_rechunked_for_http11_client() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    head, _, body = conn.transport.data.partition(b"\r\n\r\n")
    _, headers = split_head(head + b"\r\n\r\n")
    assert values(headers, b"Transfer-Encoding") == [b"chunked"]
    assert b"content-length" not in names(headers)
    assert dechunk(body) == (b"hello world", b"")
    assert conn.completed == [(ex, True)]


def test_chunked_response_to_http10_client_is_plain_then_close() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nhello\r\n0\r\n\r\n", http11=False)
    head, _, body = conn.transport.data.partition(b"\r\n\r\n")
    _, headers = split_head(head + b"\r\n\r\n")
    assert b"transfer-encoding" not in names(headers)
    assert values(headers, b"Connection") == [b"close"]
    assert body == b"hello"
    assert not ex.keep_alive
    assert conn.completed == [(ex, True)]  # the worker connection itself is fine


@pytest.mark.parametrize(("keep_alive", "connection"), [(True, b"keep-alive"),
                                                        (False, b"close")])
def test_length_response_to_http10_client(keep_alive: bool, connection: bytes) -> None:
    _, conn, _, _ = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", http11=False,
                            keep_alive=keep_alive)
    _, headers = split_head(conn.transport.data[:-2])
    assert values(headers, b"Connection") == [connection]
    assert values(headers, b"Content-Length") == [b"2"]
    assert conn.transport.data.endswith(b"\r\n\r\nok")


def test_close_delimited_response_rechunked_and_ended_by_close() -> None:
    up, conn, ex, _ = worker(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
    assert conn.completed == []
    up.data_received(b"def")
    up.connection_lost(None)
    head, _, body = conn.transport.data.partition(b"\r\n\r\n")
    _, headers = split_head(head + b"\r\n\r\n")
    assert values(headers, b"Transfer-Encoding") == [b"chunked"]
    assert dechunk(body) == (b"abcdef", b"")
    assert conn.completed == [(ex, False)]
    assert conn.broke == []
    assert up.pool.forgotten == [up]  # type: ignore[attr-defined]


def test_close_delimited_response_to_http10_client() -> None:
    up, conn, ex, _ = worker(b"HTTP/1.0 200 OK\r\n\r\nabc", http11=False)
    up.connection_lost(None)
    head, _, body = conn.transport.data.partition(b"\r\n\r\n")
    _, headers = split_head(head + b"\r\n\r\n")
    assert values(headers, b"Connection") == [b"close"]
    assert b"transfer-encoding" not in names(headers)
    assert body == b"abc"
    assert not ex.keep_alive
    assert conn.completed == [(ex, False)]


def test_head_with_content_length_completes_without_body() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"HEAD")
    assert conn.transport.data == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    # Complete, but not reused: an app that sends the body anyway would otherwise hand
    # it to the next request as the start of its answer.
    assert conn.completed == [(ex, False)]


def test_head_with_no_body_announced_keeps_the_connection_clean_for_the_next() -> None:
    up, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"HEAD")
    assert conn.completed == [(ex, True)]
    ex2 = exchange(conn)
    conn.transport.chunks.clear()
    up.attach(ex2)
    up.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi")
    assert conn.transport.data == b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi"
    assert conn.completed[-1] == (ex2, True)


def test_head_with_chunked_completes_without_body() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HEAD")
    assert conn.completed == [(ex, False)]
    assert conn.transport.data.endswith(b"\r\n\r\n")
    assert conn.transport.data.count(b"\r\n\r\n") == 1


def test_head_response_body_bytes_are_not_forwarded() -> None:
    _, conn, _, _ = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"HEAD")
    assert conn.transport.data == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def test_head_response_from_http10_worker_is_not_reused() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD")
    assert conn.completed == [(ex, False)]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\nETag: e\r\n\r\n" % status)
    data = conn.transport.data
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1
    _, headers = split_head(data)
    assert values(headers, b"ETag") == [b"e"]
    assert b"transfer-encoding" not in names(headers)
    if status == 204:
        assert b"content-length" not in names(headers)
    # A 204 that announces a body is not reused (its body may still come); a 304's
    # Content-Length is the representation's and means nothing on the wire.
    assert conn.completed == [(ex, status == 304)]


@pytest.mark.parametrize("split", [False, True])
def test_interim_responses_passed_through_before_final(split: bool) -> None:
    parts = [b"HTTP/1.1 100 Continue\r\n\r\n",
             b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    _, conn, ex, _ = worker(parts if split else b"".join(parts), b"POST")
    assert conn.transport.data == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert ex.status == 200
    assert conn.completed == [(ex, True)]


def test_interim_response_alone_does_not_start_final_answer() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 100 Continue\r\n\r\n", b"POST")
    assert conn.transport.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not ex.resp_started
    assert conn.completed == [] and conn.broke == []


def test_switching_protocols_opens_tunnel() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\nSec-WebSocket-Accept: x=\r\n\r\n\x81\x00",
                            upgrade=True)
    assert conn.transport.data == (b"HTTP/1.1 101 Switching Protocols\r\n"
                                   b"Sec-WebSocket-Accept: x=\r\nConnection: upgrade\r\n"
                                   b"Upgrade: websocket\r\n\r\n")
    assert conn.tunnels == [(ex, b"\x81\x00")]
    assert ex.resp_started and conn.completed == [] and conn.broke == []


def test_switching_protocols_without_upgrade_request_is_bad_gateway() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                            b"Upgrade: websocket\r\n\r\n")
    assert b"101" not in conn.transport.data
    assert conn.broke == [(ex, True)]


def test_garbage_from_worker_is_malformed() -> None:
    _, conn, ex, ut = worker(b"this is not http\r\n\r\n")
    assert conn.broke == [(ex, True)]
    assert conn.transport.data == b""
    assert ut.aborted


def test_worker_connection_close_not_reusable_client_kept() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n"
                            b"\r\nok")
    assert conn.completed == [(ex, False)]
    assert ex.keep_alive
    assert b"Connection" not in conn.transport.data


def test_gateway_closing_tells_client_to_close() -> None:
    _, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", closing=True)
    _, headers = split_head(conn.transport.data[:-2])
    assert values(headers, b"Connection") == [b"close"]
    assert not ex.keep_alive


def test_extra_headers_and_set_cookie_hook() -> None:
    _, conn, _, _ = worker(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1; Path=/\r\n"
                            b"Content-Length: 0\r\n\r\n", extra_headers=b"X-Holdover: r1\r\n")
    _, headers = split_head(conn.transport.data)
    assert values(headers, b"X-Holdover") == [b"r1"]
    assert values(headers, b"Set-Cookie") == [b"s=1; Path=/"]
    assert conn.gw.cookies == [b"s=1; Path=/"]


def test_worker_dies_mid_body() -> None:
    up, conn, ex, _ = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connection_lost(None)
    assert conn.completed == []
    assert conn.broke == [(ex, False)]
    assert ex.resp_started  # the client's side decides to abort: part was sent


def test_worker_dies_before_answer() -> None:
    up, conn, ex, _ = worker([])
    assert not up.got_bytes
    up.connection_lost(None)
    assert conn.broke == [(ex, False)] and not ex.resp_started


def test_worker_talking_out_of_turn_is_closed() -> None:
    up, conn, _, ut = worker(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert up.ex is None
    up.data_received(b"HTTP/1.1 200 OK\r\n")
    assert ut.closed
    assert len(conn.completed) == 1


def test_length_response_in_pieces_then_connection_reused() -> None:
    up, conn, ex, _ = worker([b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhel",
                              b"lo w", b"o", b"rld"])
    assert conn.transport.data == b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
    assert conn.completed == [(ex, True)] and ex.resp_bytes == 11
    ex2 = exchange(conn)
    conn.transport.chunks.clear()
    up.attach(ex2)
    up.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx")
    assert conn.transport.data == b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx"
    assert conn.completed[-1] == (ex2, True) and ex2.status == 404


def test_bytes_beyond_content_length_are_not_forwarded() -> None:
    _, conn, ex, _ = worker([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe",
                             b"lloEXTRA"])
    assert conn.transport.data == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert conn.completed == [(ex, False)]  # the worker spoke out of turn: do not reuse


RESPONSES = [
    (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\nhello world"),
    (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"),
    (b"GET", False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    (b"HEAD", True, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"),
    (b"POST", True, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 11"
                    b"\r\n\r\nhello world"),
]


def client_view(data: bytes, http11: bool, method: bytes) -> tuple[list[bytes], bytes]:
    """(heads, decoded body) of what a client received."""
    heads = []
    while data.startswith(b"HTTP/1.1 1"):
        head, _, data = data.partition(b"\r\n\r\n")
        heads.append(head)
    head, _, body = data.partition(b"\r\n\r\n")
    heads.append(head)
    if method != b"HEAD" and b"Transfer-Encoding: chunked" in head:
        body, rest = dechunk(body)
        assert rest == b""
    return heads, body


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(RESPONSES), cuts=st.lists(st.integers(0, 500), max_size=10))
def test_any_response_segmentation_gives_same_answer(case: tuple[bytes, bool, bytes],
                                                     cuts: list[int]) -> None:
    method, http11, resp = case
    _, conn0, ex0, _ = worker(resp, method, http11)
    _, conn, ex, _ = worker(segments(resp, cuts), method, http11)
    assert client_view(conn.transport.data, http11, method) == \
        client_view(conn0.transport.data, http11, method)
    reuse = method != b"HEAD"  # a HEAD answer announcing a body is never reused
    assert conn.completed == [(ex, reuse)] and conn0.completed == [(ex0, reuse)]
    assert ex.resp_bytes == ex0.resp_bytes


def test_request_body_streams_to_worker_once_attached() -> None:
    g, c, t = client()
    ups: list[UpstreamConnection] = []

    def dispatch(ex: Exchange) -> None:
        up = UpstreamConnection(FakePool())  # type: ignore[arg-type]
        up.connection_made(FakeTransport())  # type: ignore[arg-type]
        ups.append(up)
        c.attach(ex, up)

    c.data_received(b"PUT /u HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\nab")
    ex = g.routed[0]
    assert not t.reading  # body bytes wait for the worker connection
    dispatch(ex)
    ut = ups[0].transport
    assert ut.data == ex.head + b"ab"  # type: ignore[attr-defined]
    assert t.reading
    c.data_received(b"cdef")
    c.data_received(b"ghijklGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert ut.data == ex.head + b"abcdefghijkl"  # type: ignore[attr-defined]
    assert ex.request_done and ex.body_seen == 12
    assert [p.url for p in c.pending] == [b"/next"]
    assert t.data == b""


# -- both sides together --------------------------------------------------------------


def test_client_and_worker_sides_together() -> None:
    g, c, t = client()
    uts: list[FakeTransport] = []

    def dispatch(ex: Exchange) -> None:  # what Gateway.dispatch does, minus the sockets
        up = UpstreamConnection(FakePool())  # type: ignore[arg-type]
        ut = FakeTransport()
        up.connection_made(ut)  # type: ignore[arg-type]
        uts.append(ut)
        c.attach(ex, up)

    g.on_route = dispatch
    c.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                    b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(uts) == 1
    assert uts[0].data == g.routed[0].head + b"hello"
    up = g.routed[0].upstream
    assert up is not None
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    assert t.data == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
    assert g.released == [(up, True)]
    assert [ex.url for ex, _ in g.done] == [b"/a"]
    assert len(uts) == 2 and uts[1].data == g.routed[1].head  # /b went out only now
    g.routed[1].upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                       b"\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert t.data.endswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\ntwo\r\n0\r\n\r\n")
    assert [ex.url for ex, _ in g.done] == [b"/a", b"/b"]
    assert t.reading and not t.closed


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.__name__)
def test_fakes_match_the_ports(port: type) -> None:
    """The fake and the real router implement each port with the same signatures."""
    from holdover.control.router import Router as RealRouter
    assert signature_drift(FakePorts, port) == []
    assert signature_drift(RealRouter, port) == []
