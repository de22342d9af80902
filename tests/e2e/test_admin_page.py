"""The admin page: its assets as served, and end to end in a real headless Chromium.

The browser test drives Debian's ``/usr/bin/chromium`` through Playwright's Python
package (``playwright install`` is never run: no browser is downloaded).  Without that
browser or package the test fails, saying which one is missing; ``scripts/test.sh``
installs Chromium with apt-get, and stops with the reason when it cannot.  Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, GatewayProcess, require

from holdover.admin.server import SECURITY_HEADERS, STATIC_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DEMO = f"{PY} -m holdover.demo.app --port {{port}}"


class Admin:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.url = gw.admin_url
        self.token = gw.admin_token

    def request(self, method: str, path: str, body: Any = None, auth: bool = True
                ) -> tuple[int, dict[str, str], bytes]:
        return self.gw.admin_request(method, path, body, auth=auth)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A sessions-mode gateway in front of the bundled demo app, one worker."""
    g = GatewayProcess(tmp_path_factory.mktemp("admin-page"), app=DEMO, workers=1,
                       mode="sessions", extra_app='session_cookie = "session"\n')
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop_and_check()


# -- the assets, without a browser -------------------------------------------------------------

EXTERNAL = [
    re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z]+:)?//""", re.I),
    re.compile(r"""url\(\s*["']?\s*(?:[a-z]+:)?//""", re.I),
    re.compile(r"@import", re.I),
    re.compile(r"""(?:fetch|import)\(\s*["'`](?:[a-z]+:)?//""", re.I),
]


def test_page_and_assets_are_served(demo: GatewayProcess) -> None:
    admin = Admin(demo)
    code, headers, body = admin.request("GET", "/", auth=False)
    assert code == 200 and headers["Content-Type"].startswith("text/html"), headers
    for k, v in SECURITY_HEADERS.items():
        assert headers.get(k) == v, k
    page = body.decode()
    assert demo.log.count("Traceback") == 0
    # The page itself holds no data: everything behind it needs the token.
    assert "v1" not in page and admin.token not in page
    refs = re.findall(r"""(?:src|href)="(/static/[^"]+)""", page)
    assert {"/static/app.js", "/static/style.css"} <= set(refs), refs
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for ref in refs:
        code, headers, body = admin.request("GET", ref, auth=False)
        assert code == 200, ref
        assert headers["Content-Type"].startswith(types[Path(ref).suffix]), (ref, headers)
        assert headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    # No asset loads anything from elsewhere (no CDN, no web font, no external URL).
    for f in STATIC_DIR.iterdir():
        text = f.read_text()
        for pattern in EXTERNAL:
            assert not pattern.search(text), (f.name, pattern.pattern)
    # Only files shipped in admin/static/, by plain name.
    for bad in ("/static/nope.js", "/static/..%2fserver.py", "/static/.hidden.js",
                "/static/%2e%2e/commands.py", "/static/server.py"):
        code, _, body = admin.request("GET", bad, auth=False)
        assert code == 404, bad
        assert b"def " not in body


