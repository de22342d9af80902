"""The ``holdover`` command: thin wrappers over the gateway and the config loader.

Exit codes: 0 success, 1 runtime failure (a revision never became ready, a port in
use), 2 bad usage or a bad configuration file.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from . import __version__, config

DEMO_CONFIG = """\
# Written by `holdover demo`: the gateway in front of the bundled sample app.
[gateway]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
state_dir = "state"

[app]
command = "{python} -m holdover.demo.app --port {{port}}"
workers = 2
health_path = "/healthz"
mode = "sessions"
session_cookie = "session"
session_idle_timeout = "2m"
stop_grace = "5s"
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(path: str) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(f"holdover: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(cfg: config.Config) -> int:
    import uvloop

    from .gateway import Gateway

    async def main() -> int:
        return await Gateway(cfg).run()

    return uvloop.run(main())


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    _setup_logging(args.verbose)
    return _serve(cfg)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{cfg.path}: ok ({cfg.app_workers} worker(s) of {cfg.app_command!r}, "
          f"listening on {cfg.gateway_listen[0]}:{cfg.gateway_listen[1]})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    home = Path(args.dir).resolve()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "holdover.toml"
    path.write_text(DEMO_CONFIG.format(port=args.port, admin_port=args.port + 1,
                                       python=shlex.quote(sys.executable)))
    cfg = _load(str(path))
    _setup_logging(args.verbose)
    print(f"holdover demo: open http://127.0.0.1:{args.port}/ (config: {path})",
          file=sys.stderr, flush=True)
    return _serve(cfg)


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
    ck.set_defaults(func=cmd_check)
    d = sub.add_parser("demo", help="run the gateway in front of the bundled demo app")
    d.add_argument("--port", type=int, default=8080, help="public port (admin: port+1)")
    d.add_argument("--dir", default=".holdover-demo", help="folder for the demo's state")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=cmd_demo)
    cr = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    cr.set_defaults(func=cmd_config_reference)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
