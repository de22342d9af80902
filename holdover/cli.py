"""The ``holdover`` command: thin wrappers over the gateway and the config loader.

Exit codes: 0 success; 1 the command failed (a revision never became ready, a port in
use, a deploy refused); 2 bad usage or a bad configuration file; 3 no gateway is running
for this configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, cliformat, config
from .admin.commands import BY_NAME, COMMANDS, Command

DEMO_CONFIG = """\
# Written by `holdover demo`: the gateway in front of the bundled demo app.
# `holdover demo next` deploys the next bundled revision; by hand, that is
#   holdover deploy -c THIS_FILE --revision v2 --from {releases}/v2
[gateway]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
state_dir = "state"
shutdown_timeout = "5s"

[app]
command = {command}
cwd = {cwd}  # revision v1; a deploy --from DIR runs in a snapshot of DIR
env = {{ PYTHONPATH = {pythonpath} }}
workers = 2
health_path = "/healthz"
health_interval = "2s"
mode = "sessions"
session_cookie = "session"  # the app's own: login pins a session, logout ends it
session_idle_timeout = "{idle_timeout}"  # short, so an abandoned session frees v1 soon
stop_grace = "3s"
"""


def _setup_logging(verbose: bool, cfg: config.Config | None = None) -> None:
    from . import gatewaylog

    gatewaylog.setup(cfg.gateway_log_format if cfg is not None else "plain", verbose)


def _load(path: str) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"holdover: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(cfg: config.Config) -> int:
    import uvloop

    from .app import Gateway

    async def main() -> int:
        return await Gateway(cfg).run()

    return uvloop.run(main())


def cmd_run(args: argparse.Namespace) -> int:
    from .admin.exposure import listen_warnings

    cfg = _load(args.config)
    _setup_logging(args.verbose, cfg)
    for warning in listen_warnings(cfg):
        logging.getLogger("holdover").warning("%s", warning)
    return _serve(cfg)


def cmd_check(args: argparse.Namespace) -> int:
    from .admin.exposure import file_warnings, listen_warnings

    cfg = _load(args.config)
    if cfg.app_upstreams or not cfg.app_command:
        what = (f"{len(cfg.app_upstreams)} external worker(s)" if cfg.app_upstreams else
                f"external workers found by {cfg.app_discover}")
    else:
        what = f"{cfg.app_workers} worker(s) of {cfg.app_command!r}"
    print(f"{cfg.path}: ok ({what}, listening on {cfg.gateway_listen[0]}:"
          f"{cfg.gateway_listen[1]})")
    for warning in [*listen_warnings(cfg), *file_warnings(cfg.state_dir)]:
        print(f"holdover: warning: {warning}", file=sys.stderr)
    if args.store:  # what the cluster's Redis says of this node joining
        from .control.joincheck import store_lines

        found, problems = store_lines(cfg)
        for line in found:
            print(line)
        for line in problems:
            print(line, file=sys.stderr)
        return 2 if problems else 0
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``holdover demo`` (serve), ``demo next`` (deploy the next revision), ``--tour``."""
    from .demo import launch

    if args.cluster and args.action != "next":
        from .demo.cluster_tour import cluster_demo

        return cluster_demo(args, DEMO_CONFIG)
    if args.tour:
        from .demo.tour import run_tour

        return run_tour(DEMO_CONFIG, verbose=args.verbose)
    home = Path(args.dir).resolve()
    if args.action == "next":
        return launch.deploy_next(home)
    return launch.serve(DEMO_CONFIG, home, args.port, args.admin_port, args.idle_timeout,
                        args.verbose)


