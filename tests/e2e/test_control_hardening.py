"""Issue 11, points 15 to 17: reloads and deploys that must not leave an operator guessing.

- the admin port and the redirect listener stay open across ``holdover reload`` (as the
  public port does);
- ``holdover reload`` during a deploy either waits and reloads or refuses with exit 1,
  and records an event either way;
- a rolling deploy with ``max_drain = 0`` does not hold rollback hostage;
- a WebSocket client that half-closes TCP without a close frame releases its worker;
- finished revisions beyond ``keep_retired`` leave status and disk (point 14).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import trustme
from conftest import PY, GatewayProcess, free_port, wait_for


class Prober:
    """Connects to ``port`` every few milliseconds in a thread; counts refusals."""

    def __init__(self, port: int) -> None:
        self.port, self.tries, self.refused = port, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    pass
            except ConnectionRefusedError:
                self.refused += 1
            except OSError:
                pass
            self.tries += 1
            time.sleep(0.003)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _reload_and_wait(gw: GatewayProcess) -> None:
    before = gw.log.count("holdover: serving")
    r = gw.cli("reload")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: gw.log.count("holdover: serving") > before, 30, what="the re-exec")


def _events(gw: GatewayProcess) -> list[dict]:
    code, _, body = gw.admin_request("GET", "/api/events?limit=500")
    assert code == 200, body
    return json.loads(body)["events"]


# == 15. the admin port across a reload =============================================


def test_admin_port_keeps_accepting_during_reload(gateway_factory) -> None:
    admin_port = free_port()
    gw = gateway_factory(workers=1,
                         extra_gateway=f'admin_listen = "127.0.0.1:{admin_port}"\n').wait_ready()
    with Prober(admin_port) as probe:
        wait_for(lambda: probe.tries > 20, what="probing the admin port")
        _reload_and_wait(gw)  # the new image serves its admin side before it says so
        seen = probe.tries
        wait_for(lambda: probe.tries > seen + 20, what="probes after the reload")
    assert probe.refused == 0, f"{probe.refused} of {probe.tries} connections refused"


# == 16. reload during a deploy ======================================================


def test_reload_during_a_deploy_is_not_silently_dropped(gateway_factory) -> None:
    gw = gateway_factory(workers=1, extra_app='start_timeout = "6s"\n').wait_ready()
    deploy = subprocess.Popen(  # a revision that never becomes ready: the deploy lasts 6 s
        [PY, "-m", "holdover", "deploy", "-c", str(gw.config), "--revision", "slow",
         "--command", "sleep 60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=gw.dir)
    try:
        wait_for(lambda: json.loads(gw.admin_request("GET", "/api/status")[2])["deploying"],
                 20, what="the deploy to be under way")
        served_before = gw.log.count("holdover: serving")
        r = gw.cli("reload")
        if r.returncode == 0:  # it waits for the deploy, then reloads
            wait_for(lambda: gw.log.count("holdover: serving") > served_before, 30,
                     what="the reload it promised")
        else:
            assert r.returncode == 1 and "deploy" in r.stderr, (r.returncode, r.stderr)
        wait_for(lambda: any("reload" in e["kind"] or "reload" in e["message"]
                             for e in _events(gw)), 30, what="an event about the reload")
    finally:
        deploy.wait(60)


# == 17. rolling deploys, the redirect listener, WebSockets ===========================


def _ws_handshake(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _ws_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def _inflight(gw: GatewayProcess) -> int:
    st = json.loads(gw.admin_request("GET", "/api/status")[2])
    return sum(w["inflight"] for r in st["revisions"] for w in r["workers"])


def test_websocket_half_closed_without_close_frame_releases_its_worker(gateway_factory
                                                                       ) -> None:
    gw = gateway_factory(workers=1).wait_ready()
    s = _ws_handshake(gw.port)
    try:
        s.sendall(_ws_text(b"hello"))
        frame = s.recv(4096)
        assert b"echo:hello" in frame, frame
        wait_for(lambda: _inflight(gw) == 1, 10, what="the WebSocket counted in flight")
        s.shutdown(socket.SHUT_WR)  # FIN without a close frame; still reading
        s.settimeout(10)
        try:
            rest = s.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", f"the gateway kept the half-closed tunnel open: {rest!r}"
        wait_for(lambda: _inflight(gw) == 0, 10, what="the worker to be released")
    finally:
        s.close()


def test_rolling_deploy_with_unbounded_drain_does_not_block_rollback(gateway_factory
                                                                     ) -> None:
    gw = gateway_factory(workers=1, extra_app='strategy = "rolling"\nmax_drain = "0"\n'
                         ).wait_ready()
    s = _ws_handshake(gw.port)  # an open WebSocket on v1's only worker
    deploy = subprocess.Popen([PY, "-m", "holdover", "deploy", "-c", str(gw.config),
                               "--revision", "v2"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=gw.dir)
    try:
        def v2_ready() -> bool:
            st = json.loads(gw.admin_request("GET", "/api/status")[2])
            return any(r["id"] == "v2" and any(w["state"] == "ready" for w in r["workers"])
                       for r in st["revisions"])
        wait_for(v2_ready, 30, what="v2's first worker")
        r = gw.cli("rollback", timeout=30)
        assert r.returncode == 0, f"rollback refused while v1 drains: {r.stderr.strip()}"
    finally:
        s.close()
        deploy.wait(60)


def test_redirect_listener_keeps_accepting_during_reload(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    redirect_port = free_port()
    gw = GatewayProcess(tmp_path, workers=1, extra_gateway=f"""
        tls_cert = "server.pem"
        tls_key = "server.pem"
        redirect_listen = "127.0.0.1:{redirect_port}"
        """)
    try:
        wait_for(lambda: re.search(r"serving https://", gw.log) or gw.proc.poll() is not None,
                 30, what="the TLS gateway")
        assert gw.proc.poll() is None, gw.log
        with Prober(redirect_port) as probe:
            wait_for(lambda: probe.tries > 20, what="probing the redirect port")
            before = gw.log.count("holdover: serving")
            assert gw.cli("reload").returncode == 0
            wait_for(lambda: gw.log.count("holdover: serving") > before, 30, what="re-exec")
            seen = probe.tries
            wait_for(lambda: probe.tries > seen + 20, what="probes after the reload")
        assert probe.refused == 0, f"{probe.refused} of {probe.tries} connections refused"
    finally:
        gw.stop_and_check()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_reload_moves_the_admin_listener_and_closes_a_dropped_redirect(tmp_path: Path
                                                                       ) -> None:
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    redirect_port, admin_port, new_admin = free_port(), free_port(), free_port()
    gw = GatewayProcess(tmp_path, workers=1, extra_gateway=f"""
        tls_cert = "server.pem"
        tls_key = "server.pem"
        redirect_listen = "127.0.0.1:{redirect_port}"
        admin_listen = "127.0.0.1:{admin_port}"
        """)
    try:
        wait_for(lambda: re.search(r"serving https://", gw.log) or gw.proc.poll() is not None,
                 30, what="the TLS gateway")
        assert not _refused(redirect_port) and not _refused(admin_port)
        text = gw.config.read_text()
        text = re.sub(r"redirect_listen = .*\n", "", text)
        gw.config.write_text(text.replace(f"127.0.0.1:{admin_port}", f"127.0.0.1:{new_admin}"))
        before = gw.log.count("holdover: serving")
        r = gw.cli("reload")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: gw.log.count("holdover: serving") > before, 30, what="re-exec")
        assert gw.admin_url.endswith(f":{new_admin}/")
        assert gw.admin_request("GET", "/api/status")[0] == 200
        # Neither old listener is left behind accepting connections nobody serves.
        assert _refused(admin_port) and _refused(redirect_port)
    finally:
        gw.stop_and_check()


def test_reload_that_would_move_the_public_listener_is_refused(gateway_factory) -> None:
    gw = gateway_factory(workers=1).wait_ready()
    text = gw.config.read_text()
    moved = free_port()
    gw.config.write_text(re.sub(r'^listen = "127\.0\.0\.1:0"', f'listen = "127.0.0.1:{moved}"',
                                text, count=1, flags=re.M))
    r = gw.cli("reload")
    assert r.returncode != 0
    assert "moves the public listener" in r.stderr and "restart" in r.stderr, r.stderr
    c = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    c.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert c.recv(100).startswith(b"HTTP/1.1 200")
    c.close()


# == 14. old revisions leave status and disk ==========================================


def test_retired_revisions_beyond_keep_leave_status_and_disk(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "release.txt").write_text("files of the app")
    (tmp_path / "g").mkdir()
    gw = GatewayProcess(tmp_path / "g", extra_app="keep_retired = 1\n", workers=1)
    try:
        gw.wait_ready()
        for n in range(2, 6):
            r = gw.cli("deploy", "--revision", f"v{n}", "--from", str(src))
            assert r.returncode == 0, r.stderr

            def retired(n: int = n) -> bool:
                st = json.loads(gw.admin_request("GET", "/api/status")[2])
                return {x["id"]: x["state"] for x in st["revisions"]}.get(f"v{n - 1}") in (
                    "retired", None)
            wait_for(retired, 60, what=f"v{n - 1} to retire")
        state = gw.dir / "state"

        def kept() -> tuple[list[str], tuple[list[str], list[str]]]:
            st = json.loads(gw.admin_request("GET", "/api/status")[2])
            return [x["id"] for x in st["revisions"]], (
                sorted(os.listdir(state / "releases")), sorted(os.listdir(state / "logs")))

        # Forgetting follows the retirement a moment later (the store, then the files).
        wait_for(lambda: kept() == (["v4", "v5"], (["v4", "v5"], ["v4", "v5"])), 30,
                 what="only the newest finished revision kept")
        ids, on_disk = kept()
        assert ids == ["v4", "v5"], ids
        assert on_disk == (["v4", "v5"], ["v4", "v5"]), on_disk
        kinds = [e["kind"] for e in json.loads(gw.admin_request(
            "GET", "/api/events?limit=500")[2])["events"]]
        assert kinds.count("retired") >= 3  # the forgotten ones stay as events
    finally:
        gw.stop_and_check()
