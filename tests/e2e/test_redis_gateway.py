"""A gateway on the Redis store (``[gateway] store = "redis://..."``), end to end.

Its revisions, pins and events live in a real redis-server: a restart finds them there.
Until several nodes can share one app's state, a second node on the same store is
refused at start, before any worker runs, with a sentence that says why.
"""

from __future__ import annotations

import json
import time

from conftest import GatewayProcess, wait_for


def test_a_gateway_keeps_its_state_in_redis_across_a_restart(gateway_factory, redis_url
                                                            ) -> None:
    gw = gateway_factory(workers=1, extra_gateway=f'store = "{redis_url}"\nnode = "web-1"\n'
                         ).wait_ready()
    assert not (gw.dir / "state" / "state.db").exists(), "nothing in the embedded store"
    r = gw.cli("deploy", "--revision", "v2")
    assert r.returncode == 0, r.stderr
    assert gw.stop() == 0
    gw._start()
    gw.wait_ready()
    st = json.loads(gw.cli("status", "--json").stdout)
    assert st["active"] == "v2", st
    kinds = [e["kind"] for e in json.loads(gw.cli("events", "--json").stdout)["events"]]
    assert "deploy" in kinds and "restore" in kinds


def test_a_second_node_on_the_same_store_is_refused_before_its_workers_start(
        gateway_factory, redis_url) -> None:
    first = gateway_factory(workers=1, extra_gateway=f'store = "{redis_url}"\n'
                            'node = "web-1"\n').wait_ready()
    second: GatewayProcess = gateway_factory(
        workers=1, extra_gateway=f'store = "{redis_url}"\nnode = "web-2"\n')
    assert second.proc.wait(30) == 1
    second._reader.join(5)
    assert "in use by node web-1" in second.log, second.log
    assert "worker v1-1 started" not in second.log
    # The first one stops: its heartbeat goes at once, and the store is free again.
    assert first.stop() == 0
    second._start()
    second.wait_ready()
    t0 = time.monotonic()
    wait_for(lambda: second.cli("status", "--json").returncode == 0, what="status")
    assert time.monotonic() - t0 < 30
