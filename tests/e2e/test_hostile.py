"""Hostile input through a real gateway, and the security promises of the public side.

- the request corpus (``tests/corpus/*.http``, indexed by ``cases.toml``): each request
  gets its 4xx, the connection is closed, and nothing reaches the worker;
- header injection through the gateway's own headers, path normalisation, over-long
  cookies and thousands of cookies;
- nothing of the admin side reachable through the public port; file modes in state_dir;
- a hypothesis property: a forged ``holdover_pin`` cookie never routes into a session.

Every observation goes into the fault table (``tests/faultlog.py`` → docs/faults.md).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import time
from typing import Any

import pytest
from conftest import APPS, PY, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdover.core.affinity import PIN_COOKIE, cookie_value

pytest.register_assert_rewrite("faultlog")
import faultlog  # noqa: E402  (after the line above, so that pytest rewrites its asserts)

pytest_plugins = ["faultlog"]

FAULTAPP = f"{PY} {APPS / 'faultapp.py'} {{port}}"


# -- helpers -------------------------------------------------------------------------------


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data``; read until the gateway closes or ``timeout``: (bytes, closed?)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may close before reading all of a large request
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def status_or_none(resp: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    return int(m.group(1)) if m else None


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body
    finally:
        c.close()


def reached(port: int) -> int:
    """How many requests reached the worker (workers=1), not counting this one."""
    status, body = get_json(port, "/_stats")
    assert status == 200, body
    return body["requests"]


def head_of(resp: bytes) -> dict[str, list[str]]:
    head = resp.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    out: dict[str, list[str]] = {}
    for line in head:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


# -- the corpus -----------------------------------------------------------------------------

CORPUS = faultlog.corpus_cases()


@pytest.fixture(scope="module")
def corpus_gateway(module_gateway_factory):  # type: ignore[no-untyped-def]
    return module_gateway_factory(workers=1).wait_ready()


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c["name"], marks=[pytest.mark.xfail(strict=True, reason=c["xfail"])]
                 if "xfail" in c else []) for c in CORPUS])
def test_corpus_request_is_refused_and_never_reaches_a_worker(case, corpus_gateway, observe):
    gw = corpus_gateway
    raw = (faultlog.CORPUS / f"{case['name']}.http").read_bytes()
    before = reached(gw.port)
    resp, closed = exchange(gw.port, raw)
    got = reached(gw.port) - before
    status = status_or_none(resp)
    observe(f"corpus/{case['name']}",
            f"{status if status else 'no response' + (' (reset)' if closed else '')}, "
            f"{'closed' if closed else 'kept open'}, {got} requests reach the worker")
    assert status == case["status"], resp[:200]
    assert closed == case["close"]
    if case["close"]:
        assert "close" in head_of(resp).get("connection", []), resp[:300]
    assert got == 0, "a refused request reached the worker"
    assert gw.proc.poll() is None


# -- headers, paths, cookies ---------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_gateway(module_gateway_factory):  # type: ignore[no-untyped-def]
    """faultapp, one worker: its catch-all route echoes the request as it arrived."""
    return module_gateway_factory(app=FAULTAPP, workers=1).wait_ready()


def echo_headers(body: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in body["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_forwarded_values_are_quoted(echo_gateway, observe):
    seen = []
    for host in ("a,b", "a;b", "a=b", "x;for=6.6.6.6;by=y", "x,for=6.6.6.6"):
        resp, _ = exchange(echo_gateway.port, b"GET /fwd HTTP/1.1\r\nHost: %b\r\n"
                           b"Connection: close\r\n\r\n" % host.encode())
        assert status_or_none(resp) == 200, resp[:200]
        h = echo_headers(json.loads(resp.split(b"\r\n\r\n", 1)[1]))
        seen.append((host, h["forwarded"], h["x-forwarded-for"], h.get("x-forwarded-host")))
    observe("forwarded-quoting", "; ".join(f"Host {h!r} → Forwarded {f[0]}" for h, f, _, _
                                           in seen[:2] + seen[-1:]))
    for host, fwd, xff, xfh in seen:
        assert len(fwd) == 1 and xff == ["127.0.0.1"] and xfh == [host]
        quoted = host.replace("\\", "\\\\").replace('"', '\\"')
        assert fwd[0] == f'for=127.0.0.1;proto=http;host="{quoted}"'
        # The element parses back to exactly one for= and one host=: nothing injected.
        params = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^;,]*)', fwd[0])
        assert [k for k, _ in params] == ["for", "proto", "host"], params


def test_crlf_in_forwarding_inputs_is_refused(echo_gateway, observe):
    gw = echo_gateway
    before = reached(gw.port)
    bad = [b"GET / HTTP/1.1\r\nHost: a\rX-Injected: 1\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: a\nX-Injected: 1\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\rX-Injected: 1\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1\nX-Injected: 1\r\n\r\n",
           b"GET http://a\rb/ HTTP/1.1\r\nHost: a\r\n\r\n",
           b"GET http://a%0d%0aX-Injected:1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]
    results = [exchange(gw.port, b) for b in bad]
    statuses = [status_or_none(r) for r, _ in results]
    after = reached(gw.port)
    # The %-encoded CRLF is a legal authority character sequence: it may be forwarded,
    # but only as the opaque, encoded text it is.
    forwarded = [r for r, _ in results if status_or_none(r) == 200]
    observe("forwarded-crlf", f"statuses {statuses}; {after - before} reached the worker "
            f"(the %0d%0a authority, as text)")
    assert statuses[:6] == [400] * 6 and all(closed for _, closed in results[:6])
    for r in forwarded:
        h = echo_headers(json.loads(r.split(b"\r\n\r\n", 1)[1]))
        assert "x-injected" not in h and h["host"] == ["a%0d%0aX-Injected:1"]
    assert after - before == len(forwarded)


def test_connection_header_cannot_strip_host_framing_or_forwarding(echo_gateway, observe):
    body = b"hello"
    resp, _ = exchange(echo_gateway.port,
                       b"POST /conn HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n"
                       b"Connection: close, Host, Content-Length, Transfer-Encoding, "
                       b"X-Forwarded-For, Forwarded\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n" + body)
    echoed = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    h = echo_headers(echoed)
    observe("connection-strips-framing",
            f"worker got Host {h.get('host')}, Content-Length {h.get('content-length')}, "
            f"body {echoed['length']} bytes, X-Forwarded-For {h.get('x-forwarded-for')}")
    assert h["host"] == ["shop"] and h["content-length"] == ["5"] and echoed["length"] == 5
    assert h["x-forwarded-for"] == ["127.0.0.1"] and "6.6.6.6" not in str(h)


PATHS = ["/a/../b", "/%2e%2e/etc/passwd", "//double//slash", "/a%2fb", "/a\\b",
         "/a;jsessionid=1/b", "/.", "/%00", "/a?x=../../y#frag", "/%252e%252e/",
         "/api/../api/status"]


def test_paths_are_forwarded_byte_for_byte(echo_gateway, observe):
    got = {}
    for p in PATHS:
        resp, _ = exchange(echo_gateway.port, b"GET %b HTTP/1.1\r\nHost: a\r\n"
                           b"Connection: close\r\n\r\n" % p.encode())
        status = status_or_none(resp)
        got[p] = (status, json.loads(resp.split(b"\r\n\r\n", 1)[1])["raw_path"]
                  if status == 200 else None)
    # absolute-form: the path is kept as sent, the authority becomes Host
    resp, _ = exchange(echo_gateway.port, b"GET http://other.example/x/../y?q HTTP/1.1\r\n"
                       b"Host: a\r\nConnection: close\r\n\r\n")
    absolute = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    changed = {p: v for p, v in got.items() if v != (200, p)}
    observe("path-normalisation",
            f"{len(PATHS) - len(changed)} of {len(PATHS)} targets arrived unchanged"
            + (f"; changed: {changed}" if changed else "")
            + f"; absolute-form → {absolute['raw_path']} with Host "
              f"{echo_headers(absolute)['host'][0]}")
    assert not changed
    assert absolute["raw_path"] == "/x/../y?q"
    assert echo_headers(absolute)["host"] == ["other.example"]


def test_overlong_cookie(echo_gateway, observe):
    gw = echo_gateway
    before = reached(gw.port)
    big = b"c=" + b"v" * (60 * 1024)
    resp, _ = exchange(gw.port, b"GET /cookie HTTP/1.1\r\nHost: a\r\nCookie: " + big +
                       b"\r\nConnection: close\r\n\r\n")
    first = status_or_none(resp)
    mid = reached(gw.port)
    huge = b"c=" + b"v" * (70 * 1024)
    resp2, closed2 = exchange(gw.port, b"GET /cookie HTTP/1.1\r\nHost: a\r\nCookie: " + huge +
                              b"\r\n\r\n")
    second = status_or_none(resp2)
    after = reached(gw.port)
    observe("cookie-overlong", f"60 KiB: {first} from the app ({mid - before} reached it); "
            f"70 KiB: {second}, {'closed' if closed2 else 'open'}, "
            f"{after - mid} reached the worker")
    # The worker (aiohttp) has its own 8 KiB field limit: whatever it says is its answer.
    assert first is not None and mid - before <= 1
    assert second == 431 and closed2 and after == mid
    assert gw.proc.poll() is None


@pytest.fixture(scope="module")
def session_gateway(module_gateway_factory):  # type: ignore[no-untyped-def]
    """Sessions mode, the app's own cookie ``sid``, two workers."""
    return module_gateway_factory(app=FAULTAPP, workers=2, mode="sessions",
                                  extra_app='session_cookie = "sid"\n').wait_ready()


