#!/usr/bin/env python3
"""The unpinned run of proxy_bench.py: proxies that use every core they are given.

Why it exists: ``[gateway] processes = N`` lets holdover proxy on N cores.  This run
measures what that buys on this machine, against nginx and HAProxy given as many
cores, with nothing pinned (no ``taskset``: proxy, backend and wrk share every core,
as on a real host):

* ``holdover-1``  -- ``processes = 1``: one process proxies, supervises, pins;
* ``holdover-2``  -- ``processes = 2``: two data-plane processes and the control process;
* ``holdover-2-claims`` -- the same, with holdover's own pin cookie offered on every
  answer (no app cookie; wrk never sends it back), so that every response is a claim
  the control process must acknowledge: the shared part at its most expensive;
* ``nginx-2``     -- nginx ``worker_processes 2``;
* ``haproxy-2``   -- HAProxy ``nbthread 2``.

Requests carry no cookie (no session is pinned).  The CPU time of each proxy process
is measured (holdover: each plane and the control process apart), divided by the
requests served: the per-request cost that says how the processes would scale on 8 or
16 cores.  Results go to ``<out>/processes.md`` and ``<out>/processes.json``.

Run: ``python bench/proxy_bench.py --unpinned [--duration S] [--rounds N]``.
All traffic stays on 127.0.0.1, every run is bounded in time, every process started
is stopped (process groups, try/finally).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import proxy_bench as pb
import psutil

TARGETS = ("holdover-1", "holdover-2", "holdover-2-claims", "nginx-2", "haproxy-2")
# wrk -t: 1 leaves the most of 2 cores to the proxies (BENCH_WRK_THREADS to change it)
THREADS = int(os.environ.get("BENCH_WRK_THREADS", "1"))


def proxy_processes(managed: pb.Managed) -> dict[str, psutil.Process]:
    """The proxy's own processes by role (the backend holdover runs is left out)."""
    proxy, _ = pb.split_tree(managed.popen.pid)
    holdover = managed.name.startswith("holdover")
    out: dict[str, psutil.Process] = {}
    for i, p in enumerate(sorted(proxy, key=lambda p: p.pid)):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.pid == managed.popen.pid:
            out["control" if holdover else "main"] = p
        elif "holdover.plane" in cmd:
            out[f"plane {cmd.split()[-1]}"] = p
        elif "holdover.supervisor.guard" not in cmd:
            out[f"worker {i}"] = p  # nginx's worker processes
    return out


