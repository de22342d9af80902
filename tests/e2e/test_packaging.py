"""holdover as users install it: the wheel, `--version`, and shell completion.

The wheel test builds the package with `python -m build` from a copy of the source
(so the checkout gets no build/ or egg-info), installs the wheel into a fresh virtual
environment with pip, and runs `holdover demo` from there — without this checkout on
the path — then requests the app through the gateway and stops it.  It takes about half
a minute, most of it pip installing the dependencies.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from importlib.metadata import version
from pathlib import Path

import psutil
from conftest import wait_for

from holdover.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def subcommands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def holdover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "holdover", *args], capture_output=True, text=True,
                          timeout=60)


def test_version_comes_from_the_package_metadata() -> None:
    out = holdover("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"holdover {version('holdover')}"


def test_bash_completion_lists_every_subcommand_and_completes(tmp_path: Path) -> None:
    out = holdover("completion", "bash")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "holdover.bash"
    script.write_text(out.stdout)
    names = re.search(r"^_shtab_holdover_subparsers=\(([^)]*)\)", out.stdout, re.M)
    assert names and sorted(names.group(1).split()) == subcommands()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Source it and ask it what a user's Tab would get.
    probe = subprocess.run(["bash", "-c", f"""
        source {script}
        complete -p holdover
        COMP_WORDS=(holdover de); COMP_CWORD=1; _shtab_holdover; echo "${{COMPREPLY[*]}}"
        COMP_WORDS=(holdover completion ''); COMP_CWORD=2; _shtab_holdover
        echo "${{COMPREPLY[*]}}"
    """], capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert "_shtab_holdover holdover" in lines[0]
    assert sorted(lines[1].split()) == ["demo", "deploy"]
    assert sorted(lines[2].split()) == ["bash", "zsh"]


def test_zsh_completion_lists_every_subcommand(tmp_path: Path) -> None:
    out = holdover("completion", "zsh")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#compdef holdover")
    listed = re.findall(r"^\s+([a-z][a-z-]*):'", out.stdout, re.M)
    assert sorted(set(listed)) == subcommands()
    zsh = shutil.which("zsh")
    assert zsh, "zsh is missing: scripts/test.sh installs it (apt-get install zsh)"
    script = tmp_path / "_holdover"
    script.write_text(out.stdout)
    assert subprocess.run([zsh, "-n", str(script)]).returncode == 0


def test_wheel_installs_in_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "holdover", src / "holdover",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run([PY, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("holdover-*.whl"))
    # Every file the package ships beside its code (the demo, the admin page) is in it.
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data = {str(p.relative_to(src)) for p in (src / "holdover").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data and data <= shipped, data - shipped

    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                          "--disable-pip-version-check", str(wheel)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert pip.returncode == 0, pip.stderr[-3000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import holdover; print(holdover.__file__)"], capture_output=True,
                           text=True, timeout=60, env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where  # the installed copy, not this checkout

    out: list[str] = []
    proc = subprocess.Popen([str(venv / "bin" / "holdover"), "demo", "--port", "0", "--dir",
                             str(tmp_path / "demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        def app_url() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"demo exited {proc.returncode}:\n{''.join(out)}")
            m = re.search(r"^\s+http://127\.0\.0\.1:(\d+)/\s*$", "".join(out), re.M)
            return m.group(1) if m and "Ctrl-C stops the demo" in "".join(out) else None

        port = int(wait_for(app_url, 90, interval=0.2, what="the demo's banner"))
        kids = psutil.Process(proc.pid).children(recursive=True)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            page = r.read().decode()
        finally:
            conn.close()
        assert r.status == 200 and re.search(r'<div class="rev"[^>]*>v1</div>', page), page
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
    assert proc.returncode == 0, "".join(out)[-3000:]
    _, alive = psutil.wait_procs(kids, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, alive
