"""The admin HTTP server: the JSON API (and its OpenAPI document) on ``admin_listen``.

Every ``/api/`` call needs ``Authorization: Bearer <token>``; the token lives in
``state_dir/admin.token`` (0600) and is compared in constant time.  Credentials travel
only in that header, never in a cookie, so a cross-site page cannot make a browser
send them: state-changing calls are safe from CSRF by construction.  The admin side is
its own listener; nothing of it is reachable through the public port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.errors import Refused
from ..core.private_files import loose_mode, write_private
from ..state import StoreError
from .commands import BY_NAME, COMMANDS, Command, CommandError
from .metrics import (
    CONTENT_TYPE_LATEST,
    GatewayCollector,
    ProcessStats,
    metrics_registry,
    overview,
    render,
)

if TYPE_CHECKING:
    from ..control.facade import Control as Gateway

log = logging.getLogger("holdover.admin")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}

TOKEN_FILE = "admin.token"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    # No 'unsafe-inline': an injected <script> or style="" in the page does not run (the
    # page colours each revision through the CSSOM, which the policy allows).
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
}


# A token holdover writes is 43 characters (256 random bits); one an operator writes
# must still be long enough not to be guessed, and fit a Bearer header (RFC 6750 token68).
MIN_TOKEN_LENGTH = 32
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def token_problem(token: str) -> str | None:
    """Why ``token`` must not be the admin token (empty, short, not token68), or None."""
    if not token:
        return "it is empty"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"it is {len(token)} characters long, fewer than {MIN_TOKEN_LENGTH}"
    if not _TOKEN68.fullmatch(token):
        return "it has characters a Bearer token cannot carry"
    return None


def load_or_create_token(state_dir: Path) -> tuple[str, bool]:
    """The admin token, created (0600) on first start; True when it was just written.

    A token file that is empty (a crash while an older version wrote it), too short or
    readable by other users is replaced by a new token, saying why: an empty token
    must never mean "no authentication"."""
    path = state_dir / TOKEN_FILE
    why = None
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the admin token {path}: {exc}") from None
    else:
        why = token_problem(token)
        mode = loose_mode(path)
        if why is None and mode is not None:
            why = f"other users could read it (mode {mode:04o})"
        if why is None:
            return token, False
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    if why is not None:
        log.warning("replaced the admin token in %s with a new one: %s", path, why)
    return token, True


def _error(status: int, message: str, field: str | None = None, **extra: Any) -> web.Response:
    body = {"error": {"status": status, "message": message, **({"field": field} if field
                                                                 else {}), **extra}}
    return web.json_response(body, status=status)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the command definitions."""
    types = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
             bool: {"type": "boolean"},
             dict: {"type": "object", "additionalProperties": {"type": "string"}},
             list: {"type": "array", "items": {"type": "string"}}}
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "message"],
        "properties": {"status": {"type": "integer"}, "message": {"type": "string"},
                       "field": {"type": "string"}}}}}
    paths: dict[str, Any] = {}
    for c in COMMANDS:
        op: dict[str, Any] = {
            "operationId": c.name, "summary": c.help, "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "done", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "400": {"description": "bad request", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "missing or wrong token", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "404": {"description": "no such revision, worker or session", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            }}
        if c.method == "POST":
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {p.name: {**types[p.type], "description": p.help}
                               for p in c.params},
                "required": [p.name for p in c.params if p.required]}}}}
            for code, what in (("409", "conflicts with the current state"),
                               ("422", "the new revision did not start")):
                op["responses"][code] = {"description": what, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}
        else:
            op["parameters"] = [{"name": p.name, "in": "query", "required": p.required,
                                 "description": p.help, "schema": types[p.type]}
                                for p in c.params]
        paths[c.path] = {c.method.lower(): op}
    return {"openapi": "3.1.0",
            "info": {"title": "holdover admin API", "version": "1"},
            "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                           "schemas": {"Error": error}}}


class AdminServer:
    """aiohttp application bound to the gateway's internal API."""

    def __init__(self, gw: Gateway, token: str) -> None:
        problem = token_problem(token)
        if problem is not None:  # never an admin side that anyone can use
            raise ValueError(f"refusing to serve the admin side with this token: {problem}")
        self.gw = gw
        self._token = token.encode()
        self.runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None
        app = web.Application(middlewares=[self._headers, self._auth], client_max_size=1 << 20)
        app.router.add_get("/api/openapi.json", self._openapi)
        for c in COMMANDS:
            app.router.add_route(c.method, c.path, self._handler(c))
        # The admin page, its live stream and the Prometheus metrics (see "page" below).
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        self._collector = GatewayCollector(gw)
        self._registry = metrics_registry(gw, self._collector)
        self._procs = ProcessStats()
        self._closing = asyncio.Event()
        self.app = app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            resp = _error(exc.status, exc.reason)
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/") or request.path == "/metrics":
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or not hmac.compare_digest(
                    token.encode(), self._token):
                resp = _error(401, "missing or wrong admin token: send 'Authorization: "
                                   "Bearer <token>' (the token is in state_dir/admin.token)")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="holdover"'
                return resp
        return await handler(request)

    async def _readyz(self, request: web.Request) -> web.Response:
        """For a load balancer, without credentials: 200 while this node serves, 503 while
        it starts, shuts down (the ``shutdown_delay`` after SIGTERM) or has been cut off
        from the shared store past ``store_outage_grace``, and in a few words why not —
        nothing else is told."""
        why = self.gw.unready_because()
        if why is None:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": why}, status=503)

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())

    def _handler(self, command: Command) -> Any:
        async def handle(request: web.Request) -> web.Response:
            try:
                if command.method == "GET":
                    raw: dict[str, Any] = {}
                    params = {p.name: p for p in command.params}
                    for k, v in request.query.items():
                        p = params.get(k)
                        if p is not None and p.type is int:
                            try:
                                raw[k] = int(v)
                            except ValueError:
                                raise CommandError(f"{k}: expected an integer, got {v!r}",
                                                   400, field=k) from None
                        else:
                            raw[k] = v
                    args = command.parse(raw)
                else:
                    body: Any = None
                    if request.can_read_body:
                        try:
                            body = json.loads(await request.read() or b"null")
                        except (ValueError, UnicodeDecodeError) as exc:
                            raise CommandError(f"the request body is not valid JSON: {exc}",
                                               400) from None
                    args = command.parse(body)
                result = await command.handler(self.gw, args)
            except Refused as exc:
                extra = {"log_tail": exc.log_tail} if exc.log_tail else {}
                return _error(exc.status, str(exc), exc.field, **exc.detail, **extra)
            return web.json_response(result)

        return handle

    # -- page: the admin page, its live stream, the Prometheus metrics ------------------

    async def _index(self, request: web.Request) -> web.Response:
        try:
            page = (STATIC_DIR / "index.html").read_bytes()
        except OSError:
            return web.Response(text="holdover admin: the JSON API is under /api/ "
                                     "(see /api/openapi.json)\n", content_type="text/plain")
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        ctype = STATIC_TYPES.get(Path(name).suffix)
        # Only plain names of files shipped in admin/static/: no paths, no dotfiles.
        if ctype is None or "/" in name or name.startswith(".") or \
                not (STATIC_DIR / name).is_file():
            return _error(404, f"no static file {name!r}")
        return web.Response(body=(STATIC_DIR / name).read_bytes(),
                            headers={"Content-Type": ctype})

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._collector.read_events(getattr(self.gw, "store", None))
        return web.Response(body=render(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: a ``status`` event with ``overview()`` every second.

        ``?after=N`` sends only events with a higher id (else the last 50 first);
        ``?once=1`` answers one snapshot as plain JSON instead (for polling)."""
        after, once = 0, False
        for key, value in request.query.items():
            if key == "after":
                try:
                    after = int(value)
                except ValueError:
                    after = -1
                if not 0 <= after < 1 << 63:
                    return _error(400, f"after: expected an event id, got {value!r}", "after")
            elif key == "once":
                once = value in ("1", "true", "yes")
            else:
                return _error(400, f"{key}: unknown field; expected one of after, once", key)
        gw = self.gw

        async def snapshot() -> dict[str, Any]:
            nonlocal after
            data = overview(gw, self._procs)
            events = []
            if gw.store is not None:
                try:
                    events = await gw.store.events(limit=50 if not after else 500,
                                                   after_id=after)
                except StoreError as exc:  # e.g. closed by a reload under way
                    log.warning("admin stream: cannot read events: %s", exc)
            if events:
                after = events[-1].id
            data["events"] = [{"id": e.id, "ts": e.ts, "kind": e.kind, "revision": e.revision,
                               "worker": e.worker, "message": e.message, "data": e.data}
                              for e in events]
            return data

        if once:
            return web.json_response(await snapshot())
        resp = web.StreamResponse(headers={**SECURITY_HEADERS,
                                           "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            await resp.write(b"retry: 2000\n\n")
            while not self._closing.is_set():
                data = json.dumps(await snapshot(), separators=(",", ":"))
                await resp.write(f"event: status\ndata: {data}\n\n".encode())
                try:
                    await asyncio.wait_for(self._closing.wait(), 1.0)
                except TimeoutError:
                    pass
        except (ConnectionError, RuntimeError):  # the client went away
            pass
        return resp

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on an already bound (or inherited) listening socket."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.SockSite(self.runner, sock)
        await site.start()
        self.bound = sock.getsockname()[:2]

    async def stop(self) -> None:
        self._closing.set()  # ends open /api/stream responses, or cleanup waits for them
        if self.runner is not None:
            await self.runner.cleanup()


__all__ = ["BY_NAME", "AdminServer", "load_or_create_token", "openapi"]
