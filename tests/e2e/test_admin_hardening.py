"""The admin side's secrets and exposure against a real gateway (issue 11, points 1, 6).

- an empty ``state_dir/admin.token`` at start never opens the admin side: the empty
  credential gets 401 and a new token is written; a world-readable ``secret.json`` is
  made private with its keys kept;
- ``holdover run`` says where the token is and never prints it;
- ``holdover check`` warns about a non-loopback admin side and loose secrets.

What each case saw goes into the fault table (``tests/faultlog.py`` → docs/faults.md).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import stat
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, PY, GatewayProcess

from holdover.admin import server as admin_server
from holdover.core.affinity import Keys

pytest.register_assert_rewrite("faultlog")
import faultlog  # noqa: E402,F401  (rewritten asserts; loaded as a plugin below)

pytest_plugins = ["faultlog"]

FAULTAPP = f"{PY} {APPS / 'faultapp.py'} {{port}}"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _call(gw: GatewayProcess, method: str, path: str, auth: str | None,
          body: Any = None) -> int:
    host, _, port = gw.admin_url.split("//")[1].rstrip("/").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        data = json.dumps(body).encode() if body is not None else b""
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_empty_token_file_does_not_open_the_admin_side(tmp_path: Path, observe) -> None:
    """The reviewer's case: admin.token empty at start, then 'Bearer ' deploys anything."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fd = os.open(state / "admin.token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    # secret.json as a careless copy leaves it: readable by everyone.
    Keys.load_or_create(state / "secret.json")
    keys_before = (state / "secret.json").read_bytes()
    os.chmod(state / "secret.json", 0o644)
    marker = tmp_path / "deployed-by-an-empty-token"
    gw = GatewayProcess(tmp_path, app=FAULTAPP, workers=1, mode="sessions")
    try:
        gw.wait_ready()
        token = gw.admin_token
        deploy = {"revision": "evil", "command": f"touch {marker}"}
        empty = {auth: _call(gw, "POST", "/api/deploy", auth, deploy)
                 for auth in ("Bearer ", "Bearer", "Bearer  \t", "bearer ")}
        status_empty = _call(gw, "GET", "/api/status", "Bearer ")
        status_real = _call(gw, "GET", "/api/status", f"Bearer {token}")
        modes = {n: mode_of(state / n) for n in ("admin.token", "secret.json")}
        observe("admin-token-empty",
                f"new token of {len(token)} characters written; empty credentials on "
                f"POST /api/deploy: {sorted(set(empty.values()))}, GET /api/status: "
                f"{status_empty}; the new token: {status_real}; command run: "
                f"{marker.exists()}; warning logged: {'replaced the admin token' in gw.log}")
        observe("secret-file-exposed",
                f"modes after start: {({k: oct(v) for k, v in modes.items()})}; signing "
                f"keys {'kept' if (state / 'secret.json').read_bytes() == keys_before else 'CHANGED'};"
                f" warning logged: {'was readable by other users' in gw.log}")
        assert set(empty.values()) == {401} and status_empty == 401 and status_real == 200
        assert not marker.exists()
        assert admin_server.token_problem(token) is None
        assert "replaced the admin token" in gw.log
        assert modes == {"admin.token": 0o600, "secret.json": 0o600}
        assert (state / "secret.json").read_bytes() == keys_before
        assert "secret.json was readable by other users (mode 0644)" in gw.log
    finally:
        gw.stop_and_check()


# -- what `holdover run` prints, what `holdover check` warns about ------------------


class LoudGateway(GatewayProcess):
    """A gateway whose standard output is kept too (GatewayProcess drops it)."""

    def _start(self, env: dict | None = None) -> None:
        self.stdout_path = self.dir / "stdout.txt"
        self._stdout = open(self.stdout_path, "w")  # noqa: SIM115  (closed in stop)
        self.lines, self.port = [], 0
        self.proc = subprocess.Popen(
            [PY, "-m", "holdover", "run", "-c", str(self.config)], cwd=self.dir,
            stdout=self._stdout, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def stop(self, timeout: float = 30.0) -> int:
        code = super().stop(timeout)
        self._stdout.close()
        return code


def test_run_says_where_the_token_is_never_the_token(tmp_path: Path, observe) -> None:
    gw = LoudGateway(tmp_path, workers=1)
    try:
        gw.wait_ready()
        token = gw.admin_token
        out = gw.stdout_path.read_text()
        where = [ln for ln in gw.log.splitlines() if "admin.token" in ln]
        observe("token-not-printed",
                f"token in standard output: {token in out}, in standard error: "
                f"{token in gw.log}; standard error says: "
                f"{re.sub(r':[0-9]+/', ':PORT/', where[0].replace(str(tmp_path), 'DIR')) if where else 'nothing'!r}")
        assert token not in out and token not in gw.log
        assert where and str(tmp_path / "state" / "admin.token") in where[0]
    finally:
        gw.stop_and_check()


def _config(tmp_path: Path, admin: str) -> Path:
    path = tmp_path / "holdover.toml"
    path.write_text(textwrap.dedent(f"""\
        [gateway]
        admin_listen = "{admin}"
        state_dir = "state"
        [app]
        command = "true"
        """))
    return path


def test_check_warns_about_an_exposed_admin_side(tmp_path: Path, observe) -> None:
    quiet = subprocess.run([PY, "-m", "holdover", "check", "-c",
                            str(_config(tmp_path, "127.0.0.1:8081"))],
                           capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for name in ("admin.token", "secret.json"):
        (state / name).write_text("x\n")
        os.chmod(state / name, 0o644)
    loud = subprocess.run([PY, "-m", "holdover", "check", "-c",
                           str(_config(tmp_path, "0.0.0.0:8081"))],
                          capture_output=True, text=True, timeout=60)
    warnings = [ln for ln in loud.stderr.splitlines() if "warning" in ln]
    observe("admin-exposed",
            f"holdover check with admin_listen 0.0.0.0 and 0644 secrets: exit "
            f"{loud.returncode}, {len(warnings)} warnings: "
            + "; ".join(w.replace(str(tmp_path), "DIR")[:90] + "…" for w in warnings))
    assert loud.returncode == 0, loud.stderr
    assert len(warnings) == 3, loud.stderr
    assert "admin_listen" in warnings[0] and "not a loopback address" in warnings[0]
    assert "admin.token is readable by other users (mode 0644)" in loud.stderr
    assert "secret.json is readable by other users (mode 0644)" in loud.stderr
