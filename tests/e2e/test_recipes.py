"""Every recipe in docs/recipes/ is a test: its very files run behind a real gateway.

Each test takes the files a recipe shows (a bold file name followed by a code block),
writes them to a folder, starts `holdover run` there (on kernel-chosen loopback ports
instead of the recipe's 8080/8081), logs a client in, runs the recipe's deploy command
with the CLI, and checks what the recipe promises: the logged-in client is still served
by the v1 process with its state, a new client gets v2.  The frameworks are in the
test extras; a missing one fails its test (never a quiet skip).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shlex
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import GatewayProcess, require, wait_for

PY = sys.executable
RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"
FILE_BLOCK = re.compile(r"^\*\*`([^`]+)`\*\*\s*\n\s*\n```\w*\n(.*?)^```", re.M | re.S)


def recipe(name: str) -> tuple[dict[str, str], str]:
    """The files a recipe shows ({name: text}) and its whole text."""
    text = (RECIPES / f"{name}.md").read_text()
    files = {m.group(1): m.group(2) for m in FILE_BLOCK.finditer(text)}
    assert "holdover.toml" in files, f"{name}.md shows no holdover.toml"
    return files, text


def deploy_command(text: str) -> list[str]:
    """The recipe's `holdover deploy ...` line, as argv for this Python."""
    line = next(ln.split("#")[0].strip() for ln in text.splitlines()
                if ln.startswith("holdover deploy "))
    return [PY, "-m", "holdover", *shlex.split(line)[1:]]


def local_config(toml: str) -> str:
    """The recipe's config on free ports, its `python`/`streamlit` being this Python's."""
    toml = re.sub(r'^(listen|admin_listen) = "127\.0\.0\.1:\d+"', r'\1 = "127.0.0.1:0"',
                  toml, flags=re.M)
    toml = toml.replace('command = "python ', f'command = "{PY} ')
    toml = toml.replace('command = "streamlit ', f'command = "{PY} -m streamlit ')
    return toml


