"""The supervisor with real worker processes: readiness, restarts, stops, orphans, logs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time

import psutil
from conftest import APPS, PY, GatewayProcess, wait_for


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_get_port_and_environment(gateway):
    pids = set()
    workers = set()
    for _ in range(10):
        status, body = get(gateway.port, "/echo")
        assert status == 200
        data = json.loads(body)
        pids.add(data["pid"])
        workers.add(data["worker"])
        assert data["revision"] == "v1"
    assert workers == {"v1-1", "v1-2"}  # both workers serve: balanced
    assert pids == {p.pid for p in gateway.workers()}


def test_kill9_of_one_worker_under_load_fails_no_request(gateway):
    """Stateless app, two workers, bounded load: SIGKILL one, no request may fail."""
    stop = threading.Event()
    results = {"ok": 0, "failed": []}
    lock = threading.Lock()

    def client() -> None:
        c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, _ = get(gateway.port, "/echo", c)
            except (OSError, http.client.HTTPException) as exc:
                status = repr(exc)
                c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            with lock:
                if status == 200:
                    results["ok"] += 1
                else:
                    results["failed"].append(status)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: results["ok"] > 200, what="load to flow")
    victim = gateway.workers()[0]
    before = results["ok"]
    victim.send_signal(signal.SIGKILL)
    # The dead worker is replaced by a new process ...
    wait_for(lambda: len([w for w in gateway.workers() if w.pid != victim.pid
                          and alive(w)]) == 2, timeout=20, what="replacement worker")
    wait_for(lambda: "worker v1-" in gateway.log and "ready in" in gateway.log.split(
        "exited with")[-1], timeout=20, what="replacement ready")
    # ... and traffic kept flowing all along.
    wait_for(lambda: results["ok"] > before + 300, what="more traffic after the kill")
    stop.set()
    for t in threads:
        t.join()
    assert results["failed"] == [], results["failed"][:5]


def test_gateway_sigkill_leaves_no_worker_behind(gateway_factory, tmp_path):
    # The worker command is a shell pipeline whose real server is a grandchild.
    gw = gateway_factory(app=f"sh -c '{PY} {APPS / 'backend.py'} $PORT; true'",
                         workers=2).wait_ready()
    procs = gw.all_descendants()
    assert len(procs) >= 5  # guard + 2 x (sh + python)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait()
    _gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"


def test_sigterm_lets_inflight_request_finish_then_stops_workers(gateway):
    result = {}

    def slow() -> None:
        result["resp"] = get(gateway.port, "/slow?delay=2")

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: gateway.workers() and any(
        c.status == "ESTABLISHED" for w in gateway.workers() for c in w.net_connections()),
        what="request in flight")
    workers = gateway.workers()

    def reached_handler() -> bool:  # each worker counts what reached it (/_stats)
        return any("/slow" in json.loads(get(port, "/_stats")[1])["paths"]
                   for port in gateway.worker_ports())
    wait_for(reached_handler, what="the request to reach the worker's handler")
    gateway.proc.send_signal(signal.SIGTERM)
    t.join(15)
    assert result["resp"][0] == 200 and result["resp"][1].startswith(b"slow done")
    assert gateway.proc.wait(20) == 0
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    # New connections are refused once it stopped listening.
    try:
        get(gateway.port, "/echo")
        refused = False
    except OSError:
        refused = True
    assert refused


def test_worker_that_never_gets_ready_fails_start_with_log_tail(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import sys\nprint('boom: missing SECRET_KEY')\nsys.exit(3)\n")
    gw = GatewayProcess(tmp_path, app=f"{PY} {script}", extra_app='start_timeout = "5s"\n',
                        workers=1)
    code = gw.proc.wait(30)
    gw.stop()
    assert code == 1
    assert "never became ready" in gw.log
    assert "boom: missing SECRET_KEY" in gw.log  # the operator sees why


def test_crash_loop_is_detected_and_backs_off(tmp_path, gateway_factory):
    marker = tmp_path / "started"
    # Ready once (so the gateway starts), then every later start crashes at once.
    script = tmp_path / "flaky.py"
    script.write_text(
        "import os, sys, time, runpy\n"
        f"m = {str(marker)!r}\n"
        "if os.path.exists(m):\n"
        "    print('crashing on purpose', flush=True); sys.exit(7)\n"
        "open(m, 'w').close()\n"
        f"sys.argv = ['backend', sys.argv[1]]\n"
        f"runpy.run_path({str(APPS / 'backend.py')!r}, run_name='__main__')\n")
    gw = gateway_factory(app=f"{PY} {script} {{port}}", workers=1,
                         extra_app='crash_loop_restarts = 3\nrestart_backoff_max = "2s"\n'
                                   'start_timeout = "5s"\n').wait_ready()
    gw.workers()[0].send_signal(signal.SIGKILL)
    wait_for(lambda: "crash-looping" in gw.log, timeout=30, what="crash loop detection")
    assert "crashing on purpose" in gw.log  # the log tail explains it
    delays = [float(x) for x in __import__("re").findall(r"worker \S+ restarts in ([\d.]+)s", gw.log)]
    assert delays[:3] == [0.5, 1.0, 2.0]  # exponential, capped at restart_backoff_max
    assert max(delays) <= 2.0


def test_unhealthy_worker_is_restarted(gateway_factory, tmp_path):
    flag = tmp_path / "unhealthy"
    gw = gateway_factory(workers=1, env={"UNHEALTHY_FLAG": str(flag)},
                         extra_app="health_failures = 2\n").wait_ready()
    old = gw.workers()[0].pid
    flag.write_text("x")
    wait_for(lambda: "failed 2 health checks" in gw.log, timeout=20, what="health failure")
    flag.unlink()
    wait_for(lambda: [w for w in gw.workers() if w.pid != old], timeout=20,
             what="a new worker process")
    wait_for(lambda: get(gw.port, "/echo")[0] == 200, timeout=20, what="service again")


def test_worker_output_goes_to_its_rotated_log(gateway_factory):
    gw = gateway_factory(workers=1, extra_app='log_max_bytes = 300\nlog_backups = 2\n')
    gw.wait_ready()
    logdir = gw.dir / "state" / "logs" / "v1"
    path = logdir / "v1-1.log"
    assert path.exists() and "holdover: starting" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # Restarts append to the same log until it rotates.
    for _ in range(3):
        pid = gw.workers()[0].pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: [w for w in gw.workers() if w.pid != p]
                 and "ready in" in gw.log.split("exited with")[-1], timeout=20,
                 what="restart")
    text = "".join(p.read_text() for p in sorted(logdir.glob("v1-1.log*")))
    assert text.count("holdover: starting") >= 3
    assert path.stat().st_size <= 300 + 300
    assert (logdir / "v1-1.log.1").exists()


def test_check_command_and_run_with_bad_config(tmp_path):
    bad = tmp_path / "holdover.toml"
    bad.write_text('[app]\ncommand = "x {port}"\nworkers = 0\n')
    out = subprocess.run([PY, "-m", "holdover", "run", "-c", str(bad)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "[app] workers" in out.stderr and "line 3" in out.stderr
