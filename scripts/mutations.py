"""A mutation check: one-line bugs the test suite must catch, each applied to a copy.

Each ``Mutation`` names a file, the exact text it replaces (which must occur exactly
once, or the check stops at once: an entry can never go stale silently when code
moves), the replacement, and the pytest arguments of the tests that should catch it.
For each one the whole tree is copied to a temporary folder, the bug applied, and those
tests run; a mutation they do not catch *survives*.  Run it with ``scripts/mutation.sh``
(``--list`` shows the entries, ``--only NAME`` runs some, ``--show`` prints what caught
each, ``--no-baseline`` skips the first run of the same tests on the unchanged tree).
Exit status: 0 when every mutation is caught, 1 when one survives, 2 when an entry is
stale or the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 900  # seconds for one pytest run; a hang counts as caught (it fails CI)


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: paths, node ids, ``-k`` expressions


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "forged pin signatures accepted", "holdover/core/affinity.py",
        "            if hmac.compare_digest(sig, self._sig(key, k)):\n",
        "            if sig or hmac.compare_digest(sig, self._sig(key, k)):\n",
        ("tests/unit/test_sessions_unit.py", "-k", "tampered or forged or foreign")),
    Mutation(
        "Content-Length with Transfer-Encoding passed through", "holdover/proxy/server.py",
        "        self.parser = httptools.HttpRequestParser(self)\n"
        "        self.parsing: Exchange | None = None\n",
        "        self.parser = httptools.HttpRequestParser(self)\n"
        "        self.parser.set_dangerous_leniencies(lenient_chunked_length=True)\n"
        "        self.parsing: Exchange | None = None\n",
        ("tests/unit/test_protocol.py", "-k", "smuggling")),
    Mutation(
        # The drain plan (core/policy.py workers_to_stop) and the check just before the
        # stop both guard this; the second is the last word, so it is the one broken here.
        "draining workers stopped while they hold sessions", "holdover/control/draining.py",
        "        if idle and (self.ctl.inflight(w) or self.ctl.sessions.per_worker.get(w.id)):\n",
        "        if False:\n",
        ("tests/unit/test_sessions_unit.py::"
         "test_a_worker_planned_to_stop_is_kept_if_a_session_reached_it_meanwhile",
         "tests/e2e/test_revisions.py::test_deploy_keeps_live_sessions_on_their_revision")),
    Mutation(
        "the drain plan ignores sessions", "holdover/core/policy.py",
        "            if wid not in busy and inflight == 0 and not sessions]\n",
        "            if wid not in busy and inflight == 0]\n",
        ("tests/unit/test_lifecycle.py::"
         "test_the_drain_plan_stops_only_idle_workers_not_already_stopping",)),
    Mutation(
        "pins ignored when routing", "holdover/control/router.py",
        "                pin = self.sessions.pins.get(key)\n",
        "                pin = None\n",
        ("tests/unit/test_sessions_unit.py",)),
    Mutation(
        "hop-by-hop headers kept", "holdover/proxy/http1.py",
        '    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",\n',
        '    b"connection",\n',
        ("tests/unit/test_protocol.py", "-k", "hop_by_hop")),
    Mutation(
        "one admin route unauthenticated", "holdover/admin/server.py",
        '        if request.path.startswith("/api/") or request.path == "/metrics":\n',
        '        if (request.path.startswith("/api/") and request.path != "/api/events") or '
        'request.path == "/metrics":\n',
        ("tests/e2e/test_admin_api.py", "-k", "every_endpoint_needs_the_token")),
    Mutation(
        "a failed deploy made active", "holdover/control/revisions.py",
        "            self._apply(rev, E.FAIL)\n"
        '            await self.ctl.record_event("failed",',
        "            self._activate(rev)\n"
        '            await self.ctl.record_event("failed",',
        ("tests/unit/test_sessions_unit.py::test_failed_rolling_deploy_leaves_active_as_it_was",
         "tests/e2e/test_revisions.py", "-k", "failed_deploy or failed_rolling")),
    Mutation(
        "idle sessions never ended", "holdover/control/facade.py",
        "        for p in idle:\n            self.sessions.end(p.key)\n",
        "        for p in idle:\n            pass\n",
        ("tests/unit/test_idle_sweep.py",)),
)


def tree_files(root: Path) -> list[str]:
    """The files of the working tree: tracked and new ones, not ignored ones."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (root / f).is_file()]


