"""Hardening II in the proxy's protocol core, driven with bytes alone (issue 11).

Each block names its point: 2 and 3 the gateway's own X-Holdover-* headers and pin
cookie, 4 Host, 9 TRACE, 10 the lingering close, 11 response_timeout from the end of the
request, 12 a declared chunk size over max_body_size, 13 send_timeout.  The fakes are
test_protocol's (the ports' fake, a recording transport).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol import FakeUp, client, names, split_head, values, worker

from holdover.proxy import closing
from holdover.proxy.closing import Discard
from holdover.proxy.exchange import PAUSE_UPSTREAM
from holdover.proxy.http1 import declared_chunk_size, valid_host

# == 2, 3. the gateway's own names ====================================================


def test_client_holdover_headers_never_reach_the_worker() -> None:
    g, c, _t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Holdover-Session: s; max-age=9\r\n"
                    b"x-holdover-revision: v0\r\nX-HOLDOVER-LATEST: v9\r\n"
                    b"X-Holdover-Other: kept\r\nX-App: kept\r\n\r\n")
    _, headers = split_head(g.routed[0].head)
    assert not {b"x-holdover-session", b"x-holdover-revision",
                b"x-holdover-latest"} & set(names(headers))
    # Only holdover's own names are its to strip; anything else is the app's business.
    assert values(headers, b"X-Holdover-Other") == [b"kept"]
    assert values(headers, b"X-App") == [b"kept"]


def test_app_cannot_send_the_gateways_headers_or_pin_cookie() -> None:
    _, conn, _, _ = worker(b"HTTP/1.1 200 OK\r\nX-Holdover-Revision: forged\r\n"
                           b"x-holdover-latest: forged\r\nSet-Cookie: holdover_pin=f.x; Path=/\r\n"
                           b"Set-Cookie: holdover_pin =f.y\r\nSet-Cookie: app=1; Path=/\r\n"
                           b"Set-Cookie: holdover_pinx=2\r\nContent-Length: 0\r\n\r\n",
                           extra_headers=b"X-Holdover-Revision: v1\r\n")
    _, headers = split_head(conn.transport.data)
    assert values(headers, b"X-Holdover-Revision") == [b"v1"]  # the gateway's own only
    assert values(headers, b"X-Holdover-Latest") == []
    assert values(headers, b"Set-Cookie") == [b"app=1; Path=/", b"holdover_pinx=2"]
    assert conn.gw.cookies == [b"app=1; Path=/", b"holdover_pinx=2"]  # the hook's view too


# == 4. Host =========================================================================


@pytest.mark.parametrize("host", [b"a b", b"evil.com/x?y", b"", b'a"b', b"a\\b", b"a@b",
                                  b"[::1", b"h:8x0", b"a\tb", b"h:1:2", b"a{b}", b"[]",
                                  b"[::1]x", b":80", b"a\xffb"])
def test_invalid_host_is_refused_before_routing(host: bytes) -> None:
    g, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 400 ") and t.closed and g.routed == []
    assert valid_host(host) is False


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"[::1]:80", b"[::1]",
                                  b"127.0.0.1", b"a,b;c=d", b"h:", b"%41b", b"x_y~z"])
def test_valid_host_is_served(host: bytes) -> None:
    g, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert len(g.routed) == 1 and not t.data and valid_host(host) is True
    _, headers = split_head(g.routed[0].head)
    assert values(headers, b"X-Forwarded-Host") == [host]


def test_host_is_checked_again_when_it_changes_on_a_connection() -> None:
    g, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: good\r\n\r\n")
    assert len(g.routed) == 1
    c.response_complete(g.routed[0], FakeUp(), True)  # type: ignore[arg-type]
    c.data_received(b"GET / HTTP/1.1\r\nHost: good\r\n\r\n")
    assert len(g.routed) == 2
    c.response_complete(g.routed[1], FakeUp(), True)  # type: ignore[arg-type]
    c.data_received(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n")
    assert len(g.routed) == 2 and t.data.startswith(b"HTTP/1.1 400 ")


@given(st.binary(max_size=40))
def test_valid_host_never_raises_and_admits_no_separator(raw: bytes) -> None:
    if valid_host(raw):
        assert raw and not set(raw) & set(b" \t\r\n\"\\/?#@<>{}|^`") and raw.isascii()


# == 9. TRACE ========================================================================


def test_trace_is_refused() -> None:
    g, c, t = client()
    c.data_received(b"TRACE / HTTP/1.1\r\nHost: h\r\nCookie: secret=1\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 405 ") and g.routed == [] and b"secret" not in t.data


# == 10. the lingering close =========================================================


def test_refusal_shuts_down_writing_and_discards_what_follows() -> None:
    g, c, t = client(max_body_size=10)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nxxxx")
    answer = t.data
    assert answer.startswith(b"HTTP/1.1 413 ") and t.eof and not t.closing
    assert isinstance(c.tunnel, Discard) and t.reading
    for _ in range(20):  # the client goes on uploading: read and thrown away
        c.data_received(b"y" * 5000)
    assert t.data == answer and not t.closing and g.routed == []
    c.sweep(c.tunnel.last + closing.LINGER_IDLE + 0.1)  # then a pause: closed
    assert t.closing


def test_lingering_is_bounded_in_time_and_bytes() -> None:
    _, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    sink = c.tunnel
    assert isinstance(sink, Discard)
    sink.last = sink.until - 1  # it kept sending until a second before the deadline
    c.sweep(sink.until - 0.5)
    assert not t.closing
    c.sweep(sink.until + 0.1)
    assert t.closing
    _, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    c.data_received(b"z" * (closing.LINGER_BYTES + 1))
    assert t.closing


def test_eof_from_the_refused_client_closes() -> None:
    _, c, _t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert c.eof_received() is False  # asyncio then closes the transport


def test_error_mid_upload_lingers_and_a_finished_request_closes_plainly() -> None:
    g, c, t = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
    ex = g.routed[0]
    c.fail(ex, 502)  # the worker failed while the body was still coming
    assert t.data.startswith(b"HTTP/1.1 502 ") and t.eof and not t.closing
    g, c, t = client()
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    c.fail(g.routed[0], 502)
    assert t.closing and not t.eof  # nothing more to read from that client


def test_early_answer_to_an_upload_lingers() -> None:
    g, c, t = client()
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
    c.response_complete(g.routed[0], FakeUp(), False)  # type: ignore[arg-type]
    assert t.eof and not t.closing and isinstance(c.tunnel, Discard)


# == 11. response_timeout counts from the end of the request ==========================


class AttachingUp(FakeUp):
    def attach(self, ex: Any) -> None:
        ex.upstream = self


def _attached(body_done: bool) -> tuple[Any, Any, Any, Any]:
    g, c, t = client(response_timeout=5.0, body_timeout=30.0)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n" +
                    (b"0123456789" if body_done else b"01234"))
    ex = g.routed[0]
    c.attach(ex, AttachingUp())  # type: ignore[arg-type]
    return g, c, t, ex


def test_response_timeout_waits_for_the_end_of_the_body() -> None:
    _g, c, t, ex = _attached(body_done=False)
    start = ex.sent_at
    c.last_active = start + 9  # the client is still sending, steadily
    c.sweep(start + 10)  # twice response_timeout since the head went out
    assert not t.data and ex.status != 504
    c.data_received(b"56789")  # the body is complete now: the worker's time starts
    assert ex.request_done and ex.sent_at > start
    c.sweep(ex.sent_at + 4)
    assert not t.data
    c.sweep(ex.sent_at + 6)
    assert t.data.startswith(b"HTTP/1.1 504 ")


def test_a_worker_that_stops_reading_the_body_gets_504() -> None:
    _g, c, t, ex = _attached(body_done=False)
    ex.sent_at = 100.0  # when the worker's socket filled up (upstream pause_writing)
    c.pause_reading_for(PAUSE_UPSTREAM)
    c.sweep(104.0)
    assert not t.data
    c.sweep(106.0)
    assert t.data.startswith(b"HTTP/1.1 504 ")


def test_upstream_pause_writing_restarts_the_clock() -> None:
    up, conn, ex, _ = worker([])
    ex.sent_at = 1.0
    conn.pause_reading_for = lambda reason: None  # type: ignore[attr-defined]
    up.pause_writing()
    assert ex.sent_at > 1.0


# == 12. a declared chunk size over max_body_size =====================================

CHUNKED = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("size_line", [b"200000", b"FFFFFFFFFFFFFFFF", b"100001;ext=1"])
def test_oversized_chunk_is_413_at_once(size_line: bytes) -> None:
    g, c, t = client(max_body_size=1 << 20)
    c.data_received(CHUNKED + size_line + b"\r\n" + b"c" * 1000)
    assert t.data.startswith(b"HTTP/1.1 413 ") and g.routed == []


def test_oversized_chunk_after_routing_is_413_at_once() -> None:
    g, c, t = client(max_body_size=1 << 20)
    c.data_received(CHUNKED + b"10\r\n" + b"a" * 16 + b"\r\n")
    assert len(g.routed) == 1 and not t.data
    c.data_received(b"FFFFF\r\n")  # 1 MiB - 1 more, after 16 bytes: over by 15
    assert t.data.startswith(b"HTTP/1.1 413 ")


def test_chunk_that_fits_is_forwarded() -> None:
    g, c, t = client(max_body_size=1 << 20)
    c.data_received(CHUNKED + b"FFFF0\r\n" + b"a" * 100)  # 1 MiB - 16: fits
    assert len(g.routed) == 1 and not t.data


def test_overflowing_chunk_size_is_400() -> None:
    g, c, t = client(max_body_size=1 << 20)
    c.data_received(CHUNKED + b"1" + b"0" * 17 + b"\r\nxx")
    assert t.data.startswith(b"HTTP/1.1 400 ") and g.routed == []


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=6),
       limit=st.integers(1, 8000), cuts=st.lists(st.integers(1, 20000), max_size=6))
def test_chunk_sizes_any_segmentation(sizes: list[int], limit: int, cuts: list[int]) -> None:
    """Never a 413 for a body that fits; always one for a body that does not."""
    body = b"".join(b"%x\r\n%b\r\n" % (n, b"q" * n) for n in sizes) + b"0\r\n\r\n"
    data = CHUNKED + body
    _g, c, t = client(max_body_size=limit)
    start = 0
    for cut in [*sorted({x for x in cuts if x < len(data)}), len(data)]:
        if t.closed:
            break
        c.data_received(data[start:cut])
        start = cut
    refused = t.data.startswith(b"HTTP/1.1 413 ")
    assert refused == (sum(sizes) > limit), (sizes, limit, t.data[:40])


def test_declared_chunk_size_reads_the_line_back() -> None:
    assert declared_chunk_size(b"\r\n1a;x=y\r\nabc", 10) == 26
    assert declared_chunk_size(b"ff\r\n", 4) == 255
    assert declared_chunk_size(b"ab\r\n", 3) is None
    assert declared_chunk_size(b"zz\r\n", 4) is None


# == 13. send_timeout ================================================================


def test_client_that_stops_reading_is_cut_after_send_timeout() -> None:
    _g, c, t = client(send_timeout=10.0)
    t.buffered = 50_000
    c.sweep(100.0)  # a write is waiting: the clock starts
    c.sweep(109.0)
    assert not t.aborted
    c.sweep(111.0)
    assert t.aborted


def test_a_slow_reader_that_makes_progress_is_kept() -> None:
    _g, c, t = client(send_timeout=10.0)
    for i in range(30):
        t.buffered = 60_000 - i * 1000  # it takes a little each second
        c.sweep(100.0 + i * 5)
    assert not t.aborted
    t.buffered = 0
    c.sweep(300.0)
    t.buffered = 100
    c.sweep(301.0)
    c.sweep(305.0)
    assert not t.aborted  # a new wait starts its own clock


def test_a_stalled_websocket_is_cut_too() -> None:
    _g, c, t = client(send_timeout=10.0)
    c.tunnel = FakeUp().transport  # type: ignore[assignment]
    t.buffered = 1000
    c.sweep(0.0)
    c.sweep(11.0)
    assert t.aborted


def test_the_client_write_buffer_is_low() -> None:
    _, _, t = client()
    assert t.limits is not None and t.limits["high"] <= 64 * 1024


# == 17. a minimum body rate ===========================================================


def test_an_upload_slower_than_min_body_rate_gets_408_after_its_grace() -> None:
    g, c, t = client(min_body_rate=1000, body_timeout=60.0)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 500)
    ex = g.routed[0]
    c.attach(ex, AttachingUp())  # type: ignore[arg-type]
    t0 = ex.t0
    c.last_active = t0 + 9  # a byte now and then: body_timeout never fires
    c.sweep(t0 + 9.5)  # within the grace: nothing yet, however slow
    assert not t.data
    c.data_received(b"x" * 8000)  # 8.5 kB in 11 s: under 1 kB/s on average
    c.last_active = t0 + 11
    c.sweep(t0 + 11)
    assert t.data.startswith(b"HTTP/1.1 408 "), t.data[:60]


def test_a_steady_upload_at_min_body_rate_or_faster_is_left_alone() -> None:
    g, c, t = client(min_body_rate=1000, body_timeout=60.0)
    c.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
    ex = g.routed[0]
    c.attach(ex, AttachingUp())  # type: ignore[arg-type]
    c.data_received(b"x" * 30000)  # 30 kB within 20 s: 1.5 kB/s
    c.last_active = ex.t0 + 20
    c.sweep(ex.t0 + 20)
    assert not t.data
    g2, c2, t2 = client(body_timeout=60.0)  # no minimum configured: never by rate
    c2.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nx")
    ex2 = g2.routed[0]
    c2.attach(ex2, AttachingUp())  # type: ignore[arg-type]
    c2.last_active = ex2.t0 + 50
    c2.sweep(ex2.t0 + 50)
    assert not t2.data
