"""Prometheus metrics, read from the gateway's own state when scraped.

The proxy's hot path keeps plain integer counters on each worker's endpoint (requests by
status class, body bytes, a latency histogram over ``LATENCY_BOUNDS``); nothing here runs per
request.  At scrape time ``GatewayCollector`` sums those counters per revision and turns
them, with the session table and the revision states, into metric families that
``prometheus_client`` renders in the exposition format.

Counters stay monotonic while workers come and go: a worker object that leaves its
revision's list (restarting a retired revision prunes stopped workers) has its final
counts folded into a per-revision remainder, so a revision's totals never go down.
Only a restart of the gateway process itself resets them, which Prometheus expects.

Finished revisions beyond the newest ``[app] keep_retired`` are not shown, and what the
collector remembered of them is dropped (``holdover.retention``): each would otherwise
keep about 36 series for the life of the process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..core.retention import to_forget
from ..proxy.endpoint import LATENCY_BOUNDS

if TYPE_CHECKING:
    from ..control.facade import Control as Gateway

# Index of Worker.status_classes -> the ``class`` label (index 0: no valid status, e.g.
# the client went away before an answer).
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
WORKER_STATES = ("starting", "ready", "unhealthy", "crashed", "backoff", "stopping",
                 "stopped", "failed")
# Kinds of operator events (``holdover events``) counted by ``holdover_events_total``;
# each is shown from the first scrape on (at 0), so that ``increase()`` sees its first
# occurrence.  A kind not listed here is counted too, from when it first happens.
EVENT_KINDS = ("starting", "deploy", "canary", "promote", "rollback", "canary-failed",
               "failed", "retired", "sessions-lost", "worker-restart", "worker-stopped",
               "restore", "reload")

__all__ = ["CONTENT_TYPE_LATEST", "GatewayCollector", "ProcessStats", "Totals",
           "metrics_registry", "overview", "render"]


@dataclass
class Totals:
    """Counters of one revision (or the remainder of its departed workers)."""

    requests: int = 0
    classes: list[int] = field(default_factory=lambda: [0] * len(STATUS_CLASSES))
    bytes_out: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    latency_sum: float = 0.0

    def add(self, w: Any) -> None:
        self.requests += w.requests
        for i, n in enumerate(w.status_classes[:len(self.classes)]):
            self.classes[i] += n
        self.bytes_out += w.bytes_out
        for i, n in enumerate(w.latency_counts[:len(self.latency)]):
            self.latency[i] += n
        self.latency_sum += w.latency_sum

    def plus(self, other: Totals) -> Totals:
        out = Totals(self.requests, list(self.classes), self.bytes_out, list(self.latency),
                     self.latency_sum)
        out.requests += other.requests
        out.classes = [a + b for a, b in zip(out.classes, other.classes, strict=True)]
        out.bytes_out += other.bytes_out
        out.latency = [a + b for a, b in zip(out.latency, other.latency, strict=True)]
        out.latency_sum += other.latency_sum
        return out


class GatewayCollector(Collector):
    """Everything ``/metrics`` shows, computed from ``gw`` at each scrape."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        # Workers seen at the last scrape, per revision, by identity; and the counts of
        # those that have left their revision's list since.
        self._seen: dict[str, dict[int, tuple[Any, Any]]] = {}
        self._gone: dict[str, Totals] = {}
        self._gone_restarts: dict[tuple[str, str], int] = {}
        self.events: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
        self._event_cursor = 0
        self._since = 0.0

    async def read_events(self, store: Any) -> None:
        """Count the events the store got since this gateway process started (the scrape
        handler calls this first: reading the store is a coroutine, ``collect`` is not).

        The process's start time is the kernel's, which a re-exec (``holdover reload``)
        keeps, so the counters go on where they were after a reload."""
        if store is None:
            return
        from ..state.base import StoreError

        try:
            if not self._since:
                import psutil

                self._since = psutil.Process().create_time()
            while True:
                # A cursor of 0 asks for the tail: enough for what happened before the
                # first scrape (or while the store had none); later, pages after the cursor.
                limit = 10_000 if not self._event_cursor else 1000
                batch = await store.events(limit=limit, after_id=self._event_cursor)
                new = [e for e in batch if e.id > self._event_cursor]
                self._count([e for e in new if e.ts >= self._since])
                if new:
                    self._event_cursor = new[-1].id
                if len(batch) < limit or not new:
                    return
        except StoreError:
            return  # the store's own errors are logged where it is written; counts wait

    def _count(self, batch: list[Any]) -> None:
        for e in batch:
            self.events[e.kind] = self.events.get(e.kind, 0) + 1

    def _fold_departed(self, rid: str, workers: list[Any]) -> None:
        current = {id(w): (w, self.gw.stats(w)) for w in workers}
        for key, (w, stats) in self._seen.get(rid, {}).items():
            if key not in current:
                self._gone.setdefault(rid, Totals()).add(stats)
                k = (rid, w.id)
                self._gone_restarts[k] = self._gone_restarts.get(k, 0) + w.restarts
        self._seen[rid] = current

    def _shown(self) -> list[Any]:
        """The revisions to report: all but finished ones beyond ``keep_retired``."""
        every = list(self.gw.revs.revisions.values())
        forget = set(to_forget(((r.id, r.state) for r in every),
                               self.gw.config.app_keep_retired))
        shown = [r for r in every if r.id not in forget]
        known = {r.id for r in shown}
        for rid in [k for k in self._seen if k not in known]:
            del self._seen[rid]
            self._gone.pop(rid, None)
        for key in [k for k in self._gone_restarts if k[0] not in known]:
            del self._gone_restarts[key]
        return shown

    def collect(self) -> Iterator[Metric]:
        gw = self.gw
        rm = gw.revs
        revisions = self._shown()
        per_rev: dict[str, Totals] = {}
        for rev in revisions:
            self._fold_departed(rev.id, rev.workers)
            t = Totals()
            for w in rev.workers:
                t.add(gw.stats(w))
            per_rev[rev.id] = t.plus(self._gone[rev.id]) if rev.id in self._gone else t

        requests = CounterMetricFamily(
            "holdover_requests", "Requests answered through the gateway, by revision and "
            "status class", labels=["revision", "class"])
        nbytes = CounterMetricFamily(
            "holdover_response_bytes", "Response body bytes sent to clients",
            labels=["revision"])
        latency = HistogramMetricFamily(
            "holdover_request_duration_seconds", "Time from a request's arrival to the end "
            "of its response", labels=["revision"])
        for rid, t in per_rev.items():
            for name, n in zip(STATUS_CLASSES, t.classes, strict=True):
                requests.add_metric([rid, name], n)
            nbytes.add_metric([rid], t.bytes_out)
            buckets, total = [], 0
            for bound, n in zip((*LATENCY_BOUNDS, float("inf")), t.latency, strict=True):
                total += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            latency.add_metric([rid], buckets, t.latency_sum)
        yield requests
        yield nbytes
        yield latency

        sessions = GaugeMetricFamily("holdover_sessions", "Live sessions pinned to a "
                                     "revision", labels=["revision"])
        per_revision = gw.sessions.per_revision
        for rev in revisions:
            sessions.add_metric([rev.id], per_revision.get(rev.id, 0))
        shown = {rev.id for rev in revisions}
        for rid, n in per_revision.items():  # pins of a revision no longer shown
            if rid not in shown and n:
                sessions.add_metric([rid], n)
        yield sessions
        yield CounterMetricFamily("holdover_sessions_refused", "New sessions served unpinned "
                                  "because the session table was full (max_sessions)",
                                  value=getattr(gw.sessions, "refused", 0))
        yield GaugeMetricFamily("holdover_sessions_offered", "Pin cookies offered to clients "
                                "that have not come back with them yet (not sessions)",
                                value=len(getattr(gw.sessions, "offered", ())))
        yield CounterMetricFamily("holdover_sessions_lost", "Sessions whose worker process "
                                  "went away (restart, crash, retire, max_drain)",
                                  value=gw.sessions_lost)

        workers = GaugeMetricFamily("holdover_workers", "Worker processes by revision and "
                                    "state", labels=["revision", "state"])
        restarts = CounterMetricFamily("holdover_worker_restarts", "Restarts of a worker",
                                       labels=["revision", "worker"])
        looping = GaugeMetricFamily("holdover_worker_crash_looping", "1 while a worker is "
                                    "crash-looping (crash_loop_restarts restarts within "
                                    "crash_loop_window), else 0", labels=["revision", "worker"])
        draining = GaugeMetricFamily("holdover_revision_drain_started_timestamp_seconds",
                                     "When a draining revision began to drain (Unix time; "
                                     "since the gateway's start if it started later)",
                                     labels=["revision"])
        wall = time.time() - time.monotonic()
        inflight = GaugeMetricFamily("holdover_requests_in_flight", "Requests (and open "
                                     "WebSockets) being served", labels=["revision"])
        info = InfoMetricFamily("holdover_revision", "A revision and its state",
                                labels=["revision"])
        canary = GaugeMetricFamily("holdover_canary_percent", "Percentage of new sessions "
                                   "sent to the canary revision", labels=["revision"])
        for rev in revisions:
            counts: dict[str, int] = dict.fromkeys(WORKER_STATES, 0)
            per_worker: dict[str, int] = {}
            busy = 0
            for w in rev.workers:
                counts[w.state] = counts.get(w.state, 0) + 1
                per_worker[w.id] = per_worker.get(w.id, 0) + w.restarts
                busy += gw.inflight(w)
            for (rid, wid), n in self._gone_restarts.items():
                if rid == rev.id:
                    per_worker[wid] = per_worker.get(wid, 0) + n
            for state, n in counts.items():
                workers.add_metric([rev.id, state], n)
            for wid, n in per_worker.items():
                restarts.add_metric([rev.id, wid], n)
            for w in rev.workers:
                looping.add_metric([rev.id, w.id], 1.0 if getattr(w, "crash_loop", False) else 0.0)
            if rev.state == "draining" and getattr(rev, "drain_started", 0.0):
                draining.add_metric([rev.id], round(wall + rev.drain_started, 3))
            inflight.add_metric([rev.id], busy)
            info.add_metric([rev.id], {"state": rev.state})
            canary.add_metric([rev.id], rev.canary_percent if rev is rm.canary else 0.0)
        yield workers
        yield restarts
        yield looping
        yield draining
        yield inflight
        yield info
        yield canary

        yield CounterMetricFamily("holdover_deploys", "Deploys that made a revision active "
                                  "or canary", value=rm.deploys)
        events = CounterMetricFamily("holdover_events", "Operator events (holdover events) "
                                     "since the gateway process started, by kind",
                                     labels=["kind"])
        for kind, n in sorted(self.events.items()):
            events.add_metric([kind], n)
        yield events
        yield GaugeMetricFamily("holdover_queue_length", "Requests waiting for a ready "
                                "worker", value=len(gw.queue))
        yield GaugeMetricFamily("holdover_connections", "Open client connections",
                                value=len(gw.connections))
        planes = getattr(gw, "planes", None)
        if planes is not None:
            yield from _plane_metrics(planes)
        errors = CounterMetricFamily("holdover_periodic_job_errors", "Runs of a periodic job "
                                     "that raised (the others went on)", labels=["job"])
        for job, n in gw.ticker.errors.items():
            errors.add_metric([job], n)
        yield errors
        yield CounterMetricFamily("holdover_task_failures", "Background tasks that ended with "
                                  "an exception", value=gw.tasks.failed)
        hooks = CounterMetricFamily("holdover_hook_failures", "Runs of on_drain or on_retire "
                                    "that failed, could not start or timed out", labels=["hook"])
        for hook, n in gw.hooks.failures.items():
            hooks.add_metric([hook], n)
        yield hooks
        dns = CounterMetricFamily("holdover_discovery_failures", "DNS look-ups of a "
                                  "revision's workers that failed or named none (the last "
                                  "known workers were kept)", labels=["revision"])
        shown = {r.id for r in revisions}
        for rid, n in gw.discovery.failures.items():
            if rid in shown:  # a forgotten revision leaves the metrics
                dns.add_metric([rid], n)
        yield dns


