"""The session-protocol middlewares, called directly: no sockets, no gateway.

The Flask and Django tests run only where those packages are installed; holdover itself
depends on neither.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import require

from holdover.middleware import (
    HEADER,
    header_values,
    opaque_session_id,
    session_header,
)
from holdover.middleware import asgi as hasgi
from holdover.middleware import wsgi as hwsgi

BAD_IDS = ["", "a;b", "a,b", "a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb", "a b",
           " a", "a\tb", "caf\u00e9"]


# -- the header itself ----------------------------------------------------------------

def test_session_header_values() -> None:
    assert session_header("u1") == (HEADER, "u1")
    assert session_header("u1", 60) == (HEADER, "u1; max-age=60")
    assert session_header("u1", 0) == (HEADER, "u1; max-age=0")
    assert session_header("u1", 59.2) == (HEADER, "u1; max-age=60")  # never shorter
    assert session_header("u1", end=True) == (HEADER, "u1; end")
    assert session_header("A-z_0.9~!") == (HEADER, "A-z_0.9~!")


@pytest.mark.parametrize("sid", BAD_IDS)
def test_session_header_refuses_ids_the_gateway_could_misread(sid: str) -> None:
    with pytest.raises(ValueError):
        session_header(sid)
    with pytest.raises(ValueError):
        session_header(sid, end=True)


@pytest.mark.parametrize("max_age", [-1, -0.5, math.nan, math.inf])
def test_session_header_refuses_bad_max_age(max_age: float) -> None:
    with pytest.raises(ValueError):
        session_header("u1", max_age)


def test_session_header_refuses_wrong_types_and_contradictions() -> None:
    with pytest.raises(TypeError):
        session_header(b"u1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        session_header("u1", "60")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        session_header("u1", 60, end=True)


def test_opaque_session_id_is_stable_valid_and_hides_the_secret() -> None:
    a = opaque_session_id("secret-session-key")
    assert a == opaque_session_id(b"secret-session-key")
    assert a != opaque_session_id("secret-session-kez")
    assert len(a) == 32 and "secret" not in a
    session_header(a)  # always a valid id


def test_header_values_forms_and_order() -> None:
    assert header_values(None) == []
    assert header_values(("u1", 30)) == ["u1; max-age=30"]
    assert header_values(("u1", None)) == ["u1"]
    assert header_values(("u1", "end")) == ["u1; end"]
    assert header_values("end", "u1") == ["u1; end"]
    # A rotation: the end goes first, because the gateway's cookie follows the last one.
    assert header_values([("new", 30), ("old", "end")]) == ["old; end", "new; max-age=30"]
    with pytest.raises(ValueError):
        header_values("end")  # which session?
    with pytest.raises(ValueError):
        header_values(("a;b", 30))
    for bad in ("u1", ("u1",), ("u1", 1, 2), (1, 30), {"u1": 30}):
        with pytest.raises(TypeError):
            header_values(bad)  # type: ignore[arg-type]


# -- WSGI -----------------------------------------------------------------------------

APP_HEADERS = [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
               ("X-Other", "yes")]


def plain_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Decides about the session while it handles the request, as real apps do."""
    environ["app.session"] = environ.get("app.wants")
    headers = list(APP_HEADERS)
    start_response("200 OK", headers)
    assert headers == APP_HEADERS  # the middleware did not change the app's list
    return [b"hello"]


