"""The mutation check refuses entries that no longer match the code (scripts/mutations.py).

A stale entry would apply no bug and so "survive" or be "caught" for nothing; the check
must name it instead.  Here against a small tree of its own, so that moving code in the
real tree (and retargeting the entries after) never breaks the default run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutations.py"
spec = importlib.util.spec_from_file_location("mutations", SCRIPT)
assert spec is not None and spec.loader is not None
mutations = importlib.util.module_from_spec(spec)
sys.modules["mutations"] = mutations  # dataclasses look their module up there
spec.loader.exec_module(mutations)


def test_stale_entries_are_named(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\ny = 2\ny = 2\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    M = mutations.Mutation
    entries = (
        M("fine", "pkg/a.py", "x = 1\n", "x = 0\n", ("tests/test_a.py", "-k", "a")),
        M("moved", "pkg/a.py", "z = 3\n", "z = 0\n", ("tests/test_a.py",)),
        M("twice", "pkg/a.py", "y = 2\n", "y = 0\n", ("tests/test_a.py",)),
        M("gone file", "pkg/b.py", "x", "y", ("tests/test_a.py",)),
        M("gone test", "pkg/a.py", "x = 1\n", "x = 0\n", ("tests/test_b.py::test_x",)),
    )
    problems = mutations.check_entries(tmp_path, entries)
    named = [p.split(":", 1)[0] for p in problems]
    assert named == ["moved", "twice", "gone file", "gone test"], problems
    assert "occurs 0 times" in problems[0] and "occurs 2 times" in problems[1]


def test_every_entry_changes_its_line() -> None:
    for m in mutations.MUTATIONS:
        assert m.original != m.replacement and m.tests, m.name
