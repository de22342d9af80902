"""The only reasons a test may be skipped, in one place (documented in docs/testing.md).

A skip is a test that did not run while the run still reports success, so a missing
browser or package must never turn into one: those fail.  What remains are checks that
depend on the platform the suite runs on.  ``SkipWatch`` (installed by tests/conftest.py)
records every skip of a run and fails the run for any whose reason is not listed here;
tests/unit/test_skip_policy.py checks every skip written in the tests' source too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class AllowedSkip:
    reason: str  # a regular expression the skip's reason must match from its start
    why: str


ALLOWED: tuple[AllowedSkip, ...] = (
    AllowedSkip(r"root writes to 0400 files",
                "root bypasses file modes, so the read-only-file check runs only as another "
                "user (the root case is covered by the read-only-mode test beside it)"),
    AllowedSkip(r"chattr \+i is not available here",
                "making the state file immutable needs chattr, root and a filesystem "
                "that supports the immutable attribute"),
    AllowedSkip(r"this run rewrites docs/faults\.md at its end",
                "only in the fault-table refresh run (HOLDOVER_WRITE_FAULT_TABLE=1), never "
                "in the default run"),
)


def allowed(reason: str) -> bool:
    """Whether a skip with this reason is one of the documented platform-dependent ones."""
    reason = reason.removeprefix("Skipped: ")
    return any(re.match(a.reason, reason) for a in ALLOWED)


class SkipWatch:
    """Records the skips of one pytest run; a skip not in ``ALLOWED`` fails the run."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []  # (test id, reason)

    def unexpected(self) -> list[tuple[str, str]]:
        return [(node, reason) for node, reason in self.skips if not allowed(reason)]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skips.append((report.nodeid, reason))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected() and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        bad = self.unexpected()
        if not bad:
            return
        terminalreporter.section("skips that are not allowed", red=True)
        for node, reason in bad:
            terminalreporter.line(f"{node}: {reason}")
        terminalreporter.line("a skipped test is a check that did not run: install what it "
                              "needs, or document a platform-dependent reason in "
                              "tests/skippolicy.py and docs/testing.md")


def watch(config: pytest.Config) -> None:
    """Install a ``SkipWatch`` on this run (once)."""
    if not config.pluginmanager.has_plugin("holdover-skipwatch"):
        config.pluginmanager.register(SkipWatch(), "holdover-skipwatch")


def pytest_configure(config: pytest.Config) -> None:
    """As a plugin of its own (``-p skippolicy``), for runs outside this tree."""
    watch(config)
