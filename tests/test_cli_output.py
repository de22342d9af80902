"""What the CLI prints without ``--json``: tables, sentences and local times, no raw JSON.

The formats are checked with plain data first (``holdover.cliformat``), then against a
real gateway: ``workers``, ``sessions`` (and finding one user's session by the cookie
they send), ``worker-restart`` and ``reload``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import APPS, PY, GatewayProcess, wait_for

from holdover import cli as holdover_cli
from holdover import cliformat
from holdover.admin import client  # noqa: F401  (loaded before a forked child drops root)
from holdover.state import backup  # noqa: F401
from holdover.supervisor import logs  # noqa: F401

STATEFUL = f"{PY} {APPS / 'stateful.py'} {{port}}"
EPOCH_FLOAT = re.compile(r"\b1[6-9]\d{8}\.\d+")  # what an epoch time printed raw looks like


# -- formats, from plain data ------------------------------------------------------------

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


# -- against a real gateway --------------------------------------------------------------

def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "holdover", *args, "-c", str(gw.config)],
                          capture_output=True, text=True, timeout=60)


def login(port: int, user: str) -> tuple[dict, dict[str, str]]:
    """POST /login to the stateful app; its JSON answer and the cookies it set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", f"/login?user={user}")
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200, body
        cookies = {}
        for sc in r.headers.get_all("Set-Cookie") or []:
            name, _, value = sc.split(";")[0].partition("=")
            cookies[name.strip()] = value.strip()
        return body, cookies
    finally:
        conn.close()


