"""Workers another engine runs: their addresses, the names that find them, what changed.

A revision of external workers names them by URL (``upstreams``) or by a DNS name
(``discover``, with ``{revision}`` in it).  This module is the pure part of that: it
parses those settings into values, substitutes the revision, and decides what a fresh
DNS answer means for the workers a revision already has (``plan_discovery``), so the
rules — a new address joins, a vanished one leaves but keeps its pins, an empty answer
changes nothing — are tested without a socket.  The resolver itself is
holdover/supervisor/dns.py; carrying the plan out is holdover/control/external.py.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

REVISION = "{revision}"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?$")
# DNS owner names of SRV records have labels such as ``_http`` and ``_tcp``.
_DNS_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True, order=True)
class Target:
    """One worker's address: where the proxy connects and health checks go."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _host(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{what}: {value!r} is neither an IP address nor a host "
                             f"name") from None
        return value.rstrip(".").lower()


def parse_upstream(value: object) -> Target:
    """``http://HOST[:PORT]`` (port 80 by default): one worker another engine runs."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a worker URL like \"http://10.1.0.5:8000\", got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "http":
        raise ValueError(f"{value!r}: the gateway speaks plain HTTP to workers: use "
                         f"http://HOST:PORT" if parts.scheme == "https" else
                         f"expected a worker URL like \"http://10.1.0.5:8000\", got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment or \
            parts.path not in ("", "/"):
        raise ValueError(f"{value!r}: a worker URL names only a host and a port "
                         f"(no user, path, query or fragment)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{value!r}: no host")
    if port == 0:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return Target(_host(parts.hostname, value), port or 80)


def parse_dns_server(value: object) -> tuple[str, int]:
    """``IP`` or ``IP:PORT`` (``[IPv6]:PORT``) of a DNS server; port 53 by default."""
    if not isinstance(value, str):
        raise ValueError(f"expected a DNS server like \"10.96.0.10:53\", got {value!r}")
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", value) or re.match(r"^([^:]+)(?::(\d+))?$",
                                                                   value)
    host, port = (m.group(1), m.group(2)) if m else (value, None)  # a bare IPv6 address
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{value!r}: a DNS server is an IP address, optionally with :port "
                         f"(e.g. \"10.96.0.10:53\" or \"[fd00::a]:53\")") from None
    n = int(port) if port is not None else 53
    if not 0 < n <= 65535:
        raise ValueError(f"{value!r}: port {n} is out of range 1-65535")
    return ip, n


@dataclass(frozen=True)
class Discover:
    """How a revision's workers are found in DNS: SRV records, or A/AAAA and one port."""

    srv: bool  # dns+srv:NAME (targets and ports from SRV) or dns:NAME:PORT (A/AAAA)
    template: str  # the name, with {revision}
    port: int = 0  # dns:NAME:PORT only

    def __str__(self) -> str:
        return f"dns+srv:{self.template}" if self.srv else f"dns:{self.template}:{self.port}"

    def name(self, revision: str) -> str:
        """The DNS name of ``revision``'s workers; ValueError if it makes no valid name."""
        name = self.template.replace(REVISION, revision)
        _check_name(name, f"revision {revision!r} in {self}")
        return name

    def of(self, revision: str) -> Discover:
        """This discovery with ``revision`` filled in (what a revision's record keeps)."""
        return Discover(self.srv, self.name(revision), self.port)


def _check_name(name: str, what: str) -> None:
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError(f"{what}: {name!r} is not a DNS name (labels of letters, digits, "
                         f"'-' and '_', separated by '.')")


def parse_discover(value: object, template: bool = True) -> Discover:
    """``dns+srv:NAME`` or ``dns:NAME:PORT``, NAME containing ``{revision}``.

    ``template=False`` reads a name with the revision already filled in."""
    if not isinstance(value, str):
        raise ValueError(f"expected \"dns+srv:NAME\" or \"dns:NAME:PORT\", got {value!r}")
    if value.startswith("dns+srv:"):
        d = Discover(True, value[len("dns+srv:"):])
    elif value.startswith("dns:"):
        name, sep, port = value[len("dns:"):].rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"{value!r}: expected dns:NAME:PORT with a port from 1 to 65535 "
                             f"(or dns+srv:NAME to take ports from SRV records)")
        d = Discover(False, name, int(port))
    else:
        raise ValueError(f"{value!r}: expected \"dns+srv:NAME\" (SRV records) or "
                         f"\"dns:NAME:PORT\" (A/AAAA records)")
    if not template:
        _check_name(d.template, value)
        return d
    if REVISION not in d.template:
        raise ValueError(f"{value!r}: the name must contain {REVISION}, so that each "
                         f"revision finds its own workers")
    if "{" in d.template.replace(REVISION, "") or "}" in d.template.replace(REVISION, ""):
        raise ValueError(f"{value!r}: {REVISION} is the only placeholder")
    _check_name(d.template.replace(REVISION, "r"), value)
    return d


@dataclass(frozen=True)
class DiscoveryPlan:
    """What a DNS answer changes: addresses that join, workers that leave or come back."""

    add: tuple[Target, ...] = ()
    leave: tuple[str, ...] = ()  # worker ids no longer in DNS: no new session, pins served
    rejoin: tuple[str, ...] = ()  # worker ids back in DNS before they were stopped

    def __bool__(self) -> bool:
        return bool(self.add or self.leave or self.rejoin)


def plan_discovery(known: Iterable[tuple[str, Target, bool]], found: Collection[Target]
                   ) -> DiscoveryPlan:
    """Compare a revision's running workers ``(id, target, listed)`` with a DNS answer.

    An empty answer changes nothing: a revision is never emptied by DNS (a failing or
    lagging server must not take every worker out of rotation); a worker that really
    went away stops answering its health checks instead.
    """
    if not found:
        return DiscoveryPlan()
    found_set = set(found)
    seen: set[Target] = set()
    leave, rejoin = [], []
    for wid, target, listed in known:
        seen.add(target)
        if target in found_set and not listed:
            rejoin.append(wid)
        elif target not in found_set and listed:
            leave.append(wid)
    add = tuple(sorted(found_set - seen))
    return DiscoveryPlan(add, tuple(leave), tuple(rejoin))


# -- the settings (holdover/config.py's table uses these parsers) ------------------------


def _list_of(parse: Callable[[Any], Any], example: str) -> Callable[[Any], list[Any]]:
    def parse_list(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, e.g. [{example}], got {value!r}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(parse(item))
            except ValueError as exc:
                raise ValueError(f"item {i + 1}: {exc}") from None
        return out

    return parse_list


def _upstream_url(value: Any) -> str:
    parse_upstream(value)
    return value


upstreams_setting = _list_of(_upstream_url, '"http://10.1.0.5:8000"')
dns_servers_setting = _list_of(parse_dns_server, '"10.96.0.10:53"')


def discover_setting(value: Any) -> str:
    """The ``discover`` setting: "" (none) or a template parse_discover accepts."""
    return value if value == "" else str(parse_discover(value))


def hook_setting(value: Any) -> str:
    """``on_drain`` / ``on_retire``: "" (none) or a command that splits into words."""
    if not isinstance(value, str):
        raise ValueError("expected a command, e.g. \"kubectl scale deployment/app-{revision} "
                         "--replicas=0\" (or \"\" for none)")
    if value:
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command into words: {exc}") from None
    return value
