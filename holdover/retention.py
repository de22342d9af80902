"""How much of the past the gateway keeps: the newest few finished revisions, no more.

Every deploy eventually retires a revision.  Without a bound each one stays forever in
``status``, in ``/metrics`` (about 36 series), and on disk (its ``releases/<id>`` snapshot
and ``logs/<id>`` folder).  ``[app] keep_retired`` says how many finished (retired or
failed) revisions are kept; older ones are forgotten — their events stay in the store,
which is where their history belongs.  The newest finished revision is always among the
kept ones (``keep_retired`` >= 1), so a rollback to it can still start it again from its
release snapshot.

``to_forget`` is the decision, a pure function; ``remove_files`` carries it out on disk.
The control side calls both after a revision retires (and at start).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

FINISHED = frozenset({"retired", "failed"})
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")  # as revision ids are checked


def to_forget(revisions: Iterable[tuple[str, str]], keep: int) -> list[str]:
    """Ids of the finished revisions beyond the newest ``keep``.

    ``revisions`` are ``(id, state)`` pairs, oldest first (the order revisions were
    created in); anything not finished (active, canary, starting, draining) is kept."""
    finished = [rid for rid, state in revisions if state in FINISHED]
    return finished[:-keep] if keep > 0 else finished


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
