"""``holdover init``: a working, commented ``holdover.toml`` for the app in a folder.

The first ten minutes with holdover should not start with the configuration reference.
What an app needs — the command that starts one process on a given port, a path that
answers once it is ready, the cookie its sessions live under — follows from the
framework it uses, and the framework shows in the folder: ``manage.py``, an import of
Streamlit or Gradio, ``app = Flask(...)``, a ``Procfile``'s ``web:`` line, a dependency
list.  So init reads the folder (Python's ``ast``, never importing or running the app),
asks nothing when one answer stands out, asks one question when several do (or, without
a terminal, takes the best and says so), and checks what it wrote with the very loader
``holdover run`` uses.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import config

SKIP_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", ".holdover",
             ".holdover-demo", "site-packages", "build", "dist", ".tox", ".mypy_cache",
             "tests", "test", "migrations", "static", "templates"}
MAX_FILES = 300
MAX_BYTES = 512 * 1024
HEALTH_NAMES = re.compile(r"^/?(healthz?|_health|health-check|healthcheck|livez?|readyz?|ping|"
                          r"status|_status|up)/?$")
ROUTE_CALLS = {"route", "get", "head", "api_route", "add_url_rule", "path", "re_path",
               "Route", "add_route"}
SURE = 3  # a finding's score at which init asks nothing


class InitError(Exception):
    """init cannot write a configuration; the message says why and what to do."""


@dataclass
class PyFile:
    """What init needs to know of one Python file, read with ``ast``."""

    path: str  # relative to the app folder, with "/"
    imports: set[str] = field(default_factory=set)  # top-level module names
    calls: dict[str, list[ast.Call]] = field(default_factory=dict)  # by called name
    assigned: dict[str, str] = field(default_factory=dict)  # app variable -> constructor
    strings: set[str] = field(default_factory=set)  # string constants (settings module names)
    routes: set[str] = field(default_factory=set)  # paths given to route decorators and path()
    functions: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # every name the code refers to
    from_imports: set[str] = field(default_factory=set)  # "flask.session" ...
    constants: dict[str, object] = field(default_factory=dict)  # NAME = "literal"
    main_block: bool = False

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")

    def kwarg(self, call_name: str, key: str) -> object:
        """The constant value of ``key=`` in any call of ``call_name`` (None if absent)."""
        for c in self.calls.get(call_name, []):
            for kw in c.keywords:
                if kw.arg == key:
                    return kw.value.value if isinstance(kw.value, ast.Constant) else ...
        return None


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def read_python(root: Path, rel: str) -> PyFile | None:
    """Parse one file; None when it is not Python that this interpreter can read."""
    try:
        text = (root / rel).read_text(encoding="utf-8")[:MAX_BYTES]
        tree = ast.parse(text)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    f = PyFile(rel)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            f.imports |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            f.imports.add(node.module.split(".")[0])
            f.from_imports |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Name):
            f.names.add(node.id)
        elif isinstance(node, ast.Call):
            name = _called_name(node.func)
            f.calls.setdefault(name, []).append(node)
            if name in ROUTE_CALLS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                f.routes.add(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if len(node.value) < 200:
                f.strings.add(node.value)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            f.functions.add(node.name)
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    f.assigned[t.id] = _called_name(node.value.func)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    f.constants[t.id] = node.value.value
        elif isinstance(node, ast.If) and "__main__" in ast.dump(node.test):
            f.main_block = True
    return f


def python_files(root: Path) -> Iterator[str]:
    """The app's own Python files (not its virtualenv, tests or migrations), top first."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
                             and not (Path(dirpath, d) / "pyvenv.cfg").exists())
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth > 2:
            dirnames[:] = []
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                yield str(Path(dirpath, name).relative_to(root)).replace(os.sep, "/")
                count += 1
                if count >= MAX_FILES:
                    return


def dependencies(root: Path) -> set[str]:
    """Package names (lower case, ``-``) from requirements*.txt and pyproject.toml."""
    names: set[str] = set()

    def add(spec: str) -> None:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._\-]*)", spec)
        if m and not spec.lstrip().startswith(("-", "#")):
            names.add(re.sub(r"[._]+", "-", m.group(1).lower()))

    for req in sorted(root.glob("requirements*.txt")):
        for line in req.read_text(errors="replace").splitlines():
            add(line)
    data = _pyproject(root)
    project = data.get("project", {})
    for spec in project.get("dependencies", []):
        add(str(spec))
    for extra in project.get("optional-dependencies", {}).values():
        for spec in extra:
            add(str(spec))
    poetry = data.get("tool", {}).get("poetry", {})
    for name in poetry.get("dependencies", {}):
        add(name)
    names.discard("python")
    return names