# -- end to end in Chromium ---------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
                    f"chromium; scripts/test.sh does it when run as root)")
    sync_api = require("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_admin_page_end_to_end(demo: GatewayProcess, browser: Any) -> None:
    from playwright.sync_api import expect

    admin = Admin(demo)
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    expect.set_options(timeout=20_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    refused = re.compile(r"Failed to load resource: .* status of (401|409)")  # on purpose
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not refused.search(m.text) else None)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(admin.url.rstrip("/")) else None)
    try:
        page.goto(admin.url)
        # A wrong token is refused on the login box.
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "not-the-token")
        page.click("#login-submit")
        expect(page.locator("#login-error")).to_contain_text("refused")
        expect(page.locator("#app")).to_be_hidden()
        page.screenshot(path=ARTIFACTS / "admin-page-login.png")

        page.fill("#token", admin.token)
        page.click("#login-submit")
        v1 = page.locator('.rev[data-rev="v1"]')
        expect(v1.locator(".badge")).to_have_text("active")
        expect(v1.locator("tr[data-worker='v1-1'] .wstate")).to_have_text("ready")
        expect(page.locator("#live-text")).to_have_text("live")
        assert page.evaluate("sessionStorage.getItem('holdover.token')") == admin.token

        # A user starts a session on v1 (the demo app sets its "session" cookie).
        conn = http.client.HTTPConnection("127.0.0.1", demo.port, timeout=15)
        conn.request("GET", "/")
        r = conn.getresponse()
        r.read()
        assert r.status == 200 and "session=" in (r.getheader("Set-Cookie") or "")
        conn.close()
        expect(v1.locator(".rev-sessions")).to_have_text("1")
        expect(page.locator("#sum-sessions")).to_have_text("1")

        # A refused action shows the API's own message.
        v1.locator("button[data-command='drain']").click()
        expect(page.locator("#notice")).to_have_class(re.compile(r"\berror\b"))
        expect(page.locator("#notice-msg")).to_contain_text("is the active one")

        # Deploy v2 through the API: the page shows both revisions.
        code, _, body = admin.request("POST", "/api/deploy", {"revision": "v2"})
        assert code == 200, body
        v2 = page.locator('.rev[data-rev="v2"]')
        expect(v2.locator(".badge")).to_have_text("active")
        expect(v1.locator(".badge")).to_have_text("draining")
        expect(v1.locator(".rev-sessions")).to_have_text("1")  # the session stays on v1
        expect(page.locator("#sum-active")).to_have_text("v2")
        expect(page.locator("#events tr[data-kind='deploy']").first).to_contain_text("v2")
        expect(page.locator("#legend [data-series='v2']")).to_be_visible()
        expect(page.locator("#chart path[data-series='v1']")).to_have_count(1)
        page.screenshot(path=ARTIFACTS / "admin-page-deployed.png", full_page=True)

        # Roll back on the page: v1 is active again, v2 drains.
        page.click("#rollback")
        expect(page.locator("#notice")).to_have_class(re.compile(r"\bok\b"))
        expect(page.locator("#notice-msg")).to_contain_text("v1 is active again")
        expect(v1.locator(".badge")).to_have_text("active")
        expect(page.locator("#sum-active")).to_have_text("v1")
        expect(page.locator("#events tr[data-kind='rollback']").first).to_contain_text("v1")
        expect(v1.locator(".rev-sessions")).to_have_text("1")
        page.screenshot(path=ARTIFACTS / "admin-page-rolled-back.png", full_page=True)

        code, _, body = admin.request("GET", "/api/status")
        st = json.loads(body)
        assert st["active"] == "v1", st
        assert {r["id"]: r["state"] for r in st["revisions"]}["v2"] in ("draining", "retired")

        # Logging out forgets the token.
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('holdover.token')") is None
    except Exception:
        page.screenshot(path=ARTIFACTS / "admin-page-failure.png", full_page=True)
        raise
    finally:
        context.close()
    assert not problems, problems
    assert not outside, f"the page loaded something from elsewhere: {outside}"


def test_token_link_logs_in_once_and_leaves_the_address_bar(demo: GatewayProcess,
                                                            browser: Any) -> None:
    """`holdover demo` prints /#token=...: it signs in without pasting, and the token
    does not stay in the address bar (or reach the server: fragments are never sent)."""
    from playwright.sync_api import expect

    admin = Admin(demo)
    context = browser.new_context()
    page = context.new_page()
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    try:
        page.goto(admin.url.rstrip("/") + "/#token=" + admin.token)
        expect(page.locator('.rev[data-rev]').first).to_be_visible(timeout=20_000)
        expect(page.locator("#login")).to_be_hidden()
        assert "#token" not in page.url and admin.token not in page.url
        assert not any(admin.token in u for u in seen)
    finally:
        context.close()
