"""The Gradio, Dash and Panel recipes in real Chromium, through a real gateway.

These frameworks are their browser code: a Gradio page talks through its queue and an
event stream, a Dash page through callback requests, a Panel page over a Bokeh
WebSocket.  So each test runs the recipe's very files (docs/recipes/<name>.md) behind
`holdover run`, opens the app in Debian's Chromium (driven by Playwright, as the admin
page test does: no downloaded browser), builds up state on the page, deploys the
recipe's next revision with the CLI while the page stays open, and checks that the page
goes on with its state in the same v1 process while a new browser gets v2.  The
browser may reach only loopback: any other request (a web font, a CDN) is aborted and
reported.
"""

from __future__ import annotations

import importlib
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, free_port, wait_for
from test_admin_page import ARTIFACTS, browser  # noqa: F401  (the Chromium fixture)
from test_recipes import RecipeGateway, deploy_command, recipe


class BrowserRecipeGateway(RecipeGateway):
    """A recipe behind `holdover run` on a port chosen here: a Bokeh server must be told
    the public origin, so the recipe's 8080 becomes that port everywhere."""

    def __init__(self, folder: Path, files: dict[str, str], port: int) -> None:
        self.dir = folder
        for name, body in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name == "holdover.toml":
                body = (body.replace(":8080", f":{port}")
                        .replace('admin_listen = "127.0.0.1:8081"',
                                 'admin_listen = "127.0.0.1:0"')
                        .replace(" python ", f" {PY} ").replace('"python ', f'"{PY} '))
            path.write_text(body)
        self.config = folder / "holdover.toml"
        self._start()


@pytest.fixture
def run_in_browser(tmp_path: Path):
    started: list[BrowserRecipeGateway] = []

    def start(name: str) -> tuple[BrowserRecipeGateway, str]:
        files, text = recipe(name)
        folder = tmp_path / "app"
        folder.mkdir()
        gw = BrowserRecipeGateway(folder, files, free_port())
        started.append(gw)
        gw.wait_ready(timeout=240)
        return gw, text

    yield start
    for gw in started:
        gw.stop_and_check()


def next_revision(gw: RecipeGateway, title: str) -> None:
    """`cp -r app next` and edit next/app.py's title, as the recipe says."""
    shutil.copytree(gw.dir / "app", gw.dir / "next",
                    ignore=shutil.ignore_patterns("__pycache__", ".gradio"))
    code = (gw.dir / "next" / "app.py").read_text()
    assert f'TITLE = "{title}"' in code
    (gw.dir / "next" / "app.py").write_text(
        code.replace(f'TITLE = "{title}"', f'TITLE = "{title}, new edition"'))


class Tab:
    """A browser context (a private window) with one page, held to loopback."""

    def __init__(self, chromium: Any, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.context = chromium.new_context(viewport={"width": 1200, "height": 900})
        self.outside: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.responses: list[tuple[str, str | None]] = []
        self.page.on("response", lambda r: self.responses.append(
            (r.url, r.headers.get("x-holdover-revision"))))
        self.sockets: list[Any] = []
        self.page.on("websocket", lambda ws: self.sockets.append(ws))
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _route(self, route: Any) -> None:
        url = route.request.url
        host = urllib.parse.urlsplit(url).hostname
        if url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:  # never any traffic beyond this machine
            self.outside.append(url)
            route.abort()

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base + path)

    def since(self, mark: int, part: str) -> list[tuple[str, str | None]]:
        return [r for r in self.responses[mark:] if part in r[0]]

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"recipe-{name}.png", full_page=True)

    def close(self) -> None:
        self.context.close()


SAYS = re.compile(r"revision (\S+) · pid (\d+) · \w+ in this session: (\d+)")


def says(locator: Any, count: int) -> tuple[str, str]:
    """(revision, pid) once ``locator`` reports ``count``."""
    from playwright.sync_api import expect

    expect(locator).to_contain_text(re.compile(rf"in this session: {count}\b"),
                                    timeout=60_000)
    # The text itself (inside a shadow root for Panel's widgets).
    text = locator.get_by_text(re.compile(rf"in this session: {count}\b")).first.inner_text()
    m = SAYS.search(text)
    assert m and m.group(3) == str(count), text
    return m.group(1), m.group(2)


# -- Gradio --------------------------------------------------------------------------


