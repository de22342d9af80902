"""Forgetting old revisions on disk: their release snapshot and their logs.

``core.retention.to_forget`` decides which finished revisions are beyond
``[app] keep_retired``; this removes what each left in ``state_dir``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")  # as revision ids are checked


def remove_files(state_dir: Path, rid: str) -> list[Path]:
    """Delete ``releases/<rid>`` and ``logs/<rid>`` under ``state_dir``; what was removed.

    Only those two folders, never through a symbolic link, and only for an id that
    cannot name anything else (no ``/``, no ``..``).  Errors are left to the caller."""
    if not _SAFE_ID.fullmatch(rid):
        raise ValueError(f"not a revision id: {rid!r}")
    removed = []
    for kind in ("releases", "logs"):
        path = state_dir / kind / rid
        if path.is_symlink():
            path.unlink()
            removed.append(path)
        elif path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed
