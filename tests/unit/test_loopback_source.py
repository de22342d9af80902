"""Test traffic cannot be sent through a proxy from the environment (a static check).

urllib, websockets and aiohttp would each honour ``HTTP_PROXY``/``HTTPS_PROXY`` if asked,
so on a CI machine that sets them a test's request for 127.0.0.1 could leave the machine.
This reads every test file and refuses a client call that could: a websockets
``connect`` without ``proxy=None``, ``urlopen`` or an opener without an empty
``ProxyHandler({})``, an aiohttp session with ``trust_env`` on, and the ``requests`` or
``httpx`` clients.  A line ending in ``# proxy-env-on-purpose`` is exempt (the check in
tests/e2e/test_proxy_env.py that the trap it sets really catches such a client).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
EXEMPT = "# proxy-env-on-purpose"


def _is_none(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _empty_proxy_handler(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("ProxyHandler")
            and len(node.args) == 1 and isinstance(node.args[0], ast.Dict)
            and not node.args[0].keys)


def problems(source: str, name: str = "<test>") -> list[str]:
    """What in ``source`` could send a request through an environment proxy."""
    tree = ast.parse(source, name)
    lines = source.splitlines()
    ws_connect = set()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("websockets"):
            ws_connect |= {a.asname or a.name for a in node.names if a.name == "connect"}
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""]
            for m in mods:
                if m.split(".")[0] in ("requests", "httpx"):
                    out.append(f"{name}:{node.lineno}: imports {m} (it reads the proxy "
                               "environment; use http.client or the conftest helpers)")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or lines[node.lineno - 1].rstrip().endswith(EXEMPT):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        where = f"{name}:{node.lineno}"
        if func in ws_connect or (func.startswith("websockets.") and
                                  func.endswith(".connect")):
            if not _is_none(kw.get("proxy")) or "proxy" not in kw:
                out.append(f"{where}: websockets {func}() without proxy=None")
        elif func.split(".")[-1] == "urlopen":
            out.append(f"{where}: urlopen() honours HTTP_PROXY; use conftest.NO_PROXY.open()")
        elif func.split(".")[-1] == "build_opener":
            if not any(_empty_proxy_handler(a) for a in node.args):
                out.append(f"{where}: an opener without ProxyHandler({{}})")
        elif func.split(".")[-1] == "ClientSession" and "trust_env" in kw:
            v = kw["trust_env"]
            if not (isinstance(v, ast.Constant) and v.value is False):
                out.append(f"{where}: aiohttp ClientSession with trust_env")
    return out


def test_no_test_client_reads_the_proxy_environment() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        found += problems(path.read_text(), str(path.relative_to(TESTS.parent)))
    assert not found, "\n".join(found)


def test_the_check_sees_each_way() -> None:
    src = '''
import requests
import urllib.request
from websockets.sync.client import connect as ws
import websockets, aiohttp
ws("ws://127.0.0.1:1/")
ws("ws://127.0.0.1:1/", proxy=None)
websockets.connect("ws://127.0.0.1:1/", proxy="http://p")
urllib.request.urlopen("http://127.0.0.1:1/")
urllib.request.build_opener()
urllib.request.build_opener(urllib.request.ProxyHandler({}))
aiohttp.ClientSession(trust_env=True)
aiohttp.ClientSession()
urllib.request.urlopen("http://127.0.0.1:1/")  # proxy-env-on-purpose
'''
    found = [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems(src)]
    assert found == ["2", "6", "8", "9", "10", "12"]
