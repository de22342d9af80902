#!/usr/bin/env python3
"""Benchmark holdover's proxy path against nginx and HAProxy on this machine.

Why it exists: holdover is a reverse proxy written in Python, so we need an honest,
repeatable number for what it costs compared with the proxies people would otherwise put
in front of their app. This script measures, in one run and on the same machine:

* ``direct``   -- wrk straight at the backend (the baseline),
* ``nginx``    -- nginx, 1 worker, upstream keepalive 64, access log to a file,
* ``haproxy``  -- HAProxy, nbthread 1, ``http-reuse always``, httplog to a file,
* ``holdover`` -- ``holdover run -c <generated toml>``, which starts the backend itself.

Every proxy fronts the same fast backend (nginx, 1 worker, started by
``backend_wrapper.py``) for three response sizes (13 B, 64 KiB, 1 MiB). wrk runs with
``-t1 -c50 --latency`` in interleaved rounds; the best round (highest req/s) is reported;
then h2load runs once per cell, a second client whose own log gives the latency percentiles.
Proxy CPU time (user+sys of the proxy's process tree, backend excluded) is divided by the
requests completed. Results go to ``<out>/results.md`` and ``<out>/results.json``.

Run: ``python bench/proxy_bench.py [--quick] [--out bench/results]`` (see bench/README.md).
All traffic goes to 127.0.0.1 and every run is bounded in time; every process started is
stopped again (process groups, try/finally, also on Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "backend_wrapper.py"
BACKEND_MARKERS = ("holdover-bench-backend", "backend_wrapper.py")
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin"

# name -> (path, body size in bytes)
SIZES: dict[str, tuple[str, int]] = {
    "small": ("/small", 13),
    "small-h13": ("/small", 13),  # the same, with a browser's 13 request headers
    "64k": ("/64k", 64 * 1024),
    "1m": ("/1m", 1024 * 1024),
}
# What a browser sends with a page request (issue "Data-plane speed"): the app's session
# cookie and another, and the usual twelve more.
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.9,de;q=0.8",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Cookie: session=eyJ1c2VyIjoiYWxpY2UifQ.Z0xyAB.c2lnbmF0dXJlLW9mLXRoZS1hcHA; "
    "_ga=GA1.1.123456789.1700000000",
    "Referer: http://127.0.0.1/catalogue?page=2",
    "Cache-Control: max-age=0",
    "Pragma: no-cache",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Upgrade-Insecure-Requests: 1",
    "X-Request-Id: 6f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b",
)
HEADERS: dict[str, tuple[str, ...]] = {"small-h13": BROWSER_HEADERS}
PROXIES = ("direct", "nginx", "haproxy", "holdover", "holdover-redis")
DEFAULT_PROXIES = PROXIES[:4]  # holdover-redis on request: --proxies ...,holdover-redis
READY_DEADLINE_S = 30.0

WRK_LUA = r"""
-- Prints exact totals and latency percentiles (microseconds) as one JSON line.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,'
    .. '"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,'
    .. '"err_timeout":%.0f,"lat_mean_us":%.3f,"lat_stdev_us":%.3f,"lat_max_us":%.0f,'
    .. '"p50_us":%.0f,"p75_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


