"""A gateway on the Redis store (``[gateway] store = "redis://..."``), end to end.

Its revisions, pins and events live in a real redis-server: a restart finds them there.
A second node on the same store joins the first: both are listed by either.
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


def test_a_second_node_on_the_same_store_joins_the_first(gateway_factory, redis_url) -> None:
    first = gateway_factory(workers=1, extra_gateway=f'store = "{redis_url}"\n'
                            'node = "web-1"\n').wait_ready()
    second: GatewayProcess = gateway_factory(
        workers=1, extra_gateway=f'store = "{redis_url}"\nnode = "web-2"\n').wait_ready()
    assert "in use by node" not in second.log

    def nodes(gw: GatewayProcess) -> set[str]:
        r = gw.cli("status", "--json")
        return {n["name"] for n in json.loads(r.stdout).get("nodes", [])} \
            if r.returncode == 0 else set()
    for gw in (first, second):
        wait_for(lambda gw=gw: nodes(gw) == {"web-1", "web-2"}, 30, what="both nodes listed")
    # The joining node runs the cluster's active revision.
    st = json.loads(second.cli("status", "--json").stdout)
    assert st["active"] == "v1", st
    # The first one stops: its heartbeat goes at once.
    assert first.stop() == 0
    t0 = time.monotonic()
    wait_for(lambda: nodes(second) == {"web-2"}, 30, what="web-1 gone from the list")
    assert time.monotonic() - t0 < 10