def _pyproject(root: Path) -> dict:
    try:
        return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def procfile_web(root: Path) -> str | None:
    """The ``web:`` command of a Procfile, if there is one."""
    try:
        text = (root / "Procfile").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        m = re.match(r"^\s*web\s*:\s*(.+?)\s*$", line)
        if m:
            return m.group(1)
    return None


def _local_command(cmd: str) -> str:
    """A Procfile command for a holdover worker: its port from ``{port}``, on loopback."""
    cmd = re.sub(r"\$\{PORT(?::-\d+)?\}|\$PORT\b", "{port}", cmd)
    return re.sub(r"\b0\.0\.0\.0\b", "127.0.0.1", cmd)


# -- findings --------------------------------------------------------------------------


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
        data = _pyproject(root)
        self.scripts = {**data.get("project", {}).get("scripts", {}),
                        **data.get("tool", {}).get("poetry", {}).get("scripts", {})}

    def has(self, package: str) -> bool:
        """Listed as a dependency, or importable by the Python that runs holdover."""
        return package in self.deps or importlib.util.find_spec(package) is not None

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
    specific = {f.entry for f in found if f.framework not in ("Flask", "FastAPI", "Starlette")}
    found = [f for f in found if f.entry not in specific or f.framework not in (
        "Flask", "FastAPI", "Starlette")]
    for f in found:
        if f.module and f.module.replace("_", "-") in s.deps:
            f.score += 1
            f.why += f"; {f.module} is a dependency"
    if s.procfile:
        command = _local_command(s.procfile)
        for f in found:
            f.command, f.why = command, f.why + "; the command is the Procfile's web: line"
            f.score += 1
        if not found:
            found.append(Finding("Procfile", "Procfile", command, SURE,
                                 "the Procfile's web: line starts the app"))
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


# -- choosing, asking, writing ----------------------------------------------------------


def python_word() -> str:
    """How the config names the Python that runs holdover: a word on PATH when it
    resolves to this very interpreter (a venv's ``python``), else its full path."""
    me = os.path.realpath(sys.executable)
    for word in ("python", "python3"):
        found = shutil.which(word)
        if not found:
            continue
        if os.path.realpath(found) == me:
            return word
        try:  # a shim (pyenv, asdf) that starts this interpreter
            out = subprocess.run([found, "-c", "import sys; print(sys.executable)"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and os.path.realpath(out.stdout.strip()) == me:
            return word
    return shlex.quote(sys.executable)


def choose(found: list[Finding], ask: Callable[[str], str] | None,
           say: Callable[[str], None]) -> Finding:
    """The finding to write: the best when it stands out, else one question."""
    if not found:
        raise InitError("cannot tell how this app starts: no Django, Flask, FastAPI, "
                        "Starlette, Streamlit, Gradio, Dash or Panel app, no Procfile and "
                        "no pyproject.toml script here; pass --command \"CMD --port {port}\"")
    best = found[0]
    rivals = [f for f in found[1:] if f.score >= best.score - 1]
    if best.score >= SURE and not rivals:
        return best
    options = [best, *rivals] if rivals else found[:6]
    if ask is None:
        say(f"holdover init: not sure which app this is; took {best.label} ({best.why}). "
            f"Others: {', '.join(f.label for f in options[1:]) or 'none'}. Run it in a "
            f"terminal to choose, or pass --framework / --command.")
        return best
    lines = [f"  {i}. {f.label}: {f.why}" for i, f in enumerate(options, 1)]
    question = "Which app should holdover run?\n" + "\n".join(lines) + "\nNumber [1]: "
    while True:
        answer = ask(question).strip()
        if not answer:
            return options[0]
        if answer.isdigit() and 1 <= int(answer) <= len(options):
            return options[int(answer) - 1]
        question = f"Please answer 1-{len(options)}: "


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 86))


