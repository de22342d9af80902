#!/usr/bin/env python3
"""Instructions per request of holdover's proxy and of nginx's, counted by callgrind.

Why it exists: CPU time per request (proxy_bench.py) moves by ±10 % with whatever else
runs on the machine, so a change worth 3 % cannot be seen in it without many interleaved
runs.  ``valgrind --tool=callgrind`` counts the instructions a process executes in user
space, and that count is the same run after run for the same code and the same requests,
however busy the machine is.  It leaves out the kernel (the socket calls cost the same for
every proxy making the same calls) and says nothing of cache misses, so it is the figure
for the proxy's own code, beside proxy_bench.py's CPU time, not instead of it.

The proxy runs under callgrind with instrumentation off; after a warm-up the counters are
switched on, a fixed number of keep-alive requests is sent (over ``--connections``
connections, each request with the request line and headers wrk sends in
proxy_bench.py), the counters are dumped and divided by that number.  Both proxies front
the same nginx backend as in proxy_bench.py, holdover with the same configuration
(sessions mode, access log on), nginx with ``master_process off`` so that its one process
is the one counted.

Run: ``python bench/instructions.py [--sizes small,small-h13] [--requests 20000]
[--pythonpath DIR]`` (``--pythonpath`` runs holdover from another checkout, to compare
two versions of the code).  Needs valgrind and nginx (Debian's; installed when missing
and running as root).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import (  # noqa: E402
    Interrupted,
    Processes,
    ensure_apt,
    free_port,
    install_signal_handlers,
    log,
    wait_http,
)
from proxy_bench import (  # noqa: E402
    HEADERS,
    SIZES,
    WRAPPER,
    holdover_toml,
    make_www,
    nginx_proxy_conf,
)

READY_S = 180.0  # holdover's start under callgrind takes 10-30 s on this kind of machine


def drive(port: int, path: str, headers: tuple[str, ...], requests: int,
          connections: int) -> int:
    """Send ``requests`` GETs over ``connections`` keep-alive connections, with wrk's
    request line, Host and headers (names in their case; wrk may put the headers in
    another order); returns how many answered 2xx."""
    head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()

    async def one(share: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ok = 0
        try:
            for _ in range(share):
                writer.write(head)
                resp = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"\r\ncontent-length: *(\d+)", resp, re.I)
                if m is None:
                    raise RuntimeError(f"an answer without Content-Length: {resp[:200]!r}")
                await reader.readexactly(int(m.group(1)))
                ok += resp.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2"))
        finally:
            writer.close()
        return ok

    async def run() -> int:
        shares = [requests // connections + (i < requests % connections)
                  for i in range(connections)]
        return sum(await asyncio.wait_for(asyncio.gather(*map(one, shares)), 1800))

    return asyncio.run(run())


def callgrind(*args: str) -> None:
    """Tell the process under callgrind to zero, dump or switch counting; callgrind_control
    exits 0 even when the command did not reach the process, so its answer is read."""
    out = subprocess.run(["callgrind_control", *args], capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0 or "OK." not in out.stdout:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed: "
                           f"{(out.stdout + out.stderr).strip()[-500:]}")


def total_ir(dump: Path) -> int | None:
    """The ``totals:`` line a callgrind dump ends with; None while it is being written
    (the header's ``summary:`` line comes first, so it is not taken for the end)."""
    for line in reversed(dump.read_text(errors="replace").splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


def count(pid: int, out_dir: Path, port: int, path: str, headers: tuple[str, ...],
          requests: int, connections: int) -> tuple[float, Path]:
    """Instructions per request of process ``pid`` (running under callgrind), and the
    dump they were read from."""
    drive(port, path, headers, max(2000, requests // 5), connections)  # warm-up, uncounted
    before = set(out_dir.glob("cg.*"))
    callgrind("-z", str(pid))
    callgrind("-i", "on", str(pid))
    ok = drive(port, path, headers, requests, connections)
    callgrind("-d", str(pid))
    callgrind("-i", "off", str(pid))
    if ok != requests:
        raise RuntimeError(f"{requests - ok} of {requests} requests failed")
    deadline = time.monotonic() + 60
    while True:  # until the new dump is written to its end
        new = [p for p in out_dir.glob("cg.*") if p not in before]
        if new:
            dump = max(new, key=lambda p: p.stat().st_mtime)
            total = total_ir(dump)
            if total is not None:
                return total / requests, dump
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no complete dump within 60 s")
        time.sleep(0.2)


def valgrind(out_dir: Path, name: str) -> list[str]:
    """The command prefix: callgrind with counting off until a warm-up has run."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out_dir}/cg.{name}.%p"]


def main(argv: list[str] | None = None) -> int:
    """Count each proxy in turn (one under callgrind at a time) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="small,small-h13",
                    help=f"comma list from {','.join(SIZES)}")
    ap.add_argument("--proxies", default="holdover,nginx", help="holdover,nginx")
    ap.add_argument("--requests", type=int, default=20000, help="counted requests per size")
    ap.add_argument("--connections", type=int, default=10, help="keep-alive connections")
    ap.add_argument("--pythonpath", help="run holdover from this checkout (PYTHONPATH)")
    ap.add_argument("--keep", type=Path,
                    help="copy the callgrind dumps here (PROXY-SIZE.callgrind), for "
                         "callgrind_annotate or kcachegrind")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.connections < 1:
        raise SystemExit("--requests and --connections must be at least 1")
    sizes = args.sizes.split(",")
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise SystemExit(f"unknown size(s) {', '.join(bad)}: choose from {', '.join(SIZES)}")
    install_signal_handlers()  # SIGTERM too ends in the finally below: nothing left running
    missing = ensure_apt({"valgrind": "valgrind", "callgrind_control": "valgrind",
                          "nginx": "nginx"})
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install Debian's valgrind and nginx")
    procs = Processes()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="holdover-instr-") as tmp:
        work = Path(tmp)
        make_www(work)
        try:
            for proxy in args.proxies.split(","):
                port = free_port()
                if proxy == "holdover":
                    conf = work / "holdover.toml"
                    conf.write_text(holdover_toml(port, free_port(), work))
                    env = dict(os.environ)
                    if args.pythonpath:
                        env["PYTHONPATH"] = args.pythonpath
                    proc = procs.start(proxy, [*valgrind(work, proxy), sys.executable, "-m",
                                               "holdover", "run", "-c", str(conf)],
                                       work / "holdover.log", work, env)
                elif proxy == "nginx":
                    backend = free_port()
                    procs.start("backend", [sys.executable, str(WRAPPER), str(backend),
                                            str(work)], work / "backend.log", work)
                    wait_http(backend, "/small")
                    run = work / "nginx-run"
                    run.mkdir()
                    conf = work / "nginx.conf"
                    conf.write_text("master_process off;\ndaemon off;\n" + nginx_proxy_conf(
                        port, backend, run, run / "access.log"))
                    proc = procs.start(proxy, [*valgrind(work, proxy), "nginx", "-e", "stderr",
                                               "-c", str(conf)], work / "nginx.log", work)
                else:
                    raise SystemExit(f"unknown proxy {proxy!r}")
                wait_http(port, "/small", timeout=READY_S, proc=proc.popen)
                results[proxy] = {}
                for size in sizes:
                    path = SIZES[size][0]
                    ir, dump = count(proc.pid, work, port, path, HEADERS.get(size, ()),
                                     args.requests, args.connections)
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copy(dump, args.keep / f"{proxy}-{size}.callgrind")
                    results[proxy][size] = ir
                    log(f"{proxy} {size}: {ir:,.0f} instructions per request")
                procs.stop(proc, grace=30)
        finally:
            strays = procs.stop_all()
            if strays:
                log(f"stopped strays: {strays}")
    print("\n| proxy | " + " | ".join(sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for proxy, row in results.items():
        print(f"| {proxy} | " + " | ".join(f"{row[s]:,.0f}" for s in sizes) + " |")
    if "holdover" in results and "nginx" in results:
        print("| holdover ÷ nginx | " + " | ".join(
            f"{results['holdover'][s] / results['nginx'][s]:.2f}" for s in sizes) + " |")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (KeyboardInterrupt, Interrupted):  # everything started was stopped in main
        raise SystemExit(130) from None
