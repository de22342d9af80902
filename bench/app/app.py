"""The upgrade benchmark's stateful app (aiohttp): sessions live in this process's memory.

Why it exists: ``upgrade_bench.py`` and ``soak.py`` need an app whose users notice at once
when an upgrade loses their session.  Everything a session knows (user, a request
counter, a list of notes) is kept in ``SESSIONS`` of *this* process, so a request that
reaches another process or another revision than the one that created the session finds
no session at all, and a process that is replaced takes its sessions with it.

Every HTTP response carries the session as the app sees it, in headers, so a client can
check any kind of response (page, form post, streamed download) the same way::

    X-Bench-Rev    revision label (HOLDOVER_REVISION, else "v" + version)
    X-Bench-Pid    this process's pid
    X-Bench-User   the session's user, "-" when the request has no (known) session
    X-Bench-Count  the session's counter after this request (stateful requests count +1)
    X-Bench-Notes  how many notes the session holds

Routes:

- ``POST /login?user=NAME``   new session; ``Set-Cookie: sid=...``
- ``GET /``                   an HTML page (~4 KiB); counts
- ``POST /notes``             form post (``note=...``): appends to the session's notes; counts
- ``GET /download?n=BYTES``   a streamed (chunked) body of BYTES bytes, 64 KiB chunks with a
                              short pause between them (``delay_ms``, default 5); counts
- ``GET /ws``                 WebSocket: first a hello ``{hello, rev, pid, user, count,
                              notes}``; then each text message counts and gets back JSON
                              ``{rev, pid, user, count, notes, echo}``; closed with 1001
                              when the process shuts down
- ``POST /logout``            ends the session; ``Set-Cookie: sid=; Max-Age=0``
- ``GET /api/info``           the same as the headers, as JSON (no counting)
- ``GET /healthz``            ``ok``

Run it:

- as a holdover worker: ``python bench/app/app.py --port {port}``;
- as a plain server for the alternatives: ``python bench/app/app.py --port 9001``;
- under gunicorn: ``gunicorn --chdir bench/app app:create_app
  --worker-class aiohttp.GunicornWebWorker``.

The version comes from ``BENCH_VERSION``, else from the file named by
``BENCH_VERSION_FILE`` (read when a process creates the app, so a gunicorn ``HUP``
that starts new workers picks up a new version), else ``1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets

from aiohttp import WSMsgType, web

SESSIONS: dict[str, dict] = {}
MAX_NOTES = 50  # keep memory bounded in long runs; ``notes`` counts all of them
CHUNK = 64 * 1024
PAGE_FILLER = "<p>" + "lorem ipsum dolor sit amet " * 140 + "</p>\n"  # ~3.9 KB


def version() -> str:
    v = os.environ.get("BENCH_VERSION", "").strip()
    if not v:
        path = os.environ.get("BENCH_VERSION_FILE", "")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    v = f.read().strip()
            except OSError:
                v = ""
    return v or "1"


class State:
    """What this process is: read once, when the app is created."""

    rev = ""
    pid = 0


def _session(request: web.Request) -> tuple[str | None, dict | None]:
    sid = request.cookies.get("sid")
    if not sid:
        return None, None
    return sid, SESSIONS.get(sid)


def _headers(session: dict | None) -> dict[str, str]:
    return {
        "X-Bench-Rev": State.rev,
        "X-Bench-Pid": str(State.pid),
        "X-Bench-User": session["user"] if session else "-",
        "X-Bench-Count": str(session["count"]) if session else "0",
        "X-Bench-Notes": str(session["notes"]) if session else "0",
        "Cache-Control": "no-store",
    }


def _count(session: dict | None) -> None:
    if session is not None:
        session["count"] += 1
        session["seen"] = asyncio.get_running_loop().time()


async def login(request: web.Request) -> web.Response:
    user = request.query.get("user", "")
    if not user:
        return web.json_response({"error": "user= is required"}, status=400)
    sid = secrets.token_urlsafe(16)
    session = {"user": user, "count": 0, "notes": 0, "recent": []}
    SESSIONS[sid] = session
    resp = web.json_response({"user": user, "rev": State.rev, "pid": State.pid},
                             headers=_headers(session))
    resp.headers.add("Set-Cookie", f"sid={sid}; Path=/; HttpOnly; SameSite=Lax")
    return resp


async def page(request: web.Request) -> web.Response:
    _, session = _session(request)
    _count(session)
    who = session["user"] if session else "stranger"
    body = (f"<!doctype html><html><head><title>bench {State.rev}</title></head><body>"
            f"<h1>Hello {who}</h1><p>revision {State.rev}, pid {State.pid}, "
            f"visit {session['count'] if session else 0}</p>{PAGE_FILLER}</body></html>")
    return web.Response(text=body, content_type="text/html", headers=_headers(session))


async def notes(request: web.Request) -> web.Response:
    _, session = _session(request)
    form = await request.post()
    note = str(form.get("note", ""))[:200]
    if session is not None:
        session["notes"] += 1
        session["recent"] = [*session["recent"][-(MAX_NOTES - 1):], note]
    _count(session)
    body = "<!doctype html><html><body><p>saved</p></body></html>"
    return web.Response(text=body, content_type="text/html", headers=_headers(session))


async def download(request: web.Request) -> web.StreamResponse:
    _, session = _session(request)
    try:
        n = max(0, min(int(request.query.get("n", "1048576")), 64 * 1024 * 1024))
        delay = max(0.0, min(float(request.query.get("delay_ms", "5")), 1000.0)) / 1000.0
    except ValueError:
        return web.json_response({"error": "n and delay_ms must be numbers"}, status=400)
    _count(session)
    resp = web.StreamResponse(headers=_headers(session))
    resp.content_type = "application/octet-stream"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    block = b"0123456789abcdef" * (CHUNK // 16)
    left = n
    while left > 0:
        piece = block[: min(CHUNK, left)]
        await resp.write(piece)
        left -= len(piece)
        if delay and left:
            await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def logout(request: web.Request) -> web.Response:
    sid, session = _session(request)
    if sid is not None:
        SESSIONS.pop(sid, None)
    resp = web.json_response({"logged_out": session is not None,
                              "user": session["user"] if session else None},
                             headers=_headers(session))
    resp.headers.add("Set-Cookie", "sid=; Max-Age=0; Path=/")
    return resp


SOCKETS: set[web.WebSocketResponse] = set()


async def ws(request: web.Request) -> web.WebSocketResponse:
    _, session = _session(request)
    sock = web.WebSocketResponse(heartbeat=None)
    await sock.prepare(request)
    SOCKETS.add(sock)
    try:
        # A hello first: who answers, and whether it knows the session (no counting).
        await sock.send_str(json.dumps({
            "hello": True, "rev": State.rev, "pid": State.pid,
            "user": session["user"] if session else None,
            "count": session["count"] if session else 0,
            "notes": session["notes"] if session else 0}))
        await _serve_ws(sock, session)
    finally:
        SOCKETS.discard(sock)
    return sock


async def _serve_ws(sock: web.WebSocketResponse, session: dict | None) -> None:
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            _count(session)
            await sock.send_str(json.dumps({
                "rev": State.rev, "pid": State.pid,
                "user": session["user"] if session else None,
                "count": session["count"] if session else 0,
                "notes": session["notes"] if session else 0,
                "echo": msg.data[:100]}))
        elif msg.type == WSMsgType.ERROR:
            break


async def close_sockets(app: web.Application) -> None:
    """On shutdown (SIGTERM) close open WebSockets with 1001 "going away", as apps
    should, instead of leaving the shutdown to wait for them."""
    for sock in list(SOCKETS):
        await sock.close(code=1001, message=b"server shutdown")


async def info(request: web.Request) -> web.Response:
    _, session = _session(request)
    return web.json_response({"rev": State.rev, "pid": State.pid,
                              "user": session["user"] if session else None,
                              "count": session["count"] if session else 0,
                              "notes": session["notes"] if session else 0,
                              "sessions_in_process": len(SESSIONS)})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app() -> web.Application:
    State.pid = os.getpid()
    State.rev = os.environ.get("HOLDOVER_REVISION") or f"v{version()}"
    app = web.Application()
    app.on_shutdown.append(close_sockets)
    app.router.add_post("/login", login)
    app.router.add_get("/", page)
    app.router.add_post("/notes", notes)
    app.router.add_get("/download", download)
    app.router.add_post("/logout", logout)
    app.router.add_get("/ws", ws)
    app.router.add_get("/api/info", info)
    app.router.add_get("/healthz", healthz)
    return app


async def create_app() -> web.Application:
    """The app factory for gunicorn's aiohttp worker (called in each worker process)."""
    return build_app()


def main() -> None:
    ap = argparse.ArgumentParser(description="the upgrade benchmark's stateful app")
    ap.add_argument("port_pos", nargs="?", type=int, help="port (same as --port)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--shutdown-timeout", type=float, default=5.0,
                    help="on SIGTERM, how long open requests may finish (default 5 s)")
    args = ap.parse_args()
    port = args.port if args.port is not None else args.port_pos
    if port is None:
        port = int(os.environ.get("PORT", "0") or 0)
    if not port:
        ap.error("a port is required (--port, a positional port, or $PORT)")
    web.run_app(build_app(), host=args.host, port=port, print=None, access_log=None,
                shutdown_timeout=args.shutdown_timeout, handle_signals=True)


if __name__ == "__main__":
    main()