class Interrupted(Exception):
    """Raised from the SIGTERM/SIGHUP handler so that ``finally`` blocks clean up."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def ensure_packages() -> None:
    """Install nginx, haproxy, wrk and h2load from Debian if any binary is missing."""
    wanted = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client"}
    missing = [pkg for binary, pkg in wanted.items() if which(binary) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"missing {missing}; run as root or: apt-get install -y {' '.join(missing)}"
        )
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    result = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, env=env)
    if result.returncode != 0 and "nginx" in missing:  # fall back to the smaller build
        alt = ["nginx-light" if pkg == "nginx" else pkg for pkg in missing]
        subprocess.run(["apt-get", "install", "-y", "-qq", *alt], check=True, env=env)
    elif result.returncode != 0:
        raise SystemExit(f"apt-get install {' '.join(missing)} failed")
    still = [b for b in wanted if which(b) is None]
    if still:
        raise SystemExit(f"still missing after install: {still}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def holdover_command(override: str | None) -> tuple[list[str] | None, str]:
    """How to start holdover, or (None, reason) if it is not installed yet."""
    if override:
        return shlex.split(override), "from --holdover-cmd"
    exe = shutil.which("holdover")
    if exe:
        return [exe], exe
    if importlib.util.find_spec("holdover") is None:
        return None, "package 'holdover' not importable (run: pip install -e .)"
    if importlib.util.find_spec("holdover.__main__") is not None:
        return [sys.executable, "-m", "holdover"], f"{sys.executable} -m holdover"
    return None, "'holdover' console script not on PATH and no holdover.__main__"


def holdover_version() -> str:
    """Installed holdover version plus the repo commit it was run from (if any)."""
    try:
        version = importlib.metadata.version("holdover")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    repo = HERE.parent
    git = subprocess.run(
        ["git", "-C", str(repo), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = git.stdout.strip() or "no commit"
    return f"holdover {version} (commit {commit})"


# --------------------------------------------------------------------------- processes


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    descendants: set[int] = field(default_factory=set)


class Supervisor:
    """Starts processes in their own process group and guarantees they are stopped."""

    def __init__(self) -> None:
        self.procs: list[Managed] = []

    def start(
        self, name: str, argv: list[str], log_path: Path, cwd: Path, cpus: str | None
    ) -> Managed:
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        out = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        managed = Managed(name, popen, log_path)
        self.procs.append(managed)
        log(f"started {name} pid {popen.pid}: {shlex.join(argv)}")
        return managed

    def remember_tree(self, managed: Managed) -> None:
        """Record descendants: workers may live in other process groups/sessions."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(managed.popen.pid).children(recursive=True):
                managed.descendants.add(child.pid)

    def stop(self, managed: Managed, grace: float = 10.0) -> None:
        popen = managed.popen
        self.remember_tree(managed)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{managed.name} did not stop in {grace:.0f}s, SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
        # Anything the process started in a group of its own and left behind.
        leftovers: list[psutil.Process] = []
        for pid in managed.descendants:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.terminate()
                leftovers.append(proc)
        _, alive = psutil.wait_procs(leftovers, timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if managed in self.procs:
            self.procs.remove(managed)

    def stop_all(self) -> None:
        for managed in reversed(list(self.procs)):
            try:
                self.stop(managed)
            except Exception as exc:  # keep cleaning up the rest
                log(f"error stopping {managed.name}: {exc}")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, managed: Managed, deadline_s: float = READY_DEADLINE_S) -> None:
    """Poll GET /small until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if managed.popen.poll() is not None:
            raise RuntimeError(
                f"{managed.name} exited with {managed.popen.returncode}:\n{tail(managed.log_path)}"
            )
        try:
            status, _ = http_get(port, "/small", timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(
        f"{managed.name} not ready on :{port} after {deadline_s:.0f}s ({last}):\n"
        f"{tail(managed.log_path)}"
    )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- CPU time


def is_backend(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(marker in cmdline for marker in BACKEND_MARKERS)


def split_tree(root_pid: int) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Processes of ``root_pid``'s tree as (proxy part, backend part).

    A process whose command line carries a backend marker belongs, with its whole
    subtree, to the backend (nginx workers have no marker, but their master has).
    """
    proxy: list[psutil.Process] = []
    backend: list[psutil.Process] = []
    try:
        root = psutil.Process(root_pid)
    except psutil.Error:
        return proxy, backend
    stack: list[tuple[psutil.Process, bool]] = [(root, False)]
    while stack:
        proc, in_backend = stack.pop()
        in_backend = in_backend or is_backend(proc)
        (backend if in_backend else proxy).append(proc)
        with contextlib.suppress(psutil.Error):
            stack.extend((child, in_backend) for child in proc.children())
    return proxy, backend


CpuSnapshot = dict[tuple[int, float], float]


