"""The access log under log rotation: copytruncate is safe, and reopen() follows a rename."""

from __future__ import annotations

import json
import os
from pathlib import Path

from holdover.accesslog import AccessLog


def one(log: AccessLog, path: str) -> None:
    log.log(b"127.0.0.1", b"GET", path.encode(), 200, 5, 0.001, "v1-1", "v1")


def paths(file: Path) -> list[str]:
    return [json.loads(line)["path"] for line in file.read_text().splitlines()]


def test_copytruncate_leaves_no_hole(tmp_path: Path) -> None:
    log = AccessLog("access.log", base=tmp_path)
    target = tmp_path / "access.log"
    one(log, "/before")
    log.flush()
    (tmp_path / "access.log.1").write_bytes(target.read_bytes())  # logrotate's copy
    os.truncate(target, 0)  # ... and truncate
    one(log, "/after")
    log.close()
    assert paths(tmp_path / "access.log.1") == ["/before"]
    data = target.read_bytes()
    assert not data.startswith(b"\0"), "O_APPEND: the next line starts at the new end"
    assert paths(target) == ["/after"]


def test_reopen_after_a_rename_starts_a_new_private_file(tmp_path: Path) -> None:
    log = AccessLog("logs/access.log", base=tmp_path)
    target = tmp_path / "logs" / "access.log"
    one(log, "/one")
    log.flush()
    target.rename(target.with_name("access.log.1"))
    one(log, "/two")  # buffered: still belongs to the old file
    log.reopen()
    one(log, "/three")
    log.close()
    assert paths(target.with_name("access.log.1")) == ["/one", "/two"]
    assert paths(target) == ["/three"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_reopen_that_cannot_open_keeps_logging_to_the_old_file(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    log = AccessLog(str(d / "access.log"))
    (d / "access.log").rename(tmp_path / "moved.log")
    d.rmdir()  # the configured place is gone
    log.reopen()
    one(log, "/still")
    log.close()
    assert paths(tmp_path / "moved.log") == ["/still"]


def test_reopen_of_standard_output_is_a_no_op(capfd) -> None:
    log = AccessLog("-")
    log.reopen()
    one(log, "/stdout")
    log.flush()
    assert json.loads(capfd.readouterr().out)["path"] == "/stdout"