def _plane_metrics(planes: Any) -> Iterator[Metric]:
    """With processes > 1: the data-plane processes, and how their pins reached them."""
    st = planes.status()
    yield GaugeMetricFamily("holdover_processes", "Data-plane processes running",
                            value=sum(1 for p in st if p["alive"]))
    conns = GaugeMetricFamily("holdover_process_connections", "Open client connections of "
                              "one data-plane process", labels=["process"])
    for p in st:
        conns.add_metric([str(p["index"])], p["connections"])
    yield conns
    yield CounterMetricFamily("holdover_process_restarts", "Data-plane processes that "
                              "exited and were started again", value=planes.restarts)
    c = planes.counters()
    for name, key, doc in (
            ("holdover_pin_claims", "claims", "Responses held until the control process "
             "recorded the pin change they make"),
            ("holdover_pin_claim_timeouts", "claim_timeouts", "Held responses released "
             "without the control process's acknowledgement"),
            ("holdover_pin_lookups", "lookups", "Pins a data-plane process asked the control "
             "process for (its copy of the table was still being filled)"),
            ("holdover_pin_lookup_timeouts", "lookup_timeouts", "Pin lookups unanswered in "
             "time: the request was routed as a new session")):
        yield CounterMetricFamily(name, doc, value=c.get(key, 0))


