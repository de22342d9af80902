"""The session protocol for ASGI apps (HTTP and WebSocket), Starlette and FastAPI included.

``HoldoverSessionMiddleware`` wraps ``send``: when the app starts its response
(``http.response.start``), accepts a WebSocket (``websocket.accept``) or refuses one with
an HTTP answer (``websocket.http.response.start``), it asks ``get_session(scope)`` and
adds ``x-holdover-session`` headers.  It asks then, not earlier, because the app decides
about the session while it handles the request.

The default hook reads the request state, which Starlette and FastAPI expose as
``request.state`` (it is ``scope["state"]``)::

    app.add_middleware(HoldoverSessionMiddleware)

    @app.post("/login")
    async def login(request: Request):
        request.state.holdover_session = (session_id, 3600)   # or (session_id, "end")

A bare ``"end"`` is accepted when the request's session id is also in the state as
``holdover_session_id``.  Other servers and frameworks can pass their own ``get_session``.

On a WebSocket the gateway pins, renews or ends the session from the handshake answer,
but it cannot set its ``holdover_pin`` cookie there: start a session with an HTTP
response, and use the WebSocket only to keep it alive or end it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import SessionInfo, header_values

__all__ = ["STATE_KEY", "STATE_SESSION_ID", "HoldoverSessionMiddleware", "from_state"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "holdover_session"  # request.state.holdover_session
STATE_SESSION_ID = "holdover_session_id"  # the id a bare "end" refers to
_NAME = b"x-holdover-session"
_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})


def from_state(scope: Scope) -> SessionInfo:
    """The default hook: what the app put in ``scope["state"]["holdover_session"]``."""
    state = scope.get("state")
    return state.get(STATE_KEY) if state else None


class HoldoverSessionMiddleware:
    """Adds ``x-holdover-session`` to an ASGI app's responses, as ``get_session`` says.

    ``get_session(scope)`` returns a ``holdover.middleware.SessionInfo``; the default
    reads ``request.state.holdover_session``.  Lifespan and other scopes pass through.
    """

    def __init__(self, app: ASGIApp, get_session: Callable[[Scope], SessionInfo] = from_state
                 ) -> None:
        self.app = app
        self.get_session = get_session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # The state dict exists before the app runs, so that it is shared even with a
        # framework that copies the scope (a shallow copy keeps the same dict).
        state = scope.setdefault("state", {})

        async def wrapped(message: Message) -> None:
            if message["type"] in _STARTS:
                values = header_values(self.get_session(scope), state.get(STATE_SESSION_ID))
                if values:
                    headers = list(message.get("headers") or ())
                    headers += [(_NAME, v.encode("ascii")) for v in values]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)
