"""Fuzzing through processes: mutated requests through a real gateway over loopback, and atheris.

Bounded by default; ``HOLDOVER_FUZZ_LIVE=N`` (live inputs, default 150) and
``HOLDOVER_ATHERIS_RUNS=N`` (default 3000) make longer runs.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import require

pytest.register_assert_rewrite("faultlog", "fuzzing")
import faultlog  # noqa: E402,F401  (rewritten asserts; loaded as a plugin below)
import fuzzing  # noqa: E402
from fuzzing import SEEDS, mutate  # noqa: E402

pytest_plugins = ["faultlog"]

LIVE = int(os.environ.get("HOLDOVER_FUZZ_LIVE", "150"))
ATHERIS_RUNS = int(os.environ.get("HOLDOVER_ATHERIS_RUNS", "3000"))


def test_fuzz_live_gateway(module_gateway_factory, observe):
    gw = module_gateway_factory(workers=1, extra_gateway=(
        'header_timeout = "1s"\nbody_timeout = "1s"\nkeepalive_timeout = "1s"\n'
        'response_timeout = "3s"\n')).wait_ready()
    seed = int(os.environ.get("HOLDOVER_FUZZ_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    cases = []
    for i in range(LIVE):
        r = rng.random()
        if r < 0.1:
            cases.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
        else:
            cases.append(mutate(rng, rng.choice(SEEDS)))
        if i % 10 == 0:
            cases[-1] = mutate(rng, cases[-1])
    results: dict[str, int] = {}
    bad: list[tuple[bytes, bytes, str]] = []
    lock = threading.Lock()
    todo = list(enumerate(cases))

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                _, data = todo.pop()
            out, how = b"", "timeout"
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=6) as s:
                    with_reset = False
                    try:
                        s.sendall(data)
                    except OSError:
                        with_reset = True
                    deadline = time.monotonic() + 6
                    while time.monotonic() < deadline:
                        try:
                            chunk = s.recv(65536)
                        except TimeoutError:
                            break
                        except ConnectionResetError:
                            how = "reset"
                            break
                        if not chunk:
                            how = "closed"
                            break
                        out += chunk
                    if with_reset and how == "timeout":
                        how = "reset"
            except OSError as exc:
                how = f"connect error {exc}"
            kind = ("WebSocket opened" if out.startswith(b"HTTP/1.1 101 ") else
                    "response" if out.startswith(b"HTTP/1.1 ") else
                    "no response" if not out else "NOT HTTP")
            if kind == "WebSocket opened" and how == "timeout":
                how = "left open (a tunnel has no idle timeout)"
            with lock:
                key = f"{kind}, {how}"
                results[key] = results.get(key, 0) + 1
                if kind == "NOT HTTP" or (how not in ("closed", "reset")
                                          and kind != "WebSocket opened"):
                    bad.append((data[:120], out[:120], how))

    threads = [threading.Thread(target=work) for _ in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    took = time.monotonic() - t0
    alive = gw.proc.poll() is None
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        after = s.recv(65536)
    observe("fuzz-live", f"{len(cases)} inputs (seed {seed}) in {took:.0f} s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(results.items()))
            + f"; gateway alive: {alive}; a normal request afterwards: {after[:12]!r}")
    assert not bad, f"seed {seed}: {bad[:5]}"
    assert alive and after.startswith(b"HTTP/1.1 200")


def test_fuzz_atheris(tmp_path: Path, observe):
    require("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, s in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(s)
    r = subprocess.run([sys.executable, fuzzing.__file__, "--atheris", f"-runs={ATHERIS_RUNS}",
                        "-max_total_time=60", "-max_len=4096", str(corpus)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    done = re.findall(r"Done (\d+) runs in (\d+) second", r.stderr)
    observe("fuzz-atheris", f"exit {r.returncode}; "
            + (f"{done[-1][0]} runs in {done[-1][1]} s" if done else r.stderr[-300:]))
    assert r.returncode == 0, r.stderr[-3000:]
