"""Response bodies spliced socket to socket (holdover/proxy/splice.py), on real sockets.

The proxy's two protocols run on an event loop (uvloop, as in the gateway, and asyncio's
own) over two socket pairs in this process: one stands for the client, one for the
worker.  What the client receives is compared byte for byte with what the worker sent;
how many bytes the worker side's ``data_received`` saw tells whether the kernel carried
the rest.  Every case ends with the descriptors the splice borrowed given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any

import pytest
import uvloop
from fakes import FakePorts

from holdover.proxy import splice
from holdover.proxy.server import ClientConnection
from holdover.proxy.upstream import UpstreamConnection, UpstreamPool

MIB = 1024 * 1024
REQUEST = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"


class CountingUp(UpstreamConnection):
    """An UpstreamConnection that counts the bytes its ``data_received`` was given."""

    __slots__ = ("seen",)

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__(pool)
        self.seen = 0

    def data_received(self, data: bytes) -> None:
        self.seen += len(data)
        super().data_received(data)


class Rig:
    """A ClientConnection and an UpstreamConnection joined by the fake ports."""

    def __init__(self, loop: asyncio.AbstractEventLoop, **limits: Any) -> None:
        self.loop = loop
        self.ports = FakePorts(**limits)
        self.pool = UpstreamPool(None, "127.0.0.1", 1, 4)
        self.ports.on_route = self._route
        self.ports.release_upstream = self._release  # type: ignore[method-assign]
        self.released: list[bool] = []
        self.client, self._c_proxy = socket.socketpair()
        self.worker, self._w_proxy = socket.socketpair()
        for s in (self.client, self.worker):
            s.setblocking(False)
        self.up: CountingUp = None  # type: ignore[assignment]
        self.conn: ClientConnection = None  # type: ignore[assignment]

    async def start(self) -> Rig:
        _, self.up = await self.loop.connect_accepted_socket(
            lambda: CountingUp(self.pool), self._w_proxy)
        _, self.conn = await self.loop.connect_accepted_socket(
            lambda: ClientConnection(self.ports.plane), self._c_proxy)
        self.pool.put(self.up, monotonic())
        return self

    def _route(self, ex: Any) -> None:
        up = self.pool.take()
        assert up is not None, "the worker connection was not given back for reuse"
        ex.conn.attach(ex, up)

    def _release(self, up: Any, reusable: bool) -> None:
        self.released.append(reusable)
        if reusable:
            self.pool.put(up, monotonic())
        else:
            up.transport.close()

    async def request(self, data: bytes = REQUEST) -> bytes:
        """Send a request from the client; what the worker receives."""
        await self.loop.sock_sendall(self.client, data)
        return await asyncio.wait_for(self.loop.sock_recv(self.worker, 65536), 5)

    async def read_response(self, limit: int | None = None) -> tuple[bytes, bytes, bool]:
        """(head, body, closed): one Content-Length response, or what came before EOF."""
        buf = b""
        closed = False
        while b"\r\n\r\n" not in buf:
            chunk = await asyncio.wait_for(self.loop.sock_recv(self.client, MIB), 10)
            if not chunk:
                return buf, b"", True
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        parts = [body]
        got = len(body)
        want = length if limit is None else min(limit, length)
        while got < want:
            try:
                chunk = await asyncio.wait_for(self.loop.sock_recv(self.client, MIB), 10)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                break
            parts.append(chunk)
            got += len(chunk)
        return head, b"".join(parts), closed

    def close(self) -> None:
        for s in (self.client, self.worker):
            s.close()

    def close_proxy_sockets(self) -> None:
        """The socket objects handed to the loop (uvloop's transports leave them open
        on a placeholder descriptor)."""
        for s in (self._c_proxy, self._w_proxy):
            s.close()


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Let the loop run until ``cond()`` holds (bounded)."""
    deadline = monotonic() + timeout
    while not cond():
        assert monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def open_fds() -> int:
    """Sockets and pipes open in this process (what a splice borrows)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(("socket:", "pipe:"))
    return n


def body_of(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def response(body: bytes, declared: int | None = None) -> bytes:
    n = len(body) if declared is None else declared
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" \
        b"Content-Length: %d\r\n\r\n" % n + body


def dechunk(data: bytes) -> bytes:
    out = []
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if not n:
            return b"".join(out)
        out.append(data[:n])
        data = data[n + 2:]


LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[Rig], Awaitable[None]]], None]:
    """Run a test body on a fresh loop with a started Rig; check no descriptor leaked."""
    def runner(body: Callable[[Rig], Awaitable[None]], **limits: Any) -> None:
        while splice._IDLE:  # start without pooled pipes, so that every fd is counted
            rd, wr, _ = splice._IDLE.pop()
            os.close(rd)
            os.close(wr)
        loop = LOOPS[request.param]()
        before = open_fds()
        try:
            async def main() -> None:
                rig = await Rig(loop, **limits).start()
                try:
                    await body(rig)
                finally:
                    rig.close()
                    await until(lambda: rig.up.closed and rig.conn.transport.is_closing())
                    await asyncio.sleep(0.01)  # the transports let go of their sockets
                    rig.close_proxy_sockets()
            loop.run_until_complete(main())
            assert open_fds() == before + 2 * len(splice._IDLE), "a descriptor was left open"
        finally:
            loop.close()
    return runner


def test_a_large_body_is_spliced_byte_for_byte(run: Any) -> None:
    body = body_of(8 * MIB + 12345)

    async def case(rig: Rig) -> None:
        assert await rig.request()
        send = asyncio.ensure_future(rig.loop.sock_sendall(rig.worker, response(body)))
        head, got, closed = await rig.read_response()
        await send
        assert head.startswith(b"HTTP/1.1 200") and not closed
        assert got == body
        # The worker side's Python code saw the head and the first bytes only.
        assert rig.up.seen < 2 * MIB, rig.up.seen
        await until(lambda: rig.ports.done)
        ex = rig.ports.done[0][0]
        assert ex.resp_bytes == len(body) and ex.status == 200
        assert rig.released == [True] and rig.up.splice is None
        # The connection carries on: a second answer, small, on the same two connections.
        assert await rig.request(b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        await rig.loop.sock_sendall(rig.worker, response(b"second"))
        head, got, closed = await rig.read_response()
        assert got == b"second" and not closed and rig.released == [True, True]

    run(case)


def test_a_client_that_leaves_mid_body_ends_the_exchange(run: Any) -> None:
    body = body_of(32 * MIB)

    async def case(rig: Rig) -> None:
        assert await rig.request()
        send = asyncio.ensure_future(rig.loop.sock_sendall(rig.worker, response(body)))
        _, got, _ = await rig.read_response(limit=MIB)
        assert got == body[:len(got)]
        await until(lambda: rig.up.splice is not None)
        # A reset, as from a killed browser: unread bytes make close() send RST.
        rig.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rig.client.close()
        await until(lambda: rig.ports.done)
        await until(lambda: rig.up.closed)
        assert rig.up.splice is None and True not in rig.released
        assert rig.ports.done[0][0].resp_bytes < len(body)
        with pytest.raises(OSError):  # the worker's connection was cut, not reused
            await asyncio.wait_for(send, 10)

    run(case)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_worker_that_stops_mid_body_cuts_the_client(run: Any, how: str) -> None:
    """Content-Length beyond what the worker sends: the client must see it cut short."""
    sent = body_of(3 * MIB)

    async def case(rig: Rig) -> None:
        assert await rig.request()
        reader = asyncio.ensure_future(rig.read_response())
        await rig.loop.sock_sendall(rig.worker, response(sent[:MIB], declared=len(sent)))
        await until(lambda: rig.up.splice is not None)
        await rig.loop.sock_sendall(rig.worker, sent[MIB:2 * MIB])
        if how == "reset":
            rig.worker.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rig.worker.close()
        _, got, closed = await reader
        assert closed and len(got) <= 2 * MIB and got == sent[:len(got)]
        await until(lambda: rig.ports.done)
        assert rig.ports.done[0][0].resp_bytes <= 2 * MIB
        assert rig.conn.transport.is_closing() and True not in rig.released

    run(case)


def test_a_client_that_stops_reading_meets_send_timeout(run: Any) -> None:
    body = body_of(16 * MIB)

    async def case(rig: Rig) -> None:
        assert await rig.request()
        send = asyncio.ensure_future(rig.loop.sock_sendall(rig.worker, response(body)))
        # The client reads nothing: the splice fills the pipe and waits for it.
        await until(lambda: rig.up.splice is not None and rig.up.splice.inpipe > 0
                    and rig.up.splice._writing)
        held = rig.up.splice.inpipe
        assert held <= splice.PIPE_SIZE
        rig.conn.sweep(monotonic() + 1.0)  # not yet: send_timeout is 5 s
        assert not rig.conn.transport.is_closing()
        rig.conn.sweep(monotonic() + 6.0)
        assert rig.conn.transport.is_closing()
        await until(lambda: rig.ports.done)
        with pytest.raises(OSError):
            await asyncio.wait_for(send, 10)

    run(case, send_timeout=5.0)


def test_small_or_chunked_bodies_are_not_spliced(run: Any) -> None:
    small = body_of(64 * 1024)

    async def case(rig: Rig) -> None:
        assert await rig.request()
        await rig.loop.sock_sendall(rig.worker, response(small))
        _, got, _ = await rig.read_response()
        assert got == small and rig.up.seen >= len(small)
        assert await rig.request()
        seen = rig.up.seen
        chunk = body_of(MIB)
        framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk)

        async def read_chunked() -> bytes:
            buf = b""
            while not buf.endswith(b"\r\n0\r\n\r\n"):
                data = await asyncio.wait_for(rig.loop.sock_recv(rig.client, MIB), 10)
                assert data, "the chunked answer was cut"
                buf += data
            return buf
        reader = asyncio.ensure_future(read_chunked())
        await rig.loop.sock_sendall(
            rig.worker, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed)
        head, _, rest = (await reader).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and dechunk(rest) == chunk
        await until(lambda: len(rig.ports.done) == 2)
        assert rig.up.seen - seen >= len(chunk)  # all of it through the parser
        assert rig.released == [True, True]

    run(case)


def test_bytes_a_client_could_not_take_at_once_stay_intact(run: Any) -> None:
    """Worker reads share one buffer: a write the client's socket did not take whole
    keeps its view of that buffer, so the next reads must not land in it."""
    body = body_of(120 * 1024)  # under SPLICE_MIN after the first read: no splice

    async def case(other: Rig) -> None:
        rig = Rig(other.loop)
        rig._c_proxy.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        await rig.start()
        try:
            assert await rig.request()
            # The worker sends in pieces while the client reads nothing: each piece is
            # a read, written to a client socket that soon takes no more.
            whole = response(body)
            for i in range(0, len(whole), 16 * 1024):
                await rig.loop.sock_sendall(rig.worker, whole[i:i + 16 * 1024])
                await asyncio.sleep(0.002)
            await until(lambda: rig.conn.transport.get_write_buffer_size() > 0)
            # Another response, on the other connection, is read meanwhile.
            assert await other.request()
            noise = body_of(200 * 1024 + 1)
            send = asyncio.ensure_future(other.loop.sock_sendall(other.worker, response(noise)))
            _, got_noise, _ = await other.read_response()
            await send
            assert got_noise == noise
            _, got, closed = await rig.read_response()
            assert not closed and got == body
        finally:
            rig.close()
            await until(lambda: rig.up.closed and rig.conn.transport.is_closing())
            await asyncio.sleep(0.01)
            rig.close_proxy_sockets()

    run(case)


def test_tls_and_socketless_transports_are_never_spliced() -> None:
    class Transport:
        def __init__(self, extra: dict[str, Any]) -> None:
            self.extra = extra

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.extra.get(name, default)

    a, b = socket.socketpair()
    with a, b:
        assert splice.stream_fd(Transport({"socket": a})) == a.fileno()  # type: ignore[arg-type]
        assert splice.stream_fd(Transport({"socket": a, "sslcontext": object()})) == -1  # type: ignore[arg-type]
        assert splice.stream_fd(Transport({})) == -1  # type: ignore[arg-type]
