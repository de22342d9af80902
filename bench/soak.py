#!/usr/bin/env python3
"""Bounded soak: holdover under steady load with a deploy every few minutes.

Why it exists: a gateway that is upgraded all day must not grow.  This script runs
``holdover run`` (sessions mode) with the benchmark app, keeps ``loadgen.py`` users
logging in, working and logging out for ``--minutes``, deploys a new revision every
``--every`` minutes, and checks:

* the gateway's RSS and open file descriptors (read from ``/proc/<pid>``) stay flat;
* every drained revision retires (all its workers stopped) within a bound, and no
  revision is left running at the end but the active one;
* the number of processes of the run (found by a marker in their environment, so even
  a process that left holdover's tree is found) stays bounded, and none is left once
  holdover has stopped -- the process list is compared before and after;
* no request failed and no session was lost (the users check their own state).

It writes ``<out>/soak.md``, ``soak.json`` and, with matplotlib, ``soak.png`` (RSS, fds,
processes, live sessions per revision over time, deploys marked).

Run: ``python bench/soak.py --quick`` (~2 min) or ``python bench/soak.py --minutes 30
--every 3``.  Loopback only, bounded, and every process started is stopped again, also
on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    HERE,
    Holdover,
    Interrupted,
    Processes,
    cpu_model,
    git_describe,
    holdover_retirements,
    install_signal_handlers,
    log,
    proc_rss_fds,
    read_events,
    start_loadgen,
)

MARKER_ENV = "HOLDOVER_BENCH_SOAK"


def marked_processes(run_id: str) -> dict[int, str]:
    """Every process whose environment carries this run's marker (pid -> command)."""
    want = f"{MARKER_ENV}={run_id}".encode()
    out = {}
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie waiting for its parent: not running
        except OSError:
            continue
        out[pid] = cmd[:160]
    return out


