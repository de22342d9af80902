"""`holdover demo` as the README runs it, and `holdover demo --tour`.

The demo runs in a subprocess on a kernel-chosen port with its own folder; the test
reads what it prints (app URL, admin URL, token, the deploy command), runs that command
as printed, and checks what a person would see: their logged-in session stays on v1
with its notes and its WebSocket, a new visitor gets the new revision, logging out moves
them over, and v1 retires.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import NO_PROXY, wait_for
from websockets.sync.client import connect as ws_connect

PY = sys.executable
_script = Path(PY).parent / "holdover"
HOLDOVER = [str(_script)] if _script.exists() else [PY, "-m", "holdover"]


class Browser:
    """A cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, base: str) -> None:
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None
                ) -> tuple[int, str, http.client.HTTPMessage]:
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            text = r.read().decode()
        finally:
            c.close()
        for h in r.headers.get_all("Set-Cookie") or []:
            first, _, attrs = h.partition(";")
            k, _, v = first.partition("=")
            if v.strip('"') and "max-age=0" not in attrs.lower():
                self.cookies[k.strip()] = v
            else:
                self.cookies.pop(k.strip(), None)
        return r.status, text, r.headers

    def page(self) -> tuple[str, str]:
        """(the revision on the page's badge, the page)."""
        st, text, _ = self.request("GET", "/")
        assert st == 200, text
        m = re.search(r'<div class="rev"[^>]*>([^<]+)</div>', text)
        assert m, text
        return m.group(1), text

    def me(self) -> tuple[dict, http.client.HTTPMessage]:
        st, text, headers = self.request("GET", "/api/me")
        assert st == 200, text
        return json.loads(text), headers

    def login(self, name: str, notes: tuple[str, ...] = ()) -> dict:
        self.page()
        st, _, _ = self.request("POST", "/login", {"name": name})
        assert st == 303
        for n in notes:
            assert self.request("POST", "/notes", {"text": n})[0] == 303
        return self.me()[0]

    def websocket(self):
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return ws_connect(f"ws://{self.host}:{self.port}/ws", proxy=None,
                          additional_headers={"Cookie": cookie}, open_timeout=10)