def call_wsgi(app: Any, **environ: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    env: dict[str, Any] = dict(environ)
    setup_testing_defaults(env)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Callable[[bytes], None]:
        got["status"], got["headers"], got["exc_info"] = status, headers, exc_info
        return lambda data: None

    body = b"".join(app(env, start_response))
    return got["status"], got["headers"], body


def session_values(headers: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in headers if k.lower() == "x-holdover-session"]


def wsgi_mw() -> hwsgi.HoldoverSessionMiddleware:
    return hwsgi.HoldoverSessionMiddleware(plain_app, lambda env: env["app.session"])


def test_wsgi_adds_the_header_after_the_app_decided() -> None:
    status, headers, body = call_wsgi(wsgi_mw(), **{"app.wants": ("u1-x", 60)})
    assert status == "200 OK" and body == b"hello"
    assert headers[:len(APP_HEADERS)] == APP_HEADERS  # the app's own, untouched and first
    assert headers[len(APP_HEADERS):] == [("X-Holdover-Session", "u1-x; max-age=60")]


def test_wsgi_without_a_session_adds_nothing() -> None:
    _, headers, _ = call_wsgi(wsgi_mw())
    assert headers == APP_HEADERS


def test_wsgi_end() -> None:
    _, headers, _ = call_wsgi(wsgi_mw(), **{"app.wants": ("u1-x", "end")})
    assert session_values(headers) == ["u1-x; end"]
    # A bare "end" ends the session the request came with, when the id is known.
    _, headers, _ = call_wsgi(wsgi_mw(), **{"app.wants": "end",
                                            hwsgi.ENVIRON_SESSION_ID: "u1-x"})
    assert session_values(headers) == ["u1-x; end"]
    with pytest.raises(ValueError):
        call_wsgi(wsgi_mw(), **{"app.wants": "end"})


def test_wsgi_rotation_sends_end_first() -> None:
    _, headers, _ = call_wsgi(wsgi_mw(), **{"app.wants": [("new", 5), ("old", "end")]})
    assert session_values(headers) == ["old; end", "new; max-age=5"]


@pytest.mark.parametrize("sid", ["a;b", "a,b", "a\r\nSet-Cookie: x=1", "a\x01"])
def test_wsgi_refuses_invalid_ids(sid: str) -> None:
    with pytest.raises(ValueError):
        call_wsgi(wsgi_mw(), **{"app.wants": (sid, 60)})


def test_wsgi_passes_exc_info_on() -> None:
    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"sorry"]

    mw = hwsgi.HoldoverSessionMiddleware(failing, lambda env: ("u1", 10))
    status, headers, _ = call_wsgi(mw)
    assert status.startswith("500")
    assert session_values(headers) == ["u1; max-age=10"]


# -- ASGI -----------------------------------------------------------------------------

def run_asgi(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # nothing more will come
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


ASGI_HEADERS = [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1")]


def asgi_http_app(decide: Callable[[dict[str, Any]], None]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await receive()
        decide(scope)
        start = {"type": "http.response.start", "status": 200, "headers": list(ASGI_HEADERS)}
        await send(start)
        assert start["headers"] == ASGI_HEADERS  # the app's message was not changed
        await send({"type": "http.response.body", "body": b"hi"})
    return app


def http_scope(**kw: Any) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": [], **kw}


def asgi_session_values(message: dict[str, Any]) -> list[bytes]:
    return [v for k, v in message.get("headers", []) if k.lower() == b"x-holdover-session"]


def set_state(value: Any) -> Callable[[dict[str, Any]], None]:
    def decide(scope: dict[str, Any]) -> None:
        scope["state"]["holdover_session"] = value  # what request.state.x = ... does
    return decide


def test_asgi_http_from_request_state() -> None:
    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(set_state(("u1-x", 60))))
    sent = run_asgi(mw, http_scope(), [{"type": "http.request", "body": b""}])
    start, body = sent
    assert start["status"] == 200
    assert start["headers"][:len(ASGI_HEADERS)] == ASGI_HEADERS
    assert start["headers"][len(ASGI_HEADERS):] == [(b"x-holdover-session", b"u1-x; max-age=60")]
    assert body == {"type": "http.response.body", "body": b"hi"}


def test_asgi_http_absent_and_end() -> None:
    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(lambda scope: None))
    start, _ = run_asgi(mw, http_scope(), [{"type": "http.request"}])
    assert start["headers"] == ASGI_HEADERS

    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(set_state(("u1-x", "end"))))
    start, _ = run_asgi(mw, http_scope(), [{"type": "http.request"}])
    assert asgi_session_values(start) == [b"u1-x; end"]

    def bare_end(scope: dict[str, Any]) -> None:
        scope["state"]["holdover_session_id"] = "u1-x"  # e.g. set by a dependency
        scope["state"]["holdover_session"] = "end"
    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(bare_end))
    start, _ = run_asgi(mw, http_scope(), [{"type": "http.request"}])
    assert asgi_session_values(start) == [b"u1-x; end"]


def test_asgi_keeps_a_state_the_server_gave() -> None:
    state = {"db": "pool"}
    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(set_state(("u1", None))))
    start, _ = run_asgi(mw, http_scope(state=state), [{"type": "http.request"}])
    assert asgi_session_values(start) == [b"u1"]
    assert state == {"db": "pool", "holdover_session": ("u1", None)}


def test_asgi_custom_hook_and_invalid_ids() -> None:
    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(lambda scope: None),
                                         lambda scope: ("from-" + scope["path"][1:], 5))
    start, _ = run_asgi(mw, http_scope(path="/hook"), [{"type": "http.request"}])
    assert asgi_session_values(start) == [b"from-hook; max-age=5"]

    mw = hasgi.HoldoverSessionMiddleware(asgi_http_app(set_state(("a\r\nb", 5))))
    with pytest.raises(ValueError):
        run_asgi(mw, http_scope(), [{"type": "http.request"}])


