"""State that grows with every deploy: only the newest ``keep_retired`` finished revisions
stay in status, metrics and on disk (issue 11, point 14).

The decision (``holdover.retention.to_forget``) and the file removal are tested without a
gateway; the metrics through ``GatewayCollector`` with a stand-in gateway.  Status and
disk end to end are in tests/e2e/test_control_hardening.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from promtext import parse
from test_metrics_collector import fake_worker

from holdover.admin.metrics import GatewayCollector, metrics_registry, render
from holdover.control import retention as files
from holdover.core import retention

STATES = ["starting", "active", "draining", "retired", "failed"]


@given(st.lists(st.sampled_from(STATES), max_size=30), st.integers(1, 8))
def test_to_forget_keeps_the_newest_finished_and_everything_unfinished(states: list[str],
                                                                      keep: int) -> None:
    revs = [(f"v{i}", s) for i, s in enumerate(states)]
    gone = retention.to_forget(revs, keep)
    finished = [rid for rid, s in revs if s in retention.FINISHED]
    assert gone == finished[:max(0, len(finished) - keep)]
    assert all(dict(revs)[rid] in retention.FINISHED for rid in gone)
    kept_finished = [rid for rid in finished if rid not in gone]
    assert len(kept_finished) == min(keep, len(finished))
    if finished:  # the newest finished one (a rollback's target) always stays
        assert finished[-1] not in gone


def test_remove_files_only_touches_that_revisions_folders(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for kind in ("releases", "logs"):
        for rid in ("v1", "v2"):
            (state / kind / rid).mkdir(parents=True)
            (state / kind / rid / "f.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (state / "releases" / "v3").symlink_to(outside, target_is_directory=True)
    assert files.remove_files(state, "v1") == [state / "releases" / "v1",
                                                   state / "logs" / "v1"]
    assert not (state / "releases" / "v1").exists() and not (state / "logs" / "v1").exists()
    assert (state / "releases" / "v2" / "f.txt").exists() and (state / "logs" / "v2").exists()
    assert files.remove_files(state, "v3") == [state / "releases" / "v3"]
    assert (outside / "precious").read_text() == "keep me"  # the link went, not its target
    assert files.remove_files(state, "v9") == []
    for bad in ("", "..", "../state", "a/b", ".hidden", "v1/../../x"):
        with pytest.raises(ValueError):
            files.remove_files(state, bad)


def _many_retired(n: int, keep: int) -> SimpleNamespace:
    revisions = {}
    for i in range(1, n + 1):
        state = "active" if i == n else "retired"
        revisions[f"v{i}"] = SimpleNamespace(
            id=f"v{i}", state=state, canary_percent=0.0,
            workers=[fake_worker(f"v{i}-1", requests=i, status_classes=[0, 0, i, 0, 0, 0],
                                 state="ready" if i == n else "stopped")])
    revs = SimpleNamespace(revisions=revisions, canary=None, active=revisions[f"v{n}"],
                           deploys=n - 1)
    return SimpleNamespace(revs=revs, sessions=SimpleNamespace(per_revision={f"v{n}": 1}),
                           sessions_lost=0, queue=[], connections=set(),
                           stats=lambda w: w, inflight=lambda w: w.inflight,
                           ticker=SimpleNamespace(errors={}), tasks=SimpleNamespace(failed=0),
                           config=SimpleNamespace(app_keep_retired=keep),
                           hooks=SimpleNamespace(failures={}),
                           discovery=SimpleNamespace(failures={"v1": 2}))


def test_metrics_show_only_the_kept_retired_revisions() -> None:
    gw = _many_retired(12, keep=3)
    registry = metrics_registry(gw)  # type: ignore[arg-type]
    s = parse(render(registry).decode())
    shown = sorted({dict(ls)["revision"] for (n, ls) in s if n == "holdover_revision_info"},
                   key=lambda r: int(r[1:]))
    assert shown == ["v9", "v10", "v11", "v12"]
    series = {(n, ls) for (n, ls) in s if ("revision", "v1") in ls}
    assert not series
    # What the collector remembered of forgotten revisions does not pile up either.
    collector = GatewayCollector(gw)  # type: ignore[arg-type]
    for i in range(13, 40):
        gw.revs.revisions[f"v{i - 1}"].state = "retired"
        gw.revs.revisions[f"v{i - 1}"].workers = []  # its stopped worker was pruned
        gw.revs.revisions[f"v{i}"] = SimpleNamespace(id=f"v{i}", state="active",
                                                     canary_percent=0.0,
                                                     workers=[fake_worker(f"v{i}-1")])
        list(collector.collect())
    assert len(collector._seen) == 4 and len(collector._gone) <= 3
    assert len(collector._gone_restarts) <= 3
