"""Reading an app's folder for ``holdover init``, without importing or running it.

Python files are parsed with ``ast`` (never imported: importing an app can start it,
connect to its database or take seconds); dependency lists, a ``Procfile`` and
``pyproject.toml`` are read as text.  What comes out is plain data the detectors in
``detect.py`` look at.
"""

from __future__ import annotations

import ast
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SKIP_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", ".holdover",
             ".holdover-demo", "site-packages", "build", "dist", ".tox", ".mypy_cache",
             "tests", "test", "migrations", "static", "templates"}
MAX_FILES = 300
MAX_BYTES = 512 * 1024
HEALTH_NAMES = re.compile(r"^/?(healthz?|_health|health-check|healthcheck|livez?|readyz?|ping|"
                          r"status|_status|up)/?$")
ROUTE_CALLS = {"route", "get", "head", "api_route", "add_url_rule", "path", "re_path",
               "Route", "add_route"}


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
                    # the first call made it: `app = mount_gradio_app(app, ...)` stays FastAPI
                    f.assigned.setdefault(t.id, _called_name(node.value.func))
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
    data = pyproject(root)
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


def pyproject(root: Path) -> dict:
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


def local_command(cmd: str) -> str:
    """A Procfile command for a holdover worker: its port from ``{port}``, on loopback."""
    cmd = re.sub(r"\$\{PORT(?::-\d+)?\}|\$PORT\b", "{port}", cmd)
    return re.sub(r"\b0\.0\.0\.0\b", "127.0.0.1", cmd)

