"""Running it for real: restarts, reloads and mistakes an operator makes, end to end.

A revision's files never change after it starts (the first one too); a changed ``[app]``
section is reported at start; a reload with a broken config (SIGHUP or ``holdover
reload``) refuses and keeps serving; a reload during a deploy waits for it; listeners
are bound before any worker starts and a taken port is named with its setting; the
admin port never refuses a connection during a reload.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from conftest import APPS, PY, GatewayProcess, wait_for

from holdover.control.releases import SNAPSHOT_IGNORED

APP = '''\
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
VERSION = "one"
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def status(gw: GatewayProcess) -> dict:
    r = gw.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_first_revision_runs_from_a_snapshot_that_survives_edits_and_restarts(
        tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "big").write_text("x")
    gw = GatewayProcess(tmp_path, app=f"{PY} app.py {{port}}", workers=1, health_path="/")
    try:
        gw.wait_ready()
        assert get(gw.port) == (200, b"one")
        v1 = status(gw)["revisions"][0]
        release = Path(v1["release_dir"])
        assert release.is_dir() and (release / "app.py").read_text() == APP
        assert not (release / ".venv").exists() and ".venv" in SNAPSHOT_IGNORED
        assert not (release / "state").exists(), "the state_dir is never part of a snapshot"
        # The live folder changes (the next revision); v1 must not.
        (tmp_path / "app.py").write_text(APP.replace('"one"', '"two"'))
        assert gw.stop() == 0
        gw._start()
        gw.wait_ready()
        assert get(gw.port) == (200, b"one"), "a restarted v1 runs v1's code"
        assert "[app] section" not in gw.log, "the app's files are not [app] settings"
    finally:
        gw.stop_and_check()


def test_a_changed_app_section_is_reported_at_restart(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, workers=1)
    try:
        gw.wait_ready()
        assert gw.stop() == 0
        text = gw.config.read_text()
        gw.config.write_text(text.replace("workers = 1", "workers = 2").replace(
            "backend.py", "backend.py "))
        gw._start()
        gw.wait_ready()
        line = next(ln for ln in gw.log.splitlines() if "[app] section" in ln)
        assert "differs from the running revision v1 in: command, workers" in line, line
        assert "holdover deploy" in line
        assert len(status(gw)["revisions"][0]["workers"]) == 1, "the revision is kept"
    finally:
        gw.stop_and_check()


def test_sighup_with_a_broken_config_refuses_and_keeps_serving(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, workers=1, mode="sessions")
    try:
        gw.wait_ready()
        pid = gw.proc.pid
        workers = {p.pid for p in gw.workers()}
        good = gw.config.read_text()
        gw.config.write_text(good + "\n[app]\nworkers = 'many'\n")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "not reloading" in gw.log, what="the refusal in the log")
        assert get(gw.port, "/echo")[0] == 200
        assert gw.proc.poll() is None and gw.proc.pid == pid
        assert {p.pid for p in gw.workers()} == workers, "no worker was touched"
        code, _, body = gw.admin_request("GET", "/api/events")  # (the CLI needs the config)
        assert "reload-refused" in [e["kind"] for e in json.loads(body)["events"]]
        # The admin API checks the same before it answers.
        code, _, body = gw.admin_request("POST", "/api/reload")
        assert code == 400 and b"not reloading" in body, body
        gw.config.write_text(good)
        code, _, body = gw.admin_request("POST", "/api/reload")
        assert code == 200, body
        wait_for(lambda: gw.log.count("serving http://") == 2, what="the re-executed image")
        assert {p.pid for p in gw.workers()} == workers
    finally:
        gw.stop_and_check()


def test_a_reload_during_a_deploy_waits_for_it_then_happens(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, workers=1,
                        app=f"{PY} {APPS / 'stateful.py'} {{port}}")
    try:
        gw.wait_ready()
        done: dict[str, object] = {}

        def deploy() -> None:  # its workers take two seconds to listen
            done["r"] = gw.cli("deploy", "--revision", "v2", "--env", "START_DELAY=2")
        t = threading.Thread(target=deploy)
        t.start()
        wait_for(lambda: status(gw)["deploying"], what="the deploy to be under way")
        code, _, body = gw.admin_request("POST", "/api/reload")
        assert code == 200 and json.loads(body)["waits_for"] == "a deploy", body
        t.join(60)
        assert done["r"].returncode == 0, done["r"].stderr  # type: ignore[attr-defined]
        wait_for(lambda: gw.log.count("serving http://") == 2, what="the reload after it")
        st = status(gw)
        assert st["active"] == "v2"
        kinds = [e["kind"] for e in json.loads(gw.cli("events", "--json").stdout)["events"]]
        assert "reloading" in kinds and "reload" in kinds
    finally:
        gw.stop_and_check()


def test_the_admin_port_takes_connections_throughout_a_reload(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, workers=1)
    try:
        gw.wait_ready()
        host, _, port = gw.admin_url.split("//")[1].rstrip("/").rpartition(":")
        refused = []
        stop = threading.Event()

        def knock() -> None:
            while not stop.is_set():
                try:
                    socket.create_connection((host, int(port)), timeout=5).close()
                except ConnectionRefusedError:
                    refused.append(time.monotonic())
                time.sleep(0.01)
        t = threading.Thread(target=knock)
        t.start()
        try:
            assert gw.cli("reload").returncode == 0
            wait_for(lambda: gw.log.count("serving http://") == 2, what="the reload")
            code, _, _ = gw.admin_request("GET", "/api/status")
            assert code == 200
        finally:
            stop.set()
            t.join(10)
        assert not refused, f"the admin port refused {len(refused)} connection(s)"
    finally:
        gw.stop_and_check()


def test_a_taken_port_is_named_and_no_worker_starts(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        gw = GatewayProcess(tmp_path, workers=1,
                            extra_gateway=f'admin_listen = "127.0.0.1:{port}"\n')
        try:
            assert gw.proc.wait(30) == 1
            gw._reader.join(5)
            msg = next(ln for ln in gw.log.splitlines() if "cannot listen" in ln)
            assert f"127.0.0.1:{port}" in msg and "[gateway] admin_listen" in msg, msg
            assert str(gw.config) in msg and "line " in msg, msg
            assert "worker v1-1 started" not in gw.log, "no worker runs before listeners"
            assert "is active" not in gw.log
        finally:
            gw.stop_and_check()
    finally:
        taken.close()


def test_readyz_turns_503_on_sigterm_while_the_node_still_serves(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, workers=1, extra_gateway='shutdown_delay = "3s"\n')
    try:
        gw.wait_ready()
        import http.client
        host, _, port = gw.admin_url.split("//")[1].rstrip("/").rpartition(":")

        said: list[dict] = []

        def readyz() -> int:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("GET", "/readyz")  # no credentials: a balancer's probe
                r = conn.getresponse()
                said.append(json.loads(r.read()))
                return r.status
            finally:
                conn.close()
        assert readyz() == 200 and said[-1] == {"ready": True}
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: readyz() == 503, what="/readyz to say 503")
        assert said[-1] == {"ready": False, "reason": "shutting down"}, said[-1]
        assert get(gw.port, "/echo")[0] == 200, "still serving during shutdown_delay"
        assert gw.proc.wait(30) == 0
    finally:
        gw.stop_and_check()


def test_behind_a_trusted_tls_terminator(tmp_path: Path) -> None:
    """nginx, Caddy or a cloud balancer in front: its forwarding is kept, the pin cookie
    is Secure when the user came over https, the access log names the real client."""
    import http.client
    gw = GatewayProcess(tmp_path, workers=1, mode="sessions",
                        extra_gateway='trusted_proxies = ["127.0.0.1"]\n'
                                      'access_log = "access.log"\n')
    try:
        gw.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", "/echo", headers={"X-Forwarded-For": "203.0.113.7",
                                              "X-Forwarded-Proto": "https",
                                              "X-Forwarded-Host": "shop.example"})
        r = conn.getresponse()
        seen = dict(json.loads(r.read())["headers"])
        conn.close()
        assert seen["X-Forwarded-Proto"] == "https" and seen["X-Forwarded-Host"] == \
            "shop.example"
        assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
        cookie = r.getheader("Set-Cookie")
        assert cookie.startswith("holdover_pin=") and "; Secure" in cookie, cookie
        log = gw.dir / "state" / "access.log"
        wait_for(lambda: log.exists() and "203.0.113.7" in log.read_text(),
                 what="the real client in the access log")
    finally:
        gw.stop_and_check()


if __name__ == "__main__":  # pragma: no cover
    import pytest
    sys.exit(pytest.main([__file__, "-q"]))