def login(port: int, user: str) -> tuple[str, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", f"/login?user={user}")
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return r.getheader("Set-Cookie").split(";")[0], body


def test_thousands_of_cookies(session_gateway, observe):
    port = session_gateway.port
    sid, who = login(port, "alice")
    many = "; ".join(f"k{i}=v{i}" for i in range(5000))
    t0 = time.monotonic()
    results = []
    for _ in range(10):
        status, body = get_json(port, "/", {"Cookie": f"{many}; {sid}"})
        results.append((status, body["pid"] if status == 200 else None,
                        body.get("user") if status == 200 else None))
    lines = b"".join(b"Cookie: n%d=%b\r\n" % (i, b"x" * 100) for i in range(90))
    resp, _ = exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"Cookie: " +
                       sid.encode() + b"\r\nConnection: close\r\n\r\n")
    took = time.monotonic() - t0
    multi = json.loads(resp.split(b"\r\n\r\n", 1)[1]) if status_or_none(resp) == 200 else None
    # X-Holdover-Revision is added only to a response routed by a session's pin.
    pinned = "x-holdover-revision" in head_of(resp)
    observe("cookie-thousands",
            f"5000 cookies ({len(many) // 1024} KiB): {sorted({r[0] for r in results})}, "
            f"session found {sum(r[2] == 'alice' for r in results)}/10 on its worker; "
            f"91 Cookie lines: {status_or_none(resp)}, "
            f"{'routed by the session pin' if pinned else 'NOT routed by the pin'}; "
            f"{took:.1f} s for all")
    assert results == [(200, who["pid"], "alice")] * 10
    # (The app reads only the first Cookie line, as RFC 6265 allows one; the gateway
    # joins them all to find the session.)
    assert multi is not None and pinned and multi["pid"] == who["pid"]
    assert took < 10


