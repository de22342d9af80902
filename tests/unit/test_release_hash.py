"""A release's content hash: what the nodes of a cluster compare before they deploy it.

Two copies with the same files hash the same wherever they are and whatever their file
times; any changed byte, name, executable bit or link target changes it; what a
snapshot leaves out (version control, caches, the state_dir) does not count.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from holdover.control.releases import content_hash, snapshot


def release(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "app.py").write_text("print('hello')\n")
    (root / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 10)
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("app.py", root / "main.py")
    return root


def test_the_same_files_hash_the_same_and_any_change_counts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    a, b = release(tmp_path / "a"), release(tmp_path / "b")
    os.utime(b / "app.py", (1_000_000, 1_000_000))  # times do not count
    first = content_hash(a, state)
    assert first == content_hash(b, state) and len(first) == 64

    changes = [
        lambda d: (d / "app.py").write_text("print('hellO')\n"),
        lambda d: (d / "app.py").rename(d / "app2.py"),
        lambda d: os.chmod(d / "run.sh", 0o644),
        lambda d: (d / "pkg" / "new.txt").write_text(""),
        lambda d: ((d / "main.py").unlink(), os.symlink("run.sh", d / "main.py")),
        lambda d: (d / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 10 + b"\0"),
    ]
    for i, change in enumerate(changes):
        c = tmp_path / f"c{i}"
        shutil.copytree(a, c, symlinks=True)
        assert content_hash(c, state) == first
        change(c)
        assert content_hash(c, state) != first, f"change {i} went unnoticed"


def test_what_a_snapshot_leaves_out_does_not_count_and_a_snapshot_hashes_as_its_source(
        tmp_path: Path) -> None:
    src = release(tmp_path / "src")
    state = src / ".state-here"
    before = content_hash(src, state)
    for junk in (".git", "__pycache__", "node_modules", ".state-here"):
        (src / junk).mkdir()
        (src / junk / "x").write_text("junk")
    (src / "pkg" / "mod.pyc").write_bytes(b"\0")
    assert content_hash(src, state) == before
    snap = tmp_path / "snap"
    snapshot(src, snap, state)
    assert content_hash(snap, state) == before
