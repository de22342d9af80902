#!/usr/bin/env python3
"""Upgrade-under-load benchmark: holdover against what users would otherwise build.

Why it exists: holdover promises that a deploy under traffic fails no request and logs
nobody out.  This script checks that promise with real users' sessions, and shows what
the usual alternatives do with the same users and the same schedule:

* ``holdover``           -- sessions mode, ``session_cookie = "sid"``, 2 workers a revision;
* ``holdover-stateless`` -- ``mode = "stateless"``, ``strategy = "rolling"`` (users do not
  log in: only failed requests count there);
* ``nginx``              -- two app processes behind ``hash $remote_addr consistent``
  (every user has its own 127.0.X.Y source address); a deploy starts the new version's
  two processes, rewrites the upstream and runs ``nginx -s reload``, then stops the old
  processes one second later;
* ``haproxy``            -- ``cookie SRV insert`` stickiness; a deploy readies the new
  servers and puts the old ones in ``state drain`` through the runtime API socket, then
  stops them after a fixed drain time (``--haproxy-drain``);
* ``gunicorn``           -- one gunicorn master with the aiohttp worker behind nginx; a
  deploy rewrites the app's version file and sends ``HUP``.

For each, ``loadgen.py`` (its own process) runs the same virtual users while this script
follows one schedule: warm-up, steady state, deploy v2, deploy v3 while v1 still drains,
roll back once, ``kill -9`` one worker of the active revision, then wait (bounded) until
every old revision is gone.  Per phase it reports requests, failed requests, lost
sessions with their reasons, p50/p99/max latency, and when each old revision retired;
it writes ``<out>/upgrade.md``, ``upgrade.json`` and, with matplotlib, a timeline ``upgrade.png``.

Run: ``python bench/upgrade_bench.py [--quick]`` (see bench/README.md).  All traffic goes
to 127.0.0.0/8, everything is bounded in time, and every process started is stopped
again (process groups; also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    APP,
    HERE,
    Holdover,
    Interrupted,
    Proc,
    Processes,
    cpu_model,
    ensure_apt,
    free_port,
    git_describe,
    holdover_retirements,
    install_signal_handlers,
    log,
    percentile,
    read_events,
    start_loadgen,
    wait_http,
    which,
)

TARGETS = ("holdover", "holdover-stateless", "nginx", "haproxy", "gunicorn")
INTERACTIVE = ("page", "form", "ws", "login", "logout")
DEPLOY_PHASES = ("deploy-v2", "deploy-v3", "rollback")


# --------------------------------------------------------------------------- targets


@dataclass
class Gen:
    """One version of the app run by hand (the alternatives): its processes and life."""

    version: int
    procs: list[Proc]
    ports: list[int]
    slots: list[str] = field(default_factory=list)
    state: str = "active"
    drain_started: float | None = None
    stop_at: float | None = None
    retired_at: float | None = None

    @property
    def label(self) -> str:
        return f"v{self.version}"


class Target:
    """What the schedule drives; subclasses implement each way of upgrading."""

    name = ""
    description = ""
    stateless = False

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
        self.procs = procs
        self.workdir = workdir
        self.args = args
        self.lock = threading.Lock()
        self.retire_log: list[dict[str, Any]] = []

    def start(self) -> str:
        raise NotImplementedError

    def deploy(self, version: int) -> str:
        raise NotImplementedError

    def rollback(self) -> str:
        raise NotImplementedError

    def kill_worker(self) -> tuple[int, str]:
        raise NotImplementedError

    def poll(self) -> None:
        """Periodic duties (every ~0.1 s): drain timers, restarts."""

    def settled(self) -> bool:
        """True once no old revision is still running."""
        return True

    def sample(self) -> dict[str, Any] | None:
        return None

    def finish(self) -> dict[str, Any]:
        return {}


class HoldoverTarget(Target):
    name = "holdover"
    description = ('holdover, `mode = "sessions"`, `session_cookie = "sid"`, 2 workers per '
                   'revision, `session_idle_timeout = "15s"`; `holdover deploy --revision vN '
                   '--env BENCH_VERSION=N`, `holdover rollback`')

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(procs, workdir, args)
        self.gw = Holdover(procs, workdir, mode="stateless" if self.stateless else "sessions",
                           strategy="rolling" if self.stateless else "replace")

    def start(self) -> str:
        self.gw.start()
        return f"http://127.0.0.1:{self.gw.port}"

    def deploy(self, version: int) -> str:
        code, out, secs = self.gw.cli("deploy", "--revision", f"v{version}", "--env",
                                      f"BENCH_VERSION={version}")
        self.procs.remember()
        if code != 0:
            raise RuntimeError(f"holdover deploy exited {code}: {out[-800:]}")
        return f"`holdover deploy` {secs:.2f}s: {out.splitlines()[-1] if out else ''}"

    def rollback(self) -> str:
        code, out, secs = self.gw.cli("rollback")
        self.procs.remember()
        if code != 0:
            raise RuntimeError(f"holdover rollback exited {code}: {out[-800:]}")
        return f"`holdover rollback` {secs:.2f}s: {out.splitlines()[-1] if out else ''}"

    def kill_worker(self) -> tuple[int, str]:
        st = self.gw.api("/api/status")
        active = next(r for r in st["revisions"] if r["id"] == st["active"])
        ready = [w for w in active["workers"] if w["state"] == "ready"]
        victim = max(ready, key=lambda w: w.get("sessions", 0))
        os.kill(victim["pid"], signal.SIGKILL)
        return victim["pid"], (f"kill -9 worker {victim['id']} pid {victim['pid']} of "
                               f"{active['id']} ({victim.get('sessions', 0)} sessions pinned)")

    def settled(self) -> bool:
        st = self.gw.api("/api/status")
        return not any(r["state"] == "draining" for r in st["revisions"])

    def sample(self) -> dict[str, Any] | None:
        st = self.gw.api("/api/status", timeout=2.0)
        revs = {r["id"]: {"state": r["state"], "sessions": r["sessions"],
                          "workers": sum(1 for w in r["workers"] if w["state"] != "stopped")}
                for r in st["revisions"]}
        return {"t": time.time(), "revs": revs, "lost": st.get("sessions_lost", 0),
                "active": st.get("active")}

    def finish(self) -> dict[str, Any]:
        events = self.gw.events()
        st = self.gw.api("/api/status")
        return {"events": events, "status": st, "retire": holdover_retirements(events),
                "holdover_sessions_lost": st.get("sessions_lost"),
                "access_log_errors": self.access_log_errors()}

    def access_log_errors(self) -> list[dict[str, Any]]:
        """Holdover's own record of every 5xx it answered: which worker, why."""
        out = []
        path = self.gw.state_dir / "access.log"
        with contextlib.suppress(OSError), path.open(encoding="utf-8") as f:
            for line in f:
                if '"status":5' in line:
                    with contextlib.suppress(json.JSONDecodeError):
                        out.append(json.loads(line))
        return out[:200]


