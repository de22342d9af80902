"""Large response bodies spliced by the kernel, through a real gateway and worker.

The worker (tests/apps/bodyworker.py) sends bodies a test can recompute, or cuts them
short, or dies in the middle.  While a client holds back, the gateway holding a pipe it
did not have before shows that the body is being spliced; what arrives is compared
byte for byte, and the gateway must go on serving whatever happened to the last body.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
from pathlib import Path

import pytest
from conftest import APPS, PY, status_of, wait_for

MIB = 1024 * 1024


def expected(n: int) -> bytes:
    """What bodyworker.py sends for ``/bytes?n=N``."""
    return random.Random(n).randbytes(n)


def pipes_of(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("pipe:")
        except OSError:
            pass
    return n


def send_get(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # holds back little
    s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    return s


def read_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "closed before the response head"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def read_body(s: socket.socket, first: bytes, length: int) -> tuple[bytes, bool]:
    """(body, cut): up to ``length`` bytes, ``cut`` if the connection ended before."""
    h = [first]
    got = len(first)
    while got < length:
        try:
            chunk = s.recv(MIB)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return b"".join(h), True
        h.append(chunk)
        got += len(chunk)
    return b"".join(h), False


@pytest.fixture
def gw(gateway_factory):
    return gateway_factory(app=f"{PY} {APPS / 'bodyworker.py'} {{port}}", workers=1).wait_ready()


def test_a_large_body_is_spliced_and_arrives_byte_for_byte(gw):
    n = 48 * MIB + 7
    before = pipes_of(gw.proc.pid)
    with send_get(gw.port, f"/bytes?n={n}") as s:
        head, first = read_head(s)
        assert status_of(head) == 200 and b"Content-Length: %d" % n in head
        # The client holds back: the rest of the body waits in a pipe of the gateway.
        wait_for(lambda: pipes_of(gw.proc.pid) > before, what="the gateway to splice")
        body, cut = read_body(s, first, n)
    assert not cut and hashlib.sha256(body).digest() == hashlib.sha256(expected(n)).digest()
    log = gw.dir / "state" / "access.log"

    def logged() -> dict | None:
        for line in log.read_text().splitlines() if log.exists() else ():
            rec = json.loads(line)
            if rec["path"] == f"/bytes?n={n}":
                return rec
        return None
    rec = wait_for(logged, what="the access log line")
    assert rec["status"] == 200 and rec["bytes"] == n


def test_a_client_that_leaves_mid_body_leaves_nothing_behind(gw):
    fds = len(list(Path(f"/proc/{gw.proc.pid}/fd").iterdir()))
    for _ in range(3):
        s = send_get(gw.port, f"/bytes?n={64 * MIB}")
        head, first = read_head(s)
        assert status_of(head) == 200
        read_body(s, first, 2 * MIB)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset with most of the body still to come
    # Still serving, in full; and the sockets of the cut downloads are gone (pooled
    # pipes aside: at most one pair per splice that ran at once).
    n = 3 * MIB
    with send_get(gw.port, f"/bytes?n={n}") as s:
        head, first = read_head(s)
        body, cut = read_body(s, first, n)
    assert not cut and body == expected(n)
    wait_for(lambda: len(list(Path(f"/proc/{gw.proc.pid}/fd").iterdir())) <= fds + 2 + 2,
             what="the gateway to let go of the cut connections")


@pytest.mark.parametrize("path", ["/short", "/die"])
def test_a_body_the_worker_does_not_finish_is_cut_for_the_client(gw, path):
    """Content-Length beyond what the worker sends (it closes, or its process dies):
    the client sees the connection end before the body, never a wrong byte."""
    n, sent = 40 * MIB, 6 * MIB
    with send_get(gw.port, f"{path}?n={n}&send={sent}") as s:
        head, first = read_head(s)
        assert status_of(head) == 200
        body, cut = read_body(s, first, n)
    assert cut and len(body) <= sent and body == expected(n)[:len(body)]

    def served() -> bool:
        try:
            with send_get(gw.port, "/bytes?n=300000") as s:
                head, first = read_head(s)
                body, cut = read_body(s, first, 300000)
                return status_of(head) == 200 and not cut and body == expected(300000)
        except OSError:
            return False
    wait_for(served, timeout=30, what="the gateway to serve again")
