"""`holdover init`'s detector on folders written by the tests (no process is started).

Each test writes the files of a small app into a temporary folder and checks what init
would configure for it: the command, the health path, the session cookie, and whether
it is sure, asks, or says it guessed.  tests/e2e/test_init.py runs the results.
"""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

import holdover.init
from holdover import config
from holdover.init import InitError, detect, generate


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def settings(text: str) -> dict:
    return tomllib.loads(text)


@pytest.fixture(autouse=True)
def this_machine_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """What init finds must not depend on this machine: whether gunicorn is installed,
    or how its Python is named on PATH (finding that out starts a process)."""
    monkeypatch.setattr(detect, "installed", lambda package: package != "gunicorn")
    monkeypatch.setattr(holdover.init, "python_word", lambda: "python")


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


def test_a_gradio_app_mounted_in_fastapi_runs_with_uvicorn(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": """
        import gradio as gr
        from fastapi import FastAPI
        app = FastAPI()
        demo = gr.Interface(str, "text", "text")
        app = gr.mount_gradio_app(app, demo, path="/ui")
    """})
    s, _ = gen(tmp_path)
    assert "-m uvicorn main:app" in s["app"]["command"]
