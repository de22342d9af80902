"""How much of the past the gateway keeps: the newest few finished revisions, no more.

Every deploy eventually retires a revision.  Without a bound each one stays forever in
``status``, in ``/metrics`` (about 36 series), and on disk (its ``releases/<id>`` snapshot
and ``logs/<id>`` folder).  ``[app] keep_retired`` says how many finished (retired or
failed) revisions are kept; older ones are forgotten — their events stay in the store,
which is where their history belongs.  The newest finished revision is always among the
kept ones (``keep_retired`` >= 1), so a rollback to it can still start it again from its
release snapshot.  ``control.retention`` carries the decision out on disk.
"""

from __future__ import annotations

from collections.abc import Iterable

FINISHED = frozenset({"retired", "failed"})


def to_forget(revisions: Iterable[tuple[str, str]], keep: int) -> list[str]:
    """Ids of the finished revisions beyond the newest ``keep``.

    ``revisions`` are ``(id, state)`` pairs, oldest first (the order revisions were
    created in); anything not finished (active, canary, starting, draining) is kept."""
    finished = [rid for rid, state in revisions if state in FINISHED]
    return finished[:-keep] if keep > 0 else finished