def trend_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 minutes, a deploy every 20 s")
    ap.add_argument("--minutes", type=float, help="length of the soak (default 30)")
    ap.add_argument("--every", type=float, help="minutes between deploys (default 3)")
    ap.add_argument("--users", type=int, default=20, help="virtual users (default 20)")
    ap.add_argument("--session-seconds", type=float,
                    help="mean session length (default 20, quick 6)")
    ap.add_argument("--sample", type=float, help="seconds between samples (default 5, quick 1)")
    ap.add_argument("--out", default=str(HERE / "results"), help="output directory")
    ap.add_argument("--name", default="soak", help="output file stem (default soak)")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)
    if args.minutes is None:
        args.minutes = 2.0 if args.quick else 30.0
    if args.every is None:
        args.every = 1 / 3 if args.quick else 3.0
    if args.session_seconds is None:
        args.session_seconds = 6.0 if args.quick else 20.0
    if args.sample is None:
        args.sample = 1.0 if args.quick else 5.0
    if not 0 < args.minutes <= 24 * 60:
        ap.error("--minutes must be in (0, 1440]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    os.environ[MARKER_ENV] = run_id  # inherited by holdover, its guard and every worker
    workdir = Path(tempfile.mkdtemp(prefix="holdover-soak-"))
    procs = Processes()
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "holdover": f"commit {git_describe()}",
        "settings": {"minutes": args.minutes, "every_min": args.every, "users": args.users,
                     "session_seconds": args.session_seconds, "sample_s": args.sample},
    }
    before = marked_processes(run_id)
    samples: list[dict[str, Any]] = []
    deploys: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    interrupted = False
    idle_timeout = max(10.0, args.session_seconds)
    gw = Holdover(procs, workdir, idle_timeout=f"{idle_timeout:g}s")
    lg = None
    events_path = None
    try:
        gw.start()
        assert gw.proc is not None
        gw_pid = gw.proc.pid
        phase_file = workdir / "phase"
        phase_file.write_text("soak\n")
        duration = args.minutes * 60
        lg, events_path = start_loadgen(procs, workdir, f"http://127.0.0.1:{gw.port}",
                                        users=args.users, duration=duration + 5,
                                        session_seconds=args.session_seconds,
                                        phase_file=phase_file, source_ips=False)
        t0 = time.time()
        next_deploy = t0 + args.every * 60
        next_sample = t0
        version = 1
        while time.time() < t0 + duration:
            now = time.time()
            if lg.popen.poll() is not None:
                raise RuntimeError(f"loadgen exited early; see {lg.log_path}")
            if now >= next_sample:
                next_sample += args.sample
                samples.append(take_sample(gw, gw_pid, run_id, t0))
            if now >= next_deploy and now < t0 + duration - 5:
                next_deploy += args.every * 60
                version += 1
                code, text, secs = gw.cli("deploy", "--revision", f"v{version}", "--env",
                                          f"BENCH_VERSION={version}")
                deploys.append({"t": now - t0, "revision": f"v{version}", "ok": code == 0,
                                "seconds": round(secs, 2), "output": text[-300:]})
                log(f"deploy v{version}: {'ok' if code == 0 else 'FAILED'} ({secs:.2f}s)")
            time.sleep(0.2)
        # the users log out; then every old revision must retire
        phase_file.write_text("stop\n")
        time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):
            os.kill(lg.pid, signal.SIGTERM)
        lg.popen.wait(timeout=60)
        settle_deadline = time.time() + args.session_seconds * 1.5 + idle_timeout + 15
        settled_after = None
        while time.time() < settle_deadline:
            samples.append(take_sample(gw, gw_pid, run_id, t0))
            st = gw.api("/api/status")
            if not any(r["state"] == "draining" for r in st["revisions"]):
                settled_after = round(time.time() - (t0 + duration), 1)
                break
            time.sleep(1.0)
        final_status = gw.api("/api/status")
        events = gw.events()
        running_before_stop = marked_processes(run_id)
        # graceful stop of holdover, then nothing of the run may be left
        t_stop = time.time()
        gw.proc.popen.send_signal(signal.SIGTERM)
        try:
            gw.proc.popen.wait(timeout=60)
            stop_s = round(time.time() - t_stop, 2)
        except subprocess.TimeoutExpired:
            stop_s = None
        time.sleep(1.0)
        after = marked_processes(run_id)
        leaked = {pid: cmd for pid, cmd in after.items() if pid not in before}
        result = {"settled_after_s": settled_after, "final_status": final_status,
                  "events": events, "processes_before_stop": running_before_stop,
                  "leaked_after_stop": leaked, "gateway_stop_s": stop_s,
                  "gateway_exit": gw.proc.popen.returncode}
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}); cleaning up")
        interrupted = True
    finally:
        if lg is not None and lg.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(lg.pid, signal.SIGTERM)
        strays = procs.stop_all(grace=20.0)
        left = marked_processes(run_id)
        for pid in left:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        if strays or left:
            log(f"killed leftovers: {strays} {left}")
        result["killed_at_cleanup"] = {"strays": strays, "marked": left}
        if args.keep_workdir:
            log(f"kept {workdir}")
    if interrupted or not samples:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        return 130 if interrupted else 1
    lg_events = read_events(events_path) if events_path else []
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    note = plot(samples, deploys, out / f"{args.name}.png")
    png = None if note else f"{args.name}.png"
    if note:
        log(note)
    report, verdict = analyze(samples, deploys, result, lg_events, meta, args, png)
    (out / f"{args.name}.md").write_text(report)
    (out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "verdict": verdict, "deploys": deploys, "samples": samples,
         **{k: v for k, v in result.items() if k != "events"},
         "events": result.get("events", [])[-300:]}, indent=1, default=str) + "\n")
    print(report)
    log(f"wrote {out / (args.name + '.md')}, .json" + (" and .png" if png else
                                                       f" (no .png: {note})"))
    return 0 if verdict["pass"] else 1


def take_sample(gw: Holdover, gw_pid: int, run_id: str, t0: float) -> dict[str, Any]:
    s: dict[str, Any] = {"t": round(time.time() - t0, 2)}
    try:
        s["rss"], s["fds"] = proc_rss_fds(gw_pid)
    except OSError:
        s["rss"] = s["fds"] = None
    marked = marked_processes(run_id)
    s["processes"] = len(marked)
    s["workers"] = sum(1 for c in marked.values() if "app.py" in c)
    try:
        st = gw.api("/api/status", timeout=3.0)
        s["revs"] = {r["id"]: {"state": r["state"], "sessions": r["sessions"],
                               "workers": sum(1 for w in r["workers"]
                                              if w["state"] not in ("stopped", "failed"))}
                     for r in st["revisions"] if r["state"] != "retired"}
        s["lost"] = st.get("sessions_lost", 0)
        s["retired"] = sum(1 for r in st["revisions"] if r["state"] == "retired")
    except Exception as exc:  # the gateway busy for 3 s is itself worth recording
        s["status_error"] = f"{type(exc).__name__}: {exc}"
    return s


