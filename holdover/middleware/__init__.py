"""Helpers for apps that tell holdover about their sessions explicitly.

holdover pins each user session to the worker process that created it.  By default it
learns about sessions by watching the app's session cookie (``session_cookie`` in the
configuration).  An app can instead say it outright, on any response, with one header:

    X-Holdover-Session: <session-id>; max-age=<seconds>   the session exists; it expires
                                                          <seconds> from now unless a later
                                                          response renews it
    X-Holdover-Session: <session-id>; end                 the session is over (logout)

The gateway strips the header (the client never sees it), pins the session to the
worker that answered and gives the browser its own signed ``holdover_pin`` cookie,
renews the expiry on every response that carries the header again, and on ``end`` ends
the session and deletes that cookie.  Without ``max-age`` the session ends after the
configured ``session_idle_timeout`` of inactivity instead.

Rules for the id: one to many visible ASCII characters (no spaces, no ``;`` or ``,``).
It only has to be stable for the session's life and unique; the gateway never shows it
to anyone (it keeps a keyed hash).  If the app can ever be reached without holdover in
front, the header would reach the client, so do not send a credential as the id: send
``opaque_session_id(secret)`` instead (the Flask and Django adapters do).

A response may carry the header more than once (``end`` for an old id, then a pin for a
new one, when the app rotates its session id at login): ends must come first, because
the gateway's cookie follows the last header.  The middlewares here order them so.

The framework adapters live in submodules and import their framework lazily, so holdover
itself depends on none of them:

- ``holdover.middleware.wsgi``: any WSGI app, and ``for_flask``;
- ``holdover.middleware.asgi``: any ASGI app (HTTP and WebSocket), Starlette/FastAPI via
  ``request.state.holdover_session``;
- ``holdover.middleware.django``: a Django middleware over ``request.session``.

See docs/session-protocol.md.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, TypeAlias

__all__ = [
    "HEADER",
    "SessionInfo",
    "header_values",
    "opaque_session_id",
    "session_header",
]

HEADER = "X-Holdover-Session"

# What an app's hook returns for one response:
#   None                 say nothing;
#   (id, max_age)        the session exists (max_age in seconds, or None: idle timeout);
#   (id, "end")          the session is over;
#   "end"                the session the request came with is over (its id must be known:
#                        WSGI environ["holdover.session_id"] or ASGI
#                        scope["state"]["holdover_session_id"]);
#   [entry, ...]         several of the above (a rotation: end the old id, pin the new).
SessionEntry: TypeAlias = tuple[str, float | None] | tuple[str, Literal["end"]]
SessionInfo: TypeAlias = SessionEntry | Literal["end"] | list[SessionEntry] | None


def _check_id(session_id: str) -> None:
    if not isinstance(session_id, str):
        raise TypeError(f"session id must be a str, not {type(session_id).__name__}")
    if not session_id:
        raise ValueError("session id is empty")
    for ch in session_id:
        # Visible ASCII only: ';' and ',' would split the header's parameters, CR/LF
        # would split the response head, and anything else invisible invites confusion.
        if not ("!" <= ch <= "~") or ch in ";,":
            raise ValueError(f"session id {session_id!r} contains {ch!r}: use visible ASCII "
                             f"characters other than ';' and ','")


def session_header(session_id: str, max_age: float | None = None,
                   end: bool = False) -> tuple[str, str]:
    """``(name, value)`` of the header that pins, renews or (``end``) ends a session.

    ``max_age`` is rounded up to whole seconds (the gateway reads an integer), so a pin
    never expires before the app's session does.  Raises ValueError for an id the
    gateway could misread and for a negative or non-finite ``max_age``.
    """
    _check_id(session_id)
    if end:
        if max_age is not None:
            raise ValueError("a session that ends has no max-age")
        return HEADER, f"{session_id}; end"
    if max_age is None:
        return HEADER, session_id
    if isinstance(max_age, bool) or not isinstance(max_age, int | float):
        raise TypeError(f"max_age must be a number of seconds, not {type(max_age).__name__}")
    if not math.isfinite(max_age) or max_age < 0:
        raise ValueError(f"max_age must be a finite number of seconds >= 0, not {max_age!r}")
    return HEADER, f"{session_id}; max-age={math.ceil(max_age)}"


def opaque_session_id(secret: str | bytes) -> str:
    """A stable, non-reversible stand-in for a session id that is also a credential.

    The same input always gives the same 32 hex characters, so pins and ends match."""
    data = secret.encode() if isinstance(secret, str) else secret
    return hashlib.blake2b(data, digest_size=16, person=b"holdover-sid").hexdigest()


def header_values(info: SessionInfo, request_session_id: str | None = None) -> list[str]:
    """The header values for what a hook returned, ends first.

    ``request_session_id`` is the id a bare ``"end"`` refers to.  Raises ValueError or
    TypeError for anything malformed: a wrong hook is a bug to see, not to hide."""
    if info is None:
        return []
    entries = info if isinstance(info, list) else [info]
    ends: list[str] = []
    pins: list[str] = []
    for entry in entries:
        if entry == "end":
            if not request_session_id:
                raise ValueError('a bare "end" needs the id of the session the request came '
                                 'with; return (session_id, "end") instead')
            ends.append(session_header(request_session_id, end=True)[1])
        elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            sid, what = entry
            if what == "end":
                ends.append(session_header(sid, end=True)[1])
            else:
                pins.append(session_header(sid, what)[1])  # type: ignore[arg-type]
        else:
            raise TypeError(f'expected None, (id, max_age), (id, "end"), "end" or a list of '
                            f'those, not {entry!r}')
    return ends + pins
