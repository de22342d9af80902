"""A worker as the data plane sees it: where to connect, how busy, what it served.

The supervisor knows processes, not HTTP; the proxy knows connections, not processes.
An ``Endpoint`` is where the two meet: the control side creates one per worker and
updates it when the worker's process, port or eligibility changes; the proxy and the
balancer read ``routable``, ``inflight`` and ``pool``; per-request counters for the
metrics and the canary judgement live in its ``stats``.
"""

from __future__ import annotations

from bisect import bisect_left

from .upstream import UpstreamPool

# Upper bounds (seconds) of the request latency histogram buckets.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stats:
    """Counters of one endpoint: requests, 5xx, status classes, bytes, latency histogram."""

    __slots__ = ("bytes_out", "errors", "latency_counts", "latency_sum", "requests",
                 "status_classes")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        # index = status // 100 (0: no valid status, e.g. the client left first)
        self.status_classes = [0] * 6
        self.bytes_out = 0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0

    def record(self, status: int, nbytes: int, duration: float) -> None:
        """Count one finished exchange."""
        self.requests += 1
        if status >= 500:
            self.errors += 1
        self.status_classes[status // 100 if 0 < status < 600 else 0] += 1
        self.bytes_out += nbytes
        self.latency_counts[bisect_left(LATENCY_BOUNDS, duration)] += 1
        self.latency_sum += duration


class Endpoint:
    """One worker's address and load, as routing and the proxy use it."""

    __slots__ = ("host", "id", "incarnation", "inflight", "pool", "port", "ready", "revision",
                 "routable", "standby", "stats")
    peer = False  # another cluster node's peer listener (proxy/peer.py), not a worker

    def __init__(self, wid: str, revision: str, host: str) -> None:
        self.id = wid
        self.revision = revision
        self.host = host
        self.port = 0
        self.incarnation = ""
        self.pool: UpstreamPool | None = None
        self.inflight = 0  # requests and open streams being served right now
        self.ready = False  # its process is up and answers: pinned sessions are served
        self.routable = False  # takes new sessions (see core.lifecycle.takes_new_sessions)
        self.standby = False
        self.stats = Stats()

    def repoint(self, port: int, incarnation: str, keepalive: int) -> None:
        """The worker's process (and so maybe its port) changed: a fresh pool if needed."""
        self.incarnation = incarnation
        if self.pool is None or self.port != port:
            if self.pool is not None:
                self.pool.close()
            self.port = port
            self.pool = UpstreamPool(self, self.host, port, keepalive)

    def close_pool(self) -> None:
        """Close idle pooled connections (the worker takes no new ones)."""
        if self.pool is not None:
            self.pool.close()