def test_asgi_websocket_accept_carries_the_header() -> None:
    async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        scope["state"]["holdover_session"] = ("u1-ws", 120)
        await send({"type": "websocket.accept", "subprotocol": "chat",
                    "headers": [(b"x-other", b"yes")]})
        await send({"type": "websocket.send", "text": "hello"})
        await send({"type": "websocket.close", "code": 1000})

    mw = hasgi.HoldoverSessionMiddleware(ws_app)
    sent = run_asgi(mw, {"type": "websocket", "path": "/ws", "headers": []},
                    [{"type": "websocket.connect"}])
    accept, msg, close = sent
    assert accept["type"] == "websocket.accept" and accept["subprotocol"] == "chat"
    assert accept["headers"] == [(b"x-other", b"yes"), (b"x-holdover-session", b"u1-ws; max-age=120")]
    assert msg == {"type": "websocket.send", "text": "hello"}
    assert close == {"type": "websocket.close", "code": 1000}


def test_asgi_websocket_accept_without_headers_and_denial() -> None:
    async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        scope["state"]["holdover_session"] = ("u1-ws", "end")
        if scope["path"] == "/deny":  # the WebSocket Denial Response extension
            await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no"})
        else:
            await send({"type": "websocket.accept"})

    mw = hasgi.HoldoverSessionMiddleware(ws_app)
    (accept,) = run_asgi(mw, {"type": "websocket", "path": "/ws"}, [{"type": "websocket.connect"}])
    assert accept == {"type": "websocket.accept", "headers": [(b"x-holdover-session", b"u1-ws; end")]}
    deny, body = run_asgi(mw, {"type": "websocket", "path": "/deny"},
                          [{"type": "websocket.connect"}])
    assert asgi_session_values(deny) == [b"u1-ws; end"]
    assert body["type"] == "websocket.http.response.body"


def test_asgi_lifespan_passes_through() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert "state" not in scope or scope["state"] == {}
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})

    mw = hasgi.HoldoverSessionMiddleware(app, lambda scope: pytest.fail("not for lifespan"))
    sent = run_asgi(mw, {"type": "lifespan"}, [{"type": "lifespan.startup"}])
    assert sent == [{"type": "lifespan.startup.complete"}]


# -- Flask ----------------------------------------------------------------------------

@pytest.fixture
def flask_app() -> Any:
    flask = require("flask")
    app = flask.Flask(__name__)
    app.secret_key = "test"
    app.permanent_session_lifetime = 3600.5  # Flask turns it into a timedelta

    @app.get("/login")
    def login() -> str:
        flask.session["holdover_session_id"] = flask.request.args.get("sid", "server-side-1")
        return "in"

    @app.get("/page")
    def page() -> str:
        return "page"

    @app.get("/logout")
    def logout() -> str:
        flask.session.clear()
        return "out"

    hwsgi.for_flask(app)
    return app


def test_flask_session_lifecycle(flask_app: Any) -> None:
    c = flask_app.test_client()
    sid = opaque_session_id("server-side-1")

    r = c.get("/page")  # no session: nothing said, and the session left untouched
    assert r.headers.getlist(HEADER) == []
    assert "Vary" not in r.headers

    r = c.get("/login")
    assert r.headers.getlist(HEADER) == [f"{sid}; max-age=3601"]
    assert "server-side-1" not in r.headers.get(HEADER, "")  # only the opaque id

    r = c.get("/page")  # every response renews
    assert r.headers.getlist(HEADER) == [f"{sid}; max-age=3601"]
    assert r.headers["Content-Type"].startswith("text/html")

    r = c.get("/logout")
    assert r.headers.getlist(HEADER) == [f"{sid}; end"]

    r = c.get("/page")
    assert r.headers.getlist(HEADER) == []


def test_flask_rotation_ends_the_old_id_first(flask_app: Any) -> None:
    c = flask_app.test_client()
    c.get("/login?sid=first")
    r = c.get("/login?sid=second")
    assert r.headers.getlist(HEADER) == [f"{opaque_session_id('first')}; end",
                                         f"{opaque_session_id('second')}; max-age=3601"]