class DemoProcess:
    """`holdover demo --port 0 --dir DIR`, with what it prints collected."""

    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        self.out: list[str] = []
        self.err: list[str] = []
        self.proc = subprocess.Popen([*HOLDOVER, "demo", "--port", "0", "--dir", str(home),
                                      *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.readers = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                        for s, buf in ((self.proc.stdout, self.out),
                                       (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()
        self.kids: list[psutil.Process] = []

    @staticmethod
    def _read(stream, buf: list[str]) -> None:
        for line in stream:
            buf.append(line)

    @property
    def text(self) -> str:
        return "".join(self.out)

    def wait_banner(self) -> dict[str, str]:
        def banner() -> dict[str, str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited {self.proc.returncode}:\n"
                                     f"{self.text}{''.join(self.err)}")
            t = self.text
            if "Ctrl-C stops the demo" not in t:
                return None
            urls = re.findall(r"^\s+(http://127\.0\.0\.1:\d+/)(#token=\S+)?\s*$", t, re.M)
            return {"app": urls[0][0], "admin": urls[1][0], "admin_link": "".join(urls[1]),
                    "token": re.search(r"token: (\S+)", t).group(1),
                    "deploy": next(line.strip() for line in t.splitlines()
                                   if " deploy -c " in line)}
        info = wait_for(banner, 30, what="the demo's banner")
        self.kids = psutil.Process(self.proc.pid).children(recursive=True)
        return info  # type: ignore[return-value]

    def stop(self) -> int:
        """Ctrl-C, as a person would; then no process of the demo may be left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self.readers:
            t.join(5)
        _, alive = psutil.wait_procs(self.kids, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes outlived the demo: {alive}"
        return self.proc.returncode


def holdover(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOLDOVER, *args], capture_output=True, text=True,
                          timeout=timeout)


def status(config: Path) -> dict:
    out = holdover("status", "--json", "-c", str(config), timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def revision_state(config: Path, rid: str) -> str:
    return next(r["state"] for r in status(config)["revisions"] if r["id"] == rid)


@pytest.fixture
def demo(tmp_path: Path):
    procs: list[DemoProcess] = []

    def start(*extra: str) -> DemoProcess:
        d = DemoProcess(tmp_path / "demo", *extra)
        procs.append(d)
        return d

    yield start
    for d in procs:
        d.stop()


def test_demo_serves_v1_then_keeps_sessions_through_the_printed_deploy(demo, tmp_path):
    with contextlib.ExitStack() as exits:
        _demo_story(demo(), tmp_path, exits)


def _demo_story(d: DemoProcess, tmp_path: Path, exits: contextlib.ExitStack) -> None:
    info = d.wait_banner()
    config = tmp_path / "demo" / "holdover.toml"
    assert f"-c {config}" in info["deploy"] and "--revision v2" in info["deploy"]

    # The printed admin URL and token work; the one-click link carries the same token.
    assert info["admin_link"] == f"{info['admin']}#token={info['token']}"
    req = urllib.request.Request(info["admin"] + "api/status",
                                 headers={"Authorization": f"Bearer {info['token']}"})
    with NO_PROXY.open(req, timeout=10) as resp:
        assert json.loads(resp.read())["active"] == "v1"

    # A second demo in the same folder is refused while this one runs.
    again = holdover("demo", "--port", "0", "--dir", str(tmp_path / "demo"), timeout=30)
    assert again.returncode == 1 and "already running" in again.stderr

    alice = Browser(info["app"])
    assert alice.page()[0] == "v1"
    me = alice.login("alice", ("buy milk", "call Bob"))
    assert (me["revision"], me["user"], me["notes"]) == ("v1", "alice", ["buy milk", "call Bob"])
    ws = exits.enter_context(alice.websocket())
    tick = json.loads(ws.recv(timeout=5))
    assert (tick["revision"], tick["worker"]) == ("v1", me["worker"])

    out = subprocess.run(shlex.split(info["deploy"]), capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stderr
    assert "revision v2 is active; v1 is draining" in out.stdout

    # Alice: same revision, same process, notes intact, a banner-worthy header pair.
    after, headers = alice.me()
    assert (after["revision"], after["pid"], after["notes"]) == \
        ("v1", me["pid"], ["buy milk", "call Bob"])
    assert (headers["X-Holdover-Revision"], headers["X-Holdover-Latest"]) == ("v1", "v2")
    rev, page = alice.page()
    assert rev == "v1" and "call Bob" in page
    # Her WebSocket never closed and still ticks from the same worker.
    for _ in range(2):
        tick = json.loads(ws.recv(timeout=5))
        assert (tick["revision"], tick["worker"]) == ("v1", me["worker"])

    # A new visitor (a private window) gets v2, which looks different.
    bob = Browser(info["app"])
    rev, page = bob.page()
    assert rev == "v2" and "pin the notes" in page
    assert bob.login("bob", ("hello",))["revision"] == "v2"

    # `holdover demo next` deploys the next bundled revision.
    out = holdover("demo", "next", "--dir", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    assert "revision v3 is active; v2 is draining" in out.stdout
    assert Browser(info["app"]).page()[0] == "v3"
    assert bob.me()[0]["revision"] == "v2"
    last = holdover("demo", "next", "--dir", str(tmp_path / "demo"))
    assert last.returncode == 1 and "every bundled revision" in last.stderr

    # Alice logs out (her tab navigates: its WebSocket closes) and moves to the newest.
    ws.close()
    assert alice.request("POST", "/logout")[0] == 303
    assert alice.page()[0] == "v3"
    wait_for(lambda: revision_state(config, "v1") == "retired", timeout=30, interval=0.3,
             what="v1 to retire after its last session ended")
    st = status(config)
    assert st["sessions_lost"] == 0
    assert d.stop() == 0


def test_demo_next_without_a_demo(tmp_path):
    out = holdover("demo", "next", "--dir", str(tmp_path / "nothing"), timeout=30)
    assert out.returncode == 3 and "no demo in" in out.stderr


def test_tour_reports_no_failed_request_and_no_lost_session(tmp_path):
    # The tour makes its folder under TMPDIR: here, so that its processes are known.
    out = subprocess.run([*HOLDOVER, "demo", "--tour"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"^\s+requests\s+\d+ made, 0 failed$", text, re.M), text
    assert re.search(r"^\s+lost sessions\s+0$", text, re.M), text
    assert re.search(r"^\s+sessions kept through the deploy\s+3 of 3", text, re.M), text
    assert re.search(r"^\s+time to retire v1\s+[\d.]+ s after the deploy$", text, re.M), text
    assert "PASS" in text
    assert not list(tmp_path.glob("holdover-tour-*")), "the tour left its folder behind"

    def ours(p: psutil.Process) -> bool:
        try:
            return str(tmp_path) in " ".join(p.cmdline()) or p.cwd().startswith(str(tmp_path))
        except (psutil.Error, OSError):
            return False

    leftovers = [p for p in psutil.process_iter() if ours(p)]
    assert not leftovers, leftovers


def test_cluster_tour_moves_a_session_between_nodes_deploys_on_both_and_survives_a_kill(
        tmp_path):
    out = subprocess.run([*HOLDOVER, "demo", "--tour", "--cluster"], capture_output=True,
                         text=True, timeout=150, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"^\s+a session across nodes\s+6 of 6 requests on its worker$", text,
                     re.M), text
    assert re.search(r"^\s+sessions kept through deploy\s+2 of 2$", text, re.M), text
    assert re.search(r"^\s+new visitor after the deploy\s+revision v2$", text, re.M), text
    assert re.search(r"^\s+node killed: other sessions\s+kept$", text, re.M), text
    # alice's and carol's sessions lived on the node that was killed: two, counted once.
    assert re.search(r"^\s+lost sessions counted\s+2$", text, re.M), text
    assert re.search(r"^\s+failed requests\s+0$", text, re.M), text
    assert "PASS" in text
    assert not list(tmp_path.glob("holdover-cluster-tour-*")), "the tour left its folder"

    def ours(p: psutil.Process) -> bool:
        try:
            return str(tmp_path) in " ".join(p.cmdline()) or p.cwd().startswith(str(tmp_path))
        except (psutil.Error, OSError):
            return False

    assert not [p for p in psutil.process_iter() if ours(p)]



def test_cluster_demo_serves_one_site_through_the_balancer_and_stops_cleanly(demo):
    d = demo("--cluster")

    def banner() -> str | None:
        if d.proc.poll() is not None:
            raise AssertionError(f"demo exited {d.proc.returncode}:\n{d.text}{''.join(d.err)}")
        return d.text if "Ctrl-C stops it all" in d.text else None
    text = wait_for(banner, 60, what="the cluster demo's banner")
    d.kids = psutil.Process(d.proc.pid).children(recursive=True)
    site = re.search(r"^\s+(http://127\.0\.0\.1:\d+)/\s*$", text, re.M).group(1)
    nodes = dict(re.findall(r"(web-[12]): (http://127\.0\.0\.1[12]:\d+)/", text))
    assert set(nodes) == {"web-1", "web-2"}, text
    # Through the balancer, each request on a new connection: they alternate between the
    # nodes, and every page comes from the worker the login reached.
    cookies: dict[str, str] = {}

    def call(method: str, path: str, data: bytes | None = None) -> dict:
        req = urllib.request.Request(site + path, data=data, method=method, headers={
            "Accept": "application/json",
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             _NoRedirect())
        with contextlib.closing(opener.open(req, timeout=15)) as resp:
            for line in resp.headers.get_all("Set-Cookie") or []:
                name, _, value = line.split(";")[0].partition("=")
                cookies[name.strip()] = value
            body = resp.read()
        return json.loads(body) if path == "/api/me" else {}

    call("POST", "/login", urllib.parse.urlencode({"name": "ann"}).encode())
    first = call("GET", "/api/me")
    assert first["user"] == "ann" and first["node"] in nodes, first
    answers = [call("GET", "/api/me") for _ in range(6)]
    assert {(a["pid"], a["user"]) for a in answers} == {(first["pid"], "ann")}, answers
    assert d.stop() == 0  # Ctrl-C: nodes, workers and redis-server all stopped


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the login answers 303: keep its cookie
        return None

    def http_error_303(self, req, fp, code, msg, headers):
        return fp


def test_cluster_demo_without_redis_says_how_to_install_it(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    out = subprocess.run([PY, "-m", "holdover", "demo", "--cluster", "--dir",
                          str(tmp_path / "demo")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": str(bare)})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "needs redis-server" in out.stderr and "apt-get install redis-server" in out.stderr
