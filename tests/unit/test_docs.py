"""The docs say what the code does: generated parts are current, lists are complete, and
every figure, file name and setting they quote is the one in the repository."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path
from unittest import mock

import pytest

from holdover import config
from holdover.admin.commands import BY_NAME
from holdover.admin.server import SECURITY_HEADERS, STATIC_DIR, openapi
from holdover.cli import build_parser
from holdover.control.releases import _SNAPSHOT_IGNORE

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = (ROOT / "README.md").read_text()
OPERATING = (ROOT / "docs" / "operating.md").read_text()


def section(text: str, title: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same level or
    higher (``#`` lines inside code blocks are comments, not headings)."""
    out: list[str] = []
    level = 0
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"(#+) (.*)", line)
        if level and heading and len(heading.group(1)) <= level:
            break
        if level:
            out.append(line)
        elif heading and heading.group(2) == title:
            level = len(heading.group(1))
    assert level, f"no section {title!r}"
    return "\n".join(out) + "\n"


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header and rule excluded)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows[1:] if rows else rows


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_configuration_reference_is_current():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == config.reference_markdown(), (
        "docs/configuration.md is stale: run `holdover config-reference > docs/configuration.md`")


def test_readme_opens_with_the_two_commands():
    lines = README.splitlines()
    block = lines[lines.index("```sh") + 1:lines.index("```sh") + 3]
    assert "holdover demo" in block[0]
    assert "scripts/test.sh" in block[1]
    assert (ROOT / "scripts" / "test.sh").exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    build_parser().parse_args(["demo"])  # the command the README names exists


# -- the command line ------------------------------------------------------------------

def test_readme_command_table_is_holdover_help():
    named = set()
    for row in table_rows(section(README, "Command line").split("Exit codes")[0]):
        for span in re.findall(r"`([^`]+)`", row[0]):
            named.add(span.removeprefix("holdover ").split()[0])
    assert named == set(subcommands()), (
        f"README lists {sorted(named - set(subcommands()))} that `holdover --help` does not, "
        f"and misses {sorted(set(subcommands()) - named)}")


def test_readme_says_which_commands_take_c_and_json():
    def has(p: argparse.ArgumentParser, flag: str) -> bool:
        return any(flag in a.option_strings for a in p._actions)

    subs = subcommands()
    no_c = {name for name, p in subs.items() if not has(p, "-c")}
    no_json = {name for name, p in subs.items() if not has(p, "--json")}
    text = " ".join(section(README, "Command line").split())
    m = re.search(r"Every command except (.+?) takes `-c FILE`", text)
    assert m and set(re.findall(r"`([a-z-]+)`", m.group(1))) == no_c, (m, no_c)
    m = re.search(r"; ((?:`[a-z-]+`,? (?:and )?)+)work without the API and have no `--json`",
                  text)
    assert m and set(re.findall(r"`([a-z-]+)`", m.group(1))) == no_json, (m, no_json)


def test_exit_codes_as_the_readme_says():
    text = " ".join(section(README, "Command line").split())
    assert "`deploy --canary 150`" in text.split("· `2`")[0], "a checked value is exit 1"
    with pytest.raises(SystemExit) as info:  # a value argparse cannot read: usage, exit 2
        build_parser().parse_args(["deploy", "--canary", "abc"])
    assert info.value.code == 2
    assert "`--canary abc`" in text.split("· `2`")[1].split("· `3`")[0]


def test_readme_and_help_say_drain_aborts_a_canary():
    rows = {r[0]: r[1] for r in table_rows(section(README, "Command line"))}
    assert "Only a canary can be drained" in rows["`holdover drain REV`"]
    assert BY_NAME["drain"].help.startswith("abort a canary")


# -- the admin API ---------------------------------------------------------------------

def test_readme_api_list_is_the_openapi_document():
    api = section(README, "Command line").split("the JSON API", 1)[1]
    listed = set()
    for row in table_rows(api):
        method = row[0].strip("`").split()[0]
        for path in re.findall(r"`(?:GET |POST )?(/api/[\w.\-]+)`", row[0]):
            listed.add((method, path))
    documented = {(next(iter(ops)).upper(), path) for path, ops in openapi()["paths"].items()}
    assert len(documented) == 16
    assert listed == documented | {("GET", "/api/stream")}, (
        sorted(listed ^ (documented | {("GET", "/api/stream")})))
    assert "`/api/openapi.json`" in api


def test_security_md_quotes_the_admin_csp_and_the_page_has_no_inline_script():
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert f"`{csp}`" in (ROOT / "SECURITY.md").read_text()
    if "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0]:
        page = (STATIC_DIR / "index.html").read_text()
        assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", page)), page
        assert not re.search(r"\son[a-z]+\s*=", page), "inline event handlers need unsafe-inline"
        assert "javascript:" not in page


# -- deploy --from ---------------------------------------------------------------------

