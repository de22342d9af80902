"""The shape of the code, enforced: imports point down only, and nothing forms a cycle.

docs/design.md draws the layers: core ← proxy, state ← config ← supervisor ← control ←
admin ← app ← demo ← cli (the access log sits at the bottom beside core; the middleware
for apps imports nothing of holdover).  This test walks every import of every module —
those under ``if TYPE_CHECKING:`` and inside functions too — and fails on a cycle, on
an import of a higher or sibling layer, on the proxy importing anything but itself and
core, and on anything but the CLI, the demo and the composition root importing admin.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "holdover"

# layer -> rank; a module may import its own layer or a layer of lower rank.
RANKS = {"core": 0, "accesslog": 0, "gatewaylog": 0, "cliformat": 0, "__init__": 0,
         "middleware": 0,
         "proxy": 1, "state": 1, "config": 2, "supervisor": 3, "control": 4, "admin": 5,
         "app": 6, "demo": 7, "init": 7, "cli": 8, "__main__": 9}
ADMIN_USERS = {"admin", "app", "cli", "demo"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every holdover module ``path`` imports, resolved to dotted names."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "holdover"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "holdover":
                continue
            out.add(target)
            for a in node.names:  # ``from . import config`` names a module
                if (ROOT.parent / Path(*f"{target}.{a.name}".split("."))).with_suffix(
                        ".py").exists():
                    out.add(f"{target}.{a.name}")
    out.discard(me)
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def test_every_layer_is_known() -> None:
    assert {layer(m) for m in GRAPH} <= set(RANKS), {layer(m) for m in GRAPH} - set(RANKS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    mine = layer(module)
    for target in GRAPH[module]:
        theirs = layer(target)
        if theirs == mine:
            continue
        assert RANKS[theirs] < RANKS[mine], f"{module} imports {target}: {mine} may not " \
            f"depend on {theirs} (docs/design.md, 'Layers')"
        if mine == "proxy":
            assert theirs == "core", f"the data plane imports {target}: only its ports and core"
        if mine == "supervisor":
            assert theirs != "proxy", f"the supervisor knows no HTTP, yet imports {target}"
        if theirs == "admin":
            assert mine in ADMIN_USERS, f"{module} imports the admin side ({target})"
        if mine == "middleware":
            raise AssertionError(f"the app middleware imports {target}")


def test_no_import_cycle() -> None:
    graph = {m: {t for t in ts if t in GRAPH} for m, ts in GRAPH.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of design.
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    seen: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if seen.get(t) == 1:
                cycle = [*stack[stack.index(t):], t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in seen:
                visit(t)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)


def test_the_walk_sees_type_checking_and_function_imports() -> None:
    """The walker is not blind: it finds a TYPE_CHECKING import and a function-level one."""
    assert "holdover.control.facade" in GRAPH["holdover.admin.server"]  # TYPE_CHECKING
    assert "holdover.app" in GRAPH["holdover.cli"]  # inside a function


def test_no_module_over_600_lines() -> None:
    long = {module_name(p): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
