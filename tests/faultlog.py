"""The fault table: every fault and hostile case the suite tries, and what it observed.

A pytest plugin (``pytest_plugins = ["faultlog"]`` in the modules ``HEADER`` below
lists).  Tests take the ``observe`` fixture and call ``observe(case_id, "what happened")``
with what they actually saw, *before* they assert; the verdict column comes from the
test's outcome (passed → as expected, failed → differs, xfailed → known bug).  At the end of the session the table is written
to ``test-artifacts/faults.md``; with ``HOLDOVER_WRITE_FAULT_TABLE=1`` it also rewrites
the checked-in copy ``docs/faults.md`` (cases not run in this session keep the
observation the file already had).

The case list itself is data, not a side effect of running tests: ``CASES`` below plus
one row per request in ``tests/corpus/cases.toml``, so that ``test_fault_table_is_current``
can check ``docs/faults.md`` without a network.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"
DOC = ROOT / "docs" / "faults.md"
ARTIFACT = ROOT / "test-artifacts" / "faults.md"
WRITE_ENV = "HOLDOVER_WRITE_FAULT_TABLE"


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str
    expected: str


AREAS = ("Worker faults", "Gateway faults", "Resources", "Hostile input (corpus)",
         "Hostile input (headers, paths, cookies)", "Fuzzing", "Security")

CASES: tuple[Case, ...] = (
    # -- workers ---------------------------------------------------------------------
    Case("worker-kill9-mid-request", "Worker faults",
         "kill -9 of a worker while a POST is in flight on it (sessions mode, 2 workers)",
         "502 for that request only (never resent); the other worker's session keeps its "
         "count; the dead worker's session is counted lost and starts anew; a new process "
         "replaces the dead one"),
    Case("worker-kill9-mid-websocket", "Worker faults",
         "kill -9 of a worker with an open WebSocket (another WebSocket on the other worker)",
         "that WebSocket is closed; the other one keeps echoing; a reconnect works"),
    Case("worker-hangs", "Worker faults",
         "a worker process frozen (SIGSTOP: accepts, never answers), 2 workers",
         "504 after response_timeout for requests sent to it; the other worker serves "
         "everything else; the frozen worker fails its health checks and is replaced"),
    Case("worker-garbage", "Worker faults", "worker answers bytes that are not HTTP",
         "502; the next request works"),
    Case("worker-half-response", "Worker faults",
         "worker sends a head promising 100 bytes, 9 bytes of body, then closes",
         "the client sees the connection cut before the promised length (never a "
         "completed-looking response)"),
    Case("worker-close-mid-chunked", "Worker faults",
         "worker closes in the middle of a chunked body",
         "the client's connection is cut without the last chunk (truncation is visible)"),
    Case("worker-bad-chunk", "Worker faults",
         "worker sends a valid chunked head, a chunk, then an invalid chunk size (one write)",
         "502 (nothing had reached the client yet), connection closed; the gateway carries on"),
    Case("worker-close-no-answer", "Worker faults",
         "worker closes the connection without answering a POST",
         "502"),
    Case("worker-stray-101", "Worker faults",
         "worker answers 101 Switching Protocols to a plain GET",
         "502; no tunnel is opened"),
    Case("worker-cl-te", "Worker faults",
         "worker response with both Content-Length and Transfer-Encoding",
         "502 (a response smuggling shape is not passed on)"),
    Case("worker-bare-lf", "Worker faults", "worker response header ended by a bare LF",
         "502"),
    Case("worker-two-responses", "Worker faults",
         "worker sends two responses to one request in one write (and owes the rest of the "
         "second to the next request on that connection)",
         "the client gets exactly one response; the connection to the worker is discarded; "
         "the next client never sees bytes of another response"),
    Case("worker-endless-head", "Worker faults",
         "worker sends a status line and then 48 MiB of header lines that never end",
         "the gateway caps the response head (502) and its memory stays bounded"),
    Case("worker-crash-loop-deploy", "Worker faults",
         "deploy of a revision whose workers exit at start-up every time",
         "deploy exits 1 with the worker's log tail; the revision is failed; the active "
         "revision keeps serving every request; no process left behind"),
    Case("worker-crash-loop-one", "Worker faults",
         "one worker of two starts crash-looping (exits at start-up every time)",
         "crash loop detected and logged, back-off grows; every request is served by the "
         "other worker"),
    Case("worker-ignores-sigterm", "Worker faults",
         "a worker that ignores SIGTERM, at gateway shutdown",
         "SIGKILL after stop_grace, logged; the gateway exits 0; no process left behind"),
    Case("worker-log-disk-full", "Worker faults",
         "the disk holding the worker logs is full while a worker writes to stdout",
         "the log lines are dropped; the worker keeps working, also after the disk has room"),
    # -- the gateway -----------------------------------------------------------------
    Case("gateway-sigterm-under-load", "Gateway faults",
         "SIGTERM to the gateway with 12 slow requests in flight and idle keep-alive clients",
         "every in-flight request completes 200 with Connection: close; idle connections "
         "closed; new connections refused; exit 0; workers stopped"),
    Case("gateway-sigkill-restart", "Gateway faults",
         "kill -9 of the gateway (sessions mode, v2 active, v1 draining with a session), "
         "then holdover run again on the same state_dir",
         "no worker outlives it; the restart succeeds (lock freed); revisions and states "
         "remembered; both pins remembered (counted lost: their processes are gone); "
         "state.db passes integrity_check"),
    Case("state-disk-full", "Gateway faults",
         "the state store's disk is full (a 4 MiB tmpfs filled up; RLIMIT_FSIZE where mount "
         "is not allowed) while sessions start",
         "a clear error naming the store and the cause; serving and pinning go on from "
         "memory; once there is room again the store catches up; integrity_check ok"),
    Case("state-disk-full-then-reload", "Gateway faults",
         "sessions started while the store's disk was full, then the disk recovers, then "
         "holdover reload",
         "those sessions keep their worker after the reload"),
    Case("state-file-unwritable", "Gateway faults",
         "state.db and its WAL made immutable (chattr +i) while the gateway runs",
         "a clear error; serving and pinning go on; nothing corrupted"),
    Case("state-file-not-sqlite", "Gateway faults", "state.db is random bytes at start",
         "exit 1 with 'not a holdover state database', no traceback, file untouched, no "
         "worker started"),
    Case("state-file-foreign", "Gateway faults", "state.db is another application's SQLite "
         "database at start",
         "exit 1 with 'another application', no traceback, file untouched"),
    Case("state-file-damaged", "Gateway faults",
         "state.db is holdover's, with its table pages overwritten by garbage",
         "exit 1 with a clear store error, no traceback"),
    Case("state-file-newer", "Gateway faults", "state.db written by a newer holdover schema",
         "exit 1 with 'newer holdover', no traceback"),
    Case("secret-file-corrupt", "Gateway faults", "secret.json is not JSON at start",
         "exit 1 with 'not a valid holdover secret file', no traceback"),
    # -- resources -------------------------------------------------------------------
    Case("idle-keepalive-thousands", "Resources",
         "3000 idle keep-alive client connections (each made one request)",
         "all accepted; a new client is answered promptly; gateway memory grows by well "
         "under 100 MiB; all closed after keepalive_timeout"),
    Case("slowloris-head", "Resources",
         "200 clients trickling a request head one byte every 0.3 s",
         "each gets 408 after header_timeout (the trickle does not extend it); a normal "
         "client is served meanwhile"),
    Case("slowloris-blank-lines", "Resources",
         "a client sending an empty line (CRLF) every 0.3 s and never a request",
         "closed after keepalive_timeout (blank lines do not count as activity)"),
    Case("slowloris-body", "Resources",
         "clients trickling a request body one byte every 0.3 s, and one that stops",
         "the stalled body gets 408 after body_timeout; trickling bodies cost one "
         "connection each and do not delay other clients"),
    Case("client-never-reads", "Resources",
         "5 clients each start a 512 MiB download and never read",
         "backpressure: gateway memory grows by less than 64 MiB; other clients served"),
    Case("error-read-in-full", "Resources",
         "a client sends a 200 kB request head, or a 6 MiB body over max_body_size (1 MiB), "
         "all of it before reading (raw socket), 5 times each",
         "it reads the whole 431 or 413 every time, then the connection closes (lingering "
         "close: the gateway stops writing, reads and discards for a bounded time and size)"),
    Case("slow-upload-response-timeout", "Resources",
         "a 900 KiB upload at about 200 KiB/s (4.5 s) with response_timeout 3 s",
         "200: response_timeout counts from the end of the request body"),
    Case("slow-reader-send-timeout", "Resources",
         "40 clients each start a 64 MiB download and stop reading (send_timeout 2 s)",
         "each is cut once a write has made no progress for send_timeout; gateway memory "
         "per stalled connection stays small; other clients are served"),
    Case("worker-never-reads-body", "Resources",
         "a 256 MiB upload to a worker that never reads its request body",
         "backpressure: gateway memory stays bounded; 504 after response_timeout"),
    Case("fd-exhaustion", "Resources",
         "RLIMIT_NOFILE of the gateway lowered to 256, then 400 idle client connections",
         "connections past the limit closed at once (no hang); the gateway does not crash "
         "or spin; an existing keep-alive client is still served"),
    Case("fd-exhaustion-workers", "Resources",
         "the same fd exhaustion held through three health checks of the worker, then the "
         "flood closes",
         "the healthy worker is not restarted because the gateway itself is out of file "
         "descriptors (its sessions survive), the problem is logged, and a new client is "
         "served within 5 s of the flood ending"),
    # -- headers, paths, cookies -----------------------------------------------------
    Case("forwarded-quoting", "Hostile input (headers, paths, cookies)",
         "Host values with comma, semicolon, equals, one shaped to inject a for= element "
         "(a quote or backslash is an invalid Host: see host-invalid)",
         "the worker gets one Forwarded element with the host quoted, and X-Forwarded-* set "
         "by the gateway only"),
    Case("forwarded-crlf", "Hostile input (headers, paths, cookies)",
         "CR, LF, NUL in Host, X-Forwarded-For, Forwarded, absolute-form authority",
         "400 and closed; nothing reaches the worker"),
    Case("connection-strips-framing", "Hostile input (headers, paths, cookies)",
         "Connection: naming Host, Content-Length, Transfer-Encoding, X-Forwarded-For",
         "the worker still gets Host, correct framing and the gateway's X-Forwarded-For"),
    Case("revision-id-newline", "Hostile input (headers, paths, cookies)",
         "deploy (admin API) with revision id \"v2\\n\" — the id goes into the gateway's own "
         "X-Holdover-Revision / X-Holdover-Latest response headers",
         "400 (not a valid revision id); no response header ever contains CR or LF"),
    Case("host-invalid", "Hostile input (headers, paths, cookies)",
         "Host values that are not a host[:port] (space, slash, quote, backslash, @, tab, "
         "an unclosed IPv6 literal, a bad port, empty on HTTP/1.1), and valid ones with "
         "sub-delimiters, IPv6, an empty port",
         "400 and closed for the invalid ones, nothing reaches the worker (RFC 9112 3.2); "
         "the valid ones are served and passed on as X-Forwarded-Host"),
    Case("trace-method", "Hostile input (headers, paths, cookies)",
         "a TRACE request carrying a cookie",
         "405 (as nginx answers); nothing reaches the worker, nothing is echoed"),
    Case("chunk-size-over-limit", "Hostile input (headers, paths, cookies)",
         "a chunked upload whose first chunk declares 2 MiB, or 2^64-1 bytes, or a size that "
         "overflows 64 bits (max_body_size 1 MiB), then 1000 bytes and a pause",
         "413 (400 for the overflow) within a second; nothing waits for a response_timeout"),
    Case("path-normalisation", "Hostile input (headers, paths, cookies)",
         "paths with ../, %2e%2e, //, %2f, backslash, ;params, absolute-form",
         "forwarded byte for byte (the gateway neither decodes nor normalises)"),
    Case("cookie-overlong", "Hostile input (headers, paths, cookies)",
         "one 60 KiB cookie, and one of 70 KiB (over max_header_size)",
         "60 KiB forwarded (the app decides); 70 KiB gets 431 and nothing reaches the worker"),
    Case("cookie-thousands", "Hostile input (headers, paths, cookies)",
         "5000 cookies in one header, and 90 Cookie header lines, with the session cookie "
         "last (sessions mode)",
         "answered; the session is still found (pinned routing works); quick"),
    # -- fuzzing ---------------------------------------------------------------------
    Case("fuzz-protocol-core", "Fuzzing",
         "hypothesis: random and mutated request bytes, fed whole and in random splits, "
         "into the client protocol with a fake transport",
         "never an exception; every input ends routed, answered (one complete error "
         "response, then closed) or waiting for more; what is routed re-parses cleanly"),
    Case("fuzz-worker-responses", "Fuzzing",
         "hypothesis: random and mutated response bytes from a worker",
         "never an exception; the client gets a well-formed answer or a cut connection"),
    Case("fuzz-live", "Fuzzing",
         "random and mutated requests against a real gateway over loopback",
         "every connection ends in a response or a clean close; the gateway stays up and "
         "a normal request works afterwards"),
    Case("fuzz-atheris", "Fuzzing",
         "atheris (libFuzzer) over the client protocol, when atheris is installed",
         "no crash in the bounded run"),
    # -- security --------------------------------------------------------------------
    Case("admin-not-on-public-port", "Security",
         "/api/status, /metrics, /api/openapi.json and disguised variants on the public "
         "port, also absolute-form naming the admin address",
         "all go to the app (its 404), never to the admin side"),
    Case("state-file-modes", "Security",
         "modes of state_dir and every file in it after a run",
         "state_dir 0700; secret.json, admin.token, state.db*, logs, access log 0600"),
    Case("forged-cookie-property", "Security",
         "hypothesis: random bytes and mutations of a real holdover_pin cookie, on a live "
         "gateway with a pinned session",
         "never routed into the real session: either refused (400) or a new pin is "
         "issued; only a byte-identical value (after quote stripping) reaches the session"),
    Case("app-forges-gateway-headers", "Security",
         "the app answers with X-Holdover-Revision, X-Holdover-Latest and Set-Cookie: "
         "holdover_pin=… of its own (stateless and sessions mode)",
         "removed; the client sees only the gateway's own (none when stateless; the real "
         "revision and a signed pin cookie in sessions mode); the app's other cookies kept"),
    Case("client-sends-holdover-headers", "Security",
         "a client sends X-Holdover-Session, X-Holdover-Revision, X-Holdover-Latest "
         "(any case) to the app",
         "removed before the worker: one of these names that the app gets came from holdover"),
    Case("admin-token-empty", "Security",
         "state_dir/admin.token empty at start, then POST /api/deploy (a command of the "
         "client's choosing) with an empty Bearer credential",
         "a new token is written (0600, atomically) and the replacement logged; every "
         "empty credential gets 401; the command never runs"),
    Case("secret-file-exposed", "Security",
         "secret.json readable by every user (0644) at start",
         "made 0600 with a warning that says to rotate the keys if someone read them; "
         "the keys themselves are kept (sessions stay valid)"),
    Case("token-not-printed", "Security",
         "what `holdover run` writes to standard output and standard error at start",
         "the path of the token file, never the token (service logs keep both streams)"),
    Case("admin-exposed", "Security",
         "`holdover check` with admin_listen on 0.0.0.0 and secrets readable by others",
         "exit 0 with one warning per exposure: the plain-HTTP admin side off loopback, "
         "each loose file; `holdover run` logs the listen warning at start"),
    Case("session-header-max-age", "Security",
         "the app sends X-Holdover-Session with max-age inf, nan and 1e23, then an "
         "anonymous client arrives (sessions mode, no session_cookie)",
         "each malformed header is ignored (no pin); the anonymous client still gets "
         "holdover's pin cookie"),
    Case("pin-cookie-several", "Security",
         "a forged holdover_pin cookie in front of the real one in the same Cookie header",
         "the real (first valid) cookie routes the request to its session's worker"),
)


def corpus_cases() -> list[dict[str, Any]]:
    """The request corpus index: one entry per ``tests/corpus/NAME.http``."""
    with open(CORPUS / "cases.toml", "rb") as f:
        data = tomllib.load(f)
    return data["case"]


def corpus_expected(c: dict[str, Any]) -> str:
    closing = "closed" if c["close"] else "kept open"
    return f"{c['status']}, {closing}, 0 requests reach the worker"


def catalogue() -> list[Case]:
    out = list(CASES)
    for c in corpus_cases():
        out.append(Case(f"corpus/{c['name']}", "Hostile input (corpus)", c["what"],
                        corpus_expected(c)))
    return out


# -- recording -----------------------------------------------------------------------

_OBSERVED: dict[str, dict[str, str]] = {}  # case id -> {"observed", "verdict", "node"}
_BY_NODE: dict[str, list[str]] = {}


@pytest.fixture
def observe(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``observe(case_id, text)``: what this test saw for a case of the fault table."""
    known = {c.id for c in catalogue()}
    node = request.node.nodeid

    def record(case_id: str, text: str) -> None:
        assert case_id in known, f"{case_id!r} is not in the fault table (tests/faultlog.py)"
        text = " ".join(str(text).split())
        _OBSERVED[case_id] = {"observed": text, "verdict": "(running)", "node": node}
        _BY_NODE.setdefault(node, [])
        if case_id not in _BY_NODE[node]:
            _BY_NODE[node].append(case_id)

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    ids = _BY_NODE.get(item.nodeid)
    if not ids or (rep.when in ("setup", "teardown") and rep.passed):
        return
    if hasattr(rep, "wasxfail"):
        verdict = ("known bug (xfail): " + rep.wasxfail.removeprefix("reason: ")
                   if rep.skipped else "XPASS: the known bug no longer shows")
    elif rep.passed:
        verdict = "as expected"
    elif rep.skipped:
        verdict = "skipped"
    else:
        verdict = f"DIFFERS: test failed in {rep.when}"
    for cid in ids:
        if cid in _OBSERVED and (_OBSERVED[cid]["verdict"] == "(running)" or not rep.passed):
            _OBSERVED[cid]["verdict"] = verdict


