"""`holdover init` on real minimal apps: what it recognises, and that the result runs.

Each test writes a minimal app of one framework into a temporary folder, runs
`holdover init` there with no terminal (as CI would), then `holdover run` on the file it
wrote — moved to kernel-chosen ports, nothing else changed — and makes a request through
the gateway (tests/unit/test_init_detect.py checks the detector without processes).
A worker becomes ready only when the health path init chose answers 2xx, so a started
gateway also proves that path is one the framework really serves.
"""

from __future__ import annotations

import http.client
import importlib
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import GatewayProcess

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
    importlib.import_module(framework)  # in the test extra: missing means a broken setup
    files, path = APPS[framework]
    folder = write(tmp_path / "app", files)
    # Bokeh checks a WebSocket's Origin against the public address: give the real one.
    from conftest import free_port

    listen = f"127.0.0.1:{free_port()}" if framework == "panel" else "127.0.0.1:0"
    done = init(folder, "--listen", listen)
    assert done.returncode == 0, done.stderr
    assert "not sure" not in done.stderr  # every one of these is recognised for sure
    text = (folder / "holdover.toml").read_text()
    if framework == "panel":  # only the public port must be known: the admin side's is any
        text = re.sub(r'admin_listen = "127\.0\.0\.1:\d+"', 'admin_listen = "127.0.0.1:0"', text)
        (folder / "holdover.toml").write_text(text)
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
