"""The admin side's secrets and exposure, in-process (issue 11, points 1 and 6).

- the admin token: an empty, short or exposed ``admin.token`` is replaced (atomically:
  fsync before the rename) and never accepted as a credential;
- exposure: which ``admin_listen`` counts as loopback, the warnings ``holdover run``
  logs before anything listens, and an admin page whose CSP needs nothing inline.

The end-to-end side (a real gateway with an empty token file, what ``holdover run``
prints, ``holdover check``) is tests/e2e/test_admin_hardening.py.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from holdover import cli
from holdover.admin import server as admin_server
from holdover.admin.exposure import file_warnings, is_loopback, listen_warnings
from holdover.config import from_dict
from holdover.core import private_files


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("content", ["", "\n", "   \t \n", "short", "x" * 31,
                                     "a" * 40 + " b", "tok\u00e9n" * 8])
def test_unusable_token_file_is_replaced(tmp_path: Path, content: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with caplog.at_level(logging.WARNING, "holdover.admin"):
        token, written = admin_server.load_or_create_token(tmp_path)
    assert written and admin_server.token_problem(token) is None and len(token) >= 43
    assert path.read_text() == token + "\n" and mode_of(path) == 0o600
    assert "replaced the admin token" in caplog.text and str(path) in caplog.text
    assert admin_server.load_or_create_token(tmp_path) == (token, False)  # now kept


def test_good_token_file_is_kept_and_exposed_one_replaced(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    path = tmp_path / "admin.token"
    mine = "operator-chosen-token-" + "7" * 20
    private_files.write_private(path, mine + "\n")
    assert admin_server.load_or_create_token(tmp_path) == (mine, False)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, "holdover.admin"):
        token, written = admin_server.load_or_create_token(tmp_path)
    assert written and token != mine and mode_of(path) == 0o600
    assert "other users could read it (mode 0644)" in caplog.text


def test_token_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of the data before the rename, fsync of the folder after: never empty."""
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        assert Path(src).read_text().strip(), "renaming an empty file into place"
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _token, written = admin_server.load_or_create_token(tmp_path / "state")
    assert written and calls == ["fsync-file", "rename", "fsync-dir"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["admin.token"]
    assert mode_of(tmp_path / "state") == 0o700


def test_admin_server_refuses_an_empty_token() -> None:
    for bad in ("", " ", "short"):
        with pytest.raises(ValueError, match="refusing to serve the admin side"):
            admin_server.AdminServer(None, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.9.8.7", True),
                                       ("::1", True), ("localhost", True),
                                       ("0.0.0.0", False), ("::", False),
                                       ("192.168.1.5", False), ("admin.example", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


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


def test_run_warns_about_an_exposed_admin_side(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The warning comes before anything listens (the gateway itself is not started)."""
    served: list[Any] = []
    monkeypatch.setattr(cli, "_serve", lambda cfg: served.append(cfg) or 0)
    monkeypatch.setattr(cli, "_setup_logging", lambda *args: None)
    path = _config(tmp_path, "[::]:8081")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["run", "-c", str(path)]) == 0
    assert served and "admin_listen = \"[::]:8081\" is not a loopback address" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli.main(["run", "-c", str(_config(tmp_path, "127.0.0.1:0"))]) == 0
    assert "loopback" not in caplog.text


def test_exposure_helpers_agree_with_the_config(tmp_path: Path) -> None:
    cfg = from_dict({"gateway": {"admin_listen": "10.1.2.3:9000", "state_dir": "s"},
                     "app": {"command": "true"}}, path=tmp_path / "holdover.toml")
    assert len(listen_warnings(cfg)) == 1 and "10.1.2.3:9000" in listen_warnings(cfg)[0]
    assert file_warnings(cfg.state_dir) == []  # nothing written yet: nothing to say


def test_admin_csp_allows_nothing_inline() -> None:
    csp = admin_server.SECURITY_HEADERS["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    page = (admin_server.STATIC_DIR / "index.html").read_text()
    script = (admin_server.STATIC_DIR / "app.js").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "an inline script"
    assert not re.search(r"\sstyle=|\son[a-z]+=", page), "an inline style or handler"
    assert not re.search(r"""style\s*:\s*[`'"]|setAttribute\(\s*["']style""", script), \
        "app.js sets a style attribute (refused by the CSP); use element.style"


def test_a_loose_cluster_secret_is_reported_like_the_other_secrets(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    secret = state / "cluster.secret"
    secret.write_text("{}")
    secret.chmod(0o600)
    assert file_warnings(state) == []
    secret.chmod(0o640)
    (warning,) = file_warnings(state)
    assert "cluster.secret is readable by other users (mode 0640)" in warning