def test_gradio_state_and_queue_stay_on_v1_across_a_deploy(run_in_browser, browser):  # noqa: F811
    importlib.import_module("gradio")  # in the test extra
    from playwright.sync_api import expect

    gw, text = run_in_browser("gradio")
    ann = Tab(browser, gw.port)
    try:
        ann.open()
        out = ann.page.locator("#out")
        box = ann.page.locator("#word").locator("textarea, input").first

        def add(word: str, count: int) -> tuple[str, str]:
            box.fill(word)
            ann.page.locator("#add").click()
            return says(out, count)

        assert add("tea", 1)[0] == "v1"
        rev, pid = add("cake", 2)
        assert rev == "v1"
        next_revision(gw, "Word list")
        gw.deploy(deploy_command(text))
        assert gw.status()["active"] == "v2"

        mark = len(ann.responses)
        assert add("jam", 3) == ("v1", pid)  # same page, same gr.State, same process
        expect(out).to_contain_text("tea, cake, jam")
        queue = ann.since(mark, "/gradio_api/queue/")
        assert queue and {r for _, r in queue} == {"v1"}, queue
        assert any("/queue/join" in u for u, _ in queue), queue
        assert any("/queue/data" in u for u, _ in queue), queue
        ann.shot("gradio-v1-after-deploy")

        bob = Tab(browser, gw.port)
        try:
            bob.open()
            expect(bob.page.locator("#title")).to_contain_text("Word list, new edition")
            bob.page.locator("#word").locator("textarea, input").first.fill("soup")
            bob.page.locator("#add").click()
            assert says(bob.page.locator("#out"), 1)[0] == "v2"
            assert not bob.outside and not bob.errors, (bob.outside, bob.errors)
        finally:
            bob.close()
        assert not ann.errors, ann.errors
        assert not ann.outside, ann.outside
        # The page's heartbeat stream (open while the page is) is v1's too.
        assert {r for u, r in ann.responses if "/gradio_api/heartbeat/" in u} == {"v1"}
    except Exception:
        ann.shot("gradio-failure")
        raise
    finally:
        ann.close()
    assert gw.status()["sessions_lost"] == 0


# -- Dash ----------------------------------------------------------------------------


def test_dash_callbacks_reach_v1_state_after_a_deploy(run_in_browser, browser):  # noqa: F811
    importlib.import_module("dash")  # in the test extra
    from playwright.sync_api import expect

    gw, text = run_in_browser("dash")
    ann = Tab(browser, gw.port)
    try:
        ann.open()
        out = ann.page.locator("#out")

        def add(item: str, count: int) -> tuple[str, str]:
            ann.page.fill("#item", item)
            ann.page.click("#add")
            return says(out, count)

        rev, pid = add("milk", 1)
        assert rev == "v1"
        assert add("eggs", 2) == ("v1", pid)
        next_revision(gw, "Shopping list")
        gw.deploy(deploy_command(text))
        assert gw.status()["active"] == "v2"

        mark = len(ann.responses)
        assert add("bread", 3) == ("v1", pid)
        calls = ann.since(mark, "/_dash-update-component")
        assert calls and {r for _, r in calls} == {"v1"}, calls
        # A reload is still v1's: the cookie is pinned, the list is in its memory.
        ann.open()
        expect(ann.page.locator("#title")).to_have_text("Shopping list")
        assert add("tea", 4) == ("v1", pid)
        expect(out).to_contain_text("milk, eggs, bread, tea")

        bob = Tab(browser, gw.port)
        try:
            bob.open()
            expect(bob.page.locator("#title")).to_have_text("Shopping list, new edition")
            bob.page.fill("#item", "rice")
            bob.page.click("#add")
            assert says(bob.page.locator("#out"), 1)[0] == "v2"
            assert not bob.outside and not bob.errors, (bob.outside, bob.errors)
        finally:
            bob.close()
        assert not ann.outside and not ann.errors, (ann.outside, ann.errors)
    except Exception:
        ann.shot("dash-failure")
        raise
    finally:
        ann.close()
    assert gw.status()["sessions_lost"] == 0


# -- Panel ---------------------------------------------------------------------------


def test_panel_bokeh_session_stays_on_v1_over_its_websocket(run_in_browser, browser):  # noqa: F811
    importlib.import_module("panel")  # in the test extra
    from playwright.sync_api import expect

    gw, text = run_in_browser("panel")
    ann = Tab(browser, gw.port)
    try:
        ann.open("/app")
        button = ann.page.get_by_role("button", name="Click")
        out = ann.page.locator(".out")

        button.click()
        rev, pid = says(out, 1)
        assert rev == "v1"
        button.click()
        says(out, 2)
        socket = next(ws for ws in ann.sockets if ws.url.endswith("/app/ws"))
        next_revision(gw, "Click counter")
        gw.deploy(deploy_command(text))
        assert gw.status()["active"] == "v2"

        button.click()  # the same Bokeh session, over the same WebSocket
        assert says(out, 3) == ("v1", pid)
        assert not socket.is_closed()
        assert [ws for ws in ann.sockets if ws.url.endswith("/app/ws")] == [socket]
        ann.shot("panel-v1-after-deploy")

        bob = Tab(browser, gw.port)
        try:
            bob.open("/app")
            expect(bob.page.get_by_text("Click counter, new edition")).to_be_visible()
            bob.page.get_by_role("button", name="Click").click()
            assert says(bob.page.locator(".out"), 1)[0] == "v2"
            assert not bob.outside and not bob.errors, (bob.outside, bob.errors)
        finally:
            bob.close()
        assert not ann.errors, ann.errors
        wait_for(lambda: gw.revision("v1")["sessions"] >= 1, timeout=10,
                 what="v1 to hold the open page's session")
    except Exception:
        ann.shot("panel-failure")
        raise
    finally:
        ann.close()
    assert gw.status()["sessions_lost"] == 0
