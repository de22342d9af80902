"""A test worker (aiohttp): echo, big and streamed bodies, SSE, WebSocket, slow answers,
and ``/forge``, which sets the gateway's own response headers and cookie.

Run as ``python backend.py {port}`` (``HOST=ADDR`` to listen on ADDR, not 127.0.0.1).  It counts what reached it (``/_stats``) so that
tests can prove a refused request never arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

from aiohttp import WSMsgType, web

STATS = {"requests": 0, "paths": []}
CHUNK = b"x" * (256 * 1024)


@web.middleware
async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path not in ("/healthz", "/_stats"):
        STATS["requests"] += 1
        STATS["paths"].append(request.path)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    if os.path.exists(os.environ.get("UNHEALTHY_FLAG", "/nonexistent")):
        return web.Response(status=503, text="unhealthy")
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(STATS)


async def echo(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    n = 0
    async for data in request.content.iter_any():
        h.update(data)
        n += len(data)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.json_response({
        "method": request.method, "path": request.path_qs, "version": str(request.version),
        "headers": [[k, v] for k, v in request.headers.items()], "length": n,
        "sha256": h.hexdigest(), "pid": os.getpid(),
        "worker": os.environ.get("HOLDOVER_WORKER"),
        "revision": os.environ.get("HOLDOVER_REVISION"), "peer_port": peer[1] if peer else None,
        "chunked": request.headers.get("Transfer-Encoding"),
    })


async def big(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "0"))
    chunked = request.query.get("chunked") == "1"
    resp = web.StreamResponse()
    if chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = n
    await resp.prepare(request)
    left = n
    while left > 0:
        piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await resp.write(piece)
        left -= len(piece)
    await resp.write_eof()
    return resp


async def sse(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "3"))
    delay = float(request.query.get("delay", "0.5"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for i in range(n):
        await resp.write(f"data: event {i}\n\n".encode())
        if i + 1 < n:
            await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(f"echo:{msg.data}:{os.getpid()}")
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "1")))
    return web.Response(text=f"slow done {os.getpid()}")


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


async def forge(request: web.Request) -> web.Response:
    """An app that tries to speak for the gateway: its revision, its newest, its pin."""
    resp = web.Response(text="forged")
    resp.headers["X-Holdover-Revision"] = "forged-revision"
    resp.headers["X-Holdover-Latest"] = "forged-latest"
    resp.headers.add("Set-Cookie", "holdover_pin=forged.value; Path=/")
    resp.headers.add("Set-Cookie", "app=kept; Path=/")
    return resp


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status")


def main() -> None:
    app = web.Application(middlewares=[count], client_max_size=0)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_stats", stats)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws)
    app.router.add_get("/slow", slow)
    app.router.add_get("/pid", pid)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/forge", forge)
    web.run_app(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(sys.argv[1]),
                print=None,
                shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "10")))


if __name__ == "__main__":
    main()
