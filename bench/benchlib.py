"""Shared plumbing of ``upgrade_bench.py`` and ``soak.py``: processes, holdover, loadgen.

Why it exists: both benchmarks start holdover (or nginx, HAProxy, gunicorn) with the
benchmark app behind it, drive it while ``loadgen.py`` runs, and must leave nothing
behind -- not on success, not on an exception, not on Ctrl-C.  Every process started here
gets its own session (process group); ``Processes.stop_all`` sends SIGTERM to each group,
SIGKILL after a grace period, and then kills any descendant that was ever seen in a
started process's tree (a worker that escaped into its own group, say).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APP = HERE / "app" / "app.py"
LOADGEN = HERE / "loadgen.py"
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin"


class Interrupted(Exception):
    """Raised from the SIGTERM/SIGHUP handler so that ``finally`` blocks clean up."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_apt(binaries: dict[str, str]) -> list[str]:
    """Install missing Debian packages (binary -> package); returns binaries still missing."""
    missing = {b: p for b, p in binaries.items() if which(b) is None}
    if missing and os.geteuid() == 0:
        log(f"installing Debian packages: {' '.join(sorted(set(missing.values())))}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *sorted(set(missing.values()))],
                       check=False, env=env)
    return [b for b in binaries if which(b) is None]


def http_get(url_host: str, port: int, path: str, timeout: float = 2.0,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str = "/healthz", timeout: float = 30.0,
              proc: subprocess.Popen[bytes] | None = None) -> float:
    """Wait until 127.0.0.1:port answers ``path`` with 2xx; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = http_get("127.0.0.1", port, path, timeout=1.0)
            if 200 <= status < 300:
                return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready within {timeout:.0f}s")


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Starts processes in their own process group and guarantees they are stopped."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.seen: dict[int, float] = {}  # pid -> create_time of every descendant seen

    def start(self, name: str, argv: list[str], log_path: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def remember(self) -> None:
        """Note every descendant of every started process (to kill strays at the end)."""
        for proc in self.procs:
            if not proc.alive():
                continue
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.seen[child.pid] = child.create_time()

    def stop(self, proc: Proc, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, wait up to ``grace`` s, then SIGKILL the group."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} (pid {proc.pid}) did not stop in {grace:.0f}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)

    def stop_all(self, grace: float = 10.0) -> list[str]:
        """Stop everything; returns descriptions of strays that had to be killed."""
        self.remember()
        for proc in reversed(self.procs):
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in reversed(self.procs):
            self.stop(proc, grace=0.1, sig=signal.SIGKILL)
        strays = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01 and p.status() != "zombie":
                    strays.append(f"{pid} {' '.join(p.cmdline())[:120]}")
                    p.kill()
        self.procs = [p for p in self.procs if p.alive()]
        return strays


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def matching_processes(marker: str) -> list[tuple[int, str]]:
    """Every process on the machine whose command line contains ``marker``."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd and p.pid != os.getpid():
            out.append((p.pid, cmd[:160]))
    return out


# --------------------------------------------------------------------------- holdover


def holdover_argv() -> list[str]:
    exe = shutil.which("holdover")
    return [exe] if exe else [sys.executable, "-m", "holdover"]


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def holdover_toml(port: int, admin_port: int, state_dir: Path, *, mode: str = "sessions",
                  strategy: str = "replace", workers: int = 2, idle_timeout: str = "15s",
                  extra_app: str = "", extra_gateway: str = "") -> str:
    command = f"{sys.executable} {APP} --port {{port}}"
    return f"""# generated by bench/{Path(sys.argv[0]).name}
[gateway]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
state_dir = {toml_str(str(state_dir))}
access_log = "access.log"
shutdown_timeout = "15s"
{extra_gateway}
[app]
command = {toml_str(command)}
env = {{ BENCH_VERSION = "1" }}
workers = {workers}
health_path = "/healthz"
health_interval = "1s"
mode = "{mode}"
strategy = "{strategy}"
session_cookie = "sid"
session_idle_timeout = "{idle_timeout}"
stop_grace = "5s"
{extra_app}"""


