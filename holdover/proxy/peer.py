"""Requests between the nodes of a cluster: the sending side and the receiving side.

A node that gets a request for a session another node holds passes it through to that
node's peer listener, which routes it by its own pin table (docs/cluster.md).  On the
sending side the other node is an endpoint like a worker, whose connections
(``PeerUpstream``) add the node's authentication token to the request head and pass
the answer back untouched: the other node's cookies and X-Holdover-* headers are its
own, so nothing of the answer is read as a session change here.  On the receiving side
(``PeerConnection``) a request without a valid token is refused with 403 before it is
routed, and the forwarding headers of an authenticated peer are kept as it sent them
(the client's address as the first node saw it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.peers import PEER_HEADER, PeerAuth
from .endpoint import Endpoint
from .http1 import FORWARDING, HOLDOVER_HEADERS, RequestRejected
from .server import ClientConnection
from .upstream import (
    _R_CONNECTION,
    _R_CONTENT_LENGTH,
    _R_DROP,
    _R_TRANSFER_ENCODING,
    _R_UPGRADE,
    _RESPONSE_SPECIAL,
    BODY_CHUNKED,
    UpstreamConnection,
    UpstreamPool,
)

if TYPE_CHECKING:
    from .exchange import Exchange
    from .ports import Plane

# What a peer's answer needs beyond passing through: only framing and hop-by-hop.
_PEER_SPECIAL: dict[bytes, int] = {
    name: kind for name, kind in _RESPONSE_SPECIAL.items()
    if name not in HOLDOVER_HEADERS and name not in (b"set-cookie", b"x-holdover-session")}
_PEER_NAME = PEER_HEADER.lower()


class PeerUpstream(UpstreamConnection):
    """A connection to another node's peer listener: authenticated, a pass-through."""

    __slots__ = ()
    pool: PeerPool

    def attach(self, ex: Exchange) -> None:
        self.ex = ex
        ex.upstream = self
        self.got_bytes = False
        self._sent = False
        self._head_raw = 0
        pending = ex.body_buf
        ex.body_buf = None
        # ex.head stays as it was: a request that falls back to a local worker never
        # carries this node's token to the app.
        head = ex.head[:-2] + PEER_HEADER + b": " + self.pool.token() + b"\r\n\r\n"
        self.transport.write(head + b"".join(pending) if pending else head)
        if ex.conn.write_paused:
            self.transport.pause_reading()

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _PEER_SPECIAL.get(name.lower())
        if kind is None:  # the other node's cookies and headers included (the head's size
            # is checked once, in on_headers_complete, as for a worker's answer)
            self._lines += (name, b": ", value, b"\r\n")
        elif kind == _R_CONTENT_LENGTH:
            self._cl = value
        elif kind == _R_TRANSFER_ENCODING:
            self._mode = BODY_CHUNKED
        elif kind == _R_CONNECTION:
            if b"close" in value.lower():
                self._close = True
        elif kind == _R_UPGRADE:
            self._upgrade = value
        elif kind != _R_DROP:  # pragma: no cover - every other kind is dropped
            raise AssertionError(kind)


class PeerPool(UpstreamPool):
    """Idle connections to one other node, each request signed with ``token()``."""

    __slots__ = ("token",)

    def __init__(self, endpoint: object, host: str, port: int, limit: int,
                 token: Callable[[], bytes]) -> None:
        super().__init__(endpoint, host, port, limit)
        self.token = token

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: PeerUpstream(self), self.host, self.port),
            timeout)
        return conn


class PeerEndpoint(Endpoint):
    """Another node, as this node's router sends it the requests of its sessions."""

    __slots__ = ("down_until", "node")
    peer = True

    def __init__(self, node: str, host: str, port: int, keepalive: int,
                 token: Callable[[], bytes]) -> None:
        super().__init__(f"node:{node}", "-", host)
        self.node = node
        self.port = port
        self.pool = PeerPool(self, host, port, keepalive, token)
        self.ready = self.routable = True
        self.down_until = 0.0  # monotonic: a failed connect keeps it out until then


class PeerConnection(ClientConnection):
    """A connection to this node's peer listener: only authenticated nodes are served."""

    __slots__ = ("_peer_token", "auth")

    def __init__(self, plane: Plane, auth: PeerAuth) -> None:
        super().__init__(plane)
        self.auth = auth
        self._peer_token: bytes | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._trusted = True  # forwarding headers are collected; believed only with a token

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._lines is not None:
            lname = name.lower()
            if lname == _PEER_NAME:
                self._peer_token = value
                return
            if lname in FORWARDING:
                # The sending node's own lines, whose size the client's head did not
                # count where it entered (they may repeat its Host twice): a head the
                # client could send to this node directly is not refused (431) for
                # having come through another node.  They still count as lines, and the
                # raw head stays bounded by the peer listener's max_head_bytes.
                self._head_bytes -= len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        token = self._peer_token
        self._peer_token = None
        if token is None or self.auth.verify(token) is None:
            raise RequestRejected(403, "not an authenticated node of this cluster")
        super().on_headers_complete()

    def _forwarded(self, ex: Exchange, host: bytes | None) -> bytes:
        """The forwarding headers as the sending node made them, unchanged."""
        xfp = self._prior_xfp
        proto = xfp.strip().lower() if xfp is not None else self.lim.proto
        if proto not in (b"http", b"https"):
            proto = self.lim.proto
        ex.secure = proto == b"https"
        out = b"X-Forwarded-Proto: " + proto + b"\r\n"
        xff = self._prior_xff
        if xff:
            ex.client = xff.rpartition(b",")[2].strip() or None
            out = b"X-Forwarded-For: " + xff + b"\r\n" + out
        if self._prior_xfh:
            out += b"X-Forwarded-Host: " + self._prior_xfh + b"\r\n"
        if self._prior_fwd:
            out += b"Forwarded: " + self._prior_fwd + b"\r\n"
        return out