def _print_status(st: dict[str, Any]) -> None:
    print(f"mode {st['mode']}  active {st['active'] or '-'}"
          + (f"  canary {st['canary']}" if st.get("canary") else "")
          + f"  live sessions {st['sessions']}  lost {st['sessions_lost']} since the gateway "
            f"(re)started")
    procs = st.get("processes")
    if procs:
        up = [p for p in procs if p["alive"]]
        print(f"processes {len(up)} of {len(procs)} serving (pids "
              f"{', '.join(str(p['pid']) for p in up) or '-'}), "
              f"{st.get('connections', 0)} client connection(s)")
    nodes = st.get("nodes")
    if nodes:  # a cluster: every node, and each worker's
        print("nodes " + ", ".join(f"{n['name']}{' (this one)' if n['this'] else ''}"
                                   f"{'' if n['ready'] else ' (not ready)'}" for n in nodes))
    if st.get("store_away"):
        print(f"the shared store has not answered for {st['store_away']:.0f}s: cluster "
              f"changes are refused meanwhile, other nodes' figures are that old")
    rows = [("REVISION", "STATE", "SESSIONS", "WORKER", "PID", "PORT", "WORKER STATE",
             "IN FLIGHT", *(("NODE",) if nodes else ()))]
    for rev in st["revisions"]:
        state = rev["state"] + (f" ({rev['canary_percent']:g}% canary)"
                                if rev.get("canary_percent") else "")
        workers = [w for w in rev["workers"] if w["state"] != "stopped"] or [None]
        for i, w in enumerate(workers):
            first = i == 0
            rows.append((rev["id"] if first else "", state if first else "",
                         str(rev["sessions"]) if first else "",
                         *((w["id"], cliformat.pid_of(w), cliformat.port_of(w), w["state"],
                            str(w["inflight"])) if w else ("-", "", "", "", "")),
                         *((w.get("node", "") if w else "",) if nodes else ())))
    print(cliformat.table(rows))


def _print_nodes(result: dict[str, Any]) -> None:
    """A cluster-wide command: what each node did."""
    for node, said in sorted((result.get("nodes") or {}).items()):
        print(f"  node {node}: {said.get('state')}" + (f" ({said['error']})" if said.get(
            "error") else ""))


def _print_result(name: str, result: Any) -> None:
    if name == "status":
        _print_status(result)
    elif name == "events":
        for e in result["events"]:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"]))
            node = (e.get("data") or {}).get("node")  # in a cluster: where it happened
            print(f"{e['id']:>5}  {stamp}  {e['kind']:<14} {f'[{node}] ' if node else ''}"
                  f"{e['message']}")
    elif name == "deploy":
        print(f"revision {result['revision']} is "
              + (f"a {result['canary_percent']:g}% canary" if result.get("canary_percent")
                 else "active")
              + (f"; {result['previous']} is draining with "
                 f"{result.get('previous_sessions', 0)} session(s)" if result.get("previous")
                 and not result.get("canary_percent") else ""))
        _print_nodes(result)
    elif name in ("rollback", "promote"):
        if result.get("aborted_canary"):
            print(f"canary {result['aborted_canary']} aborted; {result['revision']} stays "
                  f"active")
        else:
            print(f"revision {result['revision']} is active"
                  + (f"; {result['previous']} is draining" if result.get("previous") else ""))
        _print_nodes(result)
    else:
        text = cliformat.render(name, result)
        print(text if text is not None else json.dumps(result, indent=2))


def _api_command(command: Command) -> Any:
    def run(args: argparse.Namespace) -> int:
        from .admin.client import ApiError, GatewayNotRunning, call

        cfg = _load(args.config)
        values: dict[str, Any] = {}
        for p in command.params:
            v = getattr(args, p.name.replace("-", "_"), None)
            if v is None:
                continue
            if p.type is dict:
                env = {}
                for item in v:
                    k, eq, val = item.partition("=")
                    if not eq or not k:
                        print(f"holdover: --{p.name} {item!r}: expected NAME=VALUE",
                              file=sys.stderr)
                        return 2
                    env[k] = val
                v = env
            elif p.is_path:
                v = os.path.abspath(v)
            values[p.name] = v
        if command.name == "rollback" and not getattr(args, "json", False):
            _announce_rollback(cfg, values.get("revision"))
        # A deploy or rollback lasts as long as starting (and, rolling, draining) takes.
        timeout = None if command.long_running else 30.0
        show = command.long_running and not getattr(args, "json", False)
        try:
            if show:
                result = _with_progress(cfg, lambda: call(cfg, command, values, timeout=timeout))
            else:
                result = call(cfg, command, values, timeout=timeout)
        except GatewayNotRunning as exc:
            print(f"holdover: {exc}", file=sys.stderr)
            return 3
        except ApiError as exc:
            print(f"holdover {command.name}: {exc}", file=sys.stderr)
            tail = exc.error.get("log_tail")
            if tail:
                print("--- last lines of the failing worker's log ---", file=sys.stderr)
                print(tail, file=sys.stderr)
            return 1
        if getattr(args, "json", False):
            print(json.dumps(result, indent=2))
        else:
            _print_result(command.name, result)
        if getattr(args, "wait_retired", False) and result.get("previous"):
            return _wait_retired(cfg, result["previous"])
        return 0

    return run