def cpu_of(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, p in procs.items():
        try:
            t = p.cpu_times()
            out[role] = t.user + t.system
        except psutil.Error:
            out[role] = 0.0
    return out


def start(sup: pb.Supervisor, name: str, workdir: Path, backend_port: int,
          holdover_cmd: list[str]) -> tuple[pb.Managed, int]:
    logs = workdir / "logs"
    port = pb.free_port()
    conf_dir = workdir / "conf"
    conf_dir.mkdir(exist_ok=True)
    if name.startswith("holdover"):
        processes = 2 if "-2" in name else 1
        conf = conf_dir / f"{name}.toml"
        text = pb.holdover_toml(port, pb.free_port(), workdir, processes,
                                app_cookie="claims" not in name)
        if "claims" in name:  # the health path is never pinned: check the port instead
            text = text.replace('health_path = "/small"', 'health_path = ""')
        conf.write_text(text)
        managed = sup.start(name, [*holdover_cmd, "run", "-c", str(conf)],
                            logs / f"{name}.log", workdir, None)
    elif name == "nginx-2":
        run_dir = workdir / "run" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        conf = conf_dir / f"{name}.conf"
        conf.write_text(pb.nginx_proxy_conf(port, backend_port, run_dir,
                                            logs / f"{name}-access.log", workers=2))
        managed = sup.start(name, [pb.which("nginx") or "nginx", "-e", "stderr", "-p",
                                   f"{run_dir}/", "-c", str(conf), "-g", "daemon off;"],
                            logs / f"{name}.log", workdir, None)
    else:
        conf = conf_dir / f"{name}.cfg"
        conf.write_text(pb.haproxy_conf(port, backend_port, threads=2))
        managed = sup.start(name, [pb.which("haproxy") or "haproxy", "-db", "-f", str(conf)],
                            logs / f"{name}-access.log", workdir, None)
    pb.wait_ready(port, managed)
    sup.remember_tree(managed)
    return managed, port


def measure(name: str, managed: pb.Managed, port: int, duration: int, connections: int,
            lua: Path) -> dict[str, Any]:
    procs = proxy_processes(managed)
    before = cpu_of(procs)
    wrk = pb.run_wrk(port, "/small", duration, connections, lua, None, threads=THREADS)
    after = cpu_of(procs)
    n = max(wrk.requests, 1)
    per_role = {role: (after[role] - before[role]) / n * 1e6 for role in procs}
    return {"target": name, "req_per_s": wrk.req_per_s, "p50_ms": wrk.p50_ms,
            "p99_ms": wrk.p99_ms, "errors": sum(wrk.errors.values()),
            "cpu_us_per_req": per_role,
            "proxy_cpu_us_per_req": sum(per_role.values())}


def markdown(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: each target's best round, and every round's requests/s."""
    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["target"] not in best or r["req_per_s"] > best[r["target"]]["req_per_s"]:
            best[r["target"]] = r
    lines = [
        "# Proxy benchmark: several processes, nothing pinned",
        "",
        f"{meta['started']}, {meta['machine']['cores']} cores ({meta['machine']['cpu']}), "
        f"load average {meta['machine']['loadavg_1m_at_start']} at the start. wrk "
        f"-t{meta.get('wrk_threads', THREADS)} -c{meta['connections']} for "
        f"{meta['duration_s']} s, GET /small (13 bytes), no cookie; best of "
        f"{meta['rounds']} interleaved rounds. Proxy, backend "
        "and wrk share every core (no taskset)."
        + (" **The machine was busy with other work at the start: the numbers are noisy.**"
           if float(meta["machine"]["loadavg_1m_at_start"]) > 0.5 else ""),
        "",
        "| target | req/s | every round | p50 ms | p99 ms | proxy CPU µs/req "
        "| per process µs/req | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in TARGETS:
        r = best.get(name)
        if r is None:
            continue
        per = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["cpu_us_per_req"].items()))
        each = ", ".join(f"{x['req_per_s'] / 1000:.1f}k" for x in runs if x["target"] == name)
        lines.append(f"| {name} | {r['req_per_s']:,.0f} | {each} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['proxy_cpu_us_per_req']:.1f} | {per} | "
                     f"{r['errors']} |")
    one, two = best.get("holdover-1"), best.get("holdover-2")
    if one and two:
        pairs = [b["req_per_s"] / a["req_per_s"] for a in runs if a["target"] == "holdover-1"
                 for b in runs if b["target"] == "holdover-2" and b["round"] == a["round"]]
        lines += ["", f"holdover 2 processes / 1 process: "
                  f"**{two['req_per_s'] / one['req_per_s']:.2f} times** the requests/s "
                  f"(best rounds; round by round: "
                  f"{', '.join(f'{x:.2f}' for x in pairs)})."]
    lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The unpinned run, with proxy_bench.py's parsed options."""
    pb.ensure_packages()
    cmd, how = pb.holdover_command(args.holdover_cmd)
    if cmd is None:
        raise SystemExit(f"holdover cannot be run: {how}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": pb.cpu_model(), "cores": os.cpu_count(),
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
        "holdover": pb.holdover_version(), "wrk_threads": THREADS,
    }
    workdir = Path(tempfile.mkdtemp(prefix="holdover-bench-procs-"))
    sup = pb.Supervisor()
    rows: list[dict[str, Any]] = []
    try:
        pb.make_www(workdir)
        (workdir / "logs").mkdir()
        lua = workdir / "report.lua"
        lua.write_text(pb.WRK_LUA)
        backend_port = pb.free_port()
        backend = sup.start("backend", [sys.executable, str(pb.WRAPPER), str(backend_port),
                                        str(workdir)], workdir / "logs" / "backend.log",
                            workdir, None)
        pb.wait_ready(backend_port, backend)
        targets = {name: start(sup, name, workdir, backend_port, cmd) for name in TARGETS}
        for _, port in targets.values():
            pb.run_wrk(port, "/small", args.warmup, args.connections, lua, None,
                       threads=THREADS)
        for rnd in range(args.rounds):
            order = list(TARGETS) if rnd % 2 == 0 else list(reversed(TARGETS))
            for name in order:
                managed, port = targets[name]
                r = measure(name, managed, port, args.duration, args.connections, lua)
                r["round"] = rnd
                rows.append(r)
                pb.log(f"round {rnd} {name:18s} {r['req_per_s']:10,.0f} req/s  "
                       f"p99 {r['p99_ms']:6.2f} ms  {r['proxy_cpu_us_per_req']:.1f} µs/req")
    except (KeyboardInterrupt, pb.Interrupted) as exc:
        pb.log(f"interrupted ({exc or 'Ctrl-C'}), cleaning up")
        return 130
    finally:
        sup.stop_all()
        if args.keep_workdir:
            pb.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = markdown(rows, meta)
    print(report)
    (out / "processes.md").write_text(report)
    (out / "processes.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2)
                                        + "\n")
    pb.log(f"wrote {out / 'processes.md'} ({time.strftime('%H:%M:%S')})")
    return 0
