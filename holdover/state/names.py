"""Names and addresses of the nodes of a cluster, as the configuration accepts them.

A node's name is a key in the shared store and part of its signed route cookie, and its
advertised address is what the other nodes connect to: both are checked when the
configuration is read, with a message that says what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?$")


def node_name(value: Any) -> str:
    """A node name: a store key and part of a signed cookie, so letters, digits, ._-."""
    if not isinstance(value, str) or (value and not _NODE.match(value)):
        raise ValueError(f"expected a node name (1-63 letters, digits, '.', '_', '-', "
                         f"starting with a letter or digit), got {value!r}")
    return value


def advertise_address(value: Any) -> str:
    """A host (IP address or DNS name), optionally with ``:port``; not a wildcard."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address like \"10.0.0.1\", got {value!r}")
    if not value:
        return value
    host, port = value, None
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", value) or re.match(r"^([^:]+):(\d+)$", value)
    if m:
        host, port = m.group(1), m.group(2)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        if not _HOSTNAME.match(host):
            raise ValueError(f"expected an IP address or host name, optionally with :port "
                             f"(e.g. \"10.0.0.1\" or \"[fd00::1]:8080\"), got {value!r}") from None
    if ip is not None and ip.is_unspecified:
        raise ValueError(f"{value!r} is a wildcard address that other nodes cannot reach; "
                         "give this node's own address")
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return value