def check_entries(root: Path, mutations: tuple[Mutation, ...]) -> list[str]:
    """Why entries cannot be applied to this tree (empty when all can)."""
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.original)
        if n != 1:
            problems.append(f"{m.name}: the original text occurs {n} times in {m.file} "
                            f"(must be exactly once):\n{m.original}")
        for arg in m.tests:
            target = arg.split("::")[0]
            if arg.startswith("tests/") and not (root / target).exists():
                problems.append(f"{m.name}: test {target} does not exist")
    return problems


def copy_tree(root: Path, dest: Path) -> None:
    for f in tree_files(root):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[str, float, str]:
    """(outcome, seconds, output tail): outcome is passed, failed, hung or error."""
    env = {k: v for k, v in os.environ.items() if k != "HOLDOVER_WRITE_FAULT_TABLE"}
    env["PYTHONPATH"] = str(tree)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            *tests], cwd=tree, env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "hung", time.monotonic() - t0, ""
    took = time.monotonic() - t0
    tail = (r.stdout + r.stderr)[-1500:]
    outcome = {0: "passed", 1: "failed"}.get(r.returncode, "error")
    return outcome, took, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="show the mutations and stop")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run the mutations whose name contains NAME (repeatable)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="do not first run the same tests on the unchanged tree")
    ap.add_argument("--show", action="store_true",
                    help="print the end of each run's output (what caught the bug)")
    args = ap.parse_args(argv)
    chosen = tuple(m for m in MUTATIONS
                   if not args.only or any(s.lower() in m.name.lower() for s in args.only))
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.file}\n    tests: {' '.join(m.tests)}")
        return 0
    problems = check_entries(ROOT, MUTATIONS)
    if problems:
        print("mutation.sh: stale entries in scripts/mutations.py (retarget them):",
              file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    if not chosen:
        print("mutation.sh: no mutation matches --only", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="holdover-mutation-") as tmp:
        if not args.no_baseline:
            base = Path(tmp) / "baseline"
            copy_tree(ROOT, base)
            for tests in dict.fromkeys(m.tests for m in chosen):
                outcome, took, tail = run_tests(base, tests)
                print(f"baseline  {outcome:7} {took:6.1f}s  {' '.join(tests)}", flush=True)
                if outcome != "passed":
                    print(f"mutation.sh: these tests do not pass on the unchanged tree, so "
                          f"they can prove nothing:\n{tail}", file=sys.stderr)
                    return 2
            shutil.rmtree(base)
        for i, m in enumerate(chosen):
            tree = Path(tmp) / f"m{i}"
            copy_tree(ROOT, tree)
            path = tree / m.file
            path.write_text(path.read_text().replace(m.original, m.replacement, 1))
            outcome, took, tail = run_tests(tree, m.tests)
            verdict = {"failed": "caught", "hung": "caught (hung)",
                       "passed": "SURVIVED"}.get(outcome, "ERROR")
            results.append((m, verdict, tail))
            print(f"{verdict:13} {took:6.1f}s  {m.name}", flush=True)
            if args.show:
                print("    " + tail.replace("\n", "\n    "), flush=True)
            shutil.rmtree(tree)
    survived = [m for m, v, _ in results if v == "SURVIVED"]
    errors = [(m, tail) for m, v, tail in results if v == "ERROR"]
    for m, tail in errors:
        print(f"mutation.sh: {m.name}: pytest did not run the tests:\n{tail}", file=sys.stderr)
    print(f"{len(results) - len(survived) - len(errors)} of {len(results)} mutations caught"
          + (f"; survived: {', '.join(m.name for m in survived)}" if survived else ""))
    if errors:
        return 2
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
