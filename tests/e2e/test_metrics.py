"""Prometheus metrics at ``/metrics`` on the admin side.

These tests scrape a real sessions-mode gateway while traffic, 5xx answers and a deploy
go through it; tests/unit/test_metrics_collector.py drives ``GatewayCollector`` with a
stand-in gateway.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import GatewayProcess, wait_for
from promtext import Samples, parse, total, value

from holdover.proxy.endpoint import LATENCY_BOUNDS

# -- a real gateway --------------------------------------------------------------------------


class Admin:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.token = gw.admin_token

    def request(self, method: str, path: str, body: Any = None, token: str | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        return self.gw.admin_request(method, path, body, token=token)

    def scrape(self) -> Samples:
        code, headers, body = self.request("GET", "/metrics")
        assert code == 200, body
        assert headers["Content-Type"].startswith("text/plain"), headers
        return parse(body.decode())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Sessions mode without an app cookie: holdover pins each new client itself.
    g = GatewayProcess(tmp_path_factory.mktemp("metrics"), workers=1,
                       mode="sessions").wait_ready()
    yield g
    g.stop_and_check()


@pytest.fixture(scope="module")
def admin(gw: GatewayProcess) -> Admin:
    return Admin(gw)


def get(port: int, path: str, cookie: str | None = None) -> tuple[int, bytes, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = conn.getresponse()
        body = r.read()
        return r.status, body, r.getheader("Set-Cookie")
    finally:
        conn.close()


def test_metrics_need_the_token(admin: Admin) -> None:
    code, headers, body = admin.request("GET", "/metrics", token="wrong")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert b"holdover_" not in body


def test_counters_follow_traffic(gw: GatewayProcess, admin: Admin) -> None:
    before = admin.scrape()
    sent = 0
    cookies = []
    for i in range(5):
        code, body, cookie = get(gw.port, f"/echo?n={i}")
        assert code == 200
        sent += len(body)
        cookies.append(cookie)
    assert all(c and c.startswith("holdover_pin=") for c in cookies), cookies
    for _ in range(3):
        code, body, _ = get(gw.port, "/status/503")
        assert code == 503
        sent += len(body)
    code, _, _ = get(gw.port, "/status/404")
    assert code == 404

    def moved() -> Samples | None:
        s = admin.scrape()
        done = total(s, "holdover_requests_total") - total(before, "holdover_requests_total")
        return s if done >= 9 else None

    after: Samples = wait_for(moved, 10, what="9 more requests counted")  # type: ignore[assignment]
    rev = {"revision": "v1"}

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **rev, **labels) - value(before, name, **rev, **labels)

    assert delta("holdover_requests_total", **{"class": "2xx"}) == 5
    assert delta("holdover_requests_total", **{"class": "5xx"}) == 3
    assert delta("holdover_requests_total", **{"class": "4xx"}) == 1
    assert delta("holdover_response_bytes_total") >= sent
    assert delta("holdover_request_duration_seconds_count") == 9
    assert delta("holdover_request_duration_seconds_sum") > 0
    # The histogram is cumulative and ends at +Inf = count.
    bounds = [*(repr(b) for b in LATENCY_BOUNDS), "+Inf"]
    buckets = [value(after, "holdover_request_duration_seconds_bucket", **rev, le=b)
               for b in bounds]
    assert buckets == sorted(buckets)
    assert buckets[-1] == value(after, "holdover_request_duration_seconds_count", **rev)
    assert buckets[-1] == total(after, "holdover_requests_total", **rev)
    # Every request without a pin was offered holdover's own cookie; none came back with
    # it, so none became a session (and none keeps v1 alive).
    assert value(after, "holdover_sessions_offered") >= value(before,
                                                              "holdover_sessions_offered") + 5
    assert value(after, "holdover_sessions", **rev) == value(before, "holdover_sessions", **rev)
    code, _, st = admin.request("GET", "/api/sessions")
    assert value(after, "holdover_sessions", **rev) <= json.loads(st)["total"]
    assert value(after, "holdover_requests_in_flight", **rev) == 0
    assert value(after, "holdover_workers", state="ready", **rev) == 1
    assert value(after, "holdover_revision_info", state="active", **rev) == 1
    assert value(after, "holdover_queue_length") == 0
    # A client that comes back with its cookie becomes a session, once.
    n = value(after, "holdover_sessions", **rev)
    pin = cookies[0].split(";")[0]
    assert get(gw.port, "/echo", cookie=pin)[0] == 200
    assert value(admin.scrape(), "holdover_sessions", **rev) == n + 1
    assert get(gw.port, "/echo", cookie=pin)[0] == 200
    assert value(admin.scrape(), "holdover_sessions", **rev) == n + 1


def test_deploy_is_counted(gw: GatewayProcess, admin: Admin) -> None:
    before = admin.scrape()
    code, _, body = admin.request("POST", "/api/deploy", {"revision": "v2"})
    assert code == 200, body
    after = admin.scrape()
    assert value(after, "holdover_deploys_total") == value(before, "holdover_deploys_total") + 1
    assert value(after, "holdover_revision_info", revision="v2", state="active") == 1
    assert value(after, "holdover_revision_info", revision="v1", state="active") == 0
    assert value(after, "holdover_workers", revision="v2", state="ready") == 1
    # New traffic is counted on v2; v1's counters are kept, never reset.
    code, _, _ = get(gw.port, "/echo")
    assert code == 200
    later = wait_for(lambda: (s := admin.scrape()) and value(
        s, "holdover_requests_total", revision="v2", **{"class": "2xx"}) >= 1 and s, 10,
        what="v2's request counted")
    for (name, labels), v in before.items():
        if name.endswith(("_total", "_count", "_bucket")) and ("revision", "v1") in labels:
            assert later[(name, labels)] >= v, (name, labels)  # type: ignore[index]


def test_process_stats_follow_children() -> None:
    import subprocess
    import sys

    from holdover.admin.metrics import ProcessStats

    stats = ProcessStats(min_interval=0)
    sh = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c 'import time; "
                           f"x = bytearray(64 << 20); time.sleep(30)' & wait"])
    try:
        def grown() -> bool:
            stats._kids.clear()  # look for the child again
            rss, cpu = stats.sample([sh.pid])[sh.pid]
            return rss > 64 << 20 and cpu >= 0
        wait_for(grown, 10, what="the shell's child to be counted")
        assert stats.sample([sh.pid, 999_999_999]).keys() == {sh.pid}  # gone pids: skipped
    finally:
        for child in psutil.Process(sh.pid).children(recursive=True):
            child.kill()
        sh.kill()
        sh.wait()