def _announce_rollback(cfg: config.Config, revision: str | None) -> None:
    """Say where a rollback goes before it acts (the gateway decides; this is its answer)."""
    st = _status(cfg)
    if st is None:
        return
    if revision is None and st.get("canary"):
        print(f"aborting canary {st['canary']} ({st['active']} stays active)", flush=True)
    elif revision is not None or st.get("rollback_to"):
        print(f"rolling back: {st.get('active') or '-'} -> {revision or st['rollback_to']}",
              flush=True)


def _status(cfg: config.Config) -> dict[str, Any] | None:
    from .admin.client import ApiError, GatewayNotRunning, call

    try:
        return call(cfg, BY_NAME["status"], {}, timeout=10)
    except (ApiError, GatewayNotRunning):
        return None


def _with_progress(cfg: config.Config, action: Any) -> Any:
    """Run a long admin call while printing how its workers come up, as they do."""
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t0 = time.monotonic()
    before = {r["id"] for r in (_status(cfg) or {}).get("revisions", [])}
    t.start()
    seen: dict[tuple[str, str], str] = {}  # (node, worker): worker ids repeat across nodes
    while t.is_alive():
        t.join(0.25)
        st = _status(cfg)
        for rev in (st or {}).get("revisions", []):
            if rev["id"] in before and rev["state"] != "starting":
                continue
            for w in rev["workers"]:
                key = (w.get("node", ""), w["id"])
                if seen.get(key) != w["state"]:
                    seen[key] = w["state"]
                    print(f"  {time.monotonic() - t0:5.1f}s  {rev['id']}: worker {w['id']} "
                          + (f"on {w['node']} " if w.get("node") else "")
                          + f"{w['state']}" + ((f" ({w['url']})" if w.get("url") else
                                              f" (pid {w['pid']}, port {w['port']})")
                                             if w["state"] == "ready" else ""),
                          file=sys.stderr, flush=True)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _wait_retired(cfg: config.Config, rid: str) -> int:
    """Follow a draining revision until it retires, showing its sessions decay."""
    last = None
    t0 = time.monotonic()
    try:
        while True:
            st = _status(cfg)
            if st is None:
                print("holdover: the gateway went away", file=sys.stderr)
                return 3
            rev = next((r for r in st["revisions"] if r["id"] == rid), None)
            if rev is None or rev["state"] in ("retired", "failed"):
                print(f"revision {rid} retired after {time.monotonic() - t0:.0f}s")
                return 0
            if rev["state"] == "active":
                print(f"revision {rid} is active again (rolled back); not waiting")
                return 0
            now = (rev["state"], rev["sessions"])
            if now != last:
                last = now
                print(f"  {time.monotonic() - t0:5.0f}s  {rid} {rev['state']}: "
                      f"{rev['sessions']} session(s) left", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 130


def cmd_logs(args: argparse.Namespace) -> int:
    """Print (and with -f follow) a worker's log file, read directly from state_dir."""
    cfg = _load(args.config)
    rev = args.worker.rsplit("-", 1)[0]
    path = cfg.state_dir / "logs" / rev / f"{args.worker}.log"
    try:
        exists = path.exists()
    except PermissionError:
        from .admin.client import not_yours

        print(f"holdover: {not_yours(cfg, path)}", file=sys.stderr)
        return 1
    if not exists:
        known = sorted(p.stem for p in (cfg.state_dir / "logs").glob("*/*.log"))
        print(f"holdover: no log for worker {args.worker!r} at {path}; known workers: "
              f"{', '.join(known) or 'none'}", file=sys.stderr)
        return 1
    from .supervisor.logs import tail

    print(tail(path, args.lines))
    if not args.follow:
        return 0
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        try:
            while True:
                data = f.read()
                if data:
                    sys.stdout.write(data.decode("utf-8", "replace"))
                    sys.stdout.flush()
                elif path.stat().st_size < f.tell():  # rotated: follow the new file
                    f.close()
                    f = open(path, "rb")  # noqa: SIM115
                else:
                    time.sleep(0.25)
        except KeyboardInterrupt:
            return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write (or with --print show) a holdover.toml for the app in a folder."""
    from .init import InitError, generate

    root = Path(args.dir).resolve()
    if not root.is_dir():
        print(f"holdover init: {args.dir}: no such folder", file=sys.stderr)
        return 2
    out = Path(args.config) if args.config else root / config.DEFAULT_CONFIG
    if out.exists() and not args.print:
        print(f"holdover init: {out} already exists; not overwriting it (remove it first, "
              f"or use --print to see what init would write)", file=sys.stderr)
        return 1
    try:
        listen = config.parse_address(args.listen)
    except ValueError as exc:
        print(f"holdover init: --listen: {exc}", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty() and not args.print
    try:
        text, found = generate(
            root, out.resolve(), framework=args.framework, command=args.command,
            listen=listen, ask=input if interactive else None,
            say=lambda m: print(m, file=sys.stderr))
    except InitError as exc:
        print(f"holdover init: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("\nholdover init: nothing written", file=sys.stderr)
        return 1
    if args.print:
        sys.stdout.write(text)
        return 0
    try:
        with open(out, "x", encoding="utf-8") as f:  # "x": never overwrite, even in a race
            f.write(text)
    except FileExistsError:
        print(f"holdover init: {out} already exists; not overwriting it", file=sys.stderr)
        return 1
    for note in found.notes:
        print(f"holdover init: note: {note}", file=sys.stderr)
    print(f"wrote {out} for the {found.framework} app in {found.entry}; next: "
          f"holdover check -c {out.name} && holdover run -c {out.name}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a completion script generated from this very parser (so it cannot drift)."""
    import shtab

    parser = build_parser()
    _mark_paths(parser, shtab)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _mark_paths(parser: argparse.ArgumentParser, shtab: Any) -> None:
    """Complete file names after -c, folder names after --from, --dir and init's DIR."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                _mark_paths(sp, shtab)
        elif action.dest == "config":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest in ("from", "dir"):
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the state store (and its keys) while the gateway runs; see state/backup.py."""
    from .state.backup import BackupError, backup

    cfg = _load(args.config)
    try:
        done = backup(cfg.state_dir, Path(args.file).absolute())
    except BackupError as exc:
        print(f"holdover backup: {exc}", file=sys.stderr)
        return 1
    print(f"{done.database}: {done.revisions} revision(s), {done.pins} session pin(s), "
          f"{done.events} event(s) (schema version {done.schema_version})")
    if done.secret is not None:
        print(f"{done.secret}: the keys (secret.json); keep it with the database, and as "
              f"private: it signs every holdover_pin cookie")
    else:
        print(f"no secret.json in {cfg.state_dir} yet: the gateway creates it on its first "
              f"start", file=sys.stderr)
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config.reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="holdover", description=(
        "Zero-downtime upgrade gateway: a reverse proxy and worker supervisor that keeps "
        "every live session on the revision it started on."))
    p.add_argument("--version", action="version", version=f"holdover {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", default=os.environ.get("HOLDOVER_CONFIG",
                                                                 config.DEFAULT_CONFIG),
                        help="configuration file (default: ./holdover.toml)")
        return sp

    r = with_config(sub.add_parser("run", help="start the gateway and the app's workers"))
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_run)
    ck = with_config(sub.add_parser("check", help="validate the configuration file"))
    ck.add_argument("--store", action="store_true",
                    help="also ask the shared store (a cluster's Redis) whether this node "
                    "can join: its secret and its name against the live nodes'")
    ck.set_defaults(func=cmd_check)
    d = sub.add_parser("demo", help="run the gateway in front of the bundled demo app",
                       description="Start the gateway in front of a small notes app and "
                       "print what to open and try. `holdover demo next` deploys the next "
                       "bundled revision of the running demo; `holdover demo --tour` shows "
                       "a deploy unattended, with simulated users.")
    d.add_argument("action", nargs="?", choices=["next"],
                   help="next: deploy the next bundled revision to the running demo")
    d.add_argument("--port", type=int, default=8080,
                   help="public port (default 8080; 0 = any free port)")
    d.add_argument("--admin-port", type=int, default=None,
                   help="admin port (default: port+1, or any free port with --port 0)")
    d.add_argument("--dir", default=".holdover-demo",
                   help="folder for the demo's config and state (default .holdover-demo)")
    d.add_argument("--idle-timeout", default="60s",
                   help="session_idle_timeout of the demo (default 60s)")
    d.add_argument("--tour", action="store_true",
                   help="run a scripted deploy with simulated users and print what happens")
    d.add_argument("--cluster", action="store_true",
                   help="two nodes sharing a local redis-server (which must be installed) "
                   "on 127.0.0.11 and 127.0.0.12, behind a round-robin TCP balancer")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=cmd_demo)
    it = sub.add_parser("init", help="write a holdover.toml for the app in this folder",
                        description="Recognise the app's framework from its files and write "
                        "a commented holdover.toml that `holdover run` can start. Asks one "
                        "question when unsure (without a terminal: takes the best guess). "
                        "Never overwrites a file.")
    it.add_argument("dir", nargs="?", default=".", help="the app's folder (default: .)")
    it.add_argument("-c", "--config", default=None,
                    help="file to write (default: DIR/holdover.toml)")
    it.add_argument("--print", action="store_true",
                    help="print the configuration instead of writing it")
    it.add_argument("--framework", default=None, help="take this framework's app when "
                    "several are found (django, flask, fastapi, starlette, streamlit, gradio, "
                    "dash, panel)")
    it.add_argument("--command", default=None,
                    help="the command that starts one worker (with {port}), if init guesses "
                    "wrong")
    it.add_argument("--listen", default="127.0.0.1:8080",
                    help="public address (default 127.0.0.1:8080; admin on the next port)")
    it.set_defaults(func=cmd_init)
    lg = with_config(sub.add_parser("logs", help="print a worker's log (-f to follow)"))
    lg.add_argument("worker", help="worker id, e.g. v2-1")
    lg.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.set_defaults(func=cmd_logs)
    for command in COMMANDS:
        if command.name == "logs":  # the CLI reads log files itself (and can follow them)
            continue
        sp = with_config(sub.add_parser(command.name, help=command.help))
        for prm in command.params:
            flag = prm.cli or f"--{prm.name}"
            if not flag.startswith("-"):
                sp.add_argument(prm.name, type=prm.type, help=prm.help,
                                **({} if prm.required else {"nargs": "?"}))
            elif prm.type is dict:
                sp.add_argument(flag, dest=prm.name, action="append", metavar="K=V", help=prm.help)
            elif prm.type is list:
                sp.add_argument(flag, dest=prm.name, action="append", metavar="URL",
                                help=prm.help)
            elif prm.type is bool:
                sp.add_argument(flag, dest=prm.name, action="store_true", default=None,
                                help=prm.help)
            else:
                sp.add_argument(flag, dest=prm.name, type=prm.type, help=prm.help)
        sp.add_argument("--json", action="store_true", help="print the JSON result")
        if command.name == "deploy":
            sp.add_argument("--wait-retired", action="store_true",
                            help="after the switch, wait until the old revision retires")
        sp.set_defaults(func=_api_command(command))
    co = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                        description="Print a completion script for the holdover command. "
                        "bash: `holdover completion bash > "
                        "~/.local/share/bash-completion/completions/holdover`; zsh: "
                        "`holdover completion zsh > \"${fpath[1]}/_holdover\"`.")
    co.add_argument("shell", choices=["bash", "zsh"])
    co.set_defaults(func=cmd_completion)
    bk = with_config(sub.add_parser(
        "backup", help="copy the state store and its keys, safely while the gateway runs",
        description="Write a consistent copy of state_dir/state.db to FILE and of "
        "state_dir/secret.json to FILE.secret.json (both 0600), using SQLite's online "
        "backup: safe while the gateway runs. Restore: see docs/operating.md."))
    bk.add_argument("file", help="the database copy to write (replaced if it exists)")
    bk.set_defaults(func=cmd_backup)
    cr = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    cr.set_defaults(func=cmd_config_reference)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `holdover status | head`: the reader left, that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