def analyze(samples: list[dict[str, Any]], deploys: list[dict[str, Any]],
            result: dict[str, Any], lg_events: list[dict[str, Any]], meta: dict[str, Any],
            args: argparse.Namespace, png: str | None) -> tuple[str, dict[str, Any]]:
    good = [s for s in samples if s.get("rss")]
    span = good[-1]["t"] if good else 0
    warm = [s for s in good if s["t"] >= min(60.0, span / 4)]  # skip start-up growth
    rss_pts = [(s["t"], s["rss"] / 2**20) for s in warm]
    fd_pts = [(s["t"], float(s["fds"])) for s in warm]
    rss_first, rss_last = (rss_pts[0][1], rss_pts[-1][1]) if rss_pts else (0, 0)
    rss_max = max(v for _, v in rss_pts) if rss_pts else 0
    fd_first, fd_last = (fd_pts[0][1], fd_pts[-1][1]) if fd_pts else (0, 0)
    fd_max = max(v for _, v in fd_pts) if fd_pts else 0
    rss_trend, fd_trend = trend_per_min(rss_pts), trend_per_min(fd_pts)
    # flat: the last third's mean within 5 % (or 4 MiB) of the first third's after warm-up
    third = max(1, len(rss_pts) // 3)
    rss_a = sum(v for _, v in rss_pts[:third]) / third if rss_pts else 0
    rss_b = sum(v for _, v in rss_pts[-third:]) / third if rss_pts else 0
    fd_b_max = max((v for _, v in fd_pts[-third:]), default=0)
    fd_a_max = max((v for _, v in fd_pts[:third]), default=0)
    rss_flat = rss_b - rss_a <= max(0.05 * rss_a, 4.0) if rss_pts else False
    n_deploys = sum(1 for d in deploys if d["t"] >= (warm[0]["t"] if warm else 0))
    per_deploy = (rss_last - rss_first) / n_deploys if n_deploys else None
    fd_flat = fd_b_max <= fd_a_max + 10 if fd_pts else False
    # revisions
    events = result.get("events", [])
    retire = holdover_retirements(events)
    bound = args.session_seconds * 1.5 + max(10.0, args.session_seconds) + 15
    slow = [r for r in retire if r.get("retired") and r["retired"] - r["drain_started"] > bound]
    never = [r for r in retire if not r.get("retired") and not r.get("reactivated")]
    final = result.get("final_status", {})
    alive_old = [r["id"] for r in final.get("revisions", []) if r["id"] != final.get("active")
                 and r["state"] != "retired"]
    reqs = [e for e in lg_events if e.get("ev") == "req"]
    lost = [e for e in lg_events if e.get("ev") == "lost"]
    failed = [e for e in reqs if not e["ok"]]
    max_workers = max((s.get("workers", 0) for s in samples), default=0)
    longest = max((r["retired"] - r["drain_started"] for r in retire if r.get("retired")),
                  default=0.0)
    leaked = result.get("leaked_after_stop", {})
    checks = {
        "RSS flat": rss_flat,
        "fds flat": fd_flat,
        "every drained revision retired in time": not slow and not never,
        "no old revision running at the end": not alive_old,
        "no process left after holdover stopped": not leaked,
        "no failed request": not failed,
        "no lost session": not lost,
        "every deploy succeeded": all(d["ok"] for d in deploys),
    }
    verdict = {"pass": all(checks.values()), "checks": checks}
    s = meta["settings"]
    lines = [
        "# Soak: holdover with a deploy every few minutes",
        "",
        f"Run {meta['started']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"Python {meta['machine']['python']}, holdover {meta['holdover']}; load average at "
        f"start {meta['machine']['loadavg_1m_at_start']}.",
        "",
        f"Command: `{meta['command']}`: {s['minutes']:g} min, a deploy every "
        f"{s['every_min'] * 60:g} s ({len(deploys)} deploys), {s['users']} users with sessions "
        f"of {0.5 * s['session_seconds']:g}-{1.5 * s['session_seconds']:g} s, sampled every "
        f"{s['sample_s']:g} s.",
        "",
        f"**Verdict: {'PASS' if verdict['pass'] else 'FAIL'}**",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {k} | {'ok' if v else '**FAILED**'} |" for k, v in checks.items()),
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests / failed / sessions lost | {len(reqs):,} / {len(failed)} / {len(lost)} |",
        f"| gateway RSS after warm-up: first / last / max | {rss_first:.1f} / {rss_last:.1f} / "
        f"{rss_max:.1f} MiB |",
        f"| RSS trend (least squares) | {rss_trend:+.3f} MiB/min |" if rss_trend is not None
        else "| RSS trend | - |",
        f"| RSS growth per deploy after warm-up (last - first) / deploys | "
        f"{per_deploy * 1024:+.0f} KiB ({n_deploys} deploys) |" if per_deploy is not None
        else "| RSS growth per deploy | - |",
        f"| gateway fds: first / last / max | {fd_first:.0f} / {fd_last:.0f} / {fd_max:.0f} |",
        f"| fd trend | {fd_trend:+.2f} /min |" if fd_trend is not None else "| fd trend | - |",
        f"| most app worker processes at once | {max_workers} |",
        f"| revisions retired / still draining at the end | "
        f"{sum(1 for r in retire if r.get('retired'))} / {len(never)} |",
        f"| longest drain (drain start to retired) | {longest:.1f} s (bound {bound:.0f} s) |",
        f"| old revisions all retired, after the users stopped | "
        f"{result.get('settled_after_s', '-')} s |",
        f"| holdover stop (SIGTERM to exit) | {result.get('gateway_stop_s', '-')} s, exit code "
        f"{result.get('gateway_exit', '-')} |",
        f"| processes of the run before stop / after stop | "
        f"{len(result.get('processes_before_stop', {}))} / {len(leaked)} |",
        "",
    ]
    if slow or never or alive_old:
        lines += ["Revisions that did not retire in time: "
                  + ", ".join(r["revision"] for r in slow + never) + " " + ", ".join(alive_old),
                  ""]
    if leaked:
        lines += ["Processes left after holdover stopped:", "",
                  *(f"- `{pid}` `{cmd}`" for pid, cmd in leaked.items()), ""]
    if failed or lost:
        lines += ["Failures / losses (first few):", ""]
        lines += [f"- failed {e['k']} at +{e['t'] - reqs[0]['t']:.0f}s: {e.get('err', '')}"
                  for e in failed[:5]]
        lines += [f"- lost at +{e['t'] - reqs[0]['t']:.0f}s: {e['reason']}: {e['detail']}"
                  for e in lost[:5]]
        lines.append("")
    lines += [f"![soak]({png})" if png else "(No plot: matplotlib is not installed; "
              "`pip install -e '.[bench]'`.)", ""]
    verdict.update({"rss_mib_first": rss_first, "rss_mib_last": rss_last,
                    "rss_trend_mib_per_min": rss_trend, "rss_kib_per_deploy":
                    per_deploy * 1024 if per_deploy is not None else None,
                    "fds_first": fd_first,
                    "fds_last": fd_last, "fd_trend_per_min": fd_trend,
                    "requests": len(reqs), "failed": len(failed), "lost": len(lost),
                    "retire": retire})
    return "\n".join(lines), verdict


def plot(samples: list[dict[str, Any]], deploys: list[dict[str, Any]], path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    good = [s for s in samples if s.get("rss")]
    fig, axes = plt.subplots(3, 1, figsize=(13, 8.5), sharex=True)
    t = [s["t"] / 60 for s in good]
    axes[0].plot(t, [s["rss"] / 2**20 for s in good], color="tab:blue", label="gateway RSS MiB")
    axes[0].set_ylabel("RSS MiB")
    ax0b = axes[0].twinx()
    ax0b.plot(t, [s["fds"] for s in good], color="tab:green", label="gateway fds")
    ax0b.set_ylabel("open fds", color="tab:green")
    axes[0].set_title("gateway RSS (blue) and open file descriptors (green)", loc="left",
                      fontsize=10)
    axes[1].plot([s["t"] / 60 for s in samples], [s.get("workers", 0) for s in samples],
                 color="tab:purple", label="app worker processes")
    axes[1].plot([s["t"] / 60 for s in samples], [s.get("processes", 0) for s in samples],
                 color="tab:grey", ls="--", label="all processes of the run")
    axes[1].set_ylabel("processes")
    axes[1].legend(fontsize=8, loc="upper left")
    axes[1].set_title("processes (found by an environment marker)", loc="left", fontsize=10)
    revs: list[str] = []
    for s in samples:
        for r in s.get("revs", {}):
            if r not in revs:
                revs.append(r)
    cmap = plt.get_cmap("tab20")
    for i, rev in enumerate(revs):
        axes[2].plot([s["t"] / 60 for s in samples],
                     [s.get("revs", {}).get(rev, {}).get("sessions", 0) for s in samples],
                     color=cmap(i % 20), lw=1.2, label=rev)
    axes[2].set_ylabel("live sessions")
    axes[2].set_title("live sessions per revision (holdover status)", loc="left", fontsize=10)
    if len(revs) <= 14:
        axes[2].legend(fontsize=7, ncol=7, loc="upper left")
    for a in axes:
        for d in deploys:
            a.axvline(d["t"] / 60, color="grey", lw=0.6, ls=":")
        a.grid(alpha=0.25)
    axes[-1].set_xlabel("minutes (dotted lines: deploys)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


if __name__ == "__main__":
    sys.exit(main())
