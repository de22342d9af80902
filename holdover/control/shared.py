"""The control side of several data-plane processes: one truth, summed views.

With ``[gateway] processes = N`` the control process routes no request itself; its
router (holdover/control/router.py) still keeps what routing is made of — endpoints,
balancers, the authoritative pin table — and the plane processes get copies
(holdover/control/planes.py sends them).  This module adapts the one-process pieces:

- ``SharedTable``: the pin directory (docs/design.md, "The pin directory") whose every
  change is also recorded as an operation for the planes' copies;
- ``SharedEndpoint``: a worker's endpoint whose requests in flight and counters are the
  sums the planes report, so draining, the canary judgement, status and metrics read
  the sum over every process through the same attributes as with one process;
- ``PlanesRouter``: the router with those endpoints, telling the planes of every
  routing change; ``SummedQueue`` and ``SummedConnections`` make ``len()`` a sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.balancer import WaitQueue
from ..core.sessions import Pin, SessionTable
from ..proxy.endpoint import Endpoint, Stats
from .router import Router

if TYPE_CHECKING:
    from ..supervisor.supervisor import Revision
    from ..supervisor.worker import Worker


def _nothing(*args: Any) -> None:
    pass


@dataclass
class SharedTable(SessionTable):
    """The authoritative pin table, recording each change for the planes' copies.

    Operations, in order: ``["+", key, worker, incarnation, revision]`` (a live pin),
    ``["o", key, worker, incarnation, revision]`` (an offer), ``["x", key]`` (the offer
    is gone) and ``["-", key]`` (the pin, and any offer, are gone)."""

    ops: list[list[Any]] = field(default_factory=list)
    on_change: Callable[[], None] = _nothing  # an operation was recorded
    on_pinned: Callable[[str], None] = _nothing  # a worker got a pin

    def _op(self, op: list[Any]) -> None:
        self.ops.append(op)
        if len(self.ops) == 1:
            self.on_change()

    def note(self, p: Pin) -> None:
        """Tell the planes of ``p`` again (a claim that found its pin already in place)."""
        self._op(["+", p.key, p.worker, p.incarnation, p.revision])

    def gone(self, key: str) -> None:
        """Tell the planes ``key`` is no session (one may have made it one on its own)."""
        self._op(["-", key])

    def take_ops(self) -> list[list[Any]]:
        ops, self.ops = self.ops, []
        return ops

    def _add(self, p: Pin) -> None:
        super()._add(p)
        self._op(["+", p.key, p.worker, p.incarnation, p.revision])
        self.on_pinned(p.worker)

    def _forget(self, p: Pin) -> None:
        super()._forget(p)
        self._op(["-", p.key])

    def offer(self, key: str, worker: str, incarnation: str, revision: str, now: float
              ) -> Pin:
        p = super().offer(key, worker, incarnation, revision, now)  # may push one out
        self._op(["o", key, worker, incarnation, revision])
        return p

    def promote(self, key: str, now: float) -> Pin | None:
        offered = key in self.offered
        p = super().promote(key, now)
        if p is None and offered:
            self._op(["x", key])  # refused (the table is full): the offer is gone
        return p

    def _drop_offer(self, key: str) -> None:
        super()._drop_offer(key)
        self._op(["x", key])

    def pin(self, key: str, worker: str, incarnation: str, revision: str, now: float,
            expires_at: float | None = None) -> Pin | None:
        offered = key in self.offered
        p = super().pin(key, worker, incarnation, revision, now, expires_at)
        if offered and key not in self.offered:
            self._op(["x", key])  # a pin replaces its offer (or a refusal drops it)
        return p

    def end(self, key: str) -> Pin | None:
        if key in self.offered and key not in self.pins:
            self._op(["x", key])
        return super().end(key)


class SharedEndpoint(Endpoint):
    """A worker's endpoint whose load and counters are the planes' sums."""

    __slots__ = ("router",)

    def __init__(self, wid: str, revision: str, host: str, router: PlanesRouter) -> None:
        self.router = router
        super().__init__(wid, revision, host)

    @property  # type: ignore[override]
    def inflight(self) -> int:
        planes = self.router.planes
        return planes.inflight_of(self.id) if planes is not None else 0

    @inflight.setter
    def inflight(self, value: int) -> None:
        pass  # the planes count; nothing here routes

    @property  # type: ignore[override]
    def stats(self) -> Stats:
        planes = self.router.planes
        return planes.stats_of(self.id) if planes is not None else Stats()

    @stats.setter
    def stats(self, value: Stats) -> None:
        pass


class SummedQueue(WaitQueue):
    """The planes' wait queues, as one length (this process parks no request)."""

    __slots__ = ("router",)

    def __init__(self, limit: int, router: PlanesRouter) -> None:
        super().__init__(limit)
        self.router = router

    def __len__(self) -> int:
        planes = self.router.planes
        return planes.queued() if planes is not None else 0


class SummedConnections:
    """The planes' open client connections, as one length; none of them lives here."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count()

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def add(self, conn: Any) -> None:  # pragma: no cover - no connection is accepted here
        raise RuntimeError("the control process accepts no client connection")

    def discard(self, conn: Any) -> None:
        pass


class PlanesRouter(Router):
    """The router of a control process whose planes route: endpoints summed, changes told."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.planes: Any = None  # the PlaneSet (planes.py), which imports this module
        self.queue = SummedQueue(self.queue.limit, self)

    def endpoint(self, w: Worker) -> Endpoint:
        ep = self.endpoints.get(w.id)
        if ep is None:
            ep = self.endpoints[w.id] = SharedEndpoint(w.id, w.spec.revision, w.spec.host, self)
        return ep

    def worker_changed(self, w: Worker, rev: Revision | None, retiring: bool,
                       rolling_in: bool) -> None:
        super().worker_changed(w, rev, retiring, rolling_in)
        if self.planes is not None:
            self.planes.table_changed()

    def rebuild(self, active: Revision | None, canary: Revision | None,
                rolling: Revision | None, workers: dict[str, Worker],
                retiring: set[Any]) -> None:
        super().rebuild(active, canary, rolling, workers, retiring)
        if self.planes is not None:
            self.planes.table_changed()

    def table(self) -> tuple[list[list[Any]], list[str], list[str], float, str]:
        """What the planes route by: every endpoint, who takes new sessions, the newest."""
        from ..core.lifecycle import WorkerState

        waiting = (WorkerState.STARTING, WorkerState.BACKOFF)
        eps = []
        for wid, ep in self.endpoints.items():
            w = self._workers.get(wid)
            eps.append([wid, ep.revision, ep.host, ep.port, ep.incarnation, ep.ready,
                        ep.routable, ep.standby, w is not None and w.state in waiting])
        latest = self.latest_header[len(b"X-Holdover-Latest: "):].strip().decode()
        return (eps, [e.id for e in self.balancer.workers],  # type: ignore[attr-defined]
                [e.id for e in self.canary_balancer.workers],  # type: ignore[attr-defined]
                self.canary_percent, latest)