class HoldoverStatelessTarget(HoldoverTarget):
    name = "holdover-stateless"
    description = ('holdover, `mode = "stateless"`, `strategy = "rolling"`, 2 workers; '
                   'users do not log in (no session checks), WebSockets still open')
    stateless = True

    def settled(self) -> bool:
        st = self.gw.api("/api/status")
        return not any(r["state"] == "draining" or (
            r["id"] != st["active"] and any(w["state"] not in ("stopped", "failed")
                                            for w in r["workers"]))
            for r in st["revisions"])


class ManualTarget(Target):
    """The alternatives: app processes started by hand, two per version."""

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(procs, workdir, args)
        self.gens: list[Gen] = []
        self.active: Gen | None = None
        self.history: list[int] = []
        self.respawn: list[tuple[float, Gen, int]] = []  # (when, gen, index)

    def app_env(self, version: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOLDOVER_", "BENCH_"))}
        env["BENCH_VERSION"] = str(version)
        return env

    def start_app(self, version: int, port: int) -> Proc:
        proc = self.procs.start(f"app-v{version}-{port}",
                                [sys.executable, str(APP), "--port", str(port)],
                                self.workdir / "apps" / f"v{version}-{port}.log",
                                env=self.app_env(version))
        return proc

    def new_gen(self, version: int, ports: list[int] | None = None) -> Gen:
        ports = ports or [free_port(), free_port()]
        procs = [self.start_app(version, p) for p in ports]
        for port, proc in zip(ports, procs, strict=True):
            wait_http(port, "/healthz", 30.0, proc.popen)
        gen = Gen(version, procs, ports)
        self.gens.append(gen)
        return gen

    def _stop_gen(self, gen: Gen) -> None:
        for proc in gen.procs:
            self.procs.stop(proc, grace=10.0)
        with self.lock:
            gen.retired_at = time.time()
            gen.state = "retired"
            self.retire_log.append({"revision": gen.label, "drain_started": gen.drain_started,
                                    "retired": gen.retired_at})

    def stop_gen_later(self, gen: Gen, delay: float) -> None:
        gen.state = "draining"
        gen.drain_started = time.time()
        gen.stop_at = gen.drain_started + delay

    def before_stop(self, gen: Gen) -> None:
        """Called just before the old processes are stopped (HAProxy: maint)."""

    def poll(self) -> None:
        now = time.time()
        for gen in self.gens:
            if gen.state == "draining" and gen.stop_at is not None and now >= gen.stop_at:
                gen.state = "stopping"
                self.before_stop(gen)
                threading.Thread(target=self._stop_gen, args=(gen,), daemon=True).start()
        for item in list(self.respawn):
            when, gen, idx = item
            if now >= when:
                self.respawn.remove(item)
                if gen.state in ("active", "draining"):
                    # What systemd (Restart=always, RestartSec=1) would do.
                    gen.procs[idx] = self.start_app(gen.version, gen.ports[idx])

    def settled(self) -> bool:
        return all(g.state in ("active", "retired") for g in self.gens)

    def kill_worker(self) -> tuple[int, str]:
        assert self.active is not None
        proc = self.active.procs[0]
        os.kill(proc.pid, signal.SIGKILL)
        self.respawn.append((time.time() + 1.0, self.active, 0))
        return proc.pid, (f"kill -9 app pid {proc.pid} ({self.active.label}, port "
                          f"{self.active.ports[0]}); restarted after 1 s as systemd would")

    def finish(self) -> dict[str, Any]:
        with self.lock:
            return {"retire": list(self.retire_log)}


NGINX_COMMON = """    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 120s;
            proxy_buffering off;
        }}
    }}
"""


def nginx_conf(run_dir: Path, port: int, upstream: str) -> str:
    temp = "\n".join(f"    {m}_temp_path {run_dir / (m + '_temp')};"
                     for m in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# generated by upgrade_bench.py
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
worker_shutdown_timeout 60s;
events {{
    worker_connections 4096;
}}
http {{
    access_log {run_dir}/access.log;
{temp}
    keepalive_timeout 75s;
    upstream app {{
{upstream}
        keepalive 32;
    }}
{NGINX_COMMON.format(port=port)}}}
"""


class NginxFront:
    """An nginx master in the foreground whose upstream block can be rewritten + reloaded."""

    def __init__(self, procs: Processes, workdir: Path) -> None:
        self.procs = procs
        self.run_dir = workdir / "nginx"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.run_dir / "nginx.conf"
        self.port = free_port()
        self.bin = which("nginx") or "nginx"
        self.proc: Proc | None = None

    def write(self, upstream: str) -> None:
        self.conf.write_text(nginx_conf(self.run_dir, self.port, upstream))

    def start(self, upstream: str) -> None:
        self.write(upstream)
        argv = [self.bin, "-e", str(self.run_dir / "error.log"), "-p", f"{self.run_dir}/",
                "-c", str(self.conf), "-g", "daemon off;"]
        self.proc = self.procs.start("nginx", argv, self.run_dir / "nginx.out")
        wait_http(self.port, "/healthz", 30.0, self.proc.popen)

    def reload(self, upstream: str) -> float:
        self.write(upstream)
        t0 = time.monotonic()
        out = subprocess.run([self.bin, "-e", str(self.run_dir / "error.log"), "-p",
                              f"{self.run_dir}/", "-c", str(self.conf), "-s", "reload"],
                             capture_output=True, text=True, timeout=30, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"nginx -s reload failed: {out.stderr.strip()}")
        return time.monotonic() - t0


class NginxTarget(ManualTarget):
    name = "nginx"
    description = ("nginx 1 worker, `upstream {hash $remote_addr consistent; 2 servers}`, "
                   "each user its own 127.0.X.Y; deploy = start 2 new processes, rewrite "
                   "upstream, `nginx -s reload`, stop the old ones 1 s later")

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(procs, workdir, args)
        self.front = NginxFront(procs, workdir)

    @staticmethod
    def upstream(gen: Gen) -> str:
        return "        hash $remote_addr consistent;\n" + "".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n" for p in gen.ports)

    def start(self) -> str:
        gen = self.new_gen(1)
        self.active = gen
        self.history.append(1)
        self.front.start(self.upstream(gen))
        return f"http://127.0.0.1:{self.front.port}"

    def switch(self, version: int) -> str:
        old = self.active
        new = self.new_gen(version)
        secs = self.front.reload(self.upstream(new))
        self.active = new
        self.history.append(version)
        if old is not None:
            self.stop_gen_later(old, self.args.nginx_stop_delay)
        return (f"started {new.label} on {new.ports}, `nginx -s reload` ({secs:.2f}s); "
                f"{old.label if old else '-'} stopped {self.args.nginx_stop_delay:g}s later")

    def deploy(self, version: int) -> str:
        return self.switch(version)

    def rollback(self) -> str:
        prev = self.history[-2]
        return "rollback = " + self.switch(prev)


class HaproxyTarget(ManualTarget):
    name = "haproxy"

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(procs, workdir, args)
        self.description = (
            "HAProxy 1 thread, `cookie SRV insert indirect nocache`, `option redispatch`, "
            "health checks every 1 s; deploy = start 2 new servers, `set server ... state "
            f"ready`, old ones `state drain`, stopped after a fixed {args.haproxy_drain:g} s "
            "drain (`state maint`, then SIGTERM)")
        self.dir = workdir / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "admin.sock"
        self.port = free_port()
        self.slot_ports = [free_port() for _ in range(12)]
        self.next_slot = 0
        self.proc: Proc | None = None

    def conf(self) -> str:
        servers = "".join(
            f"    server s{i} 127.0.0.1:{p} cookie s{i}{' disabled' if i >= 2 else ''}\n"
            for i, p in enumerate(self.slot_ports))
        return f"""# generated by upgrade_bench.py
global
    maxconn 4096
    nbthread 1
    stats socket {self.sock} mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    timeout http-keep-alive 10s
    retries 3
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend app
backend app
    balance roundrobin
    cookie SRV insert indirect nocache httponly
    option redispatch
    option httpchk GET /healthz
    default-server check inter 1s fall 2 rise 1
{servers}"""

    def cmd(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def server_status(self) -> dict[str, str]:
        out = self.cmd("show stat")
        lines = out.splitlines()
        head = lines[0].lstrip("# ").split(",")
        i_sv, i_st = head.index("svname"), head.index("status")
        return {row[i_sv]: row[i_st] for row in (ln.split(",") for ln in lines[1:] if ln)
                if len(row) > i_st}

    def take_slots(self) -> tuple[list[str], list[int]]:
        i = self.next_slot
        self.next_slot += 2
        if self.next_slot > len(self.slot_ports):
            raise RuntimeError("out of HAProxy server slots")
        return [f"s{i}", f"s{i + 1}"], self.slot_ports[i:i + 2]

    def start(self) -> str:
        slots, ports = self.take_slots()
        gen = self.new_gen(1, ports)
        gen.slots = slots
        self.active = gen
        self.history.append(1)
        (self.dir / "haproxy.cfg").write_text(self.conf())
        hap = which("haproxy") or "haproxy"
        self.proc = self.procs.start("haproxy", [hap, "-db", "-f", str(self.dir / "haproxy.cfg")],
                                     self.dir / "haproxy.log")
        wait_http(self.port, "/healthz", 30.0, self.proc.popen)
        return f"http://127.0.0.1:{self.port}"

    def ready(self, gen: Gen) -> None:
        for s in gen.slots:
            self.cmd(f"set server app/{s} state ready")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = self.server_status()
            if all(st.get(s, "").startswith("UP") for s in gen.slots):
                return
            time.sleep(0.05)
        raise RuntimeError(f"HAProxy servers {gen.slots} not UP within 10 s")

    def drain(self, gen: Gen) -> None:
        for s in gen.slots:
            self.cmd(f"set server app/{s} state drain")
        self.stop_gen_later(gen, self.args.haproxy_drain)

    def before_stop(self, gen: Gen) -> None:
        for s in gen.slots:
            self.cmd(f"set server app/{s} state maint")

    def deploy(self, version: int) -> str:
        old = self.active
        slots, ports = self.take_slots()
        new = self.new_gen(version, ports)
        new.slots = slots
        self.ready(new)
        self.active = new
        self.history.append(version)
        if old is not None:
            self.drain(old)
        return (f"{new.label} on {slots} ready; {old.label if old else '-'} `state drain`, "
                f"stopped after {self.args.haproxy_drain:g} s")

    def rollback(self) -> str:
        prev_v = self.history[-2]
        cur = self.active
        prev = next((g for g in reversed(self.gens) if g.version == prev_v
                     and g.state == "draining"), None)
        if prev is None:
            return "rollback = " + self.deploy(prev_v)
        prev.state, prev.stop_at, prev.drain_started = "active", None, None
        for s in prev.slots:
            self.cmd(f"set server app/{s} state ready")
        self.active = prev
        self.history.append(prev_v)
        if cur is not None:
            self.drain(cur)
        return (f"{prev.label} (still draining) `state ready` again; {cur.label if cur else '-'}"
                f" `state drain`")


class GunicornTarget(Target):
    name = "gunicorn"

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(procs, workdir, args)
        self.description = (
            f"gunicorn `-w {args.gunicorn_workers} -k aiohttp.GunicornWebWorker "
            "--graceful-timeout 10` behind nginx (one upstream); deploy = write the new "
            "version to the app's version file, `kill -HUP` the master")
        self.front = NginxFront(procs, workdir)
        self.gport = free_port()
        self.version_file = workdir / "app-version"
        self.master: Proc | None = None
        self.history: list[int] = []
        self.old_workers: list[tuple[int, float, str]] = []  # (pid, since, label)
        self.current_label = "v1"

    def workers(self) -> list[psutil.Process]:
        assert self.master is not None
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.master.pid).children()
        return []

    def start(self) -> str:
        self.version_file.write_text("1\n")
        self.history.append(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOLDOVER_", "BENCH_"))}
        env["BENCH_VERSION_FILE"] = str(self.version_file)
        gunicorn = shutil.which("gunicorn")
        argv = ([gunicorn] if gunicorn else [sys.executable, "-m", "gunicorn"]) + [
            "--chdir", str(APP.parent), "app:create_app", "-k", "aiohttp.GunicornWebWorker",
            "-w", str(self.args.gunicorn_workers), "-b", f"127.0.0.1:{self.gport}",
            "--graceful-timeout", "10", "--timeout", "60", "--keep-alive", "75"]
        if "--no-control-socket" in subprocess.run(
                [*argv[:1], "--help"] if gunicorn else [*argv[:3], "--help"],
                capture_output=True, text=True, check=False).stdout:
            argv.append("--no-control-socket")  # gunicorn >= 25 would write to ~/.gunicorn
        self.master = self.procs.start("gunicorn", argv, self.workdir / "gunicorn.log",
                                       env=env)
        wait_http(self.gport, "/healthz", 30.0, self.master.popen)
        self.front.start(f"        server 127.0.0.1:{self.gport};\n")
        self.procs.remember()
        return f"http://127.0.0.1:{self.front.port}"

    def hup(self, version: int) -> str:
        before = {p.pid for p in self.workers()}
        self.version_file.write_text(f"{version}\n")
        assert self.master is not None
        now = time.time()
        with self.lock:
            draining = {pid for pid, _, _ in self.old_workers}
            self.old_workers += [(pid, now, self.current_label) for pid in before
                                 if pid not in draining]
        self.current_label = f"v{version}"
        os.kill(self.master.pid, signal.SIGHUP)
        self.history.append(version)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = [p for p in self.workers() if p.pid not in before]
            if len(new) >= self.args.gunicorn_workers:
                break
            time.sleep(0.05)
        self.procs.remember()
        return f"version file -> {version}, `kill -HUP` master (old workers {sorted(before)})"

    def deploy(self, version: int) -> str:
        return self.hup(version)

    def rollback(self) -> str:
        return "rollback = " + self.hup(self.history[-2])

    def kill_worker(self) -> tuple[int, str]:
        ws = sorted(self.workers(), key=lambda p: p.create_time())
        victim = ws[-1]
        victim.kill()
        return victim.pid, f"kill -9 gunicorn worker pid {victim.pid} (the master forks another)"

    def poll(self) -> None:
        with self.lock:
            for item in list(self.old_workers):
                pid, since, label = item
                if not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie":
                    self.old_workers.remove(item)
                    self.retire_log.append({"revision": label, "pid": pid,
                                            "drain_started": since, "retired": time.time()})

    def settled(self) -> bool:
        self.poll()
        with self.lock:
            return not self.old_workers

    def finish(self) -> dict[str, Any]:
        with self.lock:
            return {"retire": list(self.retire_log)}


TARGET_CLASSES: dict[str, type[Target]] = {
    "holdover": HoldoverTarget, "holdover-stateless": HoldoverStatelessTarget,
    "nginx": NginxTarget, "haproxy": HaproxyTarget, "gunicorn": GunicornTarget}


# --------------------------------------------------------------------------- one run


def set_phase(path: Path, phase: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(phase + "\n")
    os.replace(tmp, path)


class Sampler(threading.Thread):
    def __init__(self, target: Target, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                s = self.target.sample()
            except Exception:  # a sample can fail while the gateway is busy; count it
                self.errors += 1
                continue
            if s is None:
                return
            self.samples.append(s)


def run_target(target: Target, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start ``target``, run the load and the schedule, return everything measured."""
    phase_file = workdir / "phase"
    set_phase(phase_file, "warmup")
    url = target.start()
    log(f"{target.name}: up at {url}")
    P, W = args.phase, args.warmup
    bound = W + 5 * P + args.drain_max + 4 * 60  # actions may take a while: still bounded
    lg, events_path = start_loadgen(
        target.procs, workdir, url, users=args.users, duration=bound,
        session_seconds=args.session_seconds, phase_file=phase_file,
        stateless=target.stateless, source_ips=True)
    t0 = time.time()
    sampler = Sampler(target)
    sampler.start()
    # (seconds after the previous step ended, phase, action): every phase gets at least
    # P seconds of load after its action finished, however long the action took.
    plan: list[tuple[float, str, Any]] = [
        (W, "steady", None),
        (P, "deploy-v2", lambda: target.deploy(2)),
        (P, "deploy-v3", lambda: target.deploy(3)),
        (P, "rollback", target.rollback),
        (P, "kill-worker", target.kill_worker),
        (P, "drain", None),
    ]
    phases: list[dict[str, Any]] = [{"name": "warmup", "t": t0}]
    actions: list[dict[str, Any]] = []
    killed: list[int] = []

    def wait_until(when: float) -> None:
        while time.time() < when:
            if lg.popen.poll() is not None:
                raise RuntimeError(f"loadgen exited early ({lg.popen.returncode}); see "
                                   f"{lg.log_path}")
            target.poll()
            time.sleep(0.1)

    try:
        step_end = t0
        for after, phase, action in plan:
            wait_until(step_end + after)
            step_end = time.time()
            set_phase(phase_file, phase)
            phases.append({"name": phase, "t": time.time()})
            if action is None:
                continue
            # Let loadgen see the new phase first (it re-reads the file every 0.1 s), so
            # what the action causes is counted in its phase.
            wait_until(time.time() + 0.3)
            a0 = time.time()
            try:
                res = action()
                ok, detail = True, res
                if isinstance(res, tuple):
                    killed.append(res[0])
                    detail = res[1]
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            step_end = time.time()
            actions.append({"phase": phase, "t": a0, "seconds": round(step_end - a0, 3),
                            "ok": ok, "detail": detail})
            log(f"{target.name}: {phase}: {'ok' if ok else 'FAILED'} "
                f"({time.time() - a0:.2f}s) {detail}")
        # drain: until every old revision is gone (bounded), at least a few seconds
        drain_end = time.time() + args.drain_max
        settled_at = None
        while time.time() < drain_end:
            wait_until(time.time() + 0.5)
            try:
                settled = target.settled()
            except Exception:
                settled = False
            if settled and time.time() - phases[-1]["t"] >= min(P, 5):
                settled_at = time.time()
                break
        set_phase(phase_file, "stop")
        phases.append({"name": "stop", "t": time.time()})
        wait_until(time.time() + 0.3)  # the users' final logouts count in "stop"
        log(f"{target.name}: " + (f"settled {settled_at - phases[-2]['t']:.1f}s into drain"
                                  if settled_at else
                                  f"NOT settled after {args.drain_max:g}s of drain"))
    finally:
        if lg.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(lg.pid, signal.SIGTERM)
            try:
                lg.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log("loadgen did not stop in 60 s: killed")
                lg.popen.kill()
        sampler.halt.set()
        sampler.join(timeout=5)
    t_end = time.time()
    extra: dict[str, Any] = {}
    try:
        extra = target.finish()
    except Exception as exc:
        extra = {"finish_error": f"{type(exc).__name__}: {exc}"}
    events = read_events(events_path)
    return {"target": target.name, "description": target.description,
            "stateless": target.stateless, "t0": t0, "t_end": t_end, "phases": phases,
            "actions": actions, "killed_pids": killed,
            "settled": settled_at is not None, "samples": sampler.samples,
            "sample_errors": sampler.errors, **extra,
            "analysis": analyze(events, phases, killed, t0, target.stateless)}


# --------------------------------------------------------------------------- analysis


def _norm_err(err: str) -> str:
    return re.sub(r"\d+", "N", err)[:90]


def phase_stats(reqs: list[dict[str, Any]], lost: list[dict[str, Any]],
                killed: set[int]) -> dict[str, Any]:
    inter = [r["lat"] for r in reqs if r["ok"] and r["k"] in INTERACTIVE]
    dl = [r["lat"] for r in reqs if r["ok"] and r["k"] == "download"]
    failed = [r for r in reqs if not r["ok"]]
    failed_killed = [r for r in failed if r.get("spid") in killed or r.get("pid") in killed]
    other = [r for r in failed if r not in failed_killed]
    lost_killed = [x for x in lost if x.get("spid") in killed]
    return {
        "requests": len(reqs),
        "failed": len(failed),
        "failed_killed": len(failed_killed),
        "failed_other": len(failed) - len(failed_killed),
        "lost": len(lost),
        "lost_killed": len(lost_killed),
        "lost_other": len(lost) - len(lost_killed),
        "lost_reasons": dict(Counter(x["reason"] for x in lost if x not in lost_killed)),
        "failed_by_kind": dict(Counter(r["k"] for r in failed)),
        "errors": dict(Counter(_norm_err(r.get("err", "")) for r in failed).most_common(6)),
        "errors_other": dict(Counter(_norm_err(r.get("err", "")) for r in other).most_common(6)),
        "p50_ms": percentile(inter, 50), "p99_ms": percentile(inter, 99),
        "max_ms": max(inter) if inter else None,
        "download_p50_ms": percentile(dl, 50),
        "interactive_ok": len(inter),
    }


def analyze(events: list[dict[str, Any]], phases: list[dict[str, Any]], killed: list[int],
            t0: float, stateless: bool) -> dict[str, Any]:
    reqs = [e for e in events if e.get("ev") == "req"]
    lost = [e for e in events if e.get("ev") == "lost"]
    ticks = [e for e in events if e.get("ev") == "tick"]
    summary = next((e for e in events if e.get("ev") == "summary"), None)
    ks = set(killed)
    names = [p["name"] for p in phases]
    per_phase = {}
    for name in names:
        per_phase[name] = phase_stats([r for r in reqs if r["ph"] == name],
                                      [x for x in lost if x["ph"] == name], ks)
    measured = [r for r in reqs if r["ph"] not in ("warmup", "start")]
    total = phase_stats(measured, [x for x in lost if x["ph"] not in ("warmup", "start")], ks)
    # one-second timeline
    bins: dict[int, Counter[str]] = defaultdict(Counter)
    by_rev: dict[int, Counter[str]] = defaultdict(Counter)
    for r in reqs:
        b = int(r["t"] - t0)
        bins[b]["ok" if r["ok"] else "fail"] += 1
        if r["ok"] and r.get("rev"):
            by_rev[b][r["rev"]] += 1
    for x in lost:
        bins[int(x["t"] - t0)]["lost"] += 1
    last = max(bins) if bins else 0
    timeline = {"t": list(range(last + 1)),
                "ok": [bins[i]["ok"] for i in range(last + 1)],
                "fail": [bins[i]["fail"] for i in range(last + 1)],
                "lost": [bins[i]["lost"] for i in range(last + 1)],
                "live": [{"t": round(k["t"] - t0, 2), "live": k["live"]} for k in ticks],
                "by_rev": [dict(by_rev[i]) for i in range(last + 1)]}
    steady = per_phase.get("steady", {}).get("p99_ms")
    worst = max((per_phase[p]["p99_ms"] or 0 for p in DEPLOY_PHASES if p in per_phase),
                default=None)
    return {"per_phase": per_phase, "total": total, "timeline": timeline,
            "loadgen_summary": summary,
            "p99_steady_ms": steady, "p99_worst_deploy_ms": worst,
            "p99_ratio": (worst / steady) if steady and worst else None,
            "lost_examples": [x for x in lost if x.get("spid") not in ks][:8],
            "failed_examples": [r for r in reqs if not r["ok"] and r.get("spid") not in ks
                                and r.get("pid") not in ks][:8]}


# --------------------------------------------------------------------------- report


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def retire_rows(run: dict[str, Any]) -> list[str]:
    rows = []
    t0 = run["t0"]
    for r in run.get("retire", []):
        start = r.get("drain_started")
        if r.get("reactivated"):
            what = f"made active again after {r['reactivated'] - start:.1f} s (rollback)"
        elif r.get("retired"):
            what = f"retired {r['retired'] - start:.1f} s after it started draining"
        else:
            what = "**still draining at the end**"
        at = f"{start - t0:.1f}" if start else "-"
        pid = f" pid {r['pid']}" if r.get("pid") else ""
        rows.append(f"| {run['target']} | {r['revision']}{pid} | {at} | {what} |")
    return rows


def markdown(runs: list[dict[str, Any]], meta: dict[str, Any], png: str | None) -> str:
    """The report; ``png`` is the timeline plot's file name (None: no plot was written)."""
    s = meta["settings"]
    out = [
        "# Upgrade under load: holdover vs the alternatives",
        "",
        f"Run {meta['started']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"Python {meta['machine']['python']}, {meta['versions'].get('holdover', '')}; load "
        f"average at start {meta['machine']['loadavg_1m_at_start']}.",
        "",
        f"Command: `{meta['command']}`. {s['users']} virtual users, sessions of "
        f"{0.5 * s['session_seconds']:g}-{1.5 * s['session_seconds']:g} s (then log out and "
        f"in again), think time 0.1-0.5 s; mix 50 % page, 20 % form post, 25 % WebSocket "
        f"message, 5 % streamed download of 512 KiB. Phases: warm-up {s['warmup']:g} s, then "
        f"{s['phase']:g} s each of steady / deploy-v2 / deploy-v3 (v1 still draining) / "
        f"rollback / kill-worker, then drain until every old revision is gone (at most "
        f"{s['drain_max']:g} s). Latency: page, form, WebSocket, login and logout "
        f"(downloads apart).",
        "",
        "## Summary",
        "",
        "| target | requests | failed | of which killed worker's | sessions lost | of which "
        "killed worker's | p99 steady ms | worst p99 deploy/rollback ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        if "error" in run:
            out.append(f"| {run['target']} | not measured: {run['error'][:120]} "
                       "| | | | | | | |")
            continue
        a, tot = run["analysis"], run["analysis"]["total"]
        lost = "n/a (no sessions)" if run["stateless"] else f"{tot['lost']:,}"
        lostk = "n/a" if run["stateless"] else f"{tot['lost_killed']:,}"
        ratio = f"{a['p99_ratio']:.2f}x" if a["p99_ratio"] else "-"
        out.append(f"| {run['target']} | {tot['requests']:,} | {tot['failed']:,} | "
                   f"{tot['failed_killed']:,} | {lost} | {lostk} | {fmt_ms(a['p99_steady_ms'])}"
                   f" | {fmt_ms(a['p99_worst_deploy_ms'])} | {ratio} |")
    out += ["", "Failed = an exception, a 5xx/unexpected status, or a short body. Lost = the "
            "app no longer knew the user's session (or its counter/notes went back, or its "
            "revision changed while logged in). \"Killed worker's\" = the request or session "
            "belonged to the process killed with `kill -9` (expected to be lost).", "",
            "## Per phase", "",
            "| target | phase | requests | failed | sessions lost (why) | p50 ms | p99 ms | "
            "max ms | download p50 ms |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for run in runs:
        if "error" in run:
            continue
        for name, st in run["analysis"]["per_phase"].items():
            if name == "warmup":
                continue
            failed = f"{st['failed']}" + (f" ({st['failed_killed']} killed worker's)"
                                          if st["failed_killed"] else "")
            if run["stateless"]:
                lost = "n/a"
            else:
                why = ", ".join(f"{k} {v}" for k, v in st["lost_reasons"].items())
                lost = f"{st['lost']}" + (f" ({st['lost_killed']} killed worker's)"
                                          if st["lost_killed"] else "") + (
                    f": {why}" if why else "")
            out.append(f"| {run['target']} | {name} | {st['requests']:,} | {failed} | {lost} | "
                       f"{fmt_ms(st['p50_ms'])} | {fmt_ms(st['p99_ms'])} | "
                       f"{fmt_ms(st['max_ms'])} | {fmt_ms(st['download_p50_ms'])} |")
    out += ["", "## Old revisions: time until retired", "",
            "| target | revision | drain started (s into run) | outcome |", "|---|---|---:|---|"]
    for run in runs:
        if "error" not in run:
            out += retire_rows(run)
    out += ["", "## What each target is", ""]
    for run in runs:
        out.append(f"- **{run['target']}**: {run.get('description', '')}")
    out += ["", "## Actions", "", "| target | phase | took s | result |", "|---|---|---:|---|"]
    for run in runs:
        for act in run.get("actions", []):
            detail = str(act["detail"]).replace("|", "\\|").replace("\n", " ")[:200]
            out.append(f"| {run['target']} | {act['phase']} | {act['seconds']:.2f} | "
                       f"{'ok' if act['ok'] else 'FAILED'}: {detail} |")
    out += ["", "## Failures and losses not caused by the killed worker", ""]
    for run in runs:
        if "error" in run:
            continue
        tot = run["analysis"]["total"]
        if not tot["failed_other"] and not tot["lost_other"]:
            out.append(f"- **{run['target']}**: none.")
            continue
        errs = "; ".join(f"{k} x{v}" for k, v in tot["errors_other"].items())
        why = ", ".join(f"{k} {v}" for k, v in tot["lost_reasons"].items())
        out.append(f"- **{run['target']}**: {tot['failed_other']} failed "
                   f"({errs or '-'}); {tot['lost_other']} sessions lost ({why or '-'}).")
        for ex in run["analysis"]["lost_examples"][:3]:
            out.append(f"  - lost in {ex['ph']}: {ex['reason']}: {ex['detail']}")
        for ex in run["analysis"]["failed_examples"][:3]:
            out.append(f"  - failed in {ex['ph']}: {ex['k']} {ex.get('err', '')}")
    for run in runs:
        if run.get("access_log_errors") is None:
            continue
        errs = Counter(f"{e.get('status')} {e.get('method')} {e.get('path', '').split('?')[0]} "
                       f"worker {e.get('worker')}: {e.get('error', '-')}"
                       for e in run["access_log_errors"])
        lost = run.get("holdover_sessions_lost")
        out.append(f"- **{run['target']}**, holdover's own view: `sessions_lost` = {lost}; "
                   f"5xx in its access log: "
                   + ("; ".join(f"{k} x{v}" for k, v in errs.items()) or "none") + ".")
    if png:
        out += ["", f"![timeline]({png})", ""]
    else:
        out += ["", "(No timeline plot: matplotlib is not installed; "
                "`pip install -e '.[bench]'`.)", ""]
    return "\n".join(out)


def plot(runs: list[dict[str, Any]], path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    ok_runs = [r for r in runs if "error" not in r]
    if not ok_runs:
        return "nothing to plot"
    fig, axes = plt.subplots(len(ok_runs), 2, figsize=(15, 2.9 * len(ok_runs)),
                             squeeze=False, gridspec_kw={"width_ratios": [1.15, 1]})
    colors: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    for row, run in zip(axes, ok_runs, strict=True):
        tl = run["analysis"]["timeline"]
        ax, ax2 = row
        ax.plot(tl["t"], tl["ok"], color="tab:blue", lw=1.2, label="requests/s ok")
        ax.bar(tl["t"], tl["fail"], color="tab:red", width=1.0, label="failed/s")
        if not run["stateless"]:
            ax.bar(tl["t"], tl["lost"], bottom=tl["fail"], color="tab:orange", width=1.0,
                   label="sessions lost/s")
        ax.set_ylabel("per second")
        ax.set_title(f"{run['target']}: requests, failures, lost sessions", fontsize=10,
                     loc="left")
        live = tl["live"]
        revs = sorted({r for x in live for r in x["live"]})
        for rev in revs:
            colors.setdefault(rev, palette(len(colors) % 10))
            ax2.plot([x["t"] for x in live], [x["live"].get(rev, 0) for x in live],
                     color=colors[rev], lw=1.5, label=f"{rev} (users)")
        if run["stateless"]:  # no sessions: show which revision answered instead
            revs = sorted({r for x in tl["by_rev"] for r in x})
            for rev in revs:
                colors.setdefault(rev, palette(len(colors) % 10))
                ax2.plot(tl["t"], [x.get(rev, 0) for x in tl["by_rev"]], color=colors[rev],
                         lw=1.3, label=f"{rev}")
        if run.get("samples") and not run["stateless"]:
            srevs = sorted({r for s in run["samples"] for r in s["revs"]})
            for rev in srevs:
                colors.setdefault(rev, palette(len(colors) % 10))
                ax2.plot([s["t"] - run["t0"] for s in run["samples"]],
                         [s["revs"].get(rev, {}).get("sessions", 0) for s in run["samples"]],
                         color=colors[rev], lw=1.0, ls=":", label=f"{rev} (holdover)")
        if run["stateless"]:
            ax2.set_ylabel("responses/s")
            ax2.set_title("stateless: responses per second by the revision that answered",
                          fontsize=10, loc="left")
        else:
            ax2.set_ylabel("live sessions")
            ax2.set_title("live sessions per revision" + (
                " (solid: users' view, dotted: holdover status)" if run.get("samples")
                else " (users' view)"), fontsize=10, loc="left")
        for a in (ax, ax2):
            for ph in run["phases"][1:]:
                x = ph["t"] - run["t0"]
                a.axvline(x, color="grey", lw=0.7, ls="--")
                a.text(x, 1.0, " " + ph["name"], transform=a.get_xaxis_transform(),
                       fontsize=7, va="top", rotation=90, color="dimgrey")
            a.set_xlim(0, max(tl["t"][-1] if tl["t"] else 1, 1))
            a.grid(alpha=0.25)
        ax.legend(fontsize=7, loc="lower left")
        if revs:
            ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for a in axes[-1]:
        a.set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="short phases (5 s) and sessions (4-12 s): ~3 min for all targets")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {TARGETS}")
    ap.add_argument("--users", type=int, default=40, help="virtual users (default 40)")
    ap.add_argument("--phase", type=float, help="seconds per phase (default 30, quick 5)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds (default 10, quick 3)")
    ap.add_argument("--session-seconds", type=float,
                    help="mean session length; sessions last 0.5-1.5x this (default 1.6 x "
                         "phase)")
    ap.add_argument("--drain-max", type=float,
                    help="longest wait for old revisions to go (default 1.5 x session + 15)")
    ap.add_argument("--haproxy-drain", type=float,
                    help="HAProxy's fixed drain time before old servers stop (default: the "
                         "mean session length)")
    ap.add_argument("--nginx-stop-delay", type=float, default=1.0,
                    help="seconds between nginx -s reload and stopping the old processes")
    ap.add_argument("--gunicorn-workers", type=int, default=1,
                    help="gunicorn -w (default 1: with more, in-memory sessions break even "
                         "without a deploy)")
    ap.add_argument("--out", default=str(HERE / "results"), help="output directory")
    ap.add_argument("--name", default="upgrade", help="output file stem (default upgrade)")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)
    if args.phase is None:
        args.phase = 5.0 if args.quick else 30.0
    if args.warmup is None:
        args.warmup = 3.0 if args.quick else 10.0
    if args.session_seconds is None:
        args.session_seconds = 1.6 * args.phase
    if args.drain_max is None:
        args.drain_max = 1.5 * args.session_seconds + 15
    if args.haproxy_drain is None:
        args.haproxy_drain = args.session_seconds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = [t for t in args.targets.split(",") if t]
    bad = [t for t in wanted if t not in TARGETS]
    if bad:
        raise SystemExit(f"unknown targets {bad}; choose from {TARGETS}")
    install_signal_handlers()
    need = {"nginx": "nginx"} if {"nginx", "gunicorn"} & set(wanted) else {}
    if "haproxy" in wanted:
        need["haproxy"] = "haproxy"
    missing = ensure_apt(need)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/upgrade_bench.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "versions": {"holdover": f"holdover commit {git_describe()}"},
        "settings": {"users": args.users, "phase": args.phase, "warmup": args.warmup,
                     "session_seconds": args.session_seconds, "drain_max": args.drain_max,
                     "haproxy_drain": args.haproxy_drain,
                     "nginx_stop_delay": args.nginx_stop_delay,
                     "gunicorn_workers": args.gunicorn_workers},
    }
    if meta["machine"]["loadavg_1m_at_start"] > 0.5:
        log(f"WARNING: load average {meta['machine']['loadavg_1m_at_start']} at start; other "
            "work on this machine will show up in the latencies")
    runs: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="holdover-upgrade-bench-"))
    interrupted = False
    try:
        for name in wanted:
            workdir = root / name
            workdir.mkdir()
            procs = Processes()
            try:
                if name in ("nginx", "haproxy") and name in missing:
                    raise RuntimeError(f"{name} is not installed")
                if name == "gunicorn" and "nginx" in missing:
                    raise RuntimeError("nginx is not installed")
                if name == "gunicorn" and not _importable("gunicorn"):
                    raise RuntimeError("gunicorn is not installed (pip install -e '.[bench]')")
                target = TARGET_CLASSES[name](procs, workdir, args)
                runs.append(run_target(target, args, workdir))
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                raise
            except Exception as exc:
                log(f"{name}: not measured: {type(exc).__name__}: {exc}")
                runs.append({"target": name, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                strays = procs.stop_all(grace=20.0)
                if strays:
                    log(f"{name}: killed stray processes: {strays}")
                    if runs and runs[-1]["target"] == name:
                        runs[-1]["strays"] = strays
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}); everything started was stopped")
        interrupted = True
    finally:
        if args.keep_workdir:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if interrupted and not runs:
        return 130
    meta["elapsed_s"] = round(sum(r.get("t_end", 0) - r.get("t0", 0) for r in runs), 1)
    note = plot(runs, out / f"{args.name}.png")
    png = None if note else f"{args.name}.png"
    if note:
        log(note)
    report = markdown(runs, meta, png)
    (out / f"{args.name}.md").write_text(report)
    slim = []
    for r in runs:
        r = dict(r)
        if "analysis" in r:  # the timeline at top level, the rest of the analysis apart
            r["timeline"] = r["analysis"]["timeline"]
            r["analysis"] = {k: v for k, v in r["analysis"].items() if k != "timeline"}
        slim.append(r)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "runs": slim}, indent=1,
                                                      default=str) + "\n")
    print(report)
    log(f"wrote {out / (args.name + '.md')}, .json" + (" and .png" if png else
                                                       f" (no .png: {note})"))
    return 130 if interrupted else 0


def _importable(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


if __name__ == "__main__":
    sys.exit(main())
