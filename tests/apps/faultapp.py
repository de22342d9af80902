"""A test worker (aiohttp) that can be told to misbehave, for the fault tests.

Run as ``python faultapp.py {port}``.  It keeps sessions in process memory like
``stateful.py`` and counts what reached it like ``backend.py``:

- ``GET|POST /login?user=NAME``  new session in this process; sets cookie ``sid``
- ``GET /``                      ``{revision, worker, pid, user, count}``; counts per session
- ``GET /slow?delay=S``          answers after S seconds
- ``GET /ws``                    WebSocket: each text message gets ``{pid, user, echo}``
- ``GET /log?n=N``               prints N lines to stdout (its log, written by the gateway)
- ``GET /_stats``                ``{"requests": N, "inflight": N, "paths": [...]}``
- ``GET /healthz``               ``ok``
- anything else                  ``{"app": "faultapp", "method", "raw_path", "headers", ...}``:
  the request exactly as it arrived (target undecoded)

Environment switches (each a fault the gateway must survive):

- ``IGNORE_SIGTERM=1``           SIGTERM is ignored: only SIGKILL stops it
- ``CRASH_AT_START=1``           exits with status 5 before it listens, every time
- ``CRASH_WORKER=ID`` with ``CRASH_MARKER=PATH``: the worker whose ``HOLDOVER_WORKER`` is
  ID exits with status 5 at start while PATH exists (one worker of a revision crash-loops)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys

from aiohttp import WSMsgType, web

SESSIONS: dict[str, dict] = {}
STATS = {"requests": 0, "inflight": 0, "paths": []}
WORKER = os.environ.get("HOLDOVER_WORKER", "")
REVISION = os.environ.get("HOLDOVER_REVISION", "")


@web.middleware
async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in ("/healthz", "/_stats"):
        return await handler(request)
    STATS["requests"] += 1
    STATS["paths"].append(request.path_qs)
    STATS["inflight"] += 1
    try:
        return await handler(request)
    finally:
        STATS["inflight"] -= 1


def _info(session: dict | None) -> dict:
    return {"revision": REVISION, "worker": WORKER, "pid": os.getpid(),
            "user": session["user"] if session else None,
            "count": session["count"] if session else None}


def _session(request: web.Request) -> dict | None:
    return SESSIONS.get(request.cookies.get("sid", ""))


async def login(request: web.Request) -> web.Response:
    sid = secrets.token_urlsafe(16)
    SESSIONS[sid] = {"user": request.query.get("user", "anon"), "count": 0}
    resp = web.json_response(_info(SESSIONS[sid]))
    resp.headers.add("Set-Cookie", f"sid={sid}; Path=/; HttpOnly")
    return resp


async def index(request: web.Request) -> web.Response:
    session = _session(request)
    if session is not None:
        session["count"] += 1
    return web.json_response(_info(session))


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "1")))
    return web.json_response({**_info(_session(request)), "slow": True})


async def ws(request: web.Request) -> web.WebSocketResponse:
    session = _session(request)
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(json.dumps({"pid": os.getpid(), "echo": msg.data,
                                            "user": session["user"] if session else None}))
    return sock


async def log_lines(request: web.Request) -> web.Response:
    n = int(request.query.get("n", "1"))
    for i in range(n):
        print(f"faultapp {WORKER} log line {i} " + "x" * 100, flush=True)
    return web.Response(text=f"logged {n}")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(STATS)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo_raw(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "app": "faultapp", "method": request.method, "raw_path": request.raw_path,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")]
                    for k, v in request.raw_headers],
        "length": len(body), "worker": WORKER, "pid": os.getpid()})


async def serve(port: int) -> None:
    app = web.Application(middlewares=[count])
    app.router.add_route("*", "/login", login)
    app.router.add_get("/", index)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    app.router.add_get("/log", log_lines)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", echo_raw)
    # Header limits well above aiohttp's 8 KiB default: the gateway's own limits are tested.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0,
                           max_line_size=128 * 1024, max_field_size=128 * 1024)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    if os.environ.get("IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"faultapp {WORKER}: ignoring SIGTERM", flush=True)
    else:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    marker = os.environ.get("CRASH_MARKER", "")
    if os.environ.get("CRASH_AT_START") == "1" or (
            WORKER and os.environ.get("CRASH_WORKER") == WORKER and marker
            and os.path.exists(marker)):
        print(f"faultapp {WORKER}: crashing at start on purpose", file=sys.stderr, flush=True)
        sys.exit(5)
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
