"""A test worker for large response bodies, on raw sockets.

Run as ``python bodyworker.py {port}``.  ``GET /bytes?n=N`` answers N bytes that a test
can recompute (``expected(N)``) with a Content-Length; ``/short?n=N&send=M`` declares N
bytes, sends M and closes; ``/die?n=N&send=M`` sends M of N bytes and then the process
exits on the spot, as a crashing worker would; anything else is a small 200.
"""

from __future__ import annotations

import asyncio
import os
import random
from urllib.parse import parse_qs, urlsplit

from rawserver import serve

PIECE = 1024 * 1024


def expected(n: int) -> bytes:
    """The body of ``/bytes?n=N``: the same for the same N, not a repeating pattern."""
    return random.Random(n).randbytes(n)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = urlsplit(head.split(b" ", 2)[1].decode())
            query = {k: int(v[0]) for k, v in parse_qs(target.query).items()}
            if target.path not in ("/bytes", "/short", "/die"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                continue
            n = query["n"]
            body = expected(n)
            send = query.get("send", n)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % n)
            for i in range(0, send, PIECE):
                writer.write(body[i:min(i + PIECE, send)])
                await writer.drain()
            if target.path == "/die":
                os._exit(1)
            if target.path == "/short":
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    serve(handle)
