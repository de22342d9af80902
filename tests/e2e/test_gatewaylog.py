"""``log_format = "json"``: the gateway's standard error is one JSON object a line.

A real gateway with two workers starts, serves a request, has a worker killed (so the
supervisor logs an exit and a restart) and stops; every line it wrote to standard error
must parse as a JSON object with the common keys, and the supervisor's lines must carry
the worker's fields.  The access log keeps its own format.
"""

from __future__ import annotations

import json
import os
import signal

from conftest import GatewayProcess, raw_request, status_of, wait_for


def records(gw: GatewayProcess) -> list[dict]:
    out = []
    for line in gw.lines:
        assert line.endswith("\n"), line
        rec = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(rec, dict), line
        assert {"time", "level", "logger", "message"} <= rec.keys(), rec
        out.append(rec)
    return out


def test_json_log_lines(gateway_factory) -> None:
    gw = gateway_factory(extra_gateway='log_format = "json"\naccess_log = "access.log"\n')
    gw.wait_ready()
    resp = raw_request(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 200
    victim = gw.workers()[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: any(r.get("exit_code") is not None for r in records(gw)),
             timeout=30, what="the worker's exit to be logged")
    wait_for(lambda: sum(" ready in " in r["message"] for r in records(gw)) >= 3,
             timeout=60, what="the killed worker to be ready again")
    gw.stop_and_check()
    recs = records(gw)
    assert any(r["logger"] == "holdover" and r["message"].startswith("serving http://")
               for r in recs)
    started = [r for r in recs if r["message"].startswith("worker ") and " started " in
               r["message"]]
    assert len(started) >= 3, recs
    for r in started:
        assert r["logger"] == "holdover.supervisor" and r["level"] == "INFO"
        assert r["revision"] == "v1" and r["worker"].startswith("v1-")
        assert isinstance(r["pid"], int) and isinstance(r["port"], int)
    exited = next(r for r in recs if r.get("exit_code") is not None)
    assert exited["level"] == "WARNING" and exited["pid"] == victim.pid
    backoff = next(r for r in recs if "restarts in" in r["message"])
    assert backoff["count"] >= 1 and backoff["seconds"] > 0
    # The access log is untouched: its own JSON lines, with its own keys.
    access = (gw.dir / "state" / "access.log").read_text().splitlines()
    assert access and json.loads(access[0])["status"] == 200