# -- security ----------------------------------------------------------------------------


def test_admin_is_not_reachable_through_the_public_port(echo_gateway, observe):
    gw = echo_gateway
    admin = (gw.dir / "state" / "admin.url").read_text().strip()
    admin_hostport = admin.split("//")[1].rstrip("/")
    token = (gw.dir / "state" / "admin.token").read_text().strip()
    targets = ["/api/status", "/metrics", "/api/openapi.json", "/", "/api/deploy",
               "//api/status", "/api/../api/status", "/%61pi/status", "/API/status",
               f"http://{admin_hostport}/api/status", f"http://{admin_hostport}/metrics"]
    answers = {}
    for t in targets:
        for method in ("GET", "POST"):
            resp, _ = exchange(gw.port, f"{method} {t} HTTP/1.1\r\nHost: {admin_hostport}\r\n"
                               f"Authorization: Bearer {token}\r\nContent-Length: 2\r\n"
                               f"Connection: close\r\n\r\n{{}}".encode())
            body = resp.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in resp else b""
            try:  # every answer of faultapp is a JSON object with its pid
                answers[(method, t)] = "faultapp" if "pid" in json.loads(body) else body[:60]
            except (ValueError, TypeError):
                answers[(method, t)] = body[:60]
    by_app = sum(v == "faultapp" for v in answers.values())
    observe("admin-not-on-public-port",
            f"{by_app} of {len(answers)} requests (GET and POST, with the real admin token) "
            f"answered by the app, none by the admin side")
    assert by_app == len(answers), {k: v for k, v in answers.items() if v != "faultapp"}


def test_secrets_and_state_files_are_private(session_gateway, observe):
    state = session_gateway.dir / "state"
    get_json(session_gateway.port, "/")  # something in the access log and the store
    wait_for(lambda: (state / "access.log").exists() and (state / "access.log").stat().st_size,
             what="access log written")
    modes = {str(p.relative_to(state)): stat.S_IMODE(p.stat().st_mode)
             for p in [state, *state.rglob("*")]}
    secret = ["secret.json", "admin.token", "state.db", "gateway.lock", "access.log",
              *[k for k in modes if k.startswith("logs/") and ".log" in k],
              *[k for k in modes if k.startswith("state.db-")]]
    loose = {k: oct(v) for k, v in modes.items() if v & 0o077}
    observe("state-file-modes",
            f"secrets, token, database, lock, logs: {sorted({oct(modes[k]) for k in secret})}; "
            f"readable by others: {loose or 'nothing'}")
    assert all(modes[k] == 0o600 for k in secret), {k: oct(modes[k]) for k in secret}