# -- the table -----------------------------------------------------------------------

HEADER = """\
# Faults and hostile input: what was tried and what happened

This table is produced by the test suite itself (`tests/faultlog.py`): every fault and
hostile case that `tests/e2e/test_faults.py`, `tests/e2e/test_hostile.py`,
`tests/e2e/test_admin_hardening.py`, `tests/e2e/test_proxy_hardening.py`,
`tests/unit/test_session_signals.py`, `tests/unit/test_fuzz.py` and
`tests/e2e/test_fuzz_live.py` try, what holdover should do, and what the last refreshing
run observed.  Each run writes `test-artifacts/faults.md`; to refresh this checked-in copy
run

    HOLDOVER_WRITE_FAULT_TABLE=1 python -m pytest tests/e2e/test_faults.py \\
        tests/e2e/test_hostile.py tests/e2e/test_admin_hardening.py \\
        tests/e2e/test_proxy_hardening.py tests/unit/test_session_signals.py \\
        tests/unit/test_fuzz.py tests/e2e/test_fuzz_live.py

(rows of cases not run keep what the file had, so running only the tests of the changed
cases refreshes their rows).

`tests/unit/test_fault_table.py::test_fault_table_is_current` fails when a case is added,
removed or re-worded without refreshing this file.  The request corpus lives in
`tests/corpus/` (one raw request per `.http` file, indexed by `cases.toml`).  "known bug"
rows are strict xfail tests: they start failing the day the bug is fixed, so the row gets
updated.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(observed: dict[str, dict[str, str]]) -> str:
    out = [HEADER]
    cases = catalogue()
    for area in AREAS:
        rows = [c for c in cases if c.area == area]
        if not rows:
            continue
        out.append(f"\n## {area}\n\n| case | what | expected | observed | verdict |\n"
                   "| --- | --- | --- | --- | --- |")
        for c in rows:
            o = observed.get(c.id, {"observed": "not run", "verdict": "not run"})
            out.append(f"| `{c.id}` | {_cell(c.what)} | {_cell(c.expected)} | "
                       f"{_cell(o['observed'])} | {_cell(o['verdict'])} |")
    return "\n".join(out) + "\n"


_ROW = re.compile(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*?) \| (.*?) \|$")


def parse(text: str) -> dict[str, tuple[str, str, str, str]]:
    """``{case id: (what, expected, observed, verdict)}`` from a rendered table."""
    rows = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(2, 3, 4, 5)
    return rows


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _OBSERVED:
        return
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(render(_OBSERVED))
    if os.environ.get(WRITE_ENV) == "1":
        merged: dict[str, dict[str, str]] = {}
        if DOC.exists():
            for cid, (_w, _e, obs, verdict) in parse(DOC.read_text()).items():
                merged[cid] = {"observed": obs.replace("\\|", "|"),
                               "verdict": verdict.replace("\\|", "|")}
        merged.update(_OBSERVED)
        DOC.write_text(render(merged))


# -- gateways shared by the tests of one module ------------------------------------------


@pytest.fixture(scope="module")
def module_gateway_factory(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Like conftest's ``gateway_factory``, but its gateways live for the whole module."""
    import psutil
    from conftest import GatewayProcess

    started: list[GatewayProcess] = []

    def make(**kw: Any) -> GatewayProcess:
        gw = GatewayProcess(tmp_path_factory.mktemp("mgw"), **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        kids = gw.all_descendants()
        gw.stop()
        _gone, alive = psutil.wait_procs(kids, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes outlived the gateway: {alive}"
