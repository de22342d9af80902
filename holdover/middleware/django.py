"""The session protocol for Django, from ``request.session``.

Add the middleware *above* ``SessionMiddleware``, so that it sees the session after
Django has saved it (a new session only gets its key then)::

    MIDDLEWARE = [
        "holdover.middleware.django.HoldoverSessionMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        ...
    ]

For each response whose request used the session, it sends the session's key (as
``opaque_session_id(key)``: the key is a credential) with ``max-age`` from
``request.session.get_expiry_age()``; when the request came with a session and ends
without one (``logout()``, ``session.flush()``, or a stale key) it sends ``end``.
A request that never touched ``request.session`` gets no header and no session load.

Django cannot send one header twice, so when the key changes (``login()`` cycles it) only
the new key is pinned; the old pin ends on its own when its max-age runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import HEADER, opaque_session_id, session_header

__all__ = ["HoldoverSessionMiddleware"]


class HoldoverSessionMiddleware:
    """Django middleware: ``X-Holdover-Session`` from ``request.session`` (sync or async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction
        from django.conf import settings  # lazily: holdover does not depend on Django

        self.get_response = get_response
        self.cookie_name: str = settings.SESSION_COOKIE_NAME
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        start = self._start_key(request)
        response = self.get_response(request)
        session = self._used_session(request)
        if session is not None:
            # Load first: a key whose session no longer exists reads as None afterwards.
            age = session.get_expiry_age() if session.session_key else None
            self._annotate(response, start, session.session_key, age)
        return response

    async def __acall__(self, request: Any) -> Any:
        start = self._start_key(request)
        response = await self.get_response(request)
        session = self._used_session(request)
        if session is not None:
            age = None
            if session.session_key:
                if hasattr(session, "aget_expiry_age"):  # Django >= 5.0
                    age = await session.aget_expiry_age()
                else:
                    from asgiref.sync import sync_to_async
                    age = await sync_to_async(session.get_expiry_age)()
            self._annotate(response, start, session.session_key, age)
        return response

    def _start_key(self, request: Any) -> str | None:
        """The session key the request came with (below SessionMiddleware: its session's;
        above it, the session cookie, read now because views may change it)."""
        session = getattr(request, "session", None)
        if session is not None:
            return session.session_key or None
        return request.COOKIES.get(self.cookie_name) or None

    @staticmethod
    def _used_session(request: Any) -> Any:
        session = getattr(request, "session", None)
        if session is None or not (session.accessed or session.modified):
            return None  # untouched: nothing changed, and loading it would cost a query
        return session

    @staticmethod
    def _annotate(response: Any, start: str | None, key: str | None, age: float | None) -> None:
        if key:
            # A custom expiry in the past gives a negative age: the session is over now.
            age = max(0.0, age) if age is not None else None
            response.headers[HEADER] = session_header(opaque_session_id(key), age)[1]
        elif start:
            response.headers[HEADER] = session_header(opaque_session_id(start), end=True)[1]
