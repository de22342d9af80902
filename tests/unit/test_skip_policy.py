"""A run skips nothing but the documented platform-dependent checks (tests/skippolicy.py).

Three ways a quiet skip could come back, each checked: a skip written in a test's source
with an undocumented reason, an allowed reason missing from docs/testing.md, and a run
whose watch lets an unlisted skip pass as success.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import skippolicy

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_the_documented_reasons_are_allowed_and_others_are_not() -> None:
    assert skippolicy.allowed("root writes to 0400 files; see the test above")
    assert skippolicy.allowed("Skipped: chattr +i is not available here")
    assert not skippolicy.allowed("atheris is not installed")
    assert not skippolicy.allowed("could not import 'flask': No module named 'flask'")
    assert not skippolicy.allowed("/usr/bin/chromium is missing")
    assert not skippolicy.allowed("a reason mentioning chattr +i is not available here")


def test_every_allowed_reason_is_documented() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    for a in skippolicy.ALLOWED:
        text = re.sub(r"\\(.)", r"\1", a.reason)
        assert text in doc, f"docs/testing.md does not list the allowed skip {text!r}"


def _skips_in(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, kind, constant reason or None) of every skip written in a test file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name not in ("pytest.skip", "pytest.importorskip", "pytest.mark.skip",
                        "pytest.mark.skipif"):
            continue
        args = {k.arg: k.value for k in node.keywords}
        reason = args.get("reason")
        if reason is None and name == "pytest.skip" and node.args:
            reason = node.args[0]
        text = reason.value if isinstance(reason, ast.Constant) else None
        found.append((node.lineno, name, text))
    return found


def test_every_skip_in_the_source_is_allowed() -> None:
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for line, kind, reason in _skips_in(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if kind == "pytest.importorskip":
                bad.append(f"{where}: importorskip (use conftest.require: a missing "
                           "package fails)")
            elif reason is None or not skippolicy.allowed(reason):
                bad.append(f"{where}: {kind} with reason {reason!r}")
    assert not bad, "skips not in tests/skippolicy.py:\n" + "\n".join(bad)


def test_the_scan_sees_each_kind_of_skip(tmp_path: Path) -> None:
    f = tmp_path / "test_x.py"
    f.write_text('import pytest\npytest.importorskip("flask")\n'
                 '@pytest.mark.skipif(True, reason="no browser")\ndef test_a(): pass\n'
                 'def test_b(): pytest.skip(f"{1}")\n')
    assert _skips_in(f) == [(2, "pytest.importorskip", None),
                            (3, "pytest.mark.skipif", "no browser"),
                            (5, "pytest.skip", None)]


def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
              ) -> pytest.RunResult:
    """A pytest run in this process with only the skip watch (no installed plugins)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester.runpytest_inprocess("-p", "skippolicy", "-p", "no:cacheprovider")


def test_a_run_with_an_unlisted_skip_fails(pytester: pytest.Pytester,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_some="""
        import pytest

        def test_runs():
            pass

        def test_quietly_left_out():
            pytest.skip("the browser is missing")
    """)
    result = run_inner(pytester, monkeypatch)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*skips that are not allowed*",
                                 "*test_quietly_left_out: *the browser is missing*"])


def test_a_run_with_only_allowed_skips_passes(pytester: pytest.Pytester,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_some="""
        import pytest

        def test_runs():
            pass

        def test_platform():
            pytest.skip("chattr +i is not available here")
    """)
    result = run_inner(pytester, monkeypatch)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
    assert "not allowed" not in result.stdout.str()


def test_this_run_is_watched(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("holdover-skipwatch")


def test_no_two_test_files_share_a_name() -> None:
    # The trees have no __init__.py: pytest imports test modules by their file name, so
    # two of the same name in tests/unit and tests/e2e stop the whole run at collection.
    root = Path(__file__).resolve().parents[1]
    names = [p.name for tree in ("unit", "e2e") for p in (root / tree).glob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
