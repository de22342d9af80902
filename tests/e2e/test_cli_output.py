"""What the CLI prints without ``--json``, against a real gateway: ``workers``,
``sessions`` (and finding one user's session by the cookie they send), ``worker-restart``
and ``reload`` print tables and sentences with local times, never raw JSON; a user other
than the gateway's is told whose ``state_dir`` it is.  The formats themselves are
checked with plain data in tests/unit/test_cliformat.py.
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
from pathlib import Path

from conftest import APPS, PY, GatewayProcess, wait_for

from holdover import cli as holdover_cli
from holdover.admin import client  # noqa: F401  (loaded before a forked child drops root)
from holdover.state import backup  # noqa: F401
from holdover.supervisor import logs  # noqa: F401

STATEFUL = f"{PY} {APPS / 'stateful.py'} {{port}}"
EPOCH_FLOAT = re.compile(r"\b1[6-9]\d{8}\.\d+")  # what an epoch time printed raw looks like


def rows_of(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


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

def as_other_user(argv: list[str], home: Path) -> tuple[int, str]:
    """``holdover ARGV`` in a forked child that cannot read ``home/state``: (code, stderr).

    As root the child becomes user ``nobody``; as anyone else it stays itself and the
    state_dir is made unreadable (mode 0), which is what another user meets either way."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code, err = -1, io.StringIO()
        try:
            os.close(r)
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            else:
                (home / "state").chmod(0)
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
    if os.geteuid() != 0:
        (home / "state").chmod(0o700)
    code, err = json.loads(data)
    return code, err


def test_another_user_is_told_whose_state_dir_it_is() -> None:
    # Not under tmp_path: as root, user nobody must be able to reach the config file.
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
        owner = pwd.getpwuid(state.stat().st_uid).pw_name
        for argv, code in ((["status"], 3), (["logs", "v1-1"], 1),
                           (["backup", str(home / "copy.db")], 1)):
            got, err = as_other_user([*argv, "-c", str(config)], home)
            assert got == code, (argv, got, err)
            assert "Traceback" not in err and "raised" not in err, err
            assert re.search(r"run (it )?as the user that runs the gateway", err), err
            assert f"sudo -u {owner} holdover" in err, err
    finally:
        shutil.rmtree(home)
