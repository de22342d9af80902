"""What the CLI prints without ``--json`` (``holdover.cliformat``), from plain data:
tables, local times instead of epoch floats, no pid for a worker whose process is gone,
and one session named by its keyed hash."""

from __future__ import annotations

import re
import time

from holdover import cliformat

EPOCH_FLOAT = re.compile(r"\b1[6-9]\d{8}\.\d+")  # what an epoch time printed raw looks like


def worker(**kw: object) -> dict:
    base = {"revision": "v1", "id": "v1-1", "pid": 4242, "port": 40001, "state": "ready",
            "inflight": 0, "restarts": 0, "standby": False, "disabled": False,
            "requests": 7, "errors": 1, "sessions": 2, "uptime": 125.0, "crash_loop": False}
    return {**base, **kw}


def rows_of(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


def test_workers_table_shows_no_pid_for_a_worker_whose_process_is_gone() -> None:
    text = cliformat.workers({"workers": [
        worker(),
        worker(id="v1-2", pid=4243, port=40002, state="stopped", uptime=0.0, sessions=0),
        worker(id="v1-3", pid=4244, port=40003, state="failed", uptime=0.0, sessions=0),
        worker(id="v1-4", pid=4245, port=40004, state="backoff", uptime=0.0, sessions=0,
               crash_loop=True, disabled=True)]})
    rows = rows_of(text)
    assert rows[0][:6] == ["REVISION", "WORKER", "STATE", "PID", "PORT", "SESSIONS"]
    by_id = {r[1]: r for r in rows[1:]}
    assert by_id["v1-1"][2:6] == ["ready", "4242", "40001", "2"]
    assert by_id["v1-1"][10] == "2m05s"
    for wid in ("v1-2", "v1-3", "v1-4"):
        assert by_id[wid][3:5] == ["-", "-"], by_id[wid]
    assert "4243" not in text and "4244" not in text and "4245" not in text
    assert by_id["v1-4"][-1] == "disabled, crash-looping"


def test_sessions_summary_uses_local_times_and_says_what_lost_counts() -> None:
    ts = 1_796_000_000.25
    text = cliformat.sessions({"total": 3, "lost": 1, "by_revision": {"v1": 1, "v2": 2},
                               "history": [{"ts": ts, "by_revision": {"v1": 3}},
                                           {"ts": ts + 60, "by_revision": {"v1": 1}}]})
    assert text.splitlines()[0] == ("live sessions 3  lost 1 (since this gateway started "
                                    "or was reloaded)")
    assert ["v2", "2"] in rows_of(text)
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) in text
    assert not EPOCH_FLOAT.search(text)


def test_one_session_is_named_by_its_keyed_hash() -> None:
    now = 1_796_000_100.0
    text = cliformat.session({"session": {
        "key": "ab" * 16, "revision": "v1", "worker": "v1-2", "started": now - 3700,
        "last_seen": now - 42, "expires": None, "in_flight": 1}}, now=now)
    lines = dict(re.split(r"\s{2,}", ln, maxsplit=1) for ln in text.splitlines())
    assert lines["session"] == "ab" * 16 + " (keyed hash)"
    assert (lines["revision"], lines["worker"], lines["expires"]) == ("v1", "v1-2", "-")
    assert lines["last seen"].endswith("(42s ago)")
    assert lines["started"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 3700))


def test_durations() -> None:
    assert [cliformat.duration(s) for s in (0, 59.9, 60, 3599, 3600, 90061, -5)] == \
        ["0s", "59s", "1m00s", "59m59s", "1h00m", "1d01h", "0s"]
