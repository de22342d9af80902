"""The data plane's ports: all the proxy knows of the rest of holdover.

The proxy moves bytes; what a request's fate is (which worker, wait or 503, retry),
what a response does to a session and what is counted afterwards are decided
elsewhere.  These small Protocols are that boundary, so that the proxy imports nothing
from the control side and any implementation — one process, several processes sharing
a port, a cluster — can stand behind them.  ``Limits`` is the one frozen value of
sizes and timeouts the hot path reads; ``Plane`` bundles a listener's ports.

The protocol tests' fakes implement these same Protocols, and a test checks that
their signatures match, so a fake cannot drift from the real interface.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .exchange import Exchange
    from .upstream import UpstreamConnection


@runtime_checkable
class Router(Protocol):
    """Chooses an upstream for a request, or parks it (then answers 503)."""

    def route(self, ex: Exchange) -> None:
        """Send ``ex`` to an upstream now (``conn.attach``), park it, or fail it."""

    def retry(self, ex: Exchange) -> bool:
        """Send ``ex`` again elsewhere; only for requests no worker has seen. False: give up."""


@runtime_checkable
class Releaser(Protocol):
    """Takes back an upstream connection after an exchange."""

    def release_upstream(self, up: UpstreamConnection, reusable: bool) -> None:
        """Pool ``up`` for reuse when ``reusable`` and its worker still serves, else close it."""


@runtime_checkable
class Reporter(Protocol):
    """Hears of every finished exchange (accounting, access log, pins' activity)."""

    def exchange_done(self, ex: Exchange, note: str | None = None) -> None:
        """``ex`` is over (answered, refused or abandoned); ``note`` says why if refused."""


@runtime_checkable
class SessionHooks(Protocol):
    """What a response says about its session, and the headers the gateway adds."""

    def on_set_cookie(self, ex: Exchange, value: bytes) -> None:
        """The worker's response carries ``Set-Cookie: value``."""

    def on_session_header(self, ex: Exchange, value: bytes) -> None:
        """The worker's response carries ``X-Holdover-Session: value`` (never forwarded)."""

    def response_extra_headers(self, ex: Exchange) -> bytes | None:
        """Header lines (CRLF-terminated) to add to ``ex``'s response head, or None."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes, timeouts and fixed facts of one listener, read on the hot path."""

    max_request_line: int = 8192
    max_headers: int = 100
    max_header_size: int = 64 * 1024
    max_body_size: int = 0  # 0: no limit
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    response_timeout: float = 60.0
    send_timeout: float = 60.0  # the longest a write to a client may make no progress
    min_body_rate: int = 0  # bytes a second a request body must average after 10 s
    append_forwarded: bool = False  # keep and extend the client's X-Forwarded-*/Forwarded
    proto: bytes = b"http"  # the scheme clients used (X-Forwarded-Proto)
    listen_host: bytes = b"127.0.0.1:8080"  # Host for HTTP/1.0 requests without one
    max_head_bytes: int = 0  # a head still incomplete past this is refused (0: the sum above)
    tls: bool = False  # the listener terminates TLS (the pin cookie is Secure)
    # Networks of the proxies in front whose forwarding headers are kept (empty: none).
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def trusts(self, ip: str) -> bool:
        """Whether a peer address is one of the trusted proxies (once per connection)."""
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def __post_init__(self) -> None:
        if not self.max_head_bytes:
            object.__setattr__(self, "max_head_bytes",
                               self.max_header_size + self.max_request_line)


class Plane:
    """One listener's data plane: its limits, its ports and its open connections.

    ``closing`` is set by whoever shuts the listener down: responses then say
    ``Connection: close`` and idle connections go.
    """

    __slots__ = ("closing", "connections", "from_peers", "hooks", "limits", "releaser",
                 "reporter", "router")

    def __init__(self, limits: Limits, router: Router, releaser: Releaser, reporter: Reporter,
                 hooks: SessionHooks) -> None:
        self.limits = limits
        self.router = router
        self.releaser = releaser
        self.reporter = reporter
        self.hooks = hooks
        self.connections: set[Any] = set()  # the listener's ClientConnections
        self.closing = False
        # A cluster node's peer listener: what other nodes send is routed here only.
        self.from_peers = False