def cpu_snapshot(procs: list[psutil.Process]) -> CpuSnapshot:
    snap: CpuSnapshot = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            snap[(proc.pid, proc.create_time())] = times.user + times.system
    return snap


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> float:
    return sum(max(0.0, value - before.get(key, 0.0)) for key, value in after.items())


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: int
    req_per_s: float
    mib_per_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    text_req_per_s: float | None  # as printed by wrk, cross-check of the Lua numbers
    text_transfer_mib_s: float | None


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk_text(text: str) -> dict[str, Any]:
    """Parse wrk's human output (wrk uses 1024-based byte units)."""
    out: dict[str, Any] = {"latency_ms": {}, "errors": {}}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", text)
    if m:
        out["requests"] = int(m.group(1))
        out["duration_s"] = float(m.group(2)) * _TIME_UNITS[m.group(3)] / 1000.0
        out["bytes_read"] = int(float(m.group(4)) * _BYTE_UNITS[m.group(5)])
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["req_per_s"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    if m:
        out["transfer_mib_s"] = float(m.group(1)) * _BYTE_UNITS[m.group(2)] / 1024**2
    for pct, value, unit in re.findall(r"^\s+([\d.]+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        out["latency_ms"][pct] = float(value) * _TIME_UNITS[unit]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["errors"]["status"] = int(m.group(1))
    return out


def run_wrk(
    port: int, path: str, duration_s: int, connections: int, lua: Path, cpus: str | None,
    headers: tuple[str, ...] = (), threads: int = 1,
) -> WrkResult:
    argv = [
        which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(lua),
        *(arg for h in headers for arg in ("-H", h)),
        f"http://127.0.0.1:{port}{path}",
    ]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=duration_s + 60)
    except BaseException:  # timeout, Ctrl-C: never leave wrk running
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr.strip()}")
    text = parse_wrk_text(stdout)
    m = re.search(r"^WRKJSON (\{.*\})$", stdout, re.M)
    if m:
        raw = json.loads(m.group(1))
        duration = raw["duration_us"] / 1e6
        requests = int(raw["requests"])
        nbytes = int(raw["bytes"])
        errors = {k[4:]: int(v) for k, v in raw.items() if k.startswith("err_")}
        lat = {k: raw[f"{k}_us"] / 1000.0 for k in ("p50", "p75", "p90", "p99", "p999")}
        mean_ms, max_ms = raw["lat_mean_us"] / 1000.0, raw["lat_max_us"] / 1000.0
    else:  # Lua unavailable: fall back to the text numbers
        duration = text["duration_s"]
        requests = text["requests"]
        nbytes = text["bytes_read"]
        errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
        errors.update(text["errors"])
        pct = text["latency_ms"]
        lat = {
            "p50": pct["50"],
            "p75": pct["75"],
            "p90": pct["90"],
            "p99": pct["99"],
            "p999": pct.get("99.9", pct["99"]),
        }
        mean_ms = max_ms = float("nan")
    return WrkResult(
        requests=requests,
        duration_s=duration,
        bytes_read=nbytes,
        req_per_s=requests / duration if duration else 0.0,
        mib_per_s=nbytes / duration / 1024**2 if duration else 0.0,
        p50_ms=lat["p50"],
        p75_ms=lat["p75"],
        p90_ms=lat["p90"],
        p99_ms=lat["p99"],
        p999_ms=lat["p999"],
        mean_ms=mean_ms,
        max_ms=max_ms,
        errors=errors,
        text_req_per_s=text.get("req_per_s"),
        text_transfer_mib_s=text.get("transfer_mib_s"),
    )


# --------------------------------------------------------------------------- configs


