"""The control plane of one gateway, and the facade the admin side uses.

``Control`` owns what decides and remembers: the supervisor's revisions and workers,
the revision manager, the router (the proxy's ports), the pin directory, the store, the
ticker and the background tasks.  It carries out the core's decisions — a worker report
becomes routing, a periodic job ends idle sessions and stops drained workers — and it
is the one object the admin API, page and metrics read and command.  Listeners,
signals and the process's life are the composition root's (holdover/app.py).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any

from ..config import Config
from ..core.affinity import Keys
from ..core.lifecycle import RevisionState
from ..proxy.endpoint import Stats
from ..proxy.server import ClientConnection
from ..state import StateStore
from ..supervisor.external import ExternalWorker
from ..supervisor.supervisor import Revision, Supervisor
from ..supervisor.worker import Worker
from .cluster import Cluster
from .clusterops import ClusterOps
from .external import Discovery
from .hooks import Hooks
from .peers import Peers
from .persist import Persistence
from .pins import PinDirectory, local_directory
from .revisions import RevisionManager
from .router import Router
from .ticker import Tasks, Ticker

log = logging.getLogger("holdover.control")

_NO_STATS = Stats()
OFFER_TTL = 600.0  # seconds an offered pin waits for its client to come back


class Control:
    """Revisions, workers, sessions and routing of one gateway, and their jobs."""

    def __init__(self, config: Config, supervisor: type[Supervisor] = Supervisor,
                 router: type[Router] = Router, sessions: PinDirectory | None = None) -> None:
        """``supervisor`` and ``router`` are the classes to build (tests pass subclasses
        that start no process and open no connection); ``sessions`` the pin directory
        (several processes share one that tells them its changes)."""
        self.config = config
        self.tasks = Tasks()
        self.ticker = Ticker()
        self.sessions: PinDirectory = sessions if sessions is not None else \
            local_directory(config.app_max_sessions)
        self._refused_told = 0
        self.supervisor = supervisor(config, self._worker_state)
        self.persist = Persistence(self)
        self.router = router(config, None, self.sessions, self.tasks.spawn,  # type: ignore[arg-type]
                             self.persist.record_event)
        self.revs = RevisionManager(self)
        self.hooks = Hooks(config, self.tasks.spawn, self.persist.record_event)
        self.discovery = Discovery(self)  # revisions whose workers another engine runs
        self.store: StateStore = None  # type: ignore[assignment]  # opened by the root
        self.rolling: Revision | None = None  # a stateless rolling deploy in progress
        self.session_history: deque[tuple[float, dict[str, int]]] = deque(maxlen=720)
        self.connections: set[ClientConnection] = set()  # the public listener's, for status
        self.schedule_reload: Callable[[], None] = lambda: None  # set by the root
        self.check_reload: Callable[[], None] = lambda: None  # Refused if it would fail
        self.closing = False
        self.cluster: Cluster | None = None  # on a shared store (control/cluster.py)
        self.clusterops: ClusterOps | None = None  # operations the whole cluster carries out
        self.peers: Peers | None = None  # the other nodes as routes (control/peers.py)
        self.ready = False  # serving, and not shutting down (the admin side's /readyz)
        self.stopping = False  # a shutdown was asked for (SIGTERM): unready from then on
        self.planes: Any = None  # the data-plane processes, with processes > 1 (planes.py)

    # -- wiring -------------------------------------------------------------------

    def use_keys(self, keys: Keys) -> None:
        """The gateway's secrets, loaded at start, for session keys and the pin cookie."""
        self.router.keys = keys

    @property
    def keys(self) -> Keys:
        return self.router.keys

    @property
    def queue(self) -> Any:
        return self.router.queue

    @property
    def sessions_lost(self) -> int:
        return self.router.sessions_lost

    def add_jobs(self) -> None:
        """The periodic jobs, each isolated by the ticker."""
        t = self.ticker
        t.add("connection-timeouts", 1.0, self._sweep_connections)
        t.add("upstream-pools", 1.0, self._expire_pools)
        t.add("wait-queue", 1.0, self._expire_queue)
        t.add("idle-sessions", 5.0, self.end_idle_sessions)
        t.add("session-history", 5.0, self._record_history)
        t.add("drain", 1.0, self._drain)
        t.add("pin-flush", 1.0, self._flush)
        t.add("access-log", 1.0, self._flush_access_log)
        t.add("discovery", self.config.app_discover_interval, self._discover)
        t.add("external-leavers", 1.0, self._leavers)

    def start_closing(self) -> None:
        """Shutdown or reload began: connection sweeps run ten times a second."""
        self.closing = self.router.closing = True
        self.ticker.resolution = 0.1
        for job in self.ticker.jobs:
            if job.name == "connection-timeouts":
                job.every = 0.1
                job.next_at = 0.0

    # -- periodic jobs ------------------------------------------------------------

    def _sweep_connections(self, now: float) -> None:
        for conn in list(self.connections):
            conn.sweep(now)

    def _expire_pools(self, now: float) -> None:
        self.router.expire_pools(now - self.config.gateway_upstream_idle_timeout)

    def _expire_queue(self, now: float) -> None:
        if self.router.queue._q:
            self.router.queue.expire(now)

    def end_idle_sessions(self, now: float) -> int:
        """End the sessions that idled out or passed their expiry (rule 3).

        Offers of holdover's pin cookie that no client brought back within
        ``OFFER_TTL`` (or the idle timeout, if shorter) are forgotten too."""
        sessions = self.sessions
        if sessions.offered:
            sessions.expire_offers(now, min(OFFER_TTL, self.config.app_session_idle_timeout))
        if sessions.refused > self._refused_told:
            log.warning("%d new session(s) not pinned: the session table is full "
                        "(max_sessions = %d)", sessions.refused - self._refused_told,
                        self.config.app_max_sessions)
            self._refused_told = sessions.refused
        if not self.router.sessions_mode or not sessions.pins:
            return 0
        idle = self.sessions.idle(now, self.config.app_session_idle_timeout)
        for p in idle:
            self.sessions.end(p.key)
        return len(idle)

    def _record_history(self, now: float) -> None:
        self.session_history.append((time.time(), dict(self.sessions.per_revision)))

    def _drain(self, now: float) -> None:
        if not self.closing:
            self.revs.tick(now)

    def _flush(self, now: float) -> None:
        persist = self.persist
        if self.store is None or persist.flushing:
            return
        if self.cluster is not None and self.cluster.store_away_for():
            return  # nothing to gain: kept in memory until a heartbeat gets through
        if persist.unsaved_events or persist.revisions_unsaved:
            self.tasks.spawn(persist.flush_events(), "event-flush")
        elif self.sessions.dirty or self.sessions.removed:
            self.tasks.spawn(persist.flush_pins(), "pin-flush")

    def _discover(self, now: float) -> None:
        if not self.closing:
            self.discovery.tick(now)

    def _leavers(self, now: float) -> None:
        if not self.closing:
            self.discovery.leavers(now)

    def _flush_access_log(self, now: float) -> None:
        if self.router.access_log is not None:
            self.router.access_log.flush()

    # -- workers and routing --------------------------------------------------------

    def _worker_state(self, w: Worker) -> None:
        rev = self.supervisor.revisions.get(w.spec.revision)
        self.router.worker_changed(w, rev, w in self.revs._stopping or w.leaving,
                                   rev is not None and rev is self.rolling)

    def revision_changed(self, rid: str, before: RevisionState, after: RevisionState
                         ) -> None:
        """A revision entered a new state: run the hook of that state (control/hooks.py)."""
        self.hooks.revision_changed(rid, before, after)
        if self.clusterops is not None:
            self.clusterops.view.revision_changed(rid, after)

    def readiness(self) -> bool:
        """For the balancer (/readyz): serving, not shutting down, and not cut off from
        the shared store for longer than ``store_outage_grace``."""
        return self.unready_because() is None

    def unready_because(self) -> str | None:
        """Why /readyz answers 503 (a few words, nothing secret), or None when ready."""
        if not self.ready:
            return "shutting down" if self.stopping else "starting"
        cluster = self.cluster
        if cluster is not None:
            away = cluster.store_away_for()
            if away > self.config.gateway_store_outage_grace:
                return (f"the shared store has not answered for {away:.0f}s "
                        f"(store_outage_grace {self.config.gateway_store_outage_grace:g}s)")
        return None

    def routing_changed(self) -> None:
        """Rebuild what the hot path reads after a revision or worker-set change."""
        rm = self.revs
        workers = {w.id: w for r in rm.revisions.values() for w in r.workers}
        for w in workers.values():
            self._worker_state(w)
        self.router.rebuild(rm.active, rm.canary, self.rolling, workers, rm._stopping)

    def inflight(self, w: Worker) -> int:
        """Requests and open streams on worker ``w`` now."""
        ep = self.router.endpoints.get(w.id)
        return ep.inflight if ep is not None else 0

    def stats(self, w: Worker) -> Stats:
        """Worker ``w``'s request counters (metrics, canary budget)."""
        ep = self.router.endpoints.get(w.id)
        return ep.stats if ep is not None else _NO_STATS

    def runs_elsewhere(self, rid: str) -> bool:
        """Whether another live node of the cluster still runs revision ``rid``."""
        return self.clusterops is not None and self.clusterops.view.runs_elsewhere(rid)

    def end_sessions_of(self, revision: str, reason: str) -> int:
        return self.router.end_sessions_of(revision, reason)

    def worker_status(self, w: Worker) -> dict[str, Any]:
        stats = self.stats(w)
        return {"id": w.id, "pid": w.pid, "port": w.port, "state": str(w.state),
                "inflight": self.inflight(w), "restarts": w.restarts, "standby": w.standby,
                "disabled": w.disabled, "requests": stats.requests, "errors": stats.errors,
                "sessions": self.sessions.per_worker.get(w.id, 0),
                "uptime": round(monotonic() - w.ready_at, 1) if w.ready_at and
                w.state == "ready" else 0.0, "crash_loop": w.crash_loop,
                "host": w.spec.host, "external": w.external,
                **({"url": w.url, "in_discovery": w.listed} if isinstance(w, ExternalWorker)
                   else {})}

    # -- the store (see persist.py) --------------------------------------------------

    async def claim_node(self, info: Callable[[], dict[str, Any]]) -> None:
        """Join the cluster on a shared store (control/cluster.py), beside any live node.

        Refused (StoreError), before any worker runs, beside a live node whose cluster
        secret is another one.  The heartbeat renews every HEARTBEAT seconds and lapses
        TTL_BEATS beats after this node stops (or dies); cluster-wide operations ride the
        feed (clusterops.py)."""
        store = self.store
        if self.peers is not None:
            self.peers.check(await store.live_nodes())  # type: ignore[attr-defined]
        self.cluster = Cluster(store, self.config.node_name, info,  # type: ignore[arg-type]
                               self.tasks.spawn)
        self.clusterops = ClusterOps(self, self.cluster)
        await self.cluster.join()
        self.ticker.add("cluster-heartbeat", self.cluster.heartbeat, self.cluster.tick)
        if self.peers is not None:
            self.peers.attach(self.cluster)
            self.ticker.add("peers", 1.0, self.peers.sync)
        await self.clusterops.settle()  # before the restore: not amid a deploy

    async def forget_node(self) -> None:
        """This node stops: others may use the store at once."""
        if self.cluster is not None:
            await self.cluster.leave()

    async def record_event(self, kind: str, message: str, revision: str | None = None,
                           worker: str | None = None, data: dict | None = None) -> None:
        await self.persist.record_event(kind, message, revision, worker, data)

    async def save_revisions(self) -> None:
        await self.persist.save_revisions()

    def revision_states(self) -> dict[str, RevisionState]:
        return {r.id: r.state for r in self.revs.revisions.values()}
