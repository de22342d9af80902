"""Who else could reach or read the admin side: said by ``holdover check`` and at start.

The admin side can deploy any command, so its token is as good as a shell on the
machine.  It speaks plain HTTP: on a non-loopback ``admin_listen`` the token crosses the
network readable by anyone on the path.  Its files (the token, the cookie signing
secrets) must be readable by the gateway's user only.  Both are warnings, not errors:
an operator may have a private network or a TLS proxy in front, and the gateway
takes away loose file permissions by itself at start (see ``holdover.core.private_files``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ..config import Config
from ..core.private_files import loose_mode

PRIVATE_FILES = ("admin.token", "secret.json", "cluster.secret")  # cluster: its default place


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a wildcard or any other name is not."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_warnings(cfg: Config) -> list[str]:
    """Warnings about where the admin side listens."""
    host, port = cfg.gateway_admin_listen
    if is_loopback(host):
        return []
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [f"{cfg.path}: [gateway] admin_listen = \"{shown}\" is not a loopback address "
            f"and the admin side speaks plain HTTP: anyone on the network path can read the "
            f"admin token, which can deploy any command. Keep it on 127.0.0.1 and reach it "
            f"through an SSH tunnel, or put a TLS-terminating proxy in front of it"]


def file_warnings(state_dir: Path) -> list[str]:
    """Warnings about secrets in ``state_dir`` that other users can read."""
    out = []
    for name in PRIVATE_FILES:
        path = state_dir / name
        try:
            mode = loose_mode(path)
        except OSError:
            continue  # not written yet (or not ours to stat): nothing to say
        if mode is not None:
            out.append(f"{path} is readable by other users (mode {mode:04o}): the gateway "
                       f"makes it 0600 at start" + (" and writes a new token"
                                                    if name == "admin.token" else
                                                    "; if someone read it, rotate its "
                                                    "signing keys (SECURITY.md)"))
    return out
