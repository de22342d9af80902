"""A worker that breaks HTTP in the ways a buggy app or framework does (raw sockets).

Run as ``python hostileworker.py {port}``.  What it does depends on the request path:

- ``/garbage``      bytes that are not HTTP, then close
- ``/half``         a head promising 100 bytes of body, 9 bytes, then close
- ``/close``        close without a word
- ``/hang``         never answer, never read the request body
- ``/double``       two responses to one request, in one write; the *next* request on the
                    same connection gets the rest of the second one (``0123456789``) first
- ``/bad-chunk``    a chunked answer whose second chunk size is not hex, then silence
- ``/chunked-cut``  a chunked answer cut off (connection closed) before its last chunk
- ``/stray-101``    ``101 Switching Protocols`` to a request that asked for no upgrade
- ``/cl-te``        a response with both Content-Length and Transfer-Encoding
- ``/bare-lf``      a response header line ended by a bare LF
- ``/endless-head?mb=N``  a status line, then N MiB of header lines that never end
- ``/head-body``   a head announcing 5 bytes (right for HEAD), then, in a later write,
                    the body anyway; ``/204-body`` the same after a 204
- ``/healthz``, anything else: ``200 ok``
"""

from __future__ import annotations

import asyncio

from rawserver import serve

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    owed = b""  # what a previous /double still owes on this connection
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            path, _, query = target.partition(b"?")
            if owed:
                writer.write(owed + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                owed = b""
                await writer.drain()
                continue
            if path == b"/garbage":
                writer.write(b"this is not http at all\r\n\r\n")
                await writer.drain()
                break
            if path == b"/half":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
                await writer.drain()
                break
            if path == b"/close":
                break
            if path == b"/hang":
                await asyncio.sleep(3600)
            if path == b"/double":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Injected: yes\r\n\r\n")
                owed = b"0123456789"
            elif path == b"/bad-chunk":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\nzz\r\n")
                await writer.drain()
                await asyncio.sleep(3600)
            elif path == b"/chunked-cut":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n")
                await writer.drain()
                break
            elif path == b"/stray-101":
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(3600)
            elif path == b"/cl-te":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            elif path in (b"/head-body", b"/204-body"):
                status = b"200 OK" if path == b"/head-body" else b"204 No Content"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"hello")
            elif path == b"/bare-lf":
                writer.write(b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\nok")
            elif path == b"/endless-head":
                mb = int(query.partition(b"=")[2] or b"1")
                writer.write(b"HTTP/1.1 200 OK\r\n")
                line = b"X-Endless: " + b"h" * 1011 + b"\r\n"  # 1 KiB a line
                for _ in range(mb):
                    writer.write(line * 1024)
                    await writer.drain()
                await asyncio.sleep(3600)
            else:
                writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    serve(handle)
