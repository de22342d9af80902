"""A worker whose health check never passes: the operator is told what the check got.

A wrong ``health_path`` (404) is not a slow start: ``holdover run`` and ``holdover
deploy`` give up after a few definite 4xx answers instead of waiting for
``start_timeout``, say what the last check got, and show the worker's log tail once.
A 5xx or a refused connection is what a starting app does, so those wait.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import PY, GatewayProcess

from holdover.supervisor.worker import Worker, WorkerSpec

# A real app (the standard library's HTTP server) whose every GET answers $HEALTH_STATUS.
STATUS_APP = """\
import http.server, os, sys
code = int(os.environ.get("HEALTH_STATUS", "200"))
print("status app up, answering", code, flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"status %d\\n" % code
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def status_app(tmp: Path) -> str:
    script = tmp / "status_app.py"
    script.write_text(STATUS_APP)
    return f"{PY} {script} {{port}}"


def test_run_with_a_404_health_path_fails_early_and_says_so(tmp_path: Path) -> None:
    t0 = time.monotonic()
    gw = GatewayProcess(tmp_path, app=status_app(tmp_path), workers=2,
                        env={"HEALTH_STATUS": "404"}, extra_app='start_timeout = "60s"\n')
    try:
        code = gw.proc.wait(45)
    finally:
        gw.stop()
    elapsed = time.monotonic() - t0
    assert code == 1, gw.log
    assert elapsed < 30, f"waited {elapsed:.0f}s: a 404 must not wait for start_timeout"
    assert "health check GET /healthz answered 404 Not Found" in gw.log, gw.log
    # The tail (its first line is the start marker) is printed once, not once per worker.
    assert gw.log.count("--- holdover: starting") == 1, gw.log
    assert "status app up, answering 404" in gw.log


def test_run_with_a_503_health_path_waits_for_start_timeout(tmp_path: Path) -> None:
    t0 = time.monotonic()
    gw = GatewayProcess(tmp_path, app=status_app(tmp_path), workers=1,
                        env={"HEALTH_STATUS": "503"}, extra_app='start_timeout = "3s"\n')
    try:
        code = gw.proc.wait(45)
    finally:
        gw.stop()
    assert code == 1, gw.log
    assert time.monotonic() - t0 >= 3.0, "a 5xx is a starting app: wait for start_timeout"
    assert "no passing health check within 3s (start_timeout)" in gw.log, gw.log
    assert "the last one: health check GET /healthz answered 503 Service Unavailable" in gw.log


def test_deploy_of_a_revision_with_a_404_health_path(gateway_factory, tmp_path: Path) -> None:
    gw = gateway_factory(app=status_app(tmp_path), workers=1, env={"HEALTH_STATUS": "200"},
                         extra_app='start_timeout = "60s"\n').wait_ready()
    t0 = time.monotonic()
    r = gw.cli("deploy", "--revision", "v2", "--env", "HEALTH_STATUS=404", timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert time.monotonic() - t0 < 30
    assert "revision v2 failed to start" in r.stderr
    assert "health check GET /healthz answered 404 Not Found" in r.stderr, r.stderr
    assert r.stderr.count("--- holdover: starting") == 1, r.stderr
    st = json.loads(gw.cli("status", "--json").stdout)
    states = {rev["id"]: rev["state"] for rev in st["revisions"]}
    assert states == {"v1": "active", "v2": "failed"}
    events = json.loads(gw.cli("events", "--json").stdout)["events"]
    failed = [e for e in events if e["kind"] == "failed" and e["revision"] == "v2"]
    assert failed and "answered 404 Not Found" in failed[-1]["message"]


# -- one health check, against a loopback server that answers given bytes -------------

def spec(tmp: Path, health_path: str = "/healthz") -> WorkerSpec:
    return WorkerSpec(
        revision="v1", command="unused", cwd=tmp, env={}, health_path=health_path,
        health_interval=1.0, health_timeout=1.0, health_failures=3, start_timeout=5.0,
        stop_grace=1.0, backoff_max=1.0, crash_loop_restarts=5, crash_loop_window=60.0,
        log_dir=tmp, log_max_bytes=1 << 20, log_backups=1)


async def check_against(tmp: Path, answer: bytes | None, w: Worker | None = None
                        ) -> tuple[bool, Worker]:
    """Run one ``check()`` against a server answering ``answer`` (None: nobody listens)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if answer is None:
        server.close()
        await server.wait_closed()
    w = w or Worker(id="v1-1", spec=spec(tmp))
    w.port = port
    try:
        ok = await w.check()
    finally:
        server.close()
    return ok, w


@pytest.mark.parametrize(("answer", "ok", "status", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True, 0, ""),
    (b"HTTP/1.1 404 Not Found\r\n\r\n", False, 404,
     "health check GET /healthz answered 404 Not Found"),
    (b"HTTP/1.0 405 Method Not Allowed\r\n\r\n", False, 405,
     "health check GET /healthz answered 405 Method Not Allowed"),
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False, 503,
     "health check GET /healthz answered 503 Service Unavailable"),
    (b"", False, 0, "health check GET /healthz: the connection closed without an answer"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", False, 0,
     "health check GET /healthz got something that is not HTTP: b'SSH-2.0-OpenSSH_9.2\\r\\n'"),
    (None, False, 0, "could not connect to 127.0.0.1:{port}: connection refused"),
], ids=["200", "404", "405", "503", "closed", "not-http", "refused"])
def test_check_says_what_it_got(tmp_path: Path, answer: bytes | None, ok: bool, status: int,
                                words: str) -> None:
    got, w = asyncio.run(check_against(tmp_path, answer))
    assert got is ok
    assert w.last_check_status == status
    assert w.last_check == words.format(port=w.port)


def test_a_passing_check_clears_the_last_failure(tmp_path: Path) -> None:
    async def twice() -> tuple[str, bool, Worker]:
        _, w = await check_against(tmp_path, b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
        first = w.last_check
        ok, w = await check_against(tmp_path, b"HTTP/1.1 204 No Content\r\n\r\n", w)
        return first, ok, w

    first, ok, w = asyncio.run(twice())
    assert first == "health check GET /healthz answered 500 Internal Server Error"
    assert ok is True
    assert (w.last_check, w.last_check_status) == ("", 0)


def test_an_app_that_exits_at_start_is_said_to_have_exited(tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text("import sys\nprint('missing SECRET_KEY', flush=True)\nsys.exit(3)\n")
    gw = GatewayProcess(tmp_path, app=f"{PY} {script}", workers=1,
                        extra_app='start_timeout = "30s"\n')
    try:
        code = gw.proc.wait(45)
    finally:
        gw.stop()
    assert code == 1, gw.log
    assert "worker v1-1 never became ready: exited with 3 before it was ready" in gw.log
    assert "no passing health check" not in gw.log
    assert gw.log.count("missing SECRET_KEY") == 1, gw.log