def test_snapshot_paragraph_lists_exactly_what_is_left_out():
    text = " ".join(section(README, "What a snapshot leaves out").split())
    left_out = re.search(r"The copy leaves out, at any depth: (.+?)\. Everything else", text)
    assert left_out
    listed = re.findall(r"`([^`]+)`", left_out.group(1))
    names = [n.replace("*", "x") for n in listed]  # `*.pyc` -> a name it matches
    assert set(_SNAPSHOT_IGNORE("/src", names)) == set(names), "each listed name is left out"
    candidates = [*names, ".env", "build", "dist", "app.py", "holdover.toml", "state"]
    ignored = set(_SNAPSHOT_IGNORE("/src", candidates))
    assert ignored == set(names), f"left out but not listed: {sorted(ignored - set(names))}"
    for copied in ("build output", "`.env`"):
        assert copied in text.split("Everything else", 1)[1]


def test_deploy_examples_fit_the_quick_start_layout():
    quick = section(README, "Quick start with your own app")
    assert 'command = "python app.py --port {port}"' in quick  # app.py beside holdover.toml
    assert "cwd" not in re.findall(r"^(\w+) =", quick, re.M)
    for m in re.finditer(r"holdover deploy --from (\S+)", README):
        assert m.group(1) in (".", "DIR", "…/releases/v2"), m.group(0)


# -- figures ---------------------------------------------------------------------------

