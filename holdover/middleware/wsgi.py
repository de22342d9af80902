"""The session protocol for WSGI apps, and an adapter for Flask.

``HoldoverSessionMiddleware`` asks a hook, when the app starts its response, what to say
about the session and appends ``X-Holdover-Session`` headers accordingly.  It reads the
answer at ``start_response`` time, not before the app runs, because logging in and out
happen inside the app.

``for_flask`` builds that hook from ``flask.session``.  Flask's own session lives in a
signed cookie and has no server-side id, so the app marks a session by storing an id in
``flask.session`` under a key (default ``"holdover_session_id"``) when it logs a user in,
and drops it (``session.clear()`` or ``session.pop(key)``) when it logs them out::

    app = Flask(__name__)
    for_flask(app)

    @app.post("/login")
    def login():
        session["holdover_session_id"] = secrets.token_urlsafe(16)  # or the id of the
        ...                                                          # server-side session

Every response of a request that has the id renews the pin for
``app.permanent_session_lifetime`` (the longest Flask accepts its cookie); a request that
came with the id and ends without it ends the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import HEADER, SessionInfo, header_values, opaque_session_id

if TYPE_CHECKING:
    from types import TracebackType
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    _ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

__all__ = ["ENVIRON_SESSION_ID", "FLASK_SESSION_KEY", "HoldoverSessionMiddleware", "for_flask"]

# Where a bare "end" finds the id of the session the request came with.
ENVIRON_SESSION_ID = "holdover.session_id"
FLASK_SESSION_KEY = "holdover_session_id"
_FLASK_START = "holdover.flask.start_id"  # the raw id in flask.session when the request began


class HoldoverSessionMiddleware:
    """Adds ``X-Holdover-Session`` to responses of a WSGI app, as ``get_session`` says.

    ``get_session(environ)`` is called each time the app calls ``start_response`` and
    returns a ``holdover.middleware.SessionInfo``: None, ``(id, max_age)``,
    ``(id, "end")``, ``"end"`` (the id then comes from ``environ["holdover.session_id"]``)
    or a list of those.  The app's own headers are passed on untouched.
    """

    def __init__(self, app: WSGIApplication,
                 get_session: Callable[[WSGIEnvironment], SessionInfo]) -> None:
        self.app = app
        self.get_session = get_session

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]],
                  exc_info: _ExcInfo | None = None) -> Callable[[bytes], object]:
            values = header_values(self.get_session(environ), environ.get(ENVIRON_SESSION_ID))
            if values:
                headers = [*headers, *((HEADER, v) for v in values)]
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)  # type: ignore[arg-type]


def for_flask(app: Any, key: str = FLASK_SESSION_KEY) -> HoldoverSessionMiddleware:
    """Speak the session protocol for a Flask app; installs itself as ``app.wsgi_app``.

    The session id is whatever the app stores in ``flask.session[key]`` (sent as
    ``opaque_session_id(id)``, so a server-side session id is never exposed).  Returns
    the installed middleware; calling it twice on one app returns the first one.
    """
    import flask  # lazily: holdover does not depend on Flask

    existing = app.extensions.get("holdover")
    if existing is not None:
        return existing

    def read() -> Any:
        # Reading must not mark the session "accessed": Flask would add "Vary: Cookie" to
        # every response.  Since Flask 3.1.3 the public ``session`` marks it on any use, so
        # the request context's own attribute is read where it exists; and ``dict.get``
        # skips SecureCookieSession.get, which marks it too.
        ctx = getattr(flask.globals, "request_ctx", None)
        session = getattr(ctx, "__dict__", {}).get("_session") if ctx is not None else None
        if session is None:
            session = flask.session._get_current_object()  # type: ignore[attr-defined]
        return dict.get(session, key) if isinstance(session, dict) else session.get(key)

    def started(sender: Any, **_: Any) -> None:
        flask.request.environ[_FLASK_START] = read()

    def get_session(environ: WSGIEnvironment) -> SessionInfo:
        if not flask.has_request_context():
            return None
        start = environ.get(_FLASK_START)
        now = read()
        out: list[Any] = []
        if start and start != now:
            out.append((opaque_session_id(str(start)), "end"))
        if now:
            out.append((opaque_session_id(str(now)),
                        app.permanent_session_lifetime.total_seconds()))
        return out or None

    # request_started fires after the session is opened and before any before_request
    # function, which could otherwise answer first and skip ours.
    flask.request_started.connect(started, app, weak=False)
    mw = HoldoverSessionMiddleware(app.wsgi_app, get_session)
    app.wsgi_app = mw
    app.extensions["holdover"] = mw
    return mw