class Holdover:
    """A running ``holdover run``, its admin API (token from state_dir) and its CLI."""

    def __init__(self, procs: Processes, workdir: Path, *, mode: str = "sessions",
                 strategy: str = "replace", idle_timeout: str = "15s",
                 extra_app: str = "", extra_gateway: str = "") -> None:
        self.procs = procs
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        self.state_dir = workdir / "holdover-state"
        self.config = workdir / "holdover.toml"
        self.config.write_text(holdover_toml(self.port, self.admin_port, self.state_dir,
                                             mode=mode, strategy=strategy,
                                             idle_timeout=idle_timeout, extra_app=extra_app,
                                             extra_gateway=extra_gateway))
        self.proc: Proc | None = None
        self._token = ""

    def start(self, timeout: float = 60.0) -> None:
        self.proc = self.procs.start("holdover", [*holdover_argv(), "run", "-c",
                                                  str(self.config)],
                                     self.workdir / "holdover.log", cwd=self.workdir)
        wait_http(self.port, "/healthz", timeout, self.proc.popen)
        self.procs.remember()

    @property
    def token(self) -> str:
        if not self._token:
            self._token = (self.state_dir / "admin.token").read_text().strip()
        return self._token

    def api(self, path: str, timeout: float = 5.0) -> Any:
        status, body = http_get("127.0.0.1", self.admin_port, path, timeout,
                                {"Authorization": f"Bearer {self.token}"})
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def cli(self, *args: str, timeout: float = 900.0) -> tuple[int, str, float]:
        """Run ``holdover ARGS -c CONFIG``; returns (exit code, output, seconds)."""
        t0 = time.monotonic()
        out = subprocess.run([*holdover_argv(), *args, "-c", str(self.config)],
                             capture_output=True, text=True, timeout=timeout, check=False)
        return out.returncode, (out.stdout + out.stderr).strip(), time.monotonic() - t0

    def events(self) -> list[dict[str, Any]]:
        code, out, _ = self.cli("events", "--json", "--limit", "10000", timeout=60)
        if code != 0:
            raise RuntimeError(f"holdover events failed ({code}): {out[-500:]}")
        return json.loads(out)["events"]


def holdover_retirements(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When each revision started draining (deploy/rollback events) and when it retired."""
    drain: dict[str, float] = {}
    out: list[dict[str, Any]] = []
    for e in events:
        m = re.search(r"; (\S+) is draining", e["message"])
        if e["kind"] in ("deploy", "rollback", "promote") and m:
            drain[m.group(1)] = e["ts"]
        if e["kind"] in ("deploy", "rollback", "promote") and e.get("revision") in drain:
            rid = e["revision"]
            out.append({"revision": rid, "drain_started": drain.pop(rid),
                        "reactivated": e["ts"], "retired": None})
        if e["kind"] == "retired" and e.get("revision") in drain:
            rid = e["revision"]
            out.append({"revision": rid, "drain_started": drain.pop(rid), "retired": e["ts"]})
    out += [{"revision": r, "drain_started": t, "retired": None} for r, t in drain.items()]
    return out


# --------------------------------------------------------------------------- loadgen


def start_loadgen(procs: Processes, workdir: Path, url: str, *, users: int, duration: float,
                  session_seconds: float, phase_file: Path, stateless: bool = False,
                  source_ips: bool = True, max_requests: int = 2_000_000,
                  extra: list[str] | None = None, name: str = "loadgen") -> tuple[Proc, Path]:
    events = workdir / f"{name}.jsonl"
    argv = [sys.executable, str(LOADGEN), "--url", url, "--users", str(users),
            "--duration", str(duration), "--session-seconds", str(session_seconds),
            "--phase-file", str(phase_file), "--max-requests", str(max_requests),
            "--out", str(events), "--summary", str(workdir / f"{name}-summary.json")]
    if stateless:
        argv.append("--stateless")
    if source_ips:
        argv.append("--source-ips")
    argv += extra or []
    return procs.start(name, argv, workdir / f"{name}.log"), events


def read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                with contextlib.suppress(json.JSONDecodeError):  # a cut last line
                    out.append(json.loads(line))
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return s[k]


def proc_rss_fds(pid: int) -> tuple[int, int]:
    """(RSS bytes, open file descriptors) of one process, read from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def git_describe() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "no commit"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"
