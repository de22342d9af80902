"""What every implementation of the proxy's ports does alike.

The gateway of one process (control/router.py) and a data-plane process of several
(plane/router.py) route differently, but they pool a worker connection, account for a
finished exchange and tell a health check apart the same way.  That part lives here,
once, so a fix to it reaches both.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from ..core.balancer import Balancer, WaitQueue
from .exchange import Exchange
from .upstream import UpstreamConnection


class Accounting:
    """The Releaser and Reporter ports, and the health-path test, over a subclass's
    ``balancer``, ``queue``, ``access_log``, ``health_path`` and ``closing``."""

    balancer: Balancer
    queue: WaitQueue
    access_log: Any  # an AccessLog (holdover/accesslog.py), or None
    health_path: bytes | None
    closing: bool

    def release_upstream(self, up: UpstreamConnection, reusable: bool) -> None:
        """Pool ``up`` again if its endpoint still serves from the same pool."""
        ep = up.pool.endpoint
        if reusable and not self.closing and ep.pool is up.pool and ep.ready:  # type: ignore[attr-defined]
            up.pool.put(up, monotonic())
        else:
            up.transport.close()

    def exchange_done(self, ex: Exchange, note: str | None = None) -> None:
        """Account for a finished exchange: free its worker slot, count it, log it."""
        ep = ex.worker
        duration = monotonic() - ex.t0
        if ep is not None:
            ep.inflight -= 1
            ep.stats.record(ex.status, ex.resp_bytes, duration)
            ex.worker = None
            if self.queue._q:
                self.queue.release(self.balancer)
        pin = ex.pin
        if pin is not None:
            ex.pin = None
            pin.active -= 1
            self.pin_released(pin)
        if self.access_log is not None:
            self.access_log.log(ex.client or ex.conn.client_ip, ex.method, ex.url, ex.status,
                                ex.resp_bytes, duration, ep.id if ep is not None else "-",
                                ep.revision if ep is not None else "-", note)

    def pin_released(self, pin: Any) -> None:
        """A request of ``pin``'s session finished: it was seen now."""
        pin.last_seen = monotonic()

    def _is_health(self, url: bytes) -> bool:
        hp = self.health_path
        return hp is not None and url.startswith(hp) and (
            len(url) == len(hp) or url[len(hp):len(hp) + 1] == b"?")
