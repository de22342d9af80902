"""The proxy through real sockets: headers, keep-alive, pipelining, streams, errors."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time

import pytest
import websockets
from conftest import APPS, PY, raw_request, status_of, wait_for


def get_json(port: int, path: str, headers: dict | None = None, conn=None) -> tuple[int, dict]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    return r.status, json.loads(r.read())


def stats(port: int) -> dict:
    """Requests the worker(s) saw, summed over a few tries to reach every worker."""
    return get_json(port, "/_stats")[1]


def test_forwarding_headers_and_hop_by_hop(gateway):
    status, body = get_json(gateway.port, "/echo", {
        "Host": "shop.example:8443", "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6",
        "Connection": "keep-alive, X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive", "TE": "trailers", "X-Kept": "1"})
    assert status == 200
    h = {}
    for k, v in body["headers"]:
        h.setdefault(k.lower(), []).append(v)
    assert h["host"] == ["shop.example:8443"]
    assert h["x-forwarded-for"] == ["127.0.0.1"]  # the client's own claim is replaced
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["shop.example:8443"]
    assert h["forwarded"] == ['for=127.0.0.1;proto=http;host="shop.example:8443"']
    assert h["x-kept"] == ["1"]
    for gone in ("x-secret", "keep-alive", "proxy-connection", "te"):
        assert gone not in h, gone


def test_keepalive_reuses_worker_connection(gateway):
    c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    ports = {}
    for _ in range(20):
        _, body = get_json(gateway.port, "/echo", conn=c)
        ports.setdefault(body["worker"], set()).add(body["peer_port"])
    # Requests went over a handful of pooled connections, not one per request.
    assert sum(len(p) for p in ports.values()) <= 4, ports


def test_pipelined_requests_answered_in_order(gateway):
    reqs = b"".join(
        b"GET /slow?delay=%s HTTP/1.1\r\nHost: t\r\n\r\n" % d for d in (b"0.3", b"0", b"0.1"))
    reqs += b"GET /echo?last=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    out = raw_request(gateway.port, reqs)
    assert out.count(b"HTTP/1.1 200") == 4
    # "slow done" bodies come in request order, the echo of the last one at the end.
    assert out.index(b"slow done") < out.index(b"/echo?last=1")
    assert out.rstrip().endswith(b"}")


def test_post_bodies_content_length_and_chunked(gateway):
    c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    payload = bytes(range(256)) * 4000
    c.request("POST", "/echo", body=payload)
    body = json.loads(c.getresponse().read())
    assert body["length"] == len(payload)
    c.request("POST", "/echo", body=iter([payload[:1000], payload[1000:]]),
              encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    body2 = json.loads(c.getresponse().read())
    assert body2["length"] == len(payload)
    assert body2["sha256"] == body["sha256"]
    assert body2["chunked"] == "chunked"


def test_chunked_and_http10_responses(gateway):
    c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    c.request("GET", "/big?n=300000&chunked=1")
    r = c.getresponse()
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert len(r.read()) == 300000
    # An HTTP/1.0 client cannot take chunks: it gets the plain body, then the close.
    out = raw_request(gateway.port, b"GET /big?n=5000&chunked=1 HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200
    assert b"chunked" not in head.lower()
    assert len(body) == 5000


def test_head_and_204(gateway):
    c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    c.request("HEAD", "/big?n=1234")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Length") == "1234" and r.read() == b""
    c.request("GET", "/status/204")
    r = c.getresponse()
    assert r.status == 204 and r.read() == b""
    c.request("GET", "/echo")  # the same connection still works after both
    assert c.getresponse().status == 200


def test_websocket_echo(gateway):
    async def run() -> list[str]:
        async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws", proxy=None) as ws:
            out = []
            for i in range(5):
                await ws.send(f"m{i}")
                out.append(await ws.recv())
            await ws.send(b"\x00\x01binary")
            out.append(repr(await ws.recv()))
            return out

    out = asyncio.run(run())
    assert [o.split(":")[1] for o in out[:5]] == [f"m{i}" for i in range(5)]
    assert out[5] == repr(b"\x00\x01binary")


def test_sse_first_event_before_response_ends(gateway):
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    t0 = time.monotonic()
    s.sendall(b"GET /sse?n=3&delay=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while b"event 0" not in got:
        got += s.recv(4096)
    first = time.monotonic() - t0
    assert b"event 1" not in got  # the stream is still going: the event was not held back
    while b"event 2" not in got:
        got += s.recv(4096)
    total = time.monotonic() - t0
    s.close()
    assert first < total - 2.0, (first, total)


def test_smuggling_shapes_get_400_and_never_reach_a_worker(gateway_factory):
    gw = gateway_factory(workers=1).wait_ready()
    cases = [
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n0\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /echo HTTP/1.1\nHost: a\n\n",
        b"GET /echo HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    ]
    for case in cases:
        out = raw_request(gw.port, case)
        assert status_of(out) == 400, (case, out[:100])
        assert b"connection: close" in out.lower()
    # TE other than a lone "chunked": not understood, so not forwarded.
    out = raw_request(gw.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, "
                               b"chunked\r\n\r\n0\r\n\r\n")
    assert status_of(out) == 501
    assert stats(gw.port)["requests"] == 0, "a refused request reached the worker"


def test_limits_414_431_413(gateway_factory):
    gw = gateway_factory(workers=1, extra_gateway="""
        max_request_line = "1KiB"
        max_header_size = "4KiB"
        max_headers = 20
        max_body_size = "10KiB"
        """).wait_ready()
    assert status_of(raw_request(gw.port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")) == 414
    many = b"".join(b"X-%d: v\r\n" % i for i in range(30))
    assert status_of(raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")) == 431
    huge = b"X-Big: " + b"v" * 8000 + b"\r\n"
    assert status_of(raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + huge + b"\r\n")) == 431
    out = raw_request(gw.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n")
    assert status_of(out) == 413
    chunk = b"%x\r\n%b\r\n" % (6000, b"z" * 6000)
    out = raw_request(gw.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
    assert status_of(out) == 413
    assert stats(gw.port)["requests"] == 0
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c.request("POST", "/echo", body=b"q" * 10240)  # exactly at the limit: fine
    assert c.getresponse().status == 200


def test_bad_worker_answers_502_and_hang_504(gateway_factory):
    gw = gateway_factory(app=f"{PY} {APPS / 'rawbackend.py'} {{port}}", workers=1,
                         health_path="", extra_gateway='response_timeout = "1s"\n').wait_ready()
    for path in (b"/garbage", b"/close"):
        out = raw_request(gw.port, b"POST %b HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n" % path)
        assert status_of(out) == 502, (path, out)
    # Half a body: the head already went out, so the client sees the connection cut short.
    out = raw_request(gw.port, b"GET /half HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(out) == 200 and out.endswith(b"only-part")
    out = raw_request(gw.port, b"GET /hang HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n"
                               b"Connection: close\r\n\r\n")
    assert status_of(out) == 504
    assert b'"status": 504' in out  # JSON for a client that asked for JSON
    out = raw_request(gw.port, b"GET /eof-body HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200 and b"until-close" in out
    # The gateway is still fine.
    assert status_of(raw_request(gw.port, b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 200


def test_idle_client_is_closed_after_keepalive_timeout(gateway_factory):
    gw = gateway_factory(workers=1, extra_gateway='keepalive_timeout = "1s"\n'
                                                  'header_timeout = "1s"\n').wait_ready()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    assert s.recv(100) == b""  # closed by the gateway
    assert time.monotonic() - t0 < 5
    # A client that starts a head and never finishes it gets 408.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
    assert status_of(s.recv(65536)) == 408


def test_access_log_line_per_request(gateway):
    get_json(gateway.port, "/echo?logged=1")
    path = gateway.dir / "state" / "access.log"

    def line():
        if not path.exists():
            return None
        for ln in path.read_text().splitlines():
            rec = json.loads(ln)
            if rec["path"] == "/echo?logged=1":
                return rec
        return None

    rec = wait_for(line, what="access log line")
    assert rec["status"] == 200 and rec["method"] == "GET"
    assert rec["worker"].startswith("v1-") and rec["bytes"] > 0 and rec["duration_ms"] >= 0


@pytest.mark.parametrize("accept,marker", [("text/html", b"<h1>503"),
                                           ("application/json", b'"status": 503')])
def test_no_ready_worker_queues_then_503_with_retry_after(gateway_factory, tmp_path, accept,
                                                          marker):
    flag = tmp_path / "unhealthy"
    gw = gateway_factory(workers=1, env={"UNHEALTHY_FLAG": str(flag)}, extra_gateway=
                         'queue_timeout = "1s"\n', extra_app="health_failures = 1\n"
                         'restart_backoff_max = "60s"\n').wait_ready()
    flag.write_text("x")  # every health check fails from now on: the worker leaves rotation
    wait_for(lambda: "failed 1 health checks" in gw.log, what="worker out of rotation")
    t0 = time.monotonic()
    out = raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: a\r\nAccept: %b\r\n"
                      b"Connection: close\r\n\r\n" % accept.encode())
    waited = time.monotonic() - t0
    assert status_of(out) == 503
    assert b"retry-after:" in out.lower()
    assert marker in out
    assert waited >= 0.9  # it waited in the queue before giving up
