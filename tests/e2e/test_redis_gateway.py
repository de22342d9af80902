"""A gateway on the Redis store (``[gateway] store = "redis://..."``), end to end.

Its revisions, pins and events live in a real redis-server: a restart finds them there.
Several nodes that share the cluster secret join one store; a node with another secret
is refused at start, before any worker runs, with a sentence that says what to copy.
"""

from __future__ import annotations

import json
import socket

from cluster import Cluster
from conftest import GatewayProcess, free_port, wait_for


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


def test_nodes_sharing_the_cluster_secret_join_and_another_secret_is_refused(
        gateway_factory, tmp_path, redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 2).wait_ready()
    peers = [cl.status(i)["peers"] for i in range(2)]
    assert list(peers[0]) == ["web-2"] and list(peers[1]) == ["web-1"], peers
    assert peers[0]["web-2"]["address"].startswith("127.0.0.12:")
    # A third node with a secret of its own (its state_dir's) is refused before any of
    # its workers runs, with a message naming a node and the file to copy.
    third: GatewayProcess = gateway_factory(
        workers=1, extra_gateway=f'listen = "127.0.0.13:0"\nadmin_listen = "127.0.0.13:0"\n'
                                 f'store = "{redis_url}"\nnode = "web-3"\n')
    assert third.proc.wait(30) == 1
    third._reader.join(5)
    assert "uses another cluster secret" in third.log and "node web-1" in third.log, third.log
    assert "cluster.secret" in third.log and "copy it" in third.log, third.log
    assert "worker v1-1 started" not in third.log
    assert "created the cluster secret" in third.log  # and it said where it made its own
    # Given the cluster's file, it joins.
    third.config.write_text(third.config.read_text().replace(
        'node = "web-3"', f'node = "web-3"\ncluster_secret = "{cl.secret_path}"'))
    third._start()
    third.wait_ready()
    wait_for(lambda: set(cl.status(0)["peers"]) == {"web-2", "web-3"}, 20,
             what="web-1 to route to web-3")


def test_a_reload_that_would_move_the_peer_listener_is_refused(gateway_factory, redis_url
                                                               ) -> None:
    port, other = free_port(), free_port()
    gw = gateway_factory(workers=1, extra_gateway=f'store = "{redis_url}"\nnode = "web-1"\n'
                         f'peer_listen = "127.0.0.1:{port}"\n').wait_ready()
    gw.config.write_text(gw.config.read_text().replace(f"127.0.0.1:{port}",
                                                       f"127.0.0.1:{other}"))
    r = gw.cli("reload")
    assert r.returncode != 0 and "moves the peer listener" in r.stderr, r.stderr
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # still listening
