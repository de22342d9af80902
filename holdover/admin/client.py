"""The CLI's side of the admin API: find the running gateway from the config, call it.

The gateway writes the address it actually bound (``state_dir/admin.url``) next to its
token (``state_dir/admin.token``), so ``holdover status`` needs nothing but ``-c``.
"""

from __future__ import annotations

import json
import pwd
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..config import Config
from .commands import Command

# The admin address is the gateway's own, so a proxy from the environment (HTTP_PROXY) is
# never used: it would be handed the bearer token, and could not reach loopback anyway.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class GatewayNotRunning(Exception):
    """No gateway answers at the admin address of this config."""


class ApiError(Exception):
    """The gateway refused a command; carries its JSON error."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", f"HTTP {status}"))
        self.status = status
        self.error = error


def not_yours(cfg: Config, path: Path) -> str:
    """What to say when ``state_dir`` (0700) belongs to the user the gateway runs as."""
    try:
        owner = pwd.getpwuid(cfg.state_dir.stat().st_uid).pw_name
        how = f" (sudo -u {owner} holdover ...)"
    except (KeyError, OSError):
        how = ""
    return f"cannot read {path}: run as the user that runs the gateway{how}"


def admin_base(cfg: Config) -> str:
    url_file = cfg.state_dir / "admin.url"
    try:
        return url_file.read_text().strip().rstrip("/")
    except FileNotFoundError:
        host, port = cfg.gateway_admin_listen
        return f"http://{host}:{port}"
    except PermissionError:
        raise GatewayNotRunning(not_yours(cfg, url_file)) from None


def read_token(cfg: Config) -> str:
    path = cfg.state_dir / "admin.token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise GatewayNotRunning(f"no admin token at {path}: has `holdover run -c "
                                f"{cfg.path}` ever started?") from None
    except PermissionError:
        raise GatewayNotRunning(not_yours(cfg, path)) from None


def call(cfg: Config, command: Command, args: dict[str, Any], timeout: float | None = 30.0
         ) -> Any:
    """Run ``command`` on the gateway of ``cfg``; returns its JSON result."""
    base = admin_base(cfg)
    token = read_token(cfg)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if command.method == "GET":
        query = urllib.parse.urlencode({k: v for k, v in args.items() if v is not None})
        req = urllib.request.Request(base + command.path + (f"?{query}" if query else ""),
                                     headers=headers)
    else:
        data = json.dumps({k: v for k, v in args.items() if v is not None}).encode()
        req = urllib.request.Request(base + command.path, data=data, method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", {})
        except ValueError:
            error = {"message": f"HTTP {exc.code} from {base}"}
        raise ApiError(exc.code, error) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayNotRunning(f"no gateway answers at {base} ({reason}); start it with "
                                f"`holdover run -c {cfg.path}`") from None
