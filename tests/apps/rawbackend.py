"""A misbehaving test worker on raw sockets: garbage, half answers, silence.

Run as ``python rawbackend.py {port}``; what it does depends on the request path:
``/garbage`` (not HTTP), ``/half`` (a head promising more body than it sends, then
close), ``/hang`` (reads the request, never answers), ``/close`` (closes without a word),
``/eof-body`` (a body delimited by closing the connection), anything else 200.
"""

from __future__ import annotations

import asyncio

from rawserver import serve


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/garbage":
                writer.write(b"this is not http at all\r\n\r\n")
                await writer.drain()
                break
            if path == b"/half":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
                await writer.drain()
                break
            if path == b"/hang":
                await asyncio.sleep(3600)
            if path == b"/close":
                break
            if path == b"/eof-body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close")
                await writer.drain()
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    serve(handle)
