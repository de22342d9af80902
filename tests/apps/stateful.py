"""A small stateful test app (aiohttp): sessions in process memory behind a login.

Run as ``python stateful.py {port}``.  Everything a session knows lives in this
process's ``SESSIONS`` dict, so a request that reaches another process (or another
revision) than the one that created the session finds no session at all.

- ``POST /login?user=NAME``  new session; sets cookie ``sid``
- ``GET /``                  ``{revision, worker, pid, user, count}``; counts per session
- ``POST /logout``           ends the session; ``Set-Cookie: sid=; Max-Age=0``
- ``GET /ws``                WebSocket: each text message gets ``{revision, pid, user, echo}``
- ``GET /healthz``           ``ok``

``FAIL_START=1`` makes it exit with status 3 at once (a revision that cannot start);
``START_DELAY=S`` makes it wait S seconds before it listens (a slow start); ``HOST=ADDR``
makes it listen on ADDR instead of 127.0.0.1 (a worker another engine runs).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time

from aiohttp import WSMsgType, web

SESSIONS: dict[str, dict] = {}
REVISION = os.environ.get("HOLDOVER_REVISION", "")
WORKER = os.environ.get("HOLDOVER_WORKER", "")


def _session(request: web.Request) -> tuple[str | None, dict | None]:
    sid = request.cookies.get("sid")
    if not sid:
        return None, None
    return sid, SESSIONS.get(sid)


def _info(session: dict | None) -> dict:
    return {"revision": REVISION, "worker": WORKER, "pid": os.getpid(),
            "user": session["user"] if session else None,
            "count": session["count"] if session else None}


async def login(request: web.Request) -> web.Response:
    user = request.query.get("user", "")
    if not user:
        return web.json_response({"error": "user= is required"}, status=400)
    sid = secrets.token_urlsafe(16)
    SESSIONS[sid] = {"user": user, "count": 0}
    resp = web.json_response(_info(SESSIONS[sid]))
    resp.headers.add("Set-Cookie", f"sid={sid}; Path=/; HttpOnly")
    return resp


async def index(request: web.Request) -> web.Response:
    _, session = _session(request)
    if session is not None:
        session["count"] += 1
    return web.json_response(_info(session))


async def logout(request: web.Request) -> web.Response:
    sid, session = _session(request)
    if sid is not None:
        SESSIONS.pop(sid, None)
    resp = web.json_response({**_info(None), "logged_out": session is not None})
    resp.headers.add("Set-Cookie", "sid=; Max-Age=0; Path=/")
    return resp


async def ws(request: web.Request) -> web.WebSocketResponse:
    _, session = _session(request)
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(json.dumps({
                "revision": REVISION, "pid": os.getpid(),
                "user": session["user"] if session else None, "echo": msg.data}))
    return sock


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    if os.environ.get("FAIL_START") == "1":
        print(f"stateful: FAIL_START=1 set, revision {REVISION!r} refuses to start",
              file=sys.stderr, flush=True)
        sys.exit(3)
    delay = float(os.environ.get("START_DELAY", "0") or 0)
    if delay > 0:
        time.sleep(delay)
    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/", index)
    app.router.add_post("/logout", logout)
    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(sys.argv[1]),
                print=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