def bench_table(name: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first table in a results file whose header starts so."""
    text = (ROOT / "bench" / "results" / name).read_text()
    block = (header_start + text.split(header_start, 1)[1]).split("\n\n")[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_performance_paragraph_has_the_current_proxy_figures():
    header, cells = bench_table("results.md", "| proxy | size")
    rows = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in cells}
    perf = " ".join(section(README, "Performance").split())
    hold, nginx = rows[("holdover", "small")], rows[("nginx", "small")]
    assert f"{hold['CPU µs/req']} µs of CPU per request (nginx: {nginx['CPU µs/req']} µs)" \
        in perf
    times = "\N{MULTIPLICATION SIGN}"  # as the README writes "0.50x"
    ratio = {size: rows[("holdover", size)]["req/s x nginx"] + times for size in
             ("small", "64k", "1m")}
    assert f"{ratio['small']} nginx's requests per second" in perf
    assert f"64 KiB responses {ratio['64k']}" in perf
    assert f"1 MiB responses {ratio['1m']}" in perf


# The summary's columns: target, requests, failed, of which the killed worker's,
# sessions lost, of which the killed worker's, ...
TARGET, FAILED, FAILED_KILLED, LOST, LOST_KILLED = 0, 2, 3, 4, 5


def test_performance_paragraph_has_the_upgrade_figures():
    header, cells = bench_table("upgrade.md", "| target | requests")
    assert header[FAILED] == "failed" and header[LOST] == "sessions lost", header
    rows = {r[TARGET]: r for r in cells}
    perf = " ".join(section(README, "Performance").split())
    h = rows["holdover"]
    assert (h[FAILED], h[LOST]) == (h[FAILED_KILLED], h[LOST_KILLED]), "only the killed's"
    assert f"({h[FAILED]} requests, {h[LOST]} sessions)" in perf
    n, g, p = rows["nginx"], rows["gunicorn"], rows["haproxy"]
    assert (f"nginx lost {n[LOST]} sessions, gunicorn {g[LOST]} and HAProxy {p[LOST]} (of "
            f"them {n[LOST_KILLED]}, {g[LOST_KILLED]} and {p[LOST_KILLED]} on the killed "
            f"worker)") in perf
    _, fixed = bench_table("upgrade-stateless-fix.md", "| target | requests")
    s = {r[TARGET]: r for r in fixed}["holdover-stateless"]
    assert s[FAILED] == s[FAILED_KILLED]
    assert f"failed only the killed worker's {s[FAILED]} requests" in perf


# -- docs/operating.md -----------------------------------------------------------------

# The directives the documented unit may use, by section (systemd.unit(5), .service(5),
# .exec(5), .kill(5), .resource-control(5)); a misspelt one would be ignored by systemd.
SYSTEMD = {
    "Unit": {"Description", "Documentation", "Wants", "Requires", "After", "Before",
             "BindsTo", "PartOf", "Conflicts", "ConditionPathExists", "StartLimitBurst",
             "StartLimitIntervalSec"},
    "Service": {"Type", "User", "Group", "WorkingDirectory", "ExecStartPre", "ExecStart",
                "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost", "KillSignal",
                "KillMode", "TimeoutStopSec", "TimeoutStartSec", "Restart", "RestartSec",
                "LimitNOFILE", "AmbientCapabilities", "CapabilityBoundingSet",
                "NoNewPrivileges", "Environment", "EnvironmentFile", "UMask", "PIDFile",
                "ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths",
                "StateDirectory", "RuntimeDirectory"},
    "Install": {"WantedBy", "RequiredBy", "Alias"},
}


def unit_file() -> str:
    text = section(OPERATING, "Running it under systemd")
    m = re.search(r"```ini\n(.*?)```", text, re.S)
    assert m, "no ```ini unit in docs/operating.md"
    return m.group(1)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = m.group(1)
            assert current in SYSTEMD, f"line {n}: unknown section [{current}]"
            sections[current] = []
            continue
        key, eq, value = line.partition("=")
        assert current and eq and key == key.strip(), f"line {n}: not KEY=VALUE: {line!r}"
        assert key in SYSTEMD[current], f"line {n}: {key} is not a [{current}] directive"
        sections[current].append((key, value))
    return sections


def test_documented_unit_parses_and_checks_before_start_and_reload():
    unit = parse_unit(unit_file())
    svc = dict(unit["Service"])
    values = {k: [v for kk, v in unit["Service"] if kk == k] for k in svc}
    start = svc["ExecStart"]
    m = re.fullmatch(r"(/\S+/holdover) run (-c \S+)", start)
    assert m, start
    holdover, conf = m.groups()
    assert values["ExecStartPre"] == [f"{holdover} check {conf}"]
    assert values["ExecReload"] == [f"{holdover} check {conf}", "/bin/kill -HUP $MAINPID"]
    assert svc["User"] and svc["KillMode"] == "mixed"
    assert svc["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert int(svc["LimitNOFILE"]) >= 4096
    timeout = int(svc["TimeoutStopSec"])
    assert timeout > 60, "above shutdown_timeout + stop_grace (30 s + 30 s by default)"
    units = dict(unit["Unit"])
    assert units["After"] == units["Wants"] == "network-online.target"
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    # The commands the page tells the operator to run exist.
    for cmd in ("check", "run", "backup", "status", "deploy"):
        assert cmd in subcommands()
    assert f"sudo -u {svc['User']} " in OPERATING


def test_operating_covers_rotation_backup_restore_and_upgrades():
    logs = section(OPERATING, "Rotating the access log")
    m = re.search(r"```\n(# /etc/logrotate.d/\S+\n.*?)```", logs, re.S)
    assert m and "copytruncate" in m.group(1)
    defaults = {(st.section, st.name): st.default for st in config.SETTINGS}
    state_dir, access = defaults[("gateway", "state_dir")], defaults[("gateway", "access_log")]
    assert f"/{state_dir}/{access} {{" in m.group(1), "the access log's default place"
    backup = section(OPERATING, "Backup and restore")
    assert "holdover backup" in backup and "sqlite3 /" not in backup
    assert "rm -f state.db-wal state.db-shm" in backup
    assert ".secret.json" in backup
    upgrade = " ".join(section(OPERATING, "Upgrading holdover").split())
    assert "user_version" in upgrade and "holdover backup" in upgrade
    from holdover.state.sqlite import SCHEMA_VERSION
    assert f"({SCHEMA_VERSION} for every holdover so far)" in upgrade


def test_documented_pruning_script_removes_only_old_retired_revisions(tmp_path: Path):
    text = section(OPERATING, "Pruning `releases/` and `logs/`")
    m = re.search(r"python3 -c '\n(.*?)\n'\n```", text, re.S)
    assert m, "no python3 -c '...' script"
    script = m.group(1).replace("/srv/shop/.holdover", str(tmp_path))
    states = {"v1": "retired", "v2": "failed", "v3": "retired", "v4": "retired",
              "v5": "retired", "v6": "retired", "v7": "retired", "v8": "retired",
              "v9": "draining", "v10": "active", "v11": "starting"}
    revs = [{"id": rid, "state": st, "created_at": 1_000 + i}
            for i, (rid, st) in enumerate(states.items())]
    for rid in states:
        for sub in ("releases", "logs"):
            (tmp_path / sub / rid).mkdir(parents=True)
    out = io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(json.dumps({"revisions": revs}))), \
            contextlib.redirect_stdout(out):
        exec(compile(script, "docs/operating.md", "exec"), {"__name__": "__main__"})
    assert "removed" in out.getvalue()
    for sub in ("releases", "logs"):
        left = {p.name for p in (tmp_path / sub).iterdir()}
        # retired/failed: v1..v8 (8); the 5 newest stay, the rest of the revisions too
        assert left == {"v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11"}, (sub, left)


def test_pin_clients_is_told_alike_in_both_docs():
    conf = config.reference_markdown()
    proto = " ".join((ROOT / "docs" / "session-protocol.md").read_text().split())
    row = next(ln for ln in conf.splitlines() if ln.startswith("| `pin_clients`"))
    assert "stops by itself once the app sends X-Holdover-Session" in row
    assert "Once a worker has sent `X-Holdover-Session`, the gateway stops doing that" in proto
    assert "`pin_clients = false`" in proto
    if "xfail" in proto:  # it once said the suite records known bugs there
        assert "xfail" in (ROOT / "tests" / "test_session_protocol.py").read_text()
