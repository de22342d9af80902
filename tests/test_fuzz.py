"""Fuzzing the request path: the socket-free protocol core, and a live gateway.

- hypothesis over request bytes fed to ``ClientConnection`` (whole, and in random
  splits) with a fake transport and gateway: never an exception; every input ends
  routed, answered with one complete error response and closed, or waiting for more;
  whatever is routed re-parses cleanly with a strict parser and carries no smuggling shape.
- hypothesis over worker response bytes fed to ``UpstreamConnection``.
- a live fuzz: mutated requests through a real gateway over loopback; every connection
  ends in a response or a clean close, and the gateway keeps serving.
- atheris (libFuzzer), when it is installed: ``python tests/test_fuzz.py --atheris
  [libFuzzer flags]`` runs the same target as the first property, for as long as asked.

Bounded by default; ``HOLDOVER_FUZZ_EXAMPLES=N`` (hypothesis examples, default 300),
``HOLDOVER_FUZZ_LIVE=N`` (live inputs, default 150) and ``HOLDOVER_ATHERIS_RUNS=N``
(default 20000) make longer runs.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httptools
import pytest
from fakes import FakePorts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdover.proxy.server import ClientConnection, Exchange
from holdover.proxy.upstream import UpstreamConnection

pytest.register_assert_rewrite("faultlog")
import faultlog  # noqa: E402  (after the line above, so that pytest rewrites its asserts)

pytest_plugins = ["faultlog"]

EXAMPLES = int(os.environ.get("HOLDOVER_FUZZ_EXAMPLES", "300"))
LIVE = int(os.environ.get("HOLDOVER_FUZZ_LIVE", "150"))
ATHERIS_RUNS = int(os.environ.get("HOLDOVER_ATHERIS_RUNS", "3000"))
VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://h:1/p?q HTTP/1.0\r\nCookie: a=1; holdover_pin=x.y\r\n\r\n",
]
SEEDS = [p.read_bytes() for p in sorted(faultlog.CORPUS.glob("*.http"))] + VALID
TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b",", b"0", b"5",
          b"chunked", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Host: b\r\n", b"Connection: close\r\n", b"Expect: 100-continue\r\n",
          b"\r\n\r\n", b"0\r\n\r\n", b"ffffffff\r\n", b"HTTP/1.1", b"GET / HTTP/1.1\r\n",
          b"\xff", b"\x7f", b"%00", b"Upgrade: websocket\r\nConnection: upgrade\r\n"]


def mutate(rng: random.Random, data: bytes, edits: int = 4) -> bytes:
    """A few random edits: flip, insert a token, delete, duplicate, swap CRLF styles."""
    b = bytearray(data)
    for _ in range(rng.randint(1, edits)):
        op = rng.randrange(7)
        i = rng.randint(0, len(b))
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = rng.choice(TOKENS)
        elif op == 2:
            del b[i:i + rng.randint(1, 8)]
        elif op == 3 and b:
            j = rng.randint(0, len(b))
            lo, hi = min(i, j), max(i, j)
            b[hi:hi] = b[lo:hi][:200]
        elif op == 4:
            b = bytearray(bytes(b).replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n"]), 1))
        elif op == 5:
            b = b[:i]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    return bytes(b)


inputs = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from(VALID), st.randoms(use_true_random=False)).map(
        lambda t: mutate(t[1], t[0], edits=1)),
    st.tuples(st.sampled_from(SEEDS), st.randoms(use_true_random=False)).map(
        lambda t: mutate(t[1], t[0])),
    st.lists(st.sampled_from([*TOKENS, b"GET", b"POST", b"/x", b"a", b"Host"]), max_size=40)
    .map(b"".join),
)


# -- fakes for the protocol core --------------------------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class Gateway(FakePorts):
    """The ports with the default limits; ``done`` lists exchanges only."""

    def exchange_done(self, ex: Exchange, note: str | None = None) -> None:
        self.done.append(ex)  # type: ignore[arg-type]


def feed(data: bytes, cuts: list[int]) -> tuple[Gateway, ClientConnection, Transport]:
    gw = Gateway()
    conn = ClientConnection(gw.plane)
    t = Transport()
    conn.connection_made(t)  # type: ignore[arg-type]
    start = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        if t.closed:
            break
        conn.data_received(data[start:cut])
        start = cut
    return gw, conn, t


class _Messages:
    """Counts complete messages and collects heads with a strict llhttp parser."""

    def __init__(self) -> None:
        self.complete = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete += 1


def check_routed_head(ex: Exchange) -> None:
    """The head the worker would get is one clean HTTP/1.1 head, no smuggling shape."""
    m = _Messages()
    p = httptools.HttpRequestParser(m)
    try:
        p.feed_data(ex.head)
    except httptools.HttpParserUpgrade:
        pass
    assert m.complete == 1, ex.head
    assert ex.head.endswith(b"\r\n\r\n") and ex.head.count(b"\r\n\r\n") == 1
    assert b"\n" not in ex.head.replace(b"\r\n", b"") and b"\r" not in ex.head.replace(b"\r\n", b"")
    names = [n for n, _ in m.headers]
    assert names.count(b"host") <= 1
    assert not (b"content-length" in names and b"transfer-encoding" in names), ex.head
    assert names.count(b"content-length") <= 1 and names.count(b"transfer-encoding") <= 1
    assert m.url == ex.url and p.get_method() == ex.method


def check_answer(out: bytes) -> int:
    """What was written to the client: whole responses only; returns how many."""
    if not out:
        return 0
    m = _Messages()
    done = []
    m.on_message_complete = lambda: done.append(1)  # type: ignore[attr-defined]
    httptools.HttpResponseParser(m).feed_data(out)
    assert m.complete == len(done) >= 1, out[:300]
    return len(done)


def one_input(data: bytes, cuts: list[int]) -> str:
    gw, _conn, t = feed(data, cuts)
    for ex in gw.routed:
        check_routed_head(ex)
    answered = check_answer(bytes(t.out))
    if t.closed:
        assert answered <= 1, bytes(t.out)[:300]
        if answered:
            assert re.match(rb"HTTP/1\.1 (4\d\d|5\d\d) ", t.out), bytes(t.out)[:100]
        if not cuts:  # a packet that fails is never routed, not even its good part
            assert not gw.routed, (data[:200], gw.routed)
        return "answered and closed" if answered else "closed (reset)"
    assert answered == 0  # nothing is answered by the core itself without closing
    return "routed" if gw.routed else "waiting for more"


def test_fuzz_protocol_core(observe):
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inputs, st.lists(st.integers(0, 400), max_size=6))
    def prop(data: bytes, cuts: list[int]) -> None:
        for how in (one_input(data, []), one_input(data, cuts)):
            seen[how] = seen.get(how, 0) + 1

    try:
        prop()
    finally:
        observe("fuzz-protocol-core",
                f"{sum(seen.values()) // 2} inputs, each fed whole and split: "
                + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
                + "; no exception, routed heads all re-parse cleanly")


# -- the worker side --------------------------------------------------------------------------


class _ClientSide:
    def __init__(self) -> None:
        self.transport = Transport()
        self.plane = FakePorts().plane
        self.write_paused = False
        self.outcome = "waiting"

    def response_complete(self, ex: Exchange, up: Any, reusable: bool) -> None:
        self.outcome = "complete"

    def upstream_broke(self, ex: Exchange, up: Any, malformed: bool) -> None:
        self.outcome = "broke"

    def start_tunnel(self, ex: Exchange, early: bytes) -> None:
        self.outcome = "tunnel"

    def tunnel_closed(self, ex: Exchange) -> None:
        pass


class _Pool:
    def forget(self, conn: Any) -> None:
        pass


RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=1\r\nX-Holdover-Session: s; max-age=5\r\n\r\nbody",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
]


def test_fuzz_worker_responses(observe):
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(st.binary(max_size=300),
                     st.tuples(st.sampled_from(RESPONSE_SEEDS),
                               st.randoms(use_true_random=False))
                     .map(lambda t: mutate(t[1], t[0]))),
           st.sampled_from([b"GET", b"HEAD", b"POST"]), st.booleans())
    def prop(data: bytes, method: bytes, upgrade: bool) -> None:
        client = _ClientSide()
        ex = Exchange(client, 0.0)  # type: ignore[arg-type]
        ex.method, ex.upgrade, ex.request_done = method, upgrade, True
        ex.head = method + b" / HTTP/1.1\r\nHost: h\r\n\r\n"
        up = UpstreamConnection(_Pool())  # type: ignore[arg-type]
        ut = Transport()
        up.connection_made(ut)  # type: ignore[arg-type]
        up.attach(ex)
        up.data_received(data)
        if client.outcome == "waiting" and not ut.closed:
            up.connection_lost(None)  # the worker closes: that must end it too
        out = bytes(client.transport.out)
        if out and client.outcome != "tunnel":
            assert out.startswith(b"HTTP/1.1 "), out[:100]
        assert client.outcome in ("complete", "broke", "tunnel"), (data, client.outcome)
        seen[client.outcome] = seen.get(client.outcome, 0) + 1

    try:
        prop()
    finally:
        observe("fuzz-worker-responses",
                f"{sum(seen.values())} responses: "
                + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
                + "; no exception, every one ended (answer, 502 path or tunnel)")


# -- a live gateway ---------------------------------------------------------------------------


def test_fuzz_live_gateway(module_gateway_factory, observe):
    gw = module_gateway_factory(workers=1, extra_gateway=(
        'header_timeout = "1s"\nbody_timeout = "1s"\nkeepalive_timeout = "1s"\n'
        'response_timeout = "3s"\n')).wait_ready()
    seed = int(os.environ.get("HOLDOVER_FUZZ_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    cases = []
    for i in range(LIVE):
        r = rng.random()
        if r < 0.1:
            cases.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
        else:
            cases.append(mutate(rng, rng.choice(SEEDS)))
        if i % 10 == 0:
            cases[-1] = mutate(rng, cases[-1])
    results: dict[str, int] = {}
    bad: list[tuple[bytes, bytes, str]] = []
    lock = threading.Lock()
    todo = list(enumerate(cases))

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                _, data = todo.pop()
            out, how = b"", "timeout"
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=6) as s:
                    with_reset = False
                    try:
                        s.sendall(data)
                    except OSError:
                        with_reset = True
                    deadline = time.monotonic() + 6
                    while time.monotonic() < deadline:
                        try:
                            chunk = s.recv(65536)
                        except TimeoutError:
                            break
                        except ConnectionResetError:
                            how = "reset"
                            break
                        if not chunk:
                            how = "closed"
                            break
                        out += chunk
                    if with_reset and how == "timeout":
                        how = "reset"
            except OSError as exc:
                how = f"connect error {exc}"
            kind = ("WebSocket opened" if out.startswith(b"HTTP/1.1 101 ") else
                    "response" if out.startswith(b"HTTP/1.1 ") else
                    "no response" if not out else "NOT HTTP")
            if kind == "WebSocket opened" and how == "timeout":
                how = "left open (a tunnel has no idle timeout)"
            with lock:
                key = f"{kind}, {how}"
                results[key] = results.get(key, 0) + 1
                if kind == "NOT HTTP" or (how not in ("closed", "reset")
                                          and kind != "WebSocket opened"):
                    bad.append((data[:120], out[:120], how))

    threads = [threading.Thread(target=work) for _ in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    took = time.monotonic() - t0
    alive = gw.proc.poll() is None
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        after = s.recv(65536)
    observe("fuzz-live", f"{len(cases)} inputs (seed {seed}) in {took:.0f} s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(results.items()))
            + f"; gateway alive: {alive}; a normal request afterwards: {after[:12]!r}")
    assert not bad, f"seed {seed}: {bad[:5]}"
    assert alive and after.startswith(b"HTTP/1.1 200")


# -- atheris ----------------------------------------------------------------------------------


def test_fuzz_atheris(tmp_path: Path, observe):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, s in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(s)
    r = subprocess.run([sys.executable, __file__, "--atheris", f"-runs={ATHERIS_RUNS}",
                        "-max_total_time=60", "-max_len=4096", str(corpus)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    done = re.findall(r"Done (\d+) runs in (\d+) second", r.stderr)
    observe("fuzz-atheris", f"exit {r.returncode}; "
            + (f"{done[-1][0]} runs in {done[-1][1]} s" if done else r.stderr[-300:]))
    assert r.returncode == 0, r.stderr[-3000:]


def _atheris_main(argv: list[str]) -> None:  # pragma: no cover - runs under libFuzzer
    import atheris

    def target(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        cuts = [fdp.ConsumeIntInRange(0, 400) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        one_input(fdp.ConsumeBytes(fdp.remaining_bytes()), cuts)

    # Coverage feedback from the proxy's code (imported above, so instrumented in place).
    import inspect

    import holdover.proxy.http1
    import holdover.proxy.server

    done: set[int] = set()
    for mod in (holdover.proxy.http1, holdover.proxy.server):
        for obj in list(vars(mod).values()):
            funcs = [obj] if inspect.isfunction(obj) else list(vars(obj).values()) \
                if inspect.isclass(obj) and obj.__module__.startswith("holdover.") else []
            for f in funcs:
                if inspect.isfunction(f) and f.__module__.startswith("holdover.proxy") \
                        and id(f.__code__) not in done:
                    atheris.instrument_func(f)
                    done.add(id(f.__code__))
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    if "--atheris" in sys.argv:
        _atheris_main([a for a in sys.argv if a != "--atheris"])
    else:
        sys.exit(pytest.main([__file__, "-q"]))
