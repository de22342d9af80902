"""`holdover init` on real minimal apps: what it recognises, and that the result runs.

The unit tests feed folders to the detector (no process); the end-to-end tests write a
minimal app of each framework into a temporary folder, run `holdover init` there with
no terminal (as CI would), then `holdover run` on the file it wrote — moved to
kernel-chosen ports, nothing else changed — and make a request through the gateway.
A worker becomes ready only when the health path init chose answers 2xx, so a started
gateway also proves that path is one the framework really serves.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import GatewayProcess

from holdover import config
from holdover.init import InitError, detect, generate

PY = sys.executable


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def init(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "holdover", "init", *args], cwd=folder, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def settings(text: str) -> dict:
    return tomllib.loads(text)


# -- recognising, without processes -------------------------------------------------------


@pytest.fixture(autouse=True)
def no_gunicorn(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """What the unit tests expect must not depend on gunicorn being installed here."""
    if "init_then_run" not in request.node.name:
        monkeypatch.setattr(detect, "installed", lambda package: package != "gunicorn")


def gen(folder: Path, **kw) -> tuple[dict, str]:
    said: list[str] = []
    text, _ = generate(folder, folder / "holdover.toml", say=said.append, **kw)
    config.from_dict(tomllib.loads(text), path=folder / "holdover.toml", text=text)
    return settings(text), "\n".join(said)


def test_flask_with_sessions_and_a_health_route(tmp_path: Path) -> None:
    write(tmp_path, {"web.py": """
        from flask import Flask, session
        app = Flask(__name__)

        @app.get("/healthz")
        def health():
            return "ok"
    """})
    s, said = gen(tmp_path)
    assert said == ""  # sure: no question, no remark
    assert s["app"]["session_cookie"] == "session"
    assert s["app"]["health_path"] == "/healthz"
    assert "--app web:app run" in s["app"]["command"] and "{port}" in s["app"]["command"]


def test_gunicorn_is_used_when_it_is_a_dependency(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": "from flask import Flask\napp = Flask(__name__)\n",
                     "requirements.txt": "flask>=3\ngunicorn==23.0  # production server\n"})
    s, _ = gen(tmp_path)
    cmd = s["app"]["command"]
    assert "-m gunicorn --bind 127.0.0.1:{port} --workers 1" in cmd and cmd.endswith("app:app")
    assert "session_cookie" not in s["app"]  # no flask.session import: holdover's own cookie
    assert s["app"]["health_path"] == ""  # Flask serves no health path: TCP readiness


def test_django_settings_name_the_session_cookie(tmp_path: Path) -> None:
    write(tmp_path, {
        "manage.py": "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', "
                     "'shop.settings')\n",
        "shop/__init__.py": "", "shop/settings.py": "SESSION_COOKIE_NAME = 'shopsid'\n",
        "shop/urls.py": "from django.urls import path\nurlpatterns = [path('ping/', None)]\n"})
    s, _ = gen(tmp_path)
    assert s["app"]["session_cookie"] == "shopsid"
    assert s["app"]["health_path"] == "/ping"
    assert "manage.py runserver 127.0.0.1:{port} --noreload" in s["app"]["command"]


def test_a_procfile_gives_the_command_on_loopback(tmp_path: Path) -> None:
    write(tmp_path, {"Procfile": "release: migrate\nweb: uvicorn main:api --host 0.0.0.0 "
                                 "--port $PORT\n",
                     "main.py": "from fastapi import FastAPI\napi = FastAPI()\n"})
    s, _ = gen(tmp_path)
    assert s["app"]["command"] == "uvicorn main:api --host 127.0.0.1 --port {port}"
    assert s["app"]["health_path"] == "/openapi.json"
    # A Procfile that forks several processes per worker gets a note in the file.
    (tmp_path / "Procfile").write_text("web: gunicorn -w 4 main:api -k uvicorn.workers.UvicornWorker\n")
    text, _ = generate(tmp_path, tmp_path / "holdover.toml", say=print)
    assert "# NOTE: the Procfile starts several processes per worker" in text
    assert "--workers 1" in text and "$PORT" in text  # and it does not use $PORT either


def test_a_pyproject_script_is_a_guess_said_aloud(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project]\nname = 'x'\nversion = '1'\n"
                                       "[project.scripts]\nserve-x = 'x.cli:main'\n"})
    s, said = gen(tmp_path)
    assert s["app"]["command"] == "serve-x"
    assert "not sure" in said and "took script" in said


def test_two_apps_ask_one_question(tmp_path: Path) -> None:
    write(tmp_path, {"dashboard.py": "import streamlit as st\nst.write(1)\n",
                     "api.py": "from fastapi import FastAPI\napp = FastAPI()\n"})
    asked: list[str] = []

    def second(question: str) -> str:
        asked.append(question)
        return "2"

    _, found = generate(tmp_path, tmp_path / "holdover.toml", ask=second, say=print)
    assert len(asked) == 1 and "1. " in asked[0] and "2. " in asked[0]
    other = next(f for f in ("Streamlit", "FastAPI") if f"1. {f}" in asked[0])
    assert found.framework != other  # the second option was taken
    # Without a terminal: the best guess, said aloud.
    _, said = gen(tmp_path)
    assert "not sure which app this is; took" in said


def test_nothing_recognisable_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path, {"notes.txt": "hello\n"})
    with pytest.raises(InitError, match="--command"):
        gen(tmp_path)
    s, _ = gen(tmp_path, command="./serve --port {port}")
    assert s["app"]["command"] == "./serve --port {port}"


def test_print_shows_and_never_overwrites(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": "import gradio as gr\ngr.Interface(str, 'text', 'text')"
                               ".launch(server_port=7860)\n"})
    shown = init(tmp_path, "--print")
    assert shown.returncode == 0, shown.stderr
    assert not (tmp_path / "holdover.toml").exists()
    s = settings(shown.stdout)
    assert s["app"]["env"]["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert "remove it" in shown.stdout  # the note about server_port=7860
    (tmp_path / "holdover.toml").write_text("# mine\n")
    again = init(tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (tmp_path / "holdover.toml").read_text() == "# mine\n"


# -- each framework: init, then run the result --------------------------------------------

APPS: dict[str, tuple[dict[str, str], str]] = {
    "django": ({
        "manage.py": """
            import os, sys
            if __name__ == "__main__":
                os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
                from django.core.management import execute_from_command_line
                execute_from_command_line(sys.argv)
        """,
        "mysite/__init__.py": "",
        "mysite/settings.py": """
            SECRET_KEY = "test-only"
            DEBUG = False
            ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
            ROOT_URLCONF = "mysite.urls"
            INSTALLED_APPS = ["django.contrib.sessions"]
            MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
            SESSION_ENGINE = "django.contrib.sessions.backends.cache"
            DATABASES = {}
        """,
        "mysite/urls.py": """
            import os
            from django.http import HttpResponse
            from django.urls import path

            def index(request):
                request.session["seen"] = request.session.get("seen", 0) + 1
                return HttpResponse("django " + os.environ["HOLDOVER_REVISION"])

            urlpatterns = [path("", index)]
        """,
        "mysite/wsgi.py": """
            import os
            from django.core.wsgi import get_wsgi_application
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
            application = get_wsgi_application()
        """}, "/"),
    "flask": ({"app.py": """
        from flask import Flask, session
        app = Flask(__name__)
        app.secret_key = "test-only"

        @app.get("/")
        def index():
            session["seen"] = session.get("seen", 0) + 1
            return "flask"
    """}, "/"),
    "fastapi": ({"main.py": """
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/")
        def index():
            return {"fastapi": True}
    """}, "/"),
    "starlette": ({"asgi.py": """
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def index(request):
            return PlainTextResponse("starlette")

        app = Starlette(routes=[Route("/", index)])
    """}, "/"),
    "streamlit": ({"app.py": """
        import streamlit as st
        st.title("hello")
    """}, "/"),
    "gradio": ({"app.py": """
        import gradio as gr

        with gr.Blocks() as demo:
            gr.Markdown("hello")

        if __name__ == "__main__":
            demo.launch()
    """}, "/"),
    "dash": ({"app.py": """
        from dash import Dash, html
        app = Dash(__name__)
        app.layout = html.Div("hello")

        if __name__ == "__main__":
            app.run()
    """}, "/"),
    "panel": ({"app.py": """
        import panel as pn
        pn.panel("hello").servable()
    """}, "/app"),
}


def get(port: int, path: str, cookies: str = "") -> tuple[int, http.client.HTTPMessage, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Accept": "text/html",
                                           **({"Cookie": cookies} if cookies else {})})
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode(errors="replace")
    finally:
        conn.close()


class InitGateway(GatewayProcess):
    """`holdover run` on the file `holdover init` wrote."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.config = folder / "holdover.toml"
        self._start()


