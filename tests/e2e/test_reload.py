"""Re-executing the gateway in place (SIGHUP / `holdover reload`) keeps workers and sessions."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time

from conftest import wait_for


class Client:
    """A keep-cookies HTTP client of the demo app."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def get(self, path: str = "/") -> tuple[int, str, dict[str, str]]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = c.getresponse()
        body = r.read().decode()
        for h in r.headers.get_all("Set-Cookie") or []:
            k, _, v = h.split(";")[0].partition("=")
            if v:
                self.cookies[k] = v
            else:
                self.cookies.pop(k, None)
        c.close()
        return r.status, body, dict(r.headers)


def page_facts(body: str) -> tuple[int, int]:
    pid = int(re.search(r"pid (\d+)", body).group(1))
    count = int(re.search(r'id="count">(\d+)', body).group(1))
    return pid, count


def status(gw) -> dict:
    out = subprocess.run([sys.executable, "-m", "holdover", "status", "--json", "-c",
                          str(gw.config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def demo_gateway(gateway_factory):
    return gateway_factory(app=f"{sys.executable} -m holdover.demo.app --port {{port}}",
                           mode="sessions", extra_app='session_cookie = "session"\n')


def test_reload_keeps_workers_sessions_and_serves_throughout(gateway_factory):
    gw = demo_gateway(gateway_factory).wait_ready()
    alice = Client(gw.port)
    for _ in range(3):
        _, body, _ = alice.get()
    pid, count = page_facts(body)
    assert count == 3
    workers_before = {p.pid for p in gw.workers()}

    failures: list[object] = []
    done = threading.Event()
    served = [0]

    def load() -> None:
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            try:
                st, _, _ = Client(gw.port).get("/healthz")
                if st != 200:
                    failures.append(st)
                served[0] += 1
            except OSError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: served[0] > 50, what="traffic before the reload")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.log.count("holdover: serving") >= 2, timeout=30, what="re-exec")
    before = served[0]
    wait_for(lambda: served[0] > before + 50, what="traffic after the reload")
    done.set()
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    assert "adopted 2 worker(s), 1 session(s) kept" in gw.log
    # Same processes, same in-memory session, nothing lost.
    assert {p.pid for p in gw.workers()} == workers_before
    _, body, _ = alice.get()
    assert page_facts(body) == (pid, 4)
    st = status(gw)
    assert st["sessions_lost"] == 0 and st["sessions"] >= 1


def test_adopted_worker_is_still_supervised_and_deploys_work(gateway_factory):
    gw = demo_gateway(gateway_factory).wait_ready()
    out = subprocess.run([sys.executable, "-m", "holdover", "reload", "-c", str(gw.config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: gw.log.count("holdover: serving") >= 2, timeout=30, what="re-exec")
    victim = gw.workers()[0]
    victim.send_signal(signal.SIGKILL)
    wait_for(lambda: all(w["state"] == "ready" and w["pid"] != victim.pid
                         for w in status(gw)["revisions"][0]["workers"]),
             timeout=20, what="the adopted worker's replacement")
    out = subprocess.run([sys.executable, "-m", "holdover", "deploy", "-c", str(gw.config),
                          "--revision", "v2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert status(gw)["active"] == "v2"


def test_a_disabled_worker_stays_disabled_across_a_reload(gateway_factory):
    gw = gateway_factory(workers=2).wait_ready()
    wid = status(gw)["revisions"][0]["workers"][0]["id"]
    assert gw.cli("worker-disable", wid).returncode == 0
    assert gw.cli("reload").returncode == 0
    wait_for(lambda: gw.log.count("holdover: serving") >= 2, timeout=30, what="re-exec")
    workers = {w["id"]: w for w in status(gw)["revisions"][0]["workers"]}
    assert workers[wid]["disabled"] is True, workers
    assert [w["disabled"] for i, w in workers.items() if i != wid] == [False]
