"""The explicit session protocol end to end: a real gateway, real workers, a real client.

The worker app (tests/apps/protocol_app.py) announces sessions with ``X-Holdover-Session``
and the gateway is not told about any app cookie, so every pin here comes from the header.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from typing import Any

import pytest
from conftest import APPS, PY, GatewayProcess, wait_for

APP = f"{PY} {APPS / 'protocol_app.py'} {{port}}"
SESSIONS = ''  # the defaults: no session_cookie; the app speaks the session protocol


class Client:
    """A keep-alive HTTP client with a cookie jar (or none: ``cookies=False``)."""

    def __init__(self, port: int, cookies: bool = True) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.keep_cookies = cookies
        self.jar: dict[str, str] = {}
        self.set_cookie: list[str] = []  # the raw Set-Cookie headers of the last response

    def get(self, path: str) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
        headers = {}
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        self.conn.request("GET", path, headers=headers)
        r = self.conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200, (r.status, body)
        self.set_cookie = r.msg.get_all("Set-Cookie") or []
        if self.keep_cookies:
            for raw in self.set_cookie:
                for name, morsel in SimpleCookie(raw).items():
                    if morsel["max-age"] in ("0", "-1") or not morsel.value:
                        self.jar.pop(name, None)
                    else:
                        self.jar[name] = morsel.value
        return r, body

    def close(self) -> None:
        self.conn.close()


def live_sessions(gw: GatewayProcess) -> int:
    out = subprocess.run([sys.executable, "-m", "holdover", "status", "--json", "-c",
                          str(gw.config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    return sum(rev["sessions"] for rev in status["revisions"])


@pytest.fixture(params=[1, 2], ids=["1-process", "2-processes"])
def gw(gateway_factory, request) -> GatewayProcess:
    """The protocol app behind one gateway process, and behind two data-plane processes
    (where a client's connection, and so its pins' claims, land on either of them)."""
    return gateway_factory(app=APP, workers=2, mode="sessions", extra_app=SESSIONS,
                           extra_gateway=f"processes = {request.param}\n").wait_ready()


def test_session_header_pins_renews_and_ends(gw: GatewayProcess) -> None:
    user = Client(gw.port)
    try:
        r, me = user.get("/login")
        # The header is for the gateway only, and the gateway answers with its own cookie.
        assert r.getheader("X-Holdover-Session") is None
        assert "holdover_pin" in user.jar, user.set_cookie
        assert me["session"].startswith("u1-")
        pid, worker = me["pid"], me["worker"]
        assert worker
        assert live_sessions(gw) == 1

        for _ in range(40):  # the session's memory is in one process: every request there
            r, page = user.get("/")
            assert r.getheader("X-Holdover-Session") is None
            assert (page["pid"], page["worker"], page["known"]) == (pid, worker, True)
        assert live_sessions(gw) == 1

        r, bye = user.get("/logout")
        assert r.getheader("X-Holdover-Session") is None
        assert bye["pid"] == pid and bye["known"] is True
        pin = [c for c in user.set_cookie if c.startswith("holdover_pin=")]
        assert pin and "Max-Age=0" in pin[0], user.set_cookie
        assert "holdover_pin" not in user.jar
        assert live_sessions(gw) == 0
    finally:
        user.close()

    # A client without the pin cookie is balanced over both workers.
    anon = Client(gw.port, cookies=False)
    try:
        pids = set()
        for _ in range(20):
            pids.add(anon.get("/")[1]["pid"])
        assert len(pids) == 2, pids
    finally:
        anon.close()


def test_renewed_session_lives_on_and_ends_when_max_age_runs_out(gw: GatewayProcess) -> None:
    user = Client(gw.port)
    try:
        _, me = user.get("/login?max_age=2")
        # Renewed every half second for longer than max-age plus the gateway's sweep.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            r, page = user.get("/?renew=2")
            assert r.getheader("X-Holdover-Session") is None
            assert (page["pid"], page["known"]) == (me["pid"], True)
            time.sleep(0.5)
        assert live_sessions(gw) == 1
        wait_for(lambda: live_sessions(gw) == 0, timeout=15, interval=0.5,
                 what="the session to expire")
    finally:
        user.close()


def test_anonymous_requests_of_a_protocol_app_are_no_sessions(gw: GatewayProcess) -> None:
    user = Client(gw.port)
    anon = Client(gw.port, cookies=False)
    try:
        user.get("/login")
        for _ in range(5):
            anon.get("/")
        assert live_sessions(gw) == 1
    finally:
        user.close()
        anon.close()


def test_a_new_session_id_replaces_the_old_pin(gw: GatewayProcess) -> None:
    user = Client(gw.port)
    try:
        _, first = user.get("/login")
        _, second = user.get("/login")  # logging in again without logging out
        assert second["pid"] == first["pid"]
        assert second["session"] != first["session"]
        assert live_sessions(gw) == 1
    finally:
        user.close()


def test_a_pin_cookie_replayed_after_logout_routes_nowhere(gw: GatewayProcess) -> None:
    """A client that keeps sending its pin cookie after logout is no longer pinned."""
    user = Client(gw.port)
    try:
        user.get("/login")
        stale = dict(user.jar)
        user.get("/logout")
        assert live_sessions(gw) == 0
        user.jar = {"holdover_pin": stale["holdover_pin"]}
        user.keep_cookies = False
        pids = {user.get("/")[1]["pid"] for _ in range(20)}
        assert len(pids) == 2, pids  # no longer pinned: balanced like anyone else
    finally:
        user.close()