def metrics_registry(gw: Gateway, collector: GatewayCollector | None = None
                     ) -> CollectorRegistry:
    """A private registry holding only the gateway's collector (no process defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector if collector is not None else GatewayCollector(gw))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)


# -- the admin page's live view ---------------------------------------------------------

_LIVE_STATES = frozenset({"starting", "ready", "unhealthy", "stopping"})


class ProcessStats:
    """Memory (RSS) and CPU use of worker processes, with their children (a shell
    command's real program is its child), sampled with psutil at most once a second.

    Only the admin page's stream asks for it.  Finding children scans every process
    on the machine, so each worker's list of children is refreshed every 10 s only."""

    CHILDREN_EVERY = 10.0

    def __init__(self, min_interval: float = 0.9) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is a dependency
            psutil = None  # type: ignore[assignment]
        self._psutil = psutil
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process (keeps cpu_percent state)
        self._cache: dict[int, tuple[int, float]] = {}
        self._kids: dict[int, tuple[float, list[int]]] = {}  # pid -> (when, child pids)
        self._at = 0.0
        self._min_interval = min_interval

    def _one(self, pid: int) -> Any:
        p = self._procs.get(pid)
        if p is None:
            p = self._psutil.Process(pid)
            p.cpu_percent(None)  # the first call only starts the measurement
            self._procs[pid] = p
        return p

    def sample(self, pids: list[int]) -> dict[int, tuple[int, float]]:
        """{pid: (rss bytes, cpu percent)} of each pid's process tree."""
        now = time.monotonic()
        if self._psutil is None:
            return {}
        if now - self._at < self._min_interval and all(p in self._cache for p in pids):
            return self._cache
        ps = self._psutil
        out: dict[int, tuple[int, float]] = {}
        seen: set[int] = set()
        kids_seen: dict[int, tuple[float, list[int]]] = {}
        for pid in pids:
            try:
                root = self._one(pid)
                when, kids = self._kids.get(pid, (0.0, []))
                if now - when > self.CHILDREN_EVERY:
                    when, kids = now, [c.pid for c in root.children(recursive=True)]
                kids_seen[pid] = (when, kids)
                tree = [root]
                for k in kids:
                    with contextlib.suppress(ps.NoSuchProcess, ps.AccessDenied):
                        tree.append(self._one(k))
            except (ps.NoSuchProcess, ps.AccessDenied, ProcessLookupError):
                continue
            rss, cpu = 0, 0.0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                    cpu += p.cpu_percent(None)
                    seen.add(p.pid)
                except (ps.NoSuchProcess, ps.AccessDenied):
                    pass
            out[pid] = (rss, round(cpu, 1))
        for pid in list(self._procs):
            if pid not in seen:
                del self._procs[pid]
        self._cache, self._at, self._kids = out, now, kids_seen
        return out


def overview(gw: Gateway, procs: ProcessStats | None = None) -> dict[str, Any]:
    """What the admin page shows, in one JSON-able snapshot: ``status()`` with each
    worker's standby/disabled flags and its memory and CPU, plus gateway totals (in a
    cluster: every node's workers and the whole cluster's sessions)."""
    rm = gw.revs
    st = rm.status()
    revs = list(rm.revisions.values())
    live = [w.pid for r in revs for w in r.workers if w.pid and w.state in _LIVE_STATES]
    usage = procs.sample(live) if procs is not None else {}
    # status() lists revisions and their workers in this same order.
    for rd, rev in zip(st["revisions"], revs, strict=False):
        for wd, w in zip(rd["workers"], rev.workers, strict=False):
            rss, cpu = usage.get(w.pid, (None, None)) if w.state in _LIVE_STATES else (
                None, None)
            stats = gw.stats(w)
            wd.update(standby=w.standby, disabled=w.disabled, requests=stats.requests,
                      errors=stats.errors, rss=rss, cpu=cpu)
    sessions = {"total": len(gw.sessions), "lost": gw.sessions_lost,
                "by_revision": dict(gw.sessions.per_revision)}
    ops = getattr(gw, "clusterops", None)
    if ops is not None:  # a cluster: every node's workers, figures for the whole cluster
        st = ops.view.status(st)
        sessions = {"total": st["sessions"], "lost": st["sessions_lost"],
                    "by_revision": {r["id"]: r["sessions"] for r in st["revisions"]
                                    if r["sessions"]}}
    return {"ts": time.time(), "status": st, "sessions": sessions,
            "deploys": rm.deploys, "queue": len(gw.queue), "connections": len(gw.connections)}