def assert_human(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout
    assert not out.lstrip().startswith("{"), f"raw JSON without --json:\n{out}"
    assert not EPOCH_FLOAT.search(out), out
    return out


def test_workers_sessions_restart_and_reload_print_for_people(gateway_factory) -> None:
    gw = gateway_factory(app=STATEFUL, workers=2, mode="sessions",
                         extra_app='session_cookie = "sid"\nstop_grace = "3s"\n').wait_ready()
    info, cookies = login(gw.port, "alice")
    sid = cookies["sid"]

    out = assert_human(cli(gw, "workers"))
    rows = {r[1]: r for r in rows_of(out)[1:]}
    assert set(rows) == {"v1-1", "v1-2"}
    assert rows[info["worker"]][3] == str(info["pid"])  # the real process
    assert rows[info["worker"]][5] == "1"  # alice's session

    out = assert_human(cli(gw, "sessions"))
    assert out.startswith("live sessions 1  lost 0 (since this gateway started")
    assert ["v1", "1"] in rows_of(out)

    # Which revision and worker is alice on? Found by her cookie, shown as its hash.
    r = cli(gw, "sessions", "--cookie", sid)
    out = assert_human(r)
    lines = dict(re.split(r"\s{2,}", ln, maxsplit=1) for ln in out.splitlines())
    assert (lines["revision"], lines["worker"]) == ("v1", info["worker"])
    assert re.fullmatch(r"[0-9a-f]{32} \(keyed hash\)", lines["session"])
    assert sid not in r.stdout + r.stderr
    as_json = json.loads(cli(gw, "sessions", "--cookie", sid, "--json").stdout)["session"]
    assert lines["session"].startswith(as_json["key"]) and as_json["worker"] == info["worker"]

    r = cli(gw, "sessions", "--cookie", "not-a-live-session")
    assert r.returncode == 1 and "no live session has the sid cookie" in r.stderr, r.stderr
    assert "not-a-live-session" not in r.stderr
    r = cli(gw, "sessions", "--pin", "forged.value")
    assert r.returncode == 1 and "not a holdover_pin cookie signed by this gateway" in r.stderr

    old_pid = info["pid"]
    out = assert_human(cli(gw, "worker-restart", info["worker"]))
    assert out.strip() == (f"worker {info['worker']}: a new process is starting; the 1 "
                           f"session(s) the old one held are lost")
    wait_for(lambda: "ready" in {w["state"] for w in json.loads(
        cli(gw, "workers", "--json").stdout)["workers"] if w["id"] == info["worker"]
        and w["pid"] != old_pid}, timeout=30, what="the restarted worker")
    out = assert_human(cli(gw, "status"))
    assert "lost 1 since the gateway (re)started" in out.splitlines()[0]

    out = assert_human(cli(gw, "reload"))
    assert re.fullmatch(r"the gateway \(pid \d+\) is re-executing in place; workers and "
                        r"sessions are kept .*", out.strip()), out
    wait_for(lambda: "reload" in {e["kind"] for e in json.loads(
        cli(gw, "events", "--json").stdout or '{"events": []}').get("events", [])},
        timeout=30, what="the gateway back after its reload")


def test_find_a_session_by_the_holdover_pin_cookie(gateway_factory) -> None:
    # No session_cookie: holdover pins each client with its own signed cookie.
    gw = gateway_factory(app=STATEFUL, workers=1, mode="sessions").wait_ready()
    info, cookies = login(gw.port, "bob")
    pin = cookies["holdover_pin"]
    r = cli(gw, "sessions", "--pin", pin)
    out = assert_human(r)
    lines = dict(re.split(r"\s{2,}", ln, maxsplit=1) for ln in out.splitlines())
    assert (lines["revision"], lines["worker"]) == ("v1", info["worker"])
    assert pin not in out
    r = cli(gw, "sessions", "--cookie", cookies["sid"])
    assert r.returncode == 1 and "[app] session_cookie is not set" in r.stderr, r.stderr


def test_stopped_workers_show_no_pid(gateway_factory) -> None:
    gw = gateway_factory(workers=1).wait_ready()  # stateless: a deploy retires v1 at once
    v1_pid = json.loads(cli(gw, "workers", "--json").stdout)["workers"][0]["pid"]
    r = cli(gw, "deploy", "--revision", "v2")
    assert r.returncode == 0, r.stderr

    def v1_stopped() -> dict | None:
        ws = json.loads(cli(gw, "workers", "--json").stdout)["workers"]
        return next((w for w in ws if w["id"] == "v1-1" and w["state"] == "stopped"), None)

    wait_for(v1_stopped, timeout=30, what="v1-1 stopped")
    rows = {r[1]: r for r in rows_of(assert_human(cli(gw, "workers")))[1:]}
    assert rows["v1-1"][2:5] == ["stopped", "-", "-"], rows
    assert str(v1_pid) not in " ".join(rows["v1-1"])
    assert rows["v2-1"][2] == "ready" and rows["v2-1"][3].isdigit()


# -- another user than the gateway's --------------------------------------------------------

def as_nobody(argv: list[str]) -> tuple[int, str]:
    """``holdover ARGV`` in a forked child that became user ``nobody``: (exit code, stderr)."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code, err = -1, io.StringIO()
        try:
            os.close(r)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = holdover_cli.main(argv)
        except BaseException as exc:
            err.write(f"raised {exc!r}")
        finally:
            os.write(w, json.dumps([code, err.getvalue()]).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    code, err = json.loads(data)
    return code, err


def test_another_user_is_told_whose_state_dir_it_is() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    home = Path(tempfile.mkdtemp(prefix="holdover-perm-"))
    try:
        home.chmod(0o755)
        state = home / "state"
        state.mkdir(mode=0o700)
        for name in ("admin.url", "admin.token", "state.db"):
            (state / name).write_text("x\n")
        config = home / "holdover.toml"
        config.write_text('[gateway]\nstate_dir = "state"\n[app]\ncommand = "x {port}"\n')
        config.chmod(0o644)
        me = pwd.getpwuid(os.geteuid()).pw_name
        for argv, code in ((["status"], 3), (["logs", "v1-1"], 1),
                           (["backup", str(home / "copy.db")], 1)):
            got, err = as_nobody([*argv, "-c", str(config)])
            assert got == code, (argv, got, err)
            assert "Traceback" not in err and "raised" not in err, err
            assert "run as the user that runs the gateway" in err or \
                "run it as the user that runs the gateway" in err, err
            assert f"sudo -u {me} holdover" in err, err
    finally:
        shutil.rmtree(home)
