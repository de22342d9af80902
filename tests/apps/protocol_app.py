"""A test worker (aiohttp) that speaks the explicit session protocol.

Run as ``python protocol_app.py {port}``.  ``/login`` starts a session in this process's
memory and says so with ``X-Holdover-Session: <id>; max-age=N``; ``/`` tells which process
answered and whether it holds the caller's session (``/?renew=N`` also renews it); ``/logout`` ends the session with
``X-Holdover-Session: <id>; end``.  The app keeps its own ``app_sid`` cookie (holdover is
not told about it) so that it knows whose session a request belongs to.
"""

from __future__ import annotations

import os
import secrets
import sys

from aiohttp import web

SESSIONS: set[str] = set()  # the in-memory state holdover must keep each user with


def _me(request: web.Request) -> dict[str, object]:
    sid = request.cookies.get("app_sid") or ""
    return {"pid": os.getpid(), "worker": os.environ.get("HOLDOVER_WORKER"),
            "session": sid, "known": sid in SESSIONS}


async def login(request: web.Request) -> web.Response:
    sid = "u1-" + secrets.token_hex(8)
    SESSIONS.add(sid)
    max_age = request.query.get("max_age", "60")
    resp = web.json_response({**_me(request), "session": sid, "known": True})
    resp.headers["X-Holdover-Session"] = f"{sid}; max-age={max_age}"
    resp.set_cookie("app_sid", sid, httponly=True)
    return resp


async def index(request: web.Request) -> web.Response:
    me = _me(request)
    resp = web.json_response(me)
    renew = request.query.get("renew")
    if renew and me["known"]:  # ?renew=N: renew the caller's session for N seconds
        resp.headers["X-Holdover-Session"] = f"{me['session']}; max-age={renew}"
    return resp


async def logout(request: web.Request) -> web.Response:
    me = _me(request)
    sid = str(me["session"])
    resp = web.json_response(me)
    if sid:
        SESSIONS.discard(sid)
        resp.headers["X-Holdover-Session"] = f"{sid}; end"
        resp.del_cookie("app_sid")
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/", index)
    app.router.add_get("/logout", logout)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, shutdown_timeout=5)


if __name__ == "__main__":
    main()