def _setting(key: str, value: str, why: str = "") -> str:
    """``key = "value"  # why``, the comment above when the line would be too long."""
    code = f"{key} = {_q(value)}"
    if not why:
        return code + "\n"
    if len(code) <= 32 and len(why) <= 60:
        return f"{code:<32}  # {why}\n"
    return _comment(why) + code + "\n"


def render(f: Finding, listen: tuple[str, int], cwd: str) -> str:
    """The commented holdover.toml for a finding."""
    host, port = listen
    admin_port = port + 1 if port else 0
    head = _comment(f"holdover.toml for the {f.framework} app in {f.entry}, written by "
                    f"`holdover init` ({f.why}).")
    head += "".join(_comment(f"NOTE: {n}") for n in f.notes)
    env = ("env = { " + ", ".join(f"{k} = {_q(v)}" for k, v in f.env.items()) + " }\n"
           if f.env else "")
    cookie = (_setting("session_cookie", f.session_cookie, f"{f.cookie_why}: a response that "
                       "sets it pins the session, one that deletes it (logout) ends it")
              if f.session_cookie else _comment(
                  "No session_cookie: holdover pins each browser with its own signed cookie "
                  f"(holdover_pin){'; ' + f.cookie_why if f.cookie_why else ''}."))
    extra = "".join(_setting(k, v) for k, v in f.app.items() if k != "start_timeout")
    return (
        head + "#\n"
        "#   holdover check                            validate this file\n"
        "#   holdover run                              start the gateway and the workers\n"
        "#   holdover deploy --from DIR --revision ID  deploy a new version; live sessions "
        "stay\n"
        "# Every setting, its default and its meaning: `holdover config-reference`.\n\n"
        "[gateway]\n"
        + _setting("listen", f"{host}:{port}", "public side: browsers connect here")
        + _setting("admin_listen", f"{host}:{admin_port}", "admin page, API, /metrics")
        + _setting("state_dir", ".holdover", "state store, snapshots, secrets, logs")
        + _setting("shutdown_timeout", "30s", "on SIGTERM, requests and WebSockets finish")
        + "\n[app]\n"
        + _setting("command", f.command, f.command_why)
        + _setting("cwd", cwd, "the workers' folder, relative to this file")
        + env
        + "workers = 2                       # processes per revision; each has its own "
        "sessions\n"
        + _setting("health_path", f.health_path, f.health_why)
        + _setting("start_timeout", f.app.get("start_timeout", "60s"),
                   "for a new worker to be ready")
        + extra
        + _setting("stop_grace", "30s", "after SIGTERM, to finish its work, then SIGKILL")
        + _setting("mode", "sessions", "each session stays on its worker process")
        + cookie
        + _setting("session_idle_timeout", "30m", "open WebSockets keep sessions alive")
        + "# max_drain = \"1d\"                # how long an old revision may wait for its "
        "last session\n")


def generate(root: Path, config_path: Path, *, framework: str | None = None,
             command: str | None = None, listen: tuple[str, int] = ("127.0.0.1", 8080),
             ask: Callable[[str], str] | None = None,
             say: Callable[[str], None] = print) -> tuple[str, Finding]:
    """The configuration for the app in ``root``, validated as ``holdover check`` would."""
    scan = Scan(root, python_word(), listen)
    found = findings(scan)
    if framework:
        found = [f for f in found if f.framework.lower() == framework.lower()]
        if not found:
            raise InitError(f"no {framework} app found in {root}")
    if command:
        base = found[0] if found else Finding("app", "--command", command, SURE,
                                              "the command given on the command line")
        base.command, base.score = command, SURE + 9
        found = [base]
    chosen = choose(found, ask, say)
    if chosen.module and importlib.util.find_spec(chosen.module) is None:
        chosen.notes.append(f"{chosen.module} is not installed for this Python: "
                            f"pip install {chosen.module}")
    cwd = os.path.relpath(root, config_path.parent)
    text = render(chosen, listen, "." if cwd == "." else cwd.replace(os.sep, "/"))
    try:
        config.from_dict(tomllib.loads(text), path=config_path, text=text)
    except (config.ConfigError, tomllib.TOMLDecodeError) as exc:  # a bug in init itself
        raise InitError(f"the generated configuration does not validate: {exc}") from None
    return text, chosen