def run_h2load(port: int, path: str, duration_s: int, connections: int, cpus: str | None,
               headers: tuple[str, ...], log_file: Path) -> dict[str, float]:
    """Latency percentiles by a second client, from h2load's per-request log.

    Why: wrk's percentiles for holdover at 64 KiB were once seen to exceed the time
    between one request and the next on the same connection, as the wire showed it,
    which cannot be (bench/results/speed.md); h2load writes every request's own duration,
    so its percentiles can be checked."""
    argv = ["h2load", "--h1", "-t", "1", "-c", str(connections), "-D", str(duration_s),
            "--log-file", str(log_file), *(arg for h in headers for arg in ("-H", h)),
            f"http://127.0.0.1:{port}{path}"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    log_file.unlink(missing_ok=True)
    subprocess.run(argv, capture_output=True, timeout=duration_s + 60, check=True)
    # Each line: start time (µs since the epoch), status (-1: failed), duration (µs).
    times, failed = [], 0
    for line in log_file.read_text().splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        if fields[1].startswith("2"):
            times.append(int(fields[2]))
        else:
            failed += 1
    log_file.unlink()
    if not times:
        raise RuntimeError("h2load completed no request")
    times.sort()
    n = len(times)

    def pct(p: float) -> float:
        return times[min(n - 1, int(n * p / 100))] / 1000.0

    return {"requests": n, "failed": failed, "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "p999_ms": pct(99.9), "max_ms": times[-1] / 1000.0}


def nginx_temp_paths(run_dir: Path) -> str:
    build = tool_version_full([which("nginx") or "nginx", "-V"])
    lines = []
    for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        if module != "client_body" and f"--without-http_{module}_module" in build:
            continue
        lines.append(f"    {module}_temp_path {run_dir / (module + '_temp')};")
    return "\n".join(lines)


def tool_version_full(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return out.stdout + out.stderr


def nginx_proxy_conf(port: int, backend_port: int, run_dir: Path, access_log: Path,
                     workers: int = 1) -> str:
    return f"""# generated by proxy_bench.py -- nginx as reverse proxy
worker_processes {workers};
pid {run_dir}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log {access_log};
{nginx_temp_paths(run_dir)}
    keepalive_timeout 75s;
    keepalive_requests 1000000;

    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 16 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def haproxy_conf(port: int, backend_port: int, threads: int = 1) -> str:
    # HAProxy cannot write a log file itself (it logs to syslog targets); "log stdout"
    # writes raw httplog lines to its stdout, which the harness redirects to a file.
    return f"""# generated by proxy_bench.py -- HAProxy as reverse proxy
global
    nbthread {threads}
    maxconn 4096
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server b1 127.0.0.1:{backend_port}
"""


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def holdover_toml(port: int, admin_port: int, workdir: Path, processes: int = 1,
                  app_cookie: bool = True) -> str:
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(WRAPPER))} {{port}} " + shlex.quote(
        str(workdir)
    )
    return f"""# generated by proxy_bench.py
[gateway]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
state_dir = {toml_str(str(workdir / f"holdover-state-{processes}-{int(app_cookie)}"))}
access_log = "access.log"
{f"processes = {processes}" if processes != 1 else ""}

[app]
command = {toml_str(command)}
cwd = {toml_str(str(workdir))}
workers = 1
health_path = "/small"
mode = "sessions"
""" + ('session_cookie = "session"\n' if app_cookie else "")


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    port: int
    managed: Managed | None  # the proxy's process (None for direct)
    backend_root: int | None  # stand-alone backend pid (None: backend inside holdover's tree)
    version: str


def proxy_and_backend_procs(
    target: Target,
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    proxy: list[psutil.Process] = []
    backend: list[psutil.Process] = []
    if target.managed is not None:
        proxy, backend = split_tree(target.managed.popen.pid)
    if target.backend_root is not None:
        more_proxy, more_backend = split_tree(target.backend_root)
        backend += more_proxy + more_backend
    return proxy, backend


def set_affinity(procs: list[psutil.Process], cpus: list[int]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_affinity(cpus)


def check_bodies(target: Target) -> dict[str, str]:
    """GET every path once through the target and compare body sizes."""
    problems: dict[str, str] = {}
    for size, (path, expected) in SIZES.items():
        try:
            status, body = http_get(target.port, path, timeout=10.0)
        except OSError as exc:
            problems[size] = str(exc)
            continue
        if status != 200 or len(body) != expected:
            problems[size] = f"HTTP {status}, {len(body)} bytes (want 200, {expected})"
    return problems


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or value != value:
        return None
    return value / base


def pick_best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rounds, key=lambda r: r["wrk"]["req_per_s"])


def summarize(runs: list[dict[str, Any]], proxies: list[str],
              h2: dict[tuple[str, str], dict[str, float]] | None = None
              ) -> list[dict[str, Any]]:
    h2 = h2 or {}
    rows: list[dict[str, Any]] = []
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for proxy in proxies:
        for size in SIZES:
            rounds = [r for r in runs if r["proxy"] == proxy and r["size"] == size]
            if rounds:
                best[(proxy, size)] = pick_best(rounds)
    for proxy in proxies:
        for size in SIZES:
            run = best.get((proxy, size))
            if run is None:
                continue
            rounds = [r for r in runs if r["proxy"] == proxy and r["size"] == size]
            wrk = run["wrk"]
            direct = best.get(("direct", size))
            nginx = best.get(("nginx", size))
            row = {
                "proxy": proxy,
                "size": size,
                "rounds": len(rounds),
                "req_per_s": wrk["req_per_s"],
                "req_per_s_all_rounds": [r["wrk"]["req_per_s"] for r in rounds],
                "mib_per_s": wrk["mib_per_s"],
                "p50_ms": wrk["p50_ms"],
                "p99_ms": wrk["p99_ms"],
                "added_p50_ms": None,
                "added_p99_ms": None,
                "proxy_cpu_us_per_req": run["proxy_cpu_us_per_req"],
                "backend_cpu_us_per_req": run["backend_cpu_us_per_req"],
                "req_per_s_vs_nginx": None,
                "cpu_vs_nginx": None,
                "p99_vs_nginx": None,
                "errors": sum(wrk["errors"].values()),
                "h2load": h2.get((proxy, size)),
                "h2load_p99_minus_nginx_ms": None,
            }
            if row["h2load"] is not None and (ng := h2.get(("nginx", size))) is not None \
                    and proxy != "nginx":
                row["h2load_p99_minus_nginx_ms"] = row["h2load"]["p99_ms"] - ng["p99_ms"]
            if direct is not None and proxy != "direct":
                row["added_p50_ms"] = wrk["p50_ms"] - direct["wrk"]["p50_ms"]
                row["added_p99_ms"] = wrk["p99_ms"] - direct["wrk"]["p99_ms"]
            if nginx is not None and proxy != "direct":
                row["req_per_s_vs_nginx"] = ratio(wrk["req_per_s"], nginx["wrk"]["req_per_s"])
                row["cpu_vs_nginx"] = ratio(
                    run["proxy_cpu_us_per_req"], nginx["proxy_cpu_us_per_req"]
                )
                row["p99_vs_nginx"] = ratio(wrk["p99_ms"], nginx["wrk"]["p99_ms"])
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    s = meta["settings"]
    lines = [
        "# holdover proxy benchmark",
        "",
        f"{meta['started']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"kernel {meta['machine']['kernel']}, Python {meta['machine']['python']}, "
        f"1-min load average at start {meta['machine']['loadavg_1m_at_start']}.",
        f"wrk -t1 -c{s['connections']} -d{s['duration_s']}s --latency, {s['rounds']} "
        f"interleaved round(s) per cell, best round (highest req/s) reported. "
        f"Pinning: {s['pinning']}.",
        "CPU µs/req = user+sys CPU of the proxy's process tree (backend excluded) during the "
        "round / requests completed. +p50/+p99 = proxy - direct (same size, best rounds). "
        "x nginx = value / nginx's value.",
        "",
        "| proxy | size | req/s | MiB/s | p50 ms | p99 ms | +p50 ms | +p99 ms | CPU µs/req "
        "| backend CPU µs/req | req/s x nginx | CPU x nginx | p99 x nginx | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['proxy']} | {r['size']} | {fmt(r['req_per_s'], 0)} | {fmt(r['mib_per_s'])} "
            f"| {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['added_p50_ms'], 2)} "
            f"| {fmt(r['added_p99_ms'], 2)} | {fmt(r['proxy_cpu_us_per_req'])} "
            f"| {fmt(r['backend_cpu_us_per_req'])} | {fmt(r['req_per_s_vs_nginx'], 2)} "
            f"| {fmt(r['cpu_vs_nginx'], 2)} | {fmt(r['p99_vs_nginx'], 2)} | {r['errors']} |"
        )
    h2rows = [r for r in rows if r.get("h2load")]
    if h2rows:
        lines += [
            "",
            f"Latency by a second client: h2load --h1 -t1 -c{s['connections']} "
            f"-D{s['duration_s']}, one run per cell after the wrk rounds, percentiles of the "
            "per-request durations in its log.",
            "",
            "| proxy | size | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
            "| p99 - nginx's ms | failed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in h2rows:
            h = r["h2load"]
            lines.append(
                f"| {r['proxy']} | {r['size']} | {h['requests']:,} | {fmt(h['p50_ms'], 2)} "
                f"| {fmt(h['p90_ms'], 2)} | {fmt(h['p99_ms'], 2)} | {fmt(h['p999_ms'], 2)} "
                f"| {fmt(h['max_ms'], 1)} | {fmt(r['h2load_p99_minus_nginx_ms'], 2)} "
                f"| {h.get('failed', 0)} |")
    lines.append("")
    lines.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in meta["versions"].items()))
    skipped = {k: v for k, v in meta["proxies"].items() if v.get("status") != "ok"}
    for name, info in skipped.items():
        lines.append(f"Not measured: **{name}** — {info.get('reason', '?')}")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def make_www(workdir: Path) -> None:
    www = workdir / "www"
    www.mkdir(parents=True, exist_ok=True)
    for path, nbytes in SIZES.values():
        if path == "/small":
            continue
        target = www / path.lstrip("/")
        target.write_bytes(os.urandom(nbytes))
        target.chmod(0o644)
    # nginx workers run as "nobody" when the master is root: everything must be readable.
    for directory in (workdir, www):
        directory.chmod(0o755)


def start_redis(sup: Supervisor, workdir: Path, cpus: str | None) -> int:
    """A redis-server for the holdover-redis target (no persistence, like the tests')."""
    binary = which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    folder = workdir / "redis"
    folder.mkdir(exist_ok=True)
    managed = sup.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port),
                                  "--save", "", "--appendonly", "no", "--dir", str(folder)],
                        workdir / "logs" / "redis.log", workdir, cpus)
    deadline = time.monotonic() + 30
    while True:  # redis speaks RESP, not HTTP: PING until it answers
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return port
        except OSError:
            pass
        if managed.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start (log: {workdir}/logs/redis.log)")
        time.sleep(0.05)


def start_holdover(
    sup: Supervisor,
    workdir: Path,
    name: str,
    layout: dict[str, str | None],
    holdover_cmd: str | None,
    meta_proxies: dict[str, dict[str, Any]],
) -> Target | None:
    """holdover on the embedded store (``holdover``) or on a Redis (``holdover-redis``)."""
    cmd, how = holdover_command(holdover_cmd)
    if cmd is None:
        log(f"skipping {name}: {how}")
        meta_proxies[name] = {"status": "skipped", "reason": how}
        return None
    port, admin_port = free_port(), free_port()
    conf = workdir / "conf" / f"{name}.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    text = holdover_toml(port, admin_port, workdir)
    if name == "holdover-redis":
        try:  # wrk's and the backend's core: the proxy's stays the proxy's alone
            redis_port = start_redis(sup, workdir, layout["backend"])
        except RuntimeError as exc:
            log(f"skipping {name}: {exc}")
            meta_proxies[name] = {"status": "skipped", "reason": str(exc)}
            return None
        text = text.replace("[gateway]\n", "[gateway]\n"
                            f'store = "redis://127.0.0.1:{redis_port}/0?cluster=bench"\n'
                            'node = "bench"\n', 1).replace(
            "holdover-state-", "holdover-redis-state-")
    conf.write_text(text)
    managed = sup.start(name, [*cmd, "run", "-c", str(conf)], workdir / "logs" / f"{name}.log",
                        workdir, layout["proxy"])
    try:
        wait_ready(port, managed)
    except RuntimeError as exc:
        log(f"{name} did not start: {exc}")
        meta_proxies[name] = {"status": "failed", "reason": str(exc)[:2000]}
        sup.stop(managed)
        return None
    sup.remember_tree(managed)
    _, backend_procs = split_tree(managed.popen.pid)
    if not backend_procs:
        log(f"warning: no backend process found in {name}'s tree")
    if layout["backend"] is not None:  # workers inherited the proxy core
        set_affinity(backend_procs, [int(c) for c in layout["backend"].split(",")])
        log(f"{name}'s backend pids {[p.pid for p in backend_procs]} moved to CPU "
            f"{layout['backend']}")
    return Target(name, port, managed, None, holdover_version())


def start_targets(
    sup: Supervisor,
    workdir: Path,
    wanted: list[str],
    layout: dict[str, str | None],
    holdover_cmd: str | None,
    meta_proxies: dict[str, dict[str, Any]],
) -> list[Target]:
    targets: list[Target] = []
    nginx_bin = which("nginx") or "nginx"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    need_backend = any(p in wanted for p in ("direct", "nginx", "haproxy"))
    backend_port = free_port()
    backend_pid: int | None = None
    if need_backend:
        backend = sup.start(
            "backend",
            [sys.executable, str(WRAPPER), str(backend_port), str(workdir)],
            logs / "backend.log",
            workdir,
            layout["backend"],
        )
        wait_ready(backend_port, backend)
        backend_pid = backend.popen.pid
    nginx_version = tool_version([nginx_bin, "-v"])
    if "direct" in wanted:
        targets.append(Target("direct", backend_port, None, backend_pid, nginx_version))
    if "nginx" in wanted:
        port = free_port()
        run_dir = workdir / "run" / "nginx-proxy"
        run_dir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "conf" / "nginx-proxy.conf"
        conf.parent.mkdir(exist_ok=True)
        conf.write_text(nginx_proxy_conf(port, backend_port, run_dir, logs / "nginx-access.log"))
        argv = [
            nginx_bin,
            "-e",
            "stderr",
            "-p",
            f"{run_dir}/",
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ]
        managed = sup.start("nginx", argv, logs / "nginx.log", workdir, layout["proxy"])
        wait_ready(port, managed)
        targets.append(Target("nginx", port, managed, backend_pid, nginx_version))
    if "haproxy" in wanted:
        port = free_port()
        conf = workdir / "conf" / "haproxy.cfg"
        conf.write_text(haproxy_conf(port, backend_port))
        hap = which("haproxy") or "haproxy"
        # stdout = the httplog lines (see haproxy_conf); -db: foreground, no daemon.
        managed = sup.start(
            "haproxy",
            [hap, "-db", "-f", str(conf)],
            logs / "haproxy-access.log",
            workdir,
            layout["proxy"],
        )
        wait_ready(port, managed)
        targets.append(Target("haproxy", port, managed, backend_pid, tool_version([hap, "-v"])))
    for name in ("holdover", "holdover-redis"):
        if name in wanted:
            target = start_holdover(sup, workdir, name, layout, holdover_cmd, meta_proxies)
            if target is not None:
                targets.append(target)
    for target in targets:
        problems = check_bodies(target)
        status = "ok" if not problems else "bad-bodies"
        meta_proxies[target.name] = {
            "status": status,
            "port": target.port,
            "version": target.version,
        }
        if problems:
            meta_proxies[target.name]["problems"] = problems
            log(f"WARNING {target.name} body check: {problems}")
    return targets


def measure(
    target: Target, size: str, duration: int, connections: int, lua: Path, wrk_cpus: str | None
) -> dict[str, Any]:
    path, _ = SIZES[size]
    proxy_procs, backend_procs = proxy_and_backend_procs(target)
    p0, b0 = cpu_snapshot(proxy_procs), cpu_snapshot(backend_procs)
    wrk = run_wrk(target.port, path, duration, connections, lua, wrk_cpus,
                  HEADERS.get(size, ()))
    proxy_procs, backend_procs = proxy_and_backend_procs(target)
    p_cpu = cpu_delta(p0, cpu_snapshot(proxy_procs))
    b_cpu = cpu_delta(b0, cpu_snapshot(backend_procs))
    n = max(wrk.requests, 1)
    return {
        "proxy": target.name,
        "size": size,
        "wrk": asdict(wrk),
        "proxy_cpu_s": p_cpu if target.managed else None,
        "backend_cpu_s": b_cpu,
        "proxy_cpu_us_per_req": p_cpu / n * 1e6 if target.managed else None,
        "backend_cpu_us_per_req": b_cpu / n * 1e6,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s per run (whole run ~1 min)")
    ap.add_argument("--out", default=str(HERE / "results"), help="output directory")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 10, quick 2)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up seconds per target")
    ap.add_argument(
        "--proxies", default=",".join(DEFAULT_PROXIES),
        help=f"comma list from {','.join(PROXIES)} (holdover-redis: holdover with store = "
        f"a local redis-server, to compare with holdover on its embedded store)"
    )
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma list from {','.join(SIZES)}")
    ap.add_argument(
        "--no-pin", action="store_true", help="do not pin wrk+backend / proxy to separate cores"
    )
    ap.add_argument("--holdover-cmd", help="how to run holdover (default: `holdover` on PATH)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the tmp dir (configs, logs)")
    ap.add_argument("--no-h2load", dest="h2load", action="store_false",
                    help="skip the second latency client (h2load, one run per cell)")
    ap.add_argument(
        "--unpinned", action="store_true",
        help="instead: holdover with 1 and 2 processes, nginx worker_processes 2 and HAProxy "
        "nbthread 2, nothing pinned to a core (bench/processes_bench.py)")
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 2 if args.quick else 10
    return args


def pin_layout(no_pin: bool) -> tuple[dict[str, str | None], str]:
    cores = os.cpu_count() or 1
    if no_pin or cores < 2 or not shutil.which("taskset"):
        return {"wrk": None, "backend": None, "proxy": None}, "none"
    last = str(cores - 1)
    rest = ",".join(str(c) for c in range(cores - 1))
    layout: dict[str, str | None] = {"wrk": rest, "backend": rest, "proxy": last}
    return layout, f"wrk + backend on CPU {rest}, proxy on CPU {last} (taskset)"


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.unpinned:
        import processes_bench

        return processes_bench.run(args)
    wanted = [p for p in args.proxies.split(",") if p]
    sizes = [s for s in args.sizes.split(",") if s]
    bad = [p for p in wanted if p not in PROXIES] + [s for s in sizes if s not in SIZES]
    if bad:
        raise SystemExit(f"unknown proxy/size: {bad}")
    ensure_packages()
    layout, pin_text = pin_layout(args.no_pin)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "threads": 1,
            "warmup_s": args.warmup,
            "pinning": pin_text,
            "report": "best round by req/s",
            "sizes": {k: SIZES[k][1] for k in sizes},
        },
        "versions": {
            "wrk": tool_version([which("wrk") or "wrk", "-v"]).split(" Copyright")[0],
            "nginx": tool_version([which("nginx") or "nginx", "-v"]),
            "haproxy": tool_version([which("haproxy") or "haproxy", "-v"]),
            "h2load": tool_version([which("h2load") or "h2load", "--version"]),
        },
        "proxies": {},
    }
    load1 = os.getloadavg()[0]
    meta["machine"]["loadavg_1m_at_start"] = round(load1, 2)
    if load1 > 0.5:
        log(f"WARNING: load average {load1:.2f} before start; other work will skew the numbers")
    workdir = Path(tempfile.mkdtemp(prefix="holdover-bench-"))
    sup = Supervisor()
    runs: list[dict[str, Any]] = []
    h2: dict[tuple[str, str], dict[str, float]] = {}
    try:
        make_www(workdir)
        lua = workdir / "report.lua"
        lua.write_text(WRK_LUA)
        t0 = time.monotonic()
        targets = start_targets(sup, workdir, wanted, layout, args.holdover_cmd, meta["proxies"])
        for target in targets:
            if target.name == "holdover":
                meta["versions"]["holdover"] = target.version
        if args.warmup > 0:
            for target in targets:
                for size in sizes:
                    run_wrk(
                        target.port,
                        SIZES[size][0],
                        args.warmup,
                        args.connections,
                        lua,
                        layout["wrk"],
                    )
        total = args.rounds * len(sizes) * len(targets)
        done = 0
        for rnd in range(args.rounds):
            for size in sizes:
                order = targets if rnd % 2 == 0 else list(reversed(targets))
                for target in order:
                    result = measure(
                        target, size, args.duration, args.connections, lua, layout["wrk"]
                    )
                    result["round"] = rnd
                    runs.append(result)
                    done += 1
                    w = result["wrk"]
                    log(
                        f"[{done}/{total}] round {rnd} {target.name:8s} {size:5s} "
                        f"{w['req_per_s']:10,.0f} req/s  p99 {w['p99_ms']:7.2f} ms  "
                        f"cpu {fmt(result['proxy_cpu_us_per_req'])} µs/req  "
                        f"errors {sum(w['errors'].values())}"
                    )
        if args.h2load and which("h2load") is not None:
            for size in sizes:
                for target in targets:
                    try:
                        h = run_h2load(target.port, SIZES[size][0], args.duration,
                                       args.connections, layout["wrk"], HEADERS.get(size, ()),
                                       workdir / "h2load.log")
                    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as exc:
                        log(f"h2load {target.name} {size} failed, cell left out: {exc}")
                        continue
                    h2[(target.name, size)] = h
                    log(f"h2load {target.name:8s} {size:5s} p99 {h['p99_ms']:7.2f} ms "
                        f"p99.9 {h['p999_ms']:7.2f} ms  failed {h['failed']}")
        elif args.h2load:
            log("h2load not found (Debian's nghttp2-client): no second latency client")
        meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}), cleaning up")
        return 130
    finally:
        sup.stop_all()
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(runs, [t for t in PROXIES if any(r["proxy"] == t for r in runs)], h2)
    report = markdown(rows, meta)
    print(report)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=2, default=str) + "\n"
    )
    log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