@pytest.mark.parametrize("framework", sorted(APPS))
def test_init_then_run(framework: str, tmp_path: Path) -> None:
    pytest.importorskip(framework)
    files, path = APPS[framework]
    folder = write(tmp_path / "app", files)
    # Bokeh checks a WebSocket's Origin against the public address: give the real one.
    from conftest import free_port

    listen = f"127.0.0.1:{free_port()}" if framework == "panel" else "127.0.0.1:0"
    done = init(folder, "--listen", listen)
    assert done.returncode == 0, done.stderr
    assert "not sure" not in done.stderr  # every one of these is recognised for sure
    text = (folder / "holdover.toml").read_text()
    assert done.stdout.startswith(f"wrote {folder / 'holdover.toml'} for the "), done.stdout
    assert framework in done.stdout.lower()
    assert "{port}" in settings(text)["app"]["command"] or "$PORT" in text
    check = subprocess.run([PY, "-m", "holdover", "check"], cwd=folder, text=True,
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr
    gw = InitGateway(folder)
    try:
        gw.wait_ready(timeout=240)
        status, headers, body = get(gw.port, path)
        assert status == 200, (status, body[:500], gw.log[-3000:])
        if framework in ("django", "flask", "starlette"):
            assert framework in body, body[:300]
        # The session the first answer gave (the app's cookie, or holdover's) is pinned:
        # the next request carrying it is served by v1 and says so.
        cookies = "; ".join(c.split(";")[0] for c in headers.get_all("Set-Cookie") or [])
        assert cookies, headers
        status, headers, _ = get(gw.port, path, cookies)
        assert status == 200 and headers["X-Holdover-Revision"] == "v1", headers
        assert "Traceback" not in gw.log, gw.log[-3000:]
    finally:
        gw.stop_and_check()
