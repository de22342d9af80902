"""The fault table and the request corpus index agree with the code, without a gateway."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("faultlog")
import faultlog  # noqa: E402  (after the line above, so that pytest rewrites its asserts)

CORPUS = faultlog.corpus_cases()


def test_corpus_files_and_index_agree():
    names = {c["name"] for c in CORPUS}
    files = {p.stem for p in faultlog.CORPUS.glob("*.http")}
    assert names == files, (names ^ files)
    assert len(names) == len(CORPUS), "a case name is listed twice"
    for c in CORPUS:
        assert set(c) <= {"name", "what", "status", "close", "xfail"}, c
        assert 400 <= c["status"] < 600 and isinstance(c["close"], bool)


def test_fault_table_is_current():
    """docs/faults.md lists exactly the cases the suite tries, worded as in the code."""
    if os.environ.get(faultlog.WRITE_ENV) == "1":
        pytest.skip("this run rewrites docs/faults.md at its end")
    assert faultlog.DOC.exists(), "run: HOLDOVER_WRITE_FAULT_TABLE=1 python -m pytest " \
                                  "tests/e2e/test_faults.py tests/e2e/test_hostile.py " \
                                  "tests/unit/test_fuzz.py tests/e2e/test_fuzz_live.py"
    rows = faultlog.parse(faultlog.DOC.read_text())
    want = {c.id: (faultlog._cell(c.what), faultlog._cell(c.expected))
            for c in faultlog.catalogue()}
    have = {cid: (what, expected) for cid, (what, expected, _o, _v) in rows.items()}
    stale = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    assert not stale, f"docs/faults.md is out of date for {stale}: refresh it (see its header)"
    missing = [cid for cid, (_w, _e, obs, _v) in rows.items() if obs in ("", "not run")]
    assert not missing, f"no observation recorded for {missing}"
    # The rendering is stable: rendering what the file holds gives the file back.
    observed = {cid: {"observed": o.replace("\\|", "|"), "verdict": v.replace("\\|", "|")}
                for cid, (_w, _e, o, v) in rows.items()}
    assert faultlog.render(observed) == faultlog.DOC.read_text()


def test_table_renders_every_area_and_escapes_cells(tmp_path: Path):
    text = faultlog.render({"worker-garbage": {"observed": "a | b", "verdict": "as expected"}})
    assert all(f"## {a}" in text for a in faultlog.AREAS)
    rows = faultlog.parse(text)
    assert rows["worker-garbage"][2] == "a \\| b"
    assert len(rows) == len(faultlog.catalogue())
