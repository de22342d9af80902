"""What ``holdover demo`` does around the gateway: write the config, say what to try.

``write_config`` fills in the CLI's demo template (``holdover.cli.DEMO_CONFIG``) for a
folder, ``fresh_state`` clears what a previous demo left there, ``banner`` is the text a
newcomer reads once the gateway serves, and ``deploy_next`` is ``holdover demo next``:
deploy the next bundled revision of a running demo through the admin API.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from . import RELEASES, bundled_revisions

CONFIG_NAME = "holdover.toml"


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def holdover_prog() -> str:
    """How to spell the holdover command for a copy-paste: ``holdover`` if it is on PATH."""
    if shutil.which("holdover"):
        return "holdover"
    return f"{shlex.quote(sys.executable)} -m holdover"


def write_config(template: str, home: Path, port: int, admin_port: int,
                 idle_timeout: str = "60s") -> Path:
    """The demo's configuration in ``home``; the first revision runs from releases/v1."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_NAME
    package_parent = Path(__file__).resolve().parents[2]  # so workers import holdover
    path.write_text(template.format(
        port=port, admin_port=admin_port, idle_timeout=idle_timeout,
        command=_toml(f"{shlex.quote(sys.executable)} -m holdover.demo.app --port {{port}} "
                      f"--release ."),
        cwd=_toml(str(RELEASES / "v1")),
        pythonpath=_toml(str(package_parent)),
        releases=str(RELEASES)))
    return path


def fresh_state(home: Path) -> str | None:
    """Remove the state of an earlier demo in ``home``; an error message if one still runs."""
    state = home / "state"
    lock = state / "gateway.lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            return (f"a demo is already running in {home} (gateway pid {pid}): use it, stop "
                    f"it (Ctrl-C in its terminal), or start another with --dir OTHER "
                    f"--port OTHER")
        finally:
            os.close(fd)  # closing also drops the lock we may have taken
    if state.exists():
        shutil.rmtree(state)
    return None


def next_revision(status: dict[str, Any]) -> tuple[str, Path] | None:
    """The first bundled revision this gateway has never run, or None."""
    known = {r["id"] for r in status.get("revisions", [])}
    for rid, path in bundled_revisions():
        if rid not in known:
            return rid, path
    return None


def deploy_command(config_path: Path, rid: str, folder: Path) -> str:
    return (f"{holdover_prog()} deploy -c {shlex.quote(str(config_path))} --revision {rid} "
            f"--from {shlex.quote(str(folder))}")


def banner(config_path: Path, app_url: str, admin_url: str, token: str,
           idle_timeout: str, next_rid: str, next_dir: Path) -> str:
    prog = holdover_prog()
    cfg = shlex.quote(str(config_path))
    demo_dir = shlex.quote(str(config_path.parent))
    next_short = f"{prog} demo next" + ("" if config_path.parent.resolve() == (
        Path.cwd() / ".holdover-demo").resolve() else f" --dir {demo_dir}")
    return f"""
  holdover demo: a notes app (revision v1, 2 workers) behind the holdover gateway.

  1. Open the app and log in with any name; write a note:
       {app_url}
  2. The admin page (this link logs you in; or paste the token when it asks):
       {admin_url.rstrip("/")}/#token={token}
       token: {token}
  3. In another terminal, deploy revision {next_rid}:
       {deploy_command(config_path, next_rid, next_dir)}
     (or simply: {next_short})
  4. Then watch:
     - reload your tab: still v1, notes intact, the live counter still connected,
       and a banner that offers {next_rid};
     - open a private window: it gets {next_rid};
     - log out in your tab: you move to {next_rid};
     - v1 retires by itself once its last session has ended (log out, or leave it
       idle for {idle_timeout}).
     {prog} status -c {cfg}     shows revisions, workers and sessions.

  Unattended version of all this: {prog} demo --tour.   Ctrl-C stops the demo.
"""


def deploy_next(home: Path) -> int:
    """``holdover demo next``: deploy the next bundled revision to the demo in ``home``."""
    from .. import config
    from ..admin.client import ApiError, GatewayNotRunning, call
    from ..admin.commands import BY_NAME

    path = home / CONFIG_NAME
    if not path.exists():
        print(f"holdover demo next: no demo in {home}: start one with `holdover demo`"
              + ("" if home == (Path.cwd() / ".holdover-demo").resolve()
                 else f" --dir {shlex.quote(str(home))}"), file=sys.stderr)
        return 3
    try:
        cfg = config.load(path)
        status = call(cfg, BY_NAME["status"], {})
        nxt = next_revision(status)
        if nxt is None:
            print(f"holdover demo next: every bundled revision "
                  f"({', '.join(r for r, _ in bundled_revisions())}) has been deployed; "
                  f"`{holdover_prog()} rollback -c {shlex.quote(str(path))}` goes back one",
                  file=sys.stderr)
            return 1
        rid, folder = nxt
        print(f"$ {deploy_command(path, rid, folder)}", flush=True)
        timeout = cfg.app_start_timeout + cfg.app_stop_grace + 60
        result = call(cfg, BY_NAME["deploy"], {"revision": rid, "from": str(folder)},
                      timeout=timeout)
    except config.ConfigError as exc:
        print(f"holdover demo next: {exc}", file=sys.stderr)
        return 2
    except GatewayNotRunning as exc:
        print(f"holdover demo next: {exc}", file=sys.stderr)
        return 3
    except ApiError as exc:
        print(f"holdover demo next: {exc}", file=sys.stderr)
        if exc.error.get("log_tail"):
            print(exc.error["log_tail"], file=sys.stderr)
        return 1
    prev = result.get("previous")
    print(f"revision {rid} is active" + (f"; {prev} is draining: its sessions stay on it "
                                         f"until they log out or go idle" if prev else ""))
    print("Reload your logged-in tab (same revision, same notes), open a private window "
          f"(revision {rid}), then log out to move over.")
    return 0


def serve(template: str, home: Path, port: int, admin_port: int | None, idle_timeout: str,
          verbose: bool) -> int:
    """``holdover demo``: a fresh demo's gateway in ``home``, serving until stopped; what
    to open and try is printed once it serves."""
    from ..config import ConfigError, load
    from ..control.handover import INHERIT_ENV
    from ..gatewaylog import setup

    # A fresh demo each time; but not when `holdover reload` re-executes this one.
    busy = fresh_state(home) if INHERIT_ENV not in os.environ else None
    if busy:
        print(f"holdover demo: {busy}", file=sys.stderr)
        return 1
    if admin_port is None:
        admin_port = port + 1 if port else 0
    path = write_config(template, home, port, admin_port, idle_timeout)
    try:
        cfg = load(str(path))
    except ConfigError as exc:
        print(f"holdover: {exc}", file=sys.stderr)
        return 2
    setup(cfg.gateway_log_format, verbose)

    import uvloop

    from ..app import Gateway

    gw = Gateway(cfg)

    def tell() -> None:
        host, bound = cfg.gateway_listen[0], gw.bound[1] if gw.bound else cfg.gateway_listen[1]
        admin_url = (cfg.state_dir / "admin.url").read_text().strip()
        token = (cfg.state_dir / "admin.token").read_text().strip()
        nxt = next_revision(gw.ctl.revs.status())
        rid, folder = nxt if nxt else ("v2", RELEASES / "v2")
        print(banner(path, f"http://{host}:{bound}/", admin_url, token, idle_timeout, rid,
                     folder), flush=True)

    return uvloop.run(gw.run(on_started=tell))