def test_flask_custom_key_and_single_install() -> None:
    flask = require("flask")
    app = flask.Flask(__name__)
    app.secret_key = "test"

    @app.get("/login")
    def login() -> str:
        flask.session["sid"] = "abc"
        return "in"

    mw = hwsgi.for_flask(app, key="sid")
    assert hwsgi.for_flask(app, key="sid") is mw and app.wsgi_app is mw
    r = app.test_client().get("/login")
    default_age = int(app.permanent_session_lifetime.total_seconds())  # 31 days
    assert r.headers.getlist(HEADER) == [f"{opaque_session_id('abc')}; max-age={default_age}"]


# -- Django ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dj() -> Any:
    django = require("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="test", ALLOWED_HOSTS=["*"], USE_TZ=True,
            INSTALLED_APPS=["django.contrib.sessions"],
            SESSION_ENGINE="django.contrib.sessions.backends.cache",
            SESSION_COOKIE_AGE=1209600,
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}})
        django.setup()
    return django


def django_views() -> Callable[[Any], Any]:
    from django.http import HttpResponse

    def view(request: Any) -> Any:
        if request.path == "/login":
            request.session["user"] = "u1"
            request.session.cycle_key()
        elif request.path == "/page":
            request.session.get("user")
        elif request.path == "/logout":
            request.session.flush()
        resp = HttpResponse("ok")
        resp["X-Other"] = "yes"
        return resp  # "/static" never touches the session
    return view


def django_chain(holdover_first: bool = True, is_async: bool = False) -> Any:
    from django.contrib.sessions.middleware import SessionMiddleware

    from holdover.middleware.django import HoldoverSessionMiddleware

    view = django_views()
    if is_async:
        sync_view = view

        async def view(request: Any) -> Any:  # type: ignore[no-redef]
            return sync_view(request)
    if holdover_first:  # the documented order: above SessionMiddleware
        return HoldoverSessionMiddleware(SessionMiddleware(view))
    return SessionMiddleware(HoldoverSessionMiddleware(view))


def django_get(chain: Any, path: str, cookie: str | None = None, is_async: bool = False
               ) -> Any:
    from django.test import RequestFactory

    rf = RequestFactory()
    if cookie:
        rf.cookies["sessionid"] = cookie
    request = rf.get(path)
    return asyncio.run(chain(request)) if is_async else chain(request)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_django_session_lifecycle(dj: Any, is_async: bool) -> None:
    chain = django_chain(is_async=is_async)

    r = django_get(chain, "/page", is_async=is_async)  # anonymous: no session, nothing said
    assert not r.has_header(HEADER) and r["X-Other"] == "yes"

    r = django_get(chain, "/login", is_async=is_async)
    key = r.cookies["sessionid"].value
    assert r[HEADER] == f"{opaque_session_id(key)}; max-age=1209600"
    assert key not in r[HEADER]
    assert r["X-Other"] == "yes"

    r = django_get(chain, "/page", key, is_async=is_async)
    assert r[HEADER] == f"{opaque_session_id(key)}; max-age=1209600"

    r = django_get(chain, "/static", key, is_async=is_async)  # session untouched: no load
    assert not r.has_header(HEADER)

    r = django_get(chain, "/logout", key, is_async=is_async)
    assert r[HEADER] == f"{opaque_session_id(key)}; end"
    assert r.cookies["sessionid"].value == ""  # Django deleted its cookie too

    r = django_get(chain, "/page", key, is_async=is_async)  # a stale key: the session is gone
    assert r[HEADER] == f"{opaque_session_id(key)}; end"


def test_django_below_session_middleware_sees_existing_sessions(dj: Any) -> None:
    above, below = django_chain(), django_chain(holdover_first=False)
    r = django_get(below, "/login")  # login() cycles the key at once: pinned already
    assert r[HEADER] == f"{opaque_session_id(r.cookies['sessionid'].value)}; max-age=1209600"
    key = django_get(above, "/login").cookies["sessionid"].value
    r = django_get(below, "/page", key)
    assert r[HEADER] == f"{opaque_session_id(key)}; max-age=1209600"
    r = django_get(below, "/logout", key)
    assert r[HEADER] == f"{opaque_session_id(key)}; end"


def test_django_custom_expiry(dj: Any) -> None:
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.http import HttpResponse

    from holdover.middleware.django import HoldoverSessionMiddleware

    def view(request: Any) -> Any:
        request.session["user"] = "u1"
        request.session.set_expiry(300)
        return HttpResponse("ok")

    r = django_get(HoldoverSessionMiddleware(SessionMiddleware(view)), "/login")
    assert r[HEADER].endswith("; max-age=300")
