"""``holdover check`` and ``holdover config``: the CLI names the file, key and line of a bad config.

The cases are those of tests/unit/test_config.py, run through the real command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from configcases import BAD, MINIMAL, names_file, write

from holdover import config
from holdover.config import ConfigError, load


def run_check(path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "holdover", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=cwd)


def test_cli_check_accepts_valid_config(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + "workers = 3\n")
    r = run_check(p)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    assert "3 worker(s)" in r.stdout


@pytest.mark.parametrize(("text", "fragments", "line"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_cli_check_refuses_bad_file(tmp_path: Path, text: str, fragments: list[str],
                                    line: int | None) -> None:
    p = write(tmp_path, text)
    r = run_check(p)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    err = r.stderr
    assert "Traceback" not in err
    assert names_file(err, p), err
    for frag in fragments:
        assert frag in err, (frag, err)
    if line is not None:
        assert f"line {line}" in err, err


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="no such configuration file") as info:
        load(p)
    assert names_file(str(info.value), p)
    r = run_check(p)
    assert r.returncode == 2
    assert "absent.toml" in r.stderr and "no such configuration file" in r.stderr


def test_cli_check_with_relative_path(tmp_path: Path) -> None:
    write(tmp_path, '[app]\ncommand = "x"\nworkers = "two"\n')
    r = subprocess.run([sys.executable, "-m", "holdover", "check", "-c", "holdover.toml"],
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 2
    assert "holdover.toml" in r.stderr and "[app] workers" in r.stderr
    assert "line 3" in r.stderr


def test_cli_config_reference_matches() -> None:
    r = subprocess.run([sys.executable, "-m", "holdover", "config-reference"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout == config.reference_markdown()
