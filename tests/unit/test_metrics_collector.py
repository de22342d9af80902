"""The Prometheus collector reads a (fake) gateway state: no admin server, no workers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from promtext import parse, value

from holdover.admin.metrics import STATUS_CLASSES, metrics_registry, render
from holdover.proxy.endpoint import LATENCY_BOUNDS


def fake_worker(wid: str, **kw: Any) -> SimpleNamespace:
    base = dict(id=wid, state="ready", requests=0, errors=0, status_classes=[0] * 6,
                bytes_out=0, latency_counts=[0] * (len(LATENCY_BOUNDS) + 1), latency_sum=0.0,
                restarts=0, inflight=0, standby=False, disabled=False, pid=0)
    base.update(kw)
    return SimpleNamespace(**base)


def fake_gateway() -> SimpleNamespace:
    w1 = fake_worker("v1-1", requests=5, status_classes=[1, 0, 3, 0, 0, 1], bytes_out=500,
                     latency_counts=[2, 2] + [0] * (len(LATENCY_BOUNDS) - 2) + [1],
                     latency_sum=30.5, restarts=2, inflight=1)
    w2 = fake_worker("v1-2", requests=1, status_classes=[0, 0, 1, 0, 0, 0], bytes_out=20,
                     latency_counts=[1] + [0] * len(LATENCY_BOUNDS), latency_sum=0.0005)
    v1 = SimpleNamespace(id="v1", state="active", workers=[w1, w2], canary_percent=0.0)
    v2 = SimpleNamespace(id="v2", state="canary", workers=[fake_worker("v2-1")],
                         canary_percent=10.0)
    revs = SimpleNamespace(revisions={"v1": v1, "v2": v2}, canary=v2, active=v1, deploys=3)
    return SimpleNamespace(revs=revs, sessions=SimpleNamespace(per_revision={"v1": 4, "v2": 1}),
                           sessions_lost=2, queue=[object()], connections={1, 2, 3},
                           # a fake worker carries its own counters (the endpoint's stats)
                           stats=lambda w: w, inflight=lambda w: w.inflight,
                           ticker=SimpleNamespace(errors={"drain": 1, "pin-flush": 0}),
                           tasks=SimpleNamespace(failed=2),
                           hooks=SimpleNamespace(failures={"on_drain": 0, "on_retire": 3}),
                           discovery=SimpleNamespace(failures={"v2": 4}),
                           config=SimpleNamespace(app_keep_retired=5))


def test_collector_reads_the_gateway_state() -> None:
    gw = fake_gateway()
    s = parse(render(metrics_registry(gw)).decode())  # type: ignore[arg-type]
    assert value(s, "holdover_requests_total", revision="v1", **{"class": "2xx"}) == 4
    assert value(s, "holdover_requests_total", revision="v1", **{"class": "5xx"}) == 1
    assert value(s, "holdover_requests_total", revision="v1", **{"class": "other"}) == 1
    assert {ls for (n, ls) in s if n == "holdover_requests_total" and ("revision", "v2") in ls} \
        == {frozenset({("revision", "v2"), ("class", c)}) for c in STATUS_CLASSES}
    assert value(s, "holdover_response_bytes_total", revision="v1") == 520
    # The histogram: cumulative buckets over LATENCY_BOUNDS, +Inf = count, and the sum.
    assert value(s, "holdover_request_duration_seconds_bucket", revision="v1", le="0.001") == 3
    assert value(s, "holdover_request_duration_seconds_bucket", revision="v1", le="0.0025") == 5
    assert value(s, "holdover_request_duration_seconds_bucket", revision="v1", le="10.0") == 5
    assert value(s, "holdover_request_duration_seconds_bucket", revision="v1", le="+Inf") == 6
    assert value(s, "holdover_request_duration_seconds_count", revision="v1") == 6
    assert value(s, "holdover_request_duration_seconds_sum", revision="v1") == pytest.approx(30.5005)
    assert value(s, "holdover_sessions", revision="v1") == 4
    assert value(s, "holdover_sessions_lost_total") == 2
    assert value(s, "holdover_workers", revision="v1", state="ready") == 2
    assert value(s, "holdover_workers", revision="v1", state="stopped") == 0
    assert value(s, "holdover_worker_restarts_total", revision="v1", worker="v1-1") == 2
    assert value(s, "holdover_requests_in_flight", revision="v1") == 1
    assert value(s, "holdover_deploys_total") == 3
    assert value(s, "holdover_queue_length") == 1
    assert value(s, "holdover_revision_info", revision="v2", state="canary") == 1
    assert value(s, "holdover_canary_percent", revision="v2") == 10
    assert value(s, "holdover_periodic_job_errors_total", job="drain") == 1
    assert value(s, "holdover_task_failures_total") == 2
    assert value(s, "holdover_hook_failures_total", hook="on_retire") == 3
    assert value(s, "holdover_hook_failures_total", hook="on_drain") == 0
    assert value(s, "holdover_discovery_failures_total", revision="v2") == 4


def test_counters_survive_workers_leaving() -> None:
    """A revision's counters never go down when its workers are replaced."""
    gw = fake_gateway()
    registry = metrics_registry(gw)  # type: ignore[arg-type]
    before = parse(render(registry).decode())
    v1 = gw.revs.revisions["v1"]
    gone = v1.workers[0]
    gone.requests += 1  # served one more request after the last scrape, then stopped
    gone.status_classes[2] += 1
    gone.bytes_out += 7
    gone.latency_counts[0] += 1
    gone.restarts += 1
    v1.workers = [v1.workers[1], fake_worker("v1-1", requests=1, restarts=0,
                                             status_classes=[0, 0, 1, 0, 0, 0],
                                             latency_counts=[1] + [0] * len(LATENCY_BOUNDS))]
    after = parse(render(registry).decode())
    cls = {"class": "2xx"}
    assert value(after, "holdover_requests_total", revision="v1", **cls) == \
        value(before, "holdover_requests_total", revision="v1", **cls) + 2
    assert value(after, "holdover_response_bytes_total", revision="v1") == 527
    assert value(after, "holdover_request_duration_seconds_count", revision="v1") == 8
    assert value(after, "holdover_worker_restarts_total", revision="v1", worker="v1-1") == 3
    for (name, labels), v in before.items():
        if name.endswith(("_total", "_count", "_bucket", "_sum")):
            assert after[(name, labels)] >= v, (name, labels)