def test_state_dir_is_private(session_gateway):
    state = session_gateway.dir / "state"
    loose = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in [state, *state.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) & 0o077}
    assert not loose


@pytest.fixture(scope="module")
def pin_gateway(module_gateway_factory):  # type: ignore[no-untyped-def]
    """Sessions mode without an app cookie: holdover pins each client with its own."""
    return module_gateway_factory(app=FAULTAPP, workers=2, mode="sessions").wait_ready()


@st.composite
def _flipped(draw: st.DrawFn, real: bytes) -> bytes:
    b = bytearray(real)
    for _ in range(draw(st.integers(1, 3))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b)


def _mutations(real: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=120),
        _flipped(real),
        st.integers(0, len(real)).map(lambda n: real[:n]),
        st.binary(min_size=1, max_size=20).map(lambda extra: real + extra),
        st.binary(max_size=20).map(lambda extra: extra + real),
        st.just(real.swapcase()),
        st.just(b'"' + real + b'"'),
        st.just(real.replace(b".", b"")),
        st.just(real.split(b".")[0] + b"." + real.split(b".")[1][::-1]),
    )


def _pin_request(port: int, value: bytes) -> tuple[int | None, list[bytes], bytes]:
    resp, _ = exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nCookie: holdover_pin=" + value +
                       b"\r\nConnection: close\r\n\r\n")
    status = status_or_none(resp)
    cookies = [v for k, v in (ln.split(b":", 1) for ln in resp.split(b"\r\n\r\n")[0]
                              .split(b"\r\n")[1:] if b":" in ln)
               if k.lower() == b"set-cookie" and v.strip().startswith(PIN_COOKIE + b"=")]
    return status, [c.strip().split(b";")[0].split(b"=", 1)[1] for c in cookies], resp


def test_forged_pin_cookies_never_route_into_a_session(pin_gateway, observe):
    port = pin_gateway.port
    status, issued, resp = _pin_request(port, b"")
    assert status == 200 and len(issued) == 1
    real = issued[0]
    body = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    owner = body["pid"]
    tally = {"refused": 0, "new pin": 0, "same session": 0}

    @settings(max_examples=int(os.environ.get("HOLDOVER_FUZZ_EXAMPLES", "150")) // 2 or 1,
              deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_mutations(real))
    def forged(value: bytes) -> None:
        status, fresh, resp = _pin_request(port, value)
        same = cookie_value(b"holdover_pin=" + value.strip(b" \t"), PIN_COOKIE) == real
        if status == 400:
            tally["refused"] += 1
            assert not fresh
            return
        assert status == 200, resp[:200]
        if same:  # the very credential, written another way: it is the session
            tally["same session"] += 1
            assert not fresh and json.loads(resp.split(b"\r\n\r\n", 1)[1])["pid"] == owner
        else:  # anything else counts as no pin: a new session with a new cookie
            tally["new pin"] += 1
            assert len(fresh) == 1 and fresh[0] != real, (value, fresh)

    try:
        forged()
    finally:
        observe("forged-cookie-property",
                f"{sum(tally.values())} forged values: {tally['refused']} refused (400), "
                f"{tally['new pin']} got a new pin, {tally['same session']} were the real "
                f"value re-quoted/re-spaced and reached the session")
    # The real session is still pinned to its process.
    status, fresh, resp = _pin_request(port, real)
    assert status == 200 and not fresh
    assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["pid"] == owner


def test_revision_id_with_newline_is_refused(gateway_factory, observe):
    gw = gateway_factory(app=FAULTAPP, workers=1, mode="sessions").wait_ready()
    state = gw.dir / "state"
    host, port = (state / "admin.url").read_text().strip().split("//")[1].rstrip("/").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("POST", "/api/deploy", body=json.dumps({"revision": "v2\n"}), headers={
        "Authorization": f"Bearer {(state / 'admin.token').read_text().strip()}",
        "Content-Type": "application/json"})
    r = c.getresponse()
    api_status, api_body = r.status, r.read()
    c.close()
    resp, _ = exchange(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head = resp.split(b"\r\n\r\n", 1)[0]
    bare = [ln for ln in head.split(b"\r\n") if b"\n" in ln or b"\r" in ln]
    observe("revision-id-newline",
            f"deploy answered {api_status}; public response head lines with a bare CR/LF: "
            f"{bare or 'none'}")
    assert not bare, head
    assert api_status == 400, api_body


# -- the fault table in the docs --------------------------------------------------------------


