"""The request-path fuzz targets, shared by the socket-free properties and the live fuzz.

Seeds (the hostile corpus plus valid requests), a mutator, the fakes that let
``ClientConnection`` run without a socket, and ``one_input``: the check every input must
pass.  ``python tests/fuzzing.py --atheris [libFuzzer flags]`` runs ``one_input`` under
atheris (libFuzzer) for as long as asked.
"""

from __future__ import annotations

import random
import re
import sys
from typing import Any

import faultlog
import httptools
from fakes import FakePorts

from holdover.proxy.server import ClientConnection, Exchange

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


class Transport:
    """``closed``: the gateway ended its side (close, abort, or EOF after its answer)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.eof = False
        self.aborted = False

    @property
    def closed(self) -> bool:
        return self.closing or self.eof

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0

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
    _atheris_main([a for a in sys.argv if a != "--atheris"])
