"""``holdover check --store``: before a node starts, the shared store says whether it can
join — its cluster secret and its name against the live nodes' (a real redis-server).

The live nodes here are heartbeats written through the store's own API, as a running
node writes them (control/cluster.py), with the fingerprint of a secret file as
control/peers.py puts it there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import redis
from redisserver import free_port

from holdover.core.peers import ClusterSecret
from holdover.state import PinRecord, RedisStore


def node_config(folder: Path, store: str, node: str = "web-2",
                advertise: str = "127.0.0.12", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "holdover.toml"
    path.write_text(f'[gateway]\nstore = "{store}"\nnode = "{node}"\n'
                    f'advertise = "{advertise}"\ncluster_secret = "cluster.secret"\n{extra}'
                    '[app]\ncommand = "python app.py --port {port}"\n')
    return path


def contents(url: str) -> dict[bytes, bytes]:
    """Every key of the URL's cluster, with its serialized value."""
    u = urlparse(url)
    prefix = f"holdover:{{{parse_qs(u.query)['cluster'][0]}}}:"
    r = redis.Redis(host=u.hostname, port=u.port)
    try:
        return {k: r.dump(k) for k in r.scan_iter(match=prefix + "*")}
    finally:
        r.close()


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "holdover", "check", "--store", "-c",
                           str(config)], capture_output=True, text=True, timeout=60)


def beat(url: str, node: str, peer: str, fingerprint: str | None) -> None:
    """A live node's heartbeat, as a running node renews it (None: an older holdover's,
    without a fingerprint)."""
    info = {"peer": peer} if fingerprint is None else {"peer": peer, "fingerprint": fingerprint}

    async def main() -> None:
        async with RedisStore(url, node=node) as store:
            await store.heartbeat(node, info, 60)
    asyncio.run(main())


def expired(url: str, node: str, within: float = 5.0) -> None:
    """Wait until ``node``'s heartbeat has expired by Redis's own clock (read only)."""
    u = urlparse(url)
    key = f"holdover:{{{parse_qs(u.query)['cluster'][0]}}}:nodes"
    r = redis.Redis(host=u.hostname, port=u.port)
    try:
        deadline = time.monotonic() + within
        while True:
            sec, usec = r.time()
            score = r.zscore(key, node)
            assert score is not None, f"no heartbeat of {node}"
            if score < sec + usec / 1e6:
                return
            assert time.monotonic() < deadline, "the heartbeat did not expire"
            time.sleep(0.01)
    finally:
        r.close()


def test_first_node_is_told_its_secret_will_be_made(tmp_path: Path, redis_url: str) -> None:
    config = node_config(tmp_path / "web-1", redis_url, "web-1", "127.0.0.11")
    r = check(config)
    assert r.returncode == 0, r.stderr
    assert "live nodes: none" in r.stdout
    assert "cluster.secret will be created at the first start" in r.stdout
    assert not (tmp_path / "web-1" / "cluster.secret").exists(), "check creates nothing"


def test_a_new_node_without_the_secret_is_told_where_to_copy_it_from(
        tmp_path: Path, redis_url: str) -> None:
    theirs = ClusterSecret.load_or_create(tmp_path / "web-1" / "cluster.secret")
    beat(redis_url, "web-1", "127.0.0.11:9180", theirs.fingerprint())
    r = check(node_config(tmp_path / "web-2", redis_url))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "live nodes: web-1 at 127.0.0.11:9180" in r.stdout
    assert "cluster.secret does not exist" in r.stderr
    assert "copy that file (mode 0600) from node web-1" in r.stderr
    assert not (tmp_path / "web-2" / "cluster.secret").exists()