class RecipeGateway(GatewayProcess):
    """`holdover run` in a folder holding a recipe's files."""

    def __init__(self, folder: Path, files: dict[str, str]) -> None:
        self.dir = folder
        for name, body in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(local_config(body) if name.endswith("holdover.toml") else body)
        self.config = next(folder / n for n in files if n.endswith("holdover.toml"))
        self._start()

    def deploy(self, argv: list[str]) -> None:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                             cwd=self.config.parent)
        assert out.returncode == 0, out.stdout + out.stderr + self.log[-3000:]

    def status(self) -> dict:
        out = self.cli("status", "--json", timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def revision(self, rid: str) -> dict:
        return next(r for r in self.status()["revisions"] if r["id"] == rid)


@pytest.fixture
def run_recipe(tmp_path: Path):
    started: list[RecipeGateway] = []

    def start(files: dict[str, str]) -> RecipeGateway:
        folder = tmp_path / "app"
        folder.mkdir()
        gw = RecipeGateway(folder, files)
        started.append(gw)
        return gw.wait_ready()

    yield start
    for gw in started:
        gw.stop_and_check()


class Client:
    """A cookie-keeping HTTP client (no redirects followed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, str, http.client.HTTPMessage]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = self.cookie_header
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            text = r.read().decode(errors="replace")
        finally:
            c.close()
        for h in r.headers.get_all("Set-Cookie") or []:
            first, _, attrs = h.partition(";")
            k, _, v = first.partition("=")
            a = attrs.lower()
            gone = not v.strip('"') or "max-age=0" in a or "expires=thu, 01 jan 1970" in a
            if gone:
                self.cookies.pop(k.strip(), None)
            else:
                self.cookies[k.strip()] = v
        return r.status, text, r.headers

    def json(self, path: str = "/") -> dict:
        st, text, _ = self.request("GET", path)
        assert st == 200, text
        return json.loads(text)


# -- Flask ---------------------------------------------------------------------------


def test_flask_server_side_sessions_survive_a_deploy(run_recipe):
    require("flask")
    require("flask_session")
    files, text = recipe("flask")
    gw = run_recipe(files)
    ann = Client(gw.port)
    assert ann.request("POST", "/login", {"name": "ann"})[0] == 302
    assert ann.request("POST", "/cart", {"item": "tea"})[0] == 302
    assert ann.request("POST", "/cart", {"item": "cake"})[0] == 302
    before = ann.json()
    assert (before["revision"], before["user"], before["cart"]) == ("v1", "ann", ["tea", "cake"])

    gw.deploy(deploy_command(text))
    after = ann.json()
    assert (after["revision"], after["pid"], after["cart"]) == ("v1", before["pid"],
                                                                ["tea", "cake"])
    bob = Client(gw.port)
    assert bob.json()["revision"] == "v2"
    assert bob.request("POST", "/login", {"name": "bob"})[0] == 302
    assert bob.json()["revision"] == "v2"

    assert ann.request("POST", "/logout")[0] == 302
    assert "session" not in ann.cookies
    assert ann.json()["revision"] == "v2"
    wait_for(lambda: gw.revision("v1")["state"] == "retired", timeout=30, interval=0.3,
             what="v1 to retire once Ann logged out")
    assert gw.status()["sessions_lost"] == 0


# -- FastAPI -------------------------------------------------------------------------


def test_fastapi_websocket_and_session_survive_a_deploy(run_recipe):
    require("fastapi")
    require("uvicorn")
    from websockets.sync.client import connect

    files, text = recipe("fastapi")
    gw = run_recipe(files)
    ann = Client(gw.port)

    def login(c: Client, name: str) -> dict:
        st, body, _ = c.request("POST", "/login", body=json.dumps({"name": name}).encode(),
                                headers={"Content-Type": "application/json"})
        assert st == 200, body
        return json.loads(body)

    def socket(c: Client):
        return connect(f"ws://127.0.0.1:{gw.port}/ws", proxy=None, open_timeout=10,
                       additional_headers={"Cookie": c.cookie_header})

    v1 = login(ann, "ann")
    assert v1["revision"] == "v1"
    with socket(ann) as ws:
        ws.send("hello")
        first = json.loads(ws.recv(timeout=10))
        assert (first["revision"], first["pid"], first["said"]) == ("v1", v1["pid"], ["hello"])

        gw.deploy(deploy_command(text))
        # The open socket still reaches the same process, with the session's state.
        ws.send("still here")
        msg = json.loads(ws.recv(timeout=10))
        assert (msg["revision"], msg["pid"], msg["said"]) == \
            ("v1", v1["pid"], ["hello", "still here"])
    # A reconnecting socket reaches that process too.
    with socket(ann) as ws:
        ws.send("reconnected")
        msg = json.loads(ws.recv(timeout=10))
        assert (msg["revision"], msg["pid"], msg["said"]) == \
            ("v1", v1["pid"], ["hello", "still here", "reconnected"])
    assert ann.json("/me")["said"] == ["hello", "still here", "reconnected"]

    bob = Client(gw.port)
    assert login(bob, "bob")["revision"] == "v2"
    with socket(bob) as ws:
        ws.send("hi")
        assert json.loads(ws.recv(timeout=10))["revision"] == "v2"

    assert ann.request("POST", "/logout")[0] == 200
    assert "sid" not in ann.cookies
    wait_for(lambda: gw.revision("v1")["state"] == "retired", timeout=30, interval=0.3,
             what="v1 to retire once Ann logged out")
    assert gw.status()["sessions_lost"] == 0


# -- Django --------------------------------------------------------------------------


def test_django_locmem_sessions_survive_a_deploy(run_recipe):
    require("django")
    files, text = recipe("django")
    gw = run_recipe(files)

    def post(c: Client, path: str, **form: str) -> int:
        token = c.json()["csrf"]  # Django's CSRF protection stays on
        return c.request("POST", path, {**form, "csrfmiddlewaretoken": token})[0]

    ann = Client(gw.port)
    assert post(ann, "/login", name="ann") == 302
    assert post(ann, "/add", item="bread") == 302
    before = ann.json()
    assert (before["revision"], before["user"], before["basket"]) == ("v1", "ann", ["bread"])

    gw.deploy(deploy_command(text))
    after = ann.json()
    assert (after["revision"], after["pid"], after["basket"]) == ("v1", before["pid"],
                                                                  ["bread"])
    assert post(ann, "/add", item="jam") == 302
    assert ann.json()["basket"] == ["bread", "jam"]
    bob = Client(gw.port)
    assert post(bob, "/login", name="bob") == 302
    assert bob.json()["revision"] == "v2"

    assert post(ann, "/logout") == 302
    assert "sessionid" not in ann.cookies
    assert ann.json()["revision"] == "v2"
    wait_for(lambda: gw.revision("v1")["state"] == "retired", timeout=30, interval=0.3,
             what="v1 to retire once Ann logged out")
    assert gw.status()["sessions_lost"] == 0


# -- Streamlit -----------------------------------------------------------------------


class StreamlitTab:
    """What a browser tab does: load the page, then talk protobuf over /_stcore/stream."""

    def __init__(self, port: int) -> None:
        self.http = Client(port)
        self.port = port
        self.session_id = ""
        self.ws = None
        self.exits = contextlib.ExitStack()

    def load(self) -> str:
        """GET / like a browser; the revision that answered (holdover's header)."""
        st, body, headers = self.http.request("GET", "/")
        assert st == 200 and "<html" in body.lower(), body[:200]
        return headers["X-Holdover-Revision"]

    def connect(self) -> None:
        from websockets.sync.client import connect

        # Streamlit's subprotocol list: "streamlit", an XSRF token, the session to resume.
        protocols = ["streamlit", "xsrf", *([self.session_id] if self.session_id else [])]
        self.ws = self.exits.enter_context(connect(
            f"ws://127.0.0.1:{self.port}/_stcore/stream", proxy=None, open_timeout=20,
            subprotocols=protocols, additional_headers={"Cookie": self.http.cookie_header}))

    def rerun(self) -> dict[str, str]:
        """Run the script once (as a widget change does); what its markdown says."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = ""
        assert self.ws is not None
        self.ws.send(msg.SerializeToString())
        texts: list[str] = []
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(self.ws.recv(timeout=30))
            kind = fwd.WhichOneof("type")
            if kind == "new_session":
                self.session_id = fwd.new_session.initialize.session_id
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                el = fwd.delta.new_element
                texts.append(el.markdown.body or el.heading.body)
            elif kind == "script_finished":
                break
        page = "\n".join(texts)
        m = re.search(r"revision \*\*(\S+)\*\* · pid (\d+) · runs in this session: "
                      r"\*\*(\d+)\*\*", page)
        assert m, page
        return {"revision": m.group(1), "pid": m.group(2), "runs": m.group(3),
                "title": texts[0]}

    def close(self) -> None:
        self.exits.close()
        self.ws = None


def test_streamlit_session_survives_a_deploy(run_recipe, tmp_path):
    require("streamlit")
    files, text = recipe("streamlit")
    assert "session_cookie" not in re.sub(r"#.*", "", files["holdover.toml"])
    gw = run_recipe(files)

    ann = StreamlitTab(gw.port)
    assert ann.load() == "v1"
    ann.connect()
    first = ann.rerun()
    assert (first["revision"], first["runs"], first["title"]) == ("v1", "1", "Visit counter")
    assert ann.rerun()["runs"] == "2"

    # `cp -r app next`, edit next/app.py, deploy it.
    nxt = gw.dir / "next"
    nxt.mkdir()
    code = (gw.dir / "app" / "app.py").read_text()
    (nxt / "app.py").write_text(code.replace('TITLE = "Visit counter"',
                                             'TITLE = "Visit counter, new edition"'))
    gw.deploy(deploy_command(text))
    assert gw.status()["active"] == "v2"

    # The open WebSocket still reaches v1's process, with the session's state.
    again = ann.rerun()
    assert (again["revision"], again["pid"], again["runs"]) == ("v1", first["pid"], "3")
    st, _, headers = ann.http.request("GET", "/_stcore/health")
    assert st == 200 and headers["X-Holdover-Revision"] == "v1"
    # A reload / dropped connection: the reconnect reaches the same process and session.
    ann.close()
    assert ann.load() == "v1"
    ann.connect()
    back = ann.rerun()
    assert (back["revision"], back["pid"], back["runs"]) == ("v1", first["pid"], "4")

    bob = StreamlitTab(gw.port)
    assert bob.load() == "v2"
    bob.connect()
    new = bob.rerun()
    assert (new["revision"], new["runs"], new["title"]) == \
        ("v2", "1", "Visit counter, new edition")
    assert ann.rerun()["runs"] == "5"
    ann.close()
    bob.close()
    assert gw.status()["sessions_lost"] == 0
