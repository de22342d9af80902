"""1 GiB each way through the proxy in constant memory, and a slow reader's backpressure."""

from __future__ import annotations

import socket
import threading
import time

import psutil
from conftest import status_of

GIB = 1024**3


class RssWatch:
    """Samples a process's RSS in the background; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak - self.base


def read_response(s: socket.socket) -> tuple[bytes, int]:
    """Read one response with a Content-Length body; returns (head, body bytes counted)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the response head"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")))
    got = len(rest)
    view = memoryview(bytearray(1 << 20))
    while got < length:
        n = s.recv_into(view)
        assert n, "connection closed mid-body"
        got += n
    return head, got


def test_one_gib_download_and_upload_in_constant_memory(gateway):
    gw_pid = gateway.proc.pid
    # Warm up the gateway's allocator and pools first.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as s:
        s.sendall(b"GET /big?n=10000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(s)
    watch = RssWatch(gw_pid)
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as s:
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % GIB)
        head, got = read_response(s)
    assert status_of(head) == 200 and got == GIB
    down = time.monotonic() - t0

    t0 = time.monotonic()
    block = b"\xab" * (1 << 20)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % GIB)
        for _ in range(GIB // len(block)):
            s.sendall(block)
        head, _ = read_response(s)
    up = time.monotonic() - t0
    growth = watch.stop()
    assert status_of(head) == 200
    print(f"1 GiB down {down:.1f}s, up {up:.1f}s, gateway RSS growth {growth / 2**20:.1f} MiB")
    assert growth < 64 * 2**20, f"gateway RSS grew by {growth / 2**20:.1f} MiB"


def test_slow_reader_pauses_the_worker(gateway):
    """A client that does not read: the gateway buffers a bounded amount, not the body."""
    gw = psutil.Process(gateway.proc.pid)
    base = gw.memory_info().rss
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (512 * 2**20))
    # Once the gateway has stopped reading the worker, whatever it buffered is all it holds.
    watch = RssWatch(gateway.proc.pid)
    gateway.wait_upstream_paused(1)
    peak = max(watch.peak, gw.memory_info().rss)
    watch.stop()
    assert peak - base < 32 * 2**20, f"gateway buffered {(peak - base) / 2**20:.1f} MiB"
    # Now read it all: everything arrives.
    _, got = read_response(s)
    s.close()
    assert got == 512 * 2**20
