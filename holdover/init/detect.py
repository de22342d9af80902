"""Which framework an app uses, and how holdover should run it: one detector each.

Each detector looks at the scanned folder (``folder.py``) and yields ``Finding``s: a
command with ``{port}``, a health path the framework really serves (or none, for TCP
readiness), the session cookie, and a score for how sure it is.  ``findings`` merges
them — a specific framework beats the generic one it is built on, a dependency list or
a Procfile adds certainty — and orders them best first.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .folder import (
    HEALTH_NAMES,
    PyFile,
    dependencies,
    local_command,
    procfile_web,
    pyproject,
    python_files,
    read_python,
)

SURE = 3  # a finding's score at which init asks nothing


def installed(package: str) -> bool:
    """Whether the Python that runs holdover can import ``package``."""
    return importlib.util.find_spec(package) is not None


@dataclass
class Finding:
    """One way this folder could be run behind holdover, and how sure init is of it."""

    framework: str
    entry: str  # the file (or module) it starts from
    command: str
    score: int
    why: str
    health_path: str = ""
    health_why: str = "ready when its port accepts connections (the framework serves no " \
                      "health path of its own)"
    session_cookie: str = ""
    cookie_why: str = ""
    env: dict[str, str] = field(default_factory=dict)
    app: dict[str, str] = field(default_factory=dict)  # further [app] settings
    notes: list[str] = field(default_factory=list)
    module: str = ""  # the Python package the command needs
    command_why: str = "one worker; {port} is the port holdover gives it"

    @property
    def label(self) -> str:
        return f"{self.framework} ({self.entry})"


class Scan:
    """Everything read from the folder once, shared by the detectors."""

    def __init__(self, root: Path, python: str, listen: tuple[str, int]) -> None:
        self.root = root
        self.py = python
        self.listen = listen
        self.files = [f for rel in python_files(root) if (f := read_python(root, rel))]
        self.deps = dependencies(root)
        self.procfile = procfile_web(root)
        data = pyproject(root)
        self.scripts = {**data.get("project", {}).get("scripts", {}),
                        **data.get("tool", {}).get("poetry", {}).get("scripts", {})}

    def has(self, package: str) -> bool:
        """Listed as a dependency, or importable by the Python that runs holdover."""
        return package in self.deps or installed(package)

    def importing(self, module: str) -> list[PyFile]:
        return [f for f in self.files if module in f.imports]

    def health_route(self, files: list[PyFile]) -> str:
        """A route string that names a health check (``/healthz``, ``/ping`` ...)."""
        for f in files:
            for route in sorted(f.routes):
                if HEALTH_NAMES.match(route):
                    return "/" + route.strip("/")
        return ""


def _entry_rank(f: PyFile) -> tuple[int, int, str]:
    """Likely entry files first: app.py, main.py ..., at the top, with a __main__ block."""
    names = ("app.py", "streamlit_app.py", "main.py", "server.py", "dashboard.py", "Home.py")
    name = f.path.rsplit("/", 1)[-1]
    return (names.index(name) if name in names else len(names) - (1 if f.main_block else 0),
            f.path.count("/"), f.path)


def _django(s: Scan) -> Iterator[Finding]:
    if not (s.root / "manage.py").is_file():
        return
    manage = read_python(s.root, "manage.py")
    settings = next((x for x in (manage.strings if manage else set())
                     if re.fullmatch(r"[A-Za-z_][\w.]*\.settings(\.\w+)?", x)), "")
    project = settings.split(".")[0] if settings else ""
    f = Finding("Django", "manage.py", f"{s.py} manage.py runserver 127.0.0.1:{{port}} "
                "--noreload", SURE + 1, "manage.py is a Django project's entry point",
                session_cookie="sessionid", module="django",
                cookie_why="Django's session cookie (SESSION_COOKIE_NAME)")
    settings_file = next((x for x in s.files if settings and x.module == settings), None)
    name = settings_file.constants.get("SESSION_COOKIE_NAME") if settings_file else None
    if isinstance(name, str) and name:
        f.session_cookie = name
    if project and s.has("gunicorn"):
        f.command = (f"{s.py} -m gunicorn --bind 127.0.0.1:{{port}} --workers 1 --threads 8 "
                     f"{project}.wsgi")
    else:
        f.notes.append("runserver is Django's development server; for production, "
                       "`pip install gunicorn` and run `holdover init` again")
    route = s.health_route([x for x in s.files if x.path.endswith("urls.py")])
    if route:
        f.health_path, f.health_why = route, "the project's own health view (urls.py)"
    f.notes.append("Django checks the Host header: ALLOWED_HOSTS must name the host "
                   "browsers use (holdover passes it through)")
    yield f


def _streamlit(s: Scan) -> Iterator[Finding]:
    files = sorted((f for f in s.importing("streamlit") if "/pages/" not in f"/{f.path}"),
                   key=_entry_rank)
    for i, f in enumerate(files):
        yield Finding(
            "Streamlit", f.path, f"{s.py} -m streamlit run {shlex.quote(f.path)} --server.port "
            "{port} --server.address 127.0.0.1 --server.headless true "
            "--browser.gatherUsageStats false", SURE + (1 if i == 0 else -1),
            f"{f.path} imports streamlit", "/_stcore/health", "Streamlit's own readiness check",
            cookie_why="Streamlit has no session cookie: its sessions are WebSockets",
            app={"start_timeout": "120s"}, module="streamlit")


def _gradio(s: Scan) -> Iterator[Finding]:
    files = sorted(s.importing("gradio"), key=_entry_rank)
    for f in files:
        launches = "launch" in f.calls
        g = Finding(
            "Gradio", f.path, f"env GRADIO_SERVER_PORT={{port}} {s.py} {shlex.quote(f.path)}",
            SURE + 1 if launches else 1, f"{f.path} imports gradio" + (
                " and calls launch()" if launches else ""),
            "/robots.txt", "answered by Gradio's own server once the app is loaded, without "
            "a login", cookie_why="Gradio keys gr.State by a per-page session hash, sent on "
            "every queue call from the same browser", module="gradio",
            env={"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"},
            app={"start_timeout": "120s"})
        if f.kwarg("launch", "server_port") is not None:
            g.notes.append(f"{f.path} passes server_port to launch(): remove it, so that "
                           "Gradio listens on the port holdover gives (GRADIO_SERVER_PORT)")
        if f.kwarg("launch", "share"):
            g.notes.append("launch(share=True) opens a public tunnel: not needed behind "
                           "holdover")
        yield g


def _dash(s: Scan) -> Iterator[Finding]:
    files = sorted((f for f in s.files if "Dash" in f.assigned.values()
                    or ("dash" in f.imports and f.main_block)), key=_entry_rank)
    for f in files:
        var = next((k for k, v in f.assigned.items() if v == "Dash"), "app")
        d = Finding("Dash", f.path, f"{s.py} {shlex.quote(f.path)}",
                    SURE + 1 if "run" in f.calls else 2,
                    f"{f.path} makes a Dash app ({var} = Dash(...))", "/_dash-dependencies",
                    "Dash serves its callback list there once the app is loaded",
                    module="dash", app={"start_timeout": "90s"},
                    command_why="one worker; Dash's app.run() listens on $PORT, which "
                    "holdover sets to the port it gives the worker")
        health = f.kwarg("Dash", "health_endpoint")
        if isinstance(health, str) and health:
            d.health_path, d.health_why = "/" + health.strip("/"), "the app's health_endpoint"
        if "run" not in f.calls:
            d.notes.append(f"{f.path} never calls {var}.run(): add `if __name__ == "
                           f"\"__main__\": {var}.run()` (Dash then listens on $PORT)")
        if f.kwarg("run", "port") is not None:
            d.notes.append(f"{f.path} passes port= to run(): remove it, so that Dash listens "
                           "on $PORT, the port holdover gives")
        if f.kwarg("run", "debug") is True:
            d.notes.append("run(debug=True) reloads the code on every change, which loses "
                           "the process's state: turn it off for holdover")
        if "flask.session" in f.from_imports:
            d.session_cookie = "session"
            d.cookie_why = "Flask's session cookie (Dash runs on Flask)"
        yield d


def _panel(s: Scan) -> Iterator[Finding]:
    files = sorted(s.importing("panel"), key=_entry_rank)
    host, port = s.listen
    origins = [f"{host}:{port}"] + ([f"localhost:{port}"] if host == "127.0.0.1" else [])
    for f in files:
        servable = "servable" in f.calls
        p = Finding(
            "Panel", f.path, f"{s.py} -m panel serve {shlex.quote(f.path)} --address 127.0.0.1 "
            "--port {port} --liveness " + " ".join(f"--allow-websocket-origin={o}"
                                                    for o in origins),
            SURE + 1 if servable else 1, f"{f.path} imports panel" + (
                " and marks something .servable()" if servable else ""),
            "/liveness", "Panel's liveness endpoint (--liveness)", module="panel",
            cookie_why="a Bokeh session is a page load and its WebSocket; holdover's cookie "
            "keeps both on one process", app={"start_timeout": "120s"})
        p.notes.append("Bokeh accepts WebSockets only from the origins it is told: add "
                       "--allow-websocket-origin=HOST for the public host name")
        yield p


def _asgi_wsgi(s: Scan) -> Iterator[Finding]:
    asgi = {"FastAPI": "fastapi", "Starlette": "starlette", "Litestar": "litestar",
            "Quart": "quart"}
    for f in sorted(s.files, key=_entry_rank):
        for var, ctor in f.assigned.items():
            if ctor in asgi and asgi[ctor] in f.imports:
                a = Finding(ctor, f.path, f"{s.py} -m uvicorn {f.module}:{var} --host 127.0.0.1 "
                            "--port {port}", SURE, f"{f.path} makes an ASGI app "
                            f"({var} = {ctor}(...))", module="uvicorn")
                openapi = f.kwarg("FastAPI", "openapi_url")
                if ctor == "FastAPI" and openapi is None:
                    a.health_path = "/openapi.json"
                    a.health_why = "FastAPI serves its OpenAPI document once the app is up"
                route = s.health_route([f])
                if route:
                    a.health_path, a.health_why = route, f"the app's own {route} route"
                if "SessionMiddleware" in f.names:
                    name = f.kwarg("add_middleware", "session_cookie")
                    a.session_cookie = name if isinstance(name, str) and name else "session"
                    a.cookie_why = "Starlette's SessionMiddleware cookie"
                yield a
            elif ctor == "Flask" and "flask" in f.imports:
                fl = Finding("Flask", f.path, f"{s.py} -m flask --app {f.module}:{var} run "
                             "--host 127.0.0.1 --port {port} --no-reload", SURE,
                             f"{f.path} makes a Flask app ({var} = Flask(...))", module="flask")
                if s.has("gunicorn"):
                    fl.command = (f"{s.py} -m gunicorn --bind 127.0.0.1:{{port}} --workers 1 "
                                  f"--threads 8 {f.module}:{var}")
                else:
                    fl.notes.append("`flask run` is Flask's development server; for "
                                    "production, `pip install gunicorn` and run `holdover "
                                    "init` again")
                route = s.health_route([f])
                if route:
                    fl.health_path, fl.health_why = route, f"the app's own {route} route"
                if "flask.session" in f.from_imports:
                    fl.session_cookie = "session"
                    fl.cookie_why = "Flask's session cookie (SESSION_COOKIE_NAME)"
                yield fl
    if not any(c in f.assigned.values() for f in s.files for c in (*asgi, "Flask")):
        for f in s.files:  # an app factory: create_app() builds the Flask app
            if "create_app" in f.functions and "flask" in f.imports:
                yield Finding("Flask", f.path, f"{s.py} -m flask --app "
                              f"'{f.module}:create_app()' run --host 127.0.0.1 --port {{port}} "
                              "--no-reload", 2, f"{f.path} defines a Flask create_app()",
                              module="flask")


DETECTORS: tuple[Callable[[Scan], Iterator[Finding]], ...] = (
    _django, _streamlit, _gradio, _dash, _panel, _asgi_wsgi)


def findings(s: Scan) -> list[Finding]:
    """Every candidate, best first; a Procfile's web: line overrides the command."""
    found = [f for detect in DETECTORS for f in detect(s)]
    # A framework-specific finding beats a generic one from the same file (a Dash app
    # is a Flask app too; a Gradio app mounts FastAPI).
    # A Gradio app mounted into FastAPI (no launch()) is the FastAPI app's to run.
    specific = {f.entry for f in found if f.score >= SURE
                and f.framework not in ("Flask", "FastAPI", "Starlette")}
    found = [f for f in found if f.entry not in specific or f.framework not in (
        "Flask", "FastAPI", "Starlette")]
    for f in found:
        if f.module and f.module.replace("_", "-") in s.deps:
            f.score += 1
            f.why += f"; {f.module} is a dependency"
    if s.procfile:
        command = local_command(s.procfile)
        for f in found:
            f.command, f.why = command, f.why + "; the command is the Procfile's web: line"
            f.score += 1
        if not found:
            found.append(Finding("Procfile", "Procfile", command, SURE,
                                 "the Procfile's web: line starts the app"))
        if re.search(r"(?:--workers|-w)[ =]*(?:[2-9]|\d\d)", command):
            for f in found:
                f.notes.append("the Procfile starts several processes per worker: each "
                               "holdover worker should be one process (its memory holds its "
                               "sessions); use --workers 1 and raise holdover's workers")
        if "{port}" not in command:
            for f in found:
                f.notes.append("the Procfile command does not use $PORT: make the app listen "
                               "on $PORT (or put {port} in the command)")
    if not found:
        for name in sorted(s.scripts):
            found.append(Finding("script", "pyproject.toml", f"{name}", 1,
                                 f"pyproject.toml declares the script {name!r}", notes=[
                                     f"{name} must listen on the port in $PORT (holdover sets "
                                     "it for each worker)"]))
    found.sort(key=lambda f: -f.score)
    return found

