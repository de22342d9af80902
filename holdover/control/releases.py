"""A revision's files: its id, and the snapshot of its folder it runs from.

A revision's files never change after it starts: ``snapshot`` copies the app's folder
into ``state_dir/releases/<id>`` (the first revision's too), leaving out version
control, caches, virtual environments and the state_dir itself, and makes the copy
private like the rest of state_dir.  ``content_hash`` names a snapshot's files, so that
the nodes of a cluster can check they run the same release.  A revision id comes from
the operator, from a git checkout's commit, or counts up (``v1``, ``v2`` …).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger("holdover.revisions")

REVISION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
SNAPSHOT_IGNORED = (".git", "__pycache__", "*.pyc", ".holdover", ".holdover-demo",
                    "node_modules", ".venv", "venv", ".tox", ".mypy_cache", ".pytest_cache",
                    ".ruff_cache")
_SNAPSHOT_IGNORE = shutil.ignore_patterns(*SNAPSHOT_IGNORED)


def git_short_sha(path: Path) -> str | None:
    """The short commit id of a git checkout (``-dirty`` if it has changes), or None."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return None


def snapshot(source: Path, dest: Path, state_dir: Path) -> None:
    """Copy the app's files so later edits of ``source`` never reach this revision.

    Version-control, cache and virtualenv folders stay out (SNAPSHOT_IGNORED), and so
    does ``state_dir`` when it lies inside ``source``."""
    state_dir = state_dir.resolve()

    def ignore(folder: str, names: list[str]) -> set[str]:
        return _ignored(folder, names, state_dir)

    t0 = time.monotonic()
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, symlinks=True, ignore=ignore)
    for root, dirs, files in os.walk(dest):  # private like the rest of state_dir
        for name in (*dirs, *files):
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & ~0o077)
    os.chmod(dest, 0o700)
    log.info("snapshot of %s taken for %s in %.2fs", source, dest.name, time.monotonic() - t0)


def _ignored(folder: str, names: list[str], state_dir: Path) -> set[str]:
    """What a snapshot leaves out of ``folder``: SNAPSHOT_IGNORED, and state_dir."""
    out = set(_SNAPSHOT_IGNORE(folder, names))
    base = Path(folder).resolve()
    out.update(n for n in names if base / n == state_dir)
    return out


def content_hash(folder: Path, state_dir: Path) -> str:
    """A SHA-256 of what a snapshot of ``folder`` holds: relative paths, executable bits,
    sizes and bytes.

    The nodes of a cluster compare it to know they deploy the same release: file times
    and owners differ between machines and do not count, symbolic links count by their
    target, and what ``snapshot`` leaves out is left out here too."""
    state_dir = state_dir.resolve()
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        skip = _ignored(root, dirs + files, state_dir)
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted([f for f in files if f not in skip]
                           + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).encode("utf-8", "surrogateescape")
            if os.path.islink(path):
                digest.update(b"L\0" + rel + b"\0" + os.fsencode(os.readlink(path)) + b"\0")
                continue
            st = os.stat(path)
            mode = b"x" if st.st_mode & 0o100 else b"-"
            digest.update(b"F\0" + rel + b"\0" + mode + b"%d\0" % st.st_size)
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()
