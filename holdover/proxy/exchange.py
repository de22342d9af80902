"""One request and its response as the data plane carries it, and its small vocabulary.

An ``Exchange`` lives from the first byte of a request to the last byte of its answer:
the client side (server.py) fills in the request, the router of the control side binds
it to a worker's endpoint, the worker side (upstream.py) streams the answer.  Plain
slots, no behaviour: a hot-path object allocated once per request.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BODY_CHUNKED", "BODY_LENGTH", "BODY_NONE", "PAUSE_CONNECTING", "PAUSE_PIPELINE",
           "PAUSE_TUNNEL", "PAUSE_UPSTREAM", "Exchange"]

# Reasons to stop reading from the client (bits of ClientConnection.paused).
PAUSE_PIPELINE = 1  # a pipelined request waits for the one before it
PAUSE_UPSTREAM = 2  # the worker's socket buffer is full
PAUSE_CONNECTING = 4  # body bytes wait for the connection to the worker
PAUSE_TUNNEL = 8  # bytes after an Upgrade request wait for the worker's 101

BODY_NONE, BODY_LENGTH, BODY_CHUNKED = range(3)


class Exchange:
    """One request and its response, from first byte in to last byte out."""

    __slots__ = (
        "accept",
        "body_buf",
        "body_mode",
        "body_seen",
        "client",
        "conn",
        "cookie",
        "head",
        "host",
        "http11",
        "keep_alive",
        "method",
        "pin",
        "request_done",
        "resp_bytes",
        "resp_started",
        "secure",
        "sent_at",
        "session_event",
        "skey",
        "status",
        "t0",
        "tried",
        "tunnel_early",
        "upgrade",
        "upstream",
        "url",
        "waiter",
        "worker",
    )

    def __init__(self, conn: Any, t0: float) -> None:
        # conn: the ClientConnection (server.py) it arrived on; typed loosely so that this
        # module needs nothing of the client side.
        self.conn = conn
        self.t0 = t0
        self.method = b""
        self.url = b""
        self.head = b""
        self.host: bytes | None = None
        self.accept: bytes | None = None
        self.cookie: bytes | None = None
        self.http11 = True
        self.keep_alive = True
        self.upgrade = False
        self.body_mode = BODY_NONE
        self.body_seen = 0
        self.body_buf: list[bytes] | None = []
        self.request_done = False
        self.resp_started = False
        self.resp_bytes = 0
        self.status = 0
        self.sent_at = 0.0
        self.worker = None
        self.pin = None
        self.upstream: Any = None  # the UpstreamConnection (upstream.py) carrying it
        self.waiter = None
        self.tried: list | None = None
        self.tunnel_early = b""
        self.skey: str | None = None  # key of the app session cookie the request carried
        self.session_event: bytes | None = None  # what the response did to its session
        self.secure = False  # the client's scheme was https (TLS here, or a trusted proxy's)
        self.client: bytes | None = None  # the client behind a trusted proxy, if it named one
