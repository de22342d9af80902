"""``holdover backup``: a consistent, private copy of the state store made while the
gateway runs, which a gateway can be restored from (the steps docs/operating.md gives)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from holdover.state.sqlite import APPLICATION_ID


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "holdover", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_backup_while_running_then_restore(gateway_factory, tmp_path: Path) -> None:
    gw = gateway_factory(workers=1).wait_ready()
    r = cli(gw.config, "deploy", "--revision", "v2")
    assert r.returncode == 0, r.stderr
    state = gw.dir / "state"
    dest = tmp_path / "backups" / "holdover-state.db"
    dest.parent.mkdir()

    r = cli(gw.config, "backup", str(dest))
    assert r.returncode == 0, r.stderr
    assert f"{dest}: 2 revision(s)" in r.stdout, r.stdout
    secret = dest.with_name(dest.name + ".secret.json")
    for f in (dest, secret):
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert secret.read_bytes() == (state / "secret.json").read_bytes()
    assert not dest.with_name(dest.name + "-wal").exists(), "the copy is one file"
    with sqlite3.connect(dest) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert {row[0] for row in db.execute("SELECT id FROM revisions")} == {"v1", "v2"}
        assert db.execute("SELECT value FROM meta WHERE key = 'active'").fetchone()[0] == "v2"

    # A second backup to the same name replaces the first, whole.
    r = cli(gw.config, "backup", str(dest))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name, secret.name]

    # Restore into a fresh state_dir: stop, put the copy in place, start.
    assert gw.stop() == 0
    shutil.rmtree(state)
    state.mkdir(mode=0o700)
    shutil.copy2(dest, state / "state.db")
    shutil.copy2(secret, state / "secret.json")
    gw._start()  # the same config again (the fixture stops it at the end)
    gw.wait_ready()
    st = json.loads(cli(gw.config, "status", "--json").stdout)
    assert st["active"] == "v2"
    assert {rev["id"]: rev["state"] for rev in st["revisions"]}["v2"] == "active"
    assert (state / "secret.json").read_bytes() == secret.read_bytes()


def test_backup_refusals_name_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "holdover.toml"
    config.write_text('[gateway]\nstate_dir = "state"\n[app]\ncommand = "x {port}"\n')
    r = cli(config, "backup", str(tmp_path / "copy.db"))
    assert r.returncode == 1
    assert f"no state database at {tmp_path / 'state' / 'state.db'}" in r.stderr, r.stderr
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        db.execute("CREATE TABLE other (x)")
    r = cli(config, "backup", str(tmp_path / "copy.db"))
    assert r.returncode == 1 and "is not a holdover state database" in r.stderr, r.stderr
    assert not (tmp_path / "copy.db").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    r = cli(config, "backup", str(tmp_path / "missing-dir" / "copy.db"))
    assert r.returncode == 1 and "no directory" in r.stderr and "Traceback" not in r.stderr