def test_another_secret_is_refused_and_the_same_one_accepted(tmp_path: Path,
                                                             redis_url: str) -> None:
    theirs = ClusterSecret.load_or_create(tmp_path / "web-1" / "cluster.secret")
    beat(redis_url, "web-1", "127.0.0.11:9180", theirs.fingerprint())
    config = node_config(tmp_path / "web-2", redis_url)
    ClusterSecret.load_or_create(tmp_path / "web-2" / "cluster.secret")  # a secret of its own
    r = check(config)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "node web-1 of this cluster uses another cluster secret than" in r.stderr
    assert "copy that file from node web-1" in r.stderr
    (tmp_path / "web-2" / "cluster.secret").write_bytes(
        (tmp_path / "web-1" / "cluster.secret").read_bytes())  # the operator copies it
    r = check(config)
    assert r.returncode == 0, r.stderr
    assert "cluster.secret is the secret the live nodes use" in r.stdout


def test_a_name_live_on_another_host_is_refused(tmp_path: Path, redis_url: str) -> None:
    secret = ClusterSecret.load_or_create(tmp_path / "web-2" / "cluster.secret")
    beat(redis_url, "web-2", "127.0.0.13:9180", secret.fingerprint())  # another "web-2"
    r = check(node_config(tmp_path / "web-2", redis_url))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "node web-2 is already live at 127.0.0.13" in r.stderr
    assert "give this one another" in r.stderr


def test_a_store_that_does_not_answer_is_an_error_naming_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    r = check(node_config(tmp_path, f"redis://127.0.0.1:{port}/0?timeout=500ms"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"127.0.0.1:{port}" in r.stderr
    assert "a node does not start without its store" in r.stderr


def test_the_embedded_store_has_no_cluster_to_check(tmp_path: Path) -> None:
    (tmp_path / "holdover.toml").write_text('[app]\ncommand = "python app.py --port {port}"\n')
    r = check(tmp_path / "holdover.toml")
    assert r.returncode == 0, r.stderr
    assert "no cluster to check" in r.stdout


def test_its_own_heartbeat_on_this_host_is_no_conflict(tmp_path: Path, redis_url: str) -> None:
    secret = ClusterSecret.load_or_create(tmp_path / "web-2" / "cluster.secret")
    beat(redis_url, "web-2", "127.0.0.12:9180", secret.fingerprint())  # this node, running
    r = check(node_config(tmp_path / "web-2", redis_url))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "a node web-2 is live on this host" in r.stdout


def test_check_changes_nothing_in_the_store(tmp_path: Path, redis_url: str) -> None:
    """An old single gateway's pins stay where they are, the layout key is not made for a
    fresh cluster name, expired heartbeats stay for the nodes to prune."""
    config = node_config(tmp_path / "web-2", redis_url)
    assert check(config).returncode == 0
    assert contents(redis_url) == {}, "a check of an unused cluster name makes no key"

    async def old_state() -> None:
        async with RedisStore(redis_url) as store:  # a single gateway (no node): its pins
            now = time.time()
            await store.put_pins([PinRecord("k1", "v1-1", "i1", "v1", now, now, None)])
            await store.heartbeat("gone", {"peer": "127.0.0.19:9180"}, 0.05)
    asyncio.run(old_state())
    expired(redis_url, "gone")
    before = contents(redis_url)
    assert before, "the old gateway left keys"
    r = check(config)
    assert r.returncode == 0, r.stderr
    assert "live nodes: none" in r.stdout, "an expired heartbeat is no live node"
    assert contents(redis_url) == before


def test_peer_listen_by_name_is_the_address_it_binds(tmp_path: Path, redis_url: str) -> None:
    secret = ClusterSecret.load_or_create(tmp_path / "web-2" / "cluster.secret")
    beat(redis_url, "web-2", "127.0.0.1:9181", secret.fingerprint())  # this node, running
    config = node_config(tmp_path / "web-2", redis_url,
                         extra='peer_listen = "localhost:9181"\n')
    r = check(config)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "is live on this host" in r.stdout


def test_nodes_without_a_fingerprint_are_not_compared(tmp_path: Path, redis_url: str) -> None:
    beat(redis_url, "web-1", "127.0.0.11:9180", None)  # an older holdover's heartbeat
    ClusterSecret.load_or_create(tmp_path / "web-2" / "cluster.secret")
    r = check(node_config(tmp_path / "web-2", redis_url))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "announce no secret fingerprint" in r.stdout
