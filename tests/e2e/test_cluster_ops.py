"""Operations on a cluster of nodes sharing one real redis-server, end to end.

Each node is a ``holdover run`` on its own loopback address (127.0.0.11, .12, .13) with
its own state_dir.  A deploy, rollback, drain or retire given to any node is carried out
by every live node; a deploy that fails on one node fails everywhere; a node that joins
starts the cluster's active revision; status on any node shows every node's workers.
The store's faults: while Redis is away changes are refused (503) and what happened
meanwhile is written when it returns; a Redis that comes back empty is filled again by
the nodes.

A node cut off from Redis alone serves what it holds and catches up from the feed when
it rejoins.  The clients of the load test send each request to a random node, as behind
a balancer with no stickiness: any node routes any session (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, PY, GatewayProcess, wait_for
from redisserver import RedisServer

from holdover.core.peers import ClusterSecret

STATEFUL = f"{PY} {APPS / 'stateful.py'} {{port}}"


class Node:
    """One node of the test cluster: a gateway on 127.0.0.(11 + index)."""

    def __init__(self, gw: GatewayProcess, name: str, host: str) -> None:
        self.gw, self.name, self.host = gw, name, host

    def api(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        code, _, data = self.gw.admin_request(method, path, body, timeout=180)
        return code, json.loads(data or b"{}")

    def status(self) -> dict:
        code, st = self.api("GET", "/api/status")
        assert code == 200, st
        return st

    def revision(self, rid: str) -> dict | None:
        return next((r for r in self.status()["revisions"] if r["id"] == rid), None)


class Cluster:
    """Start nodes against one Redis; every process is stopped by the fixture."""

    def __init__(self, factory: Callable[..., GatewayProcess], store: str, tmp: Path) -> None:
        self.factory, self.store = factory, store
        self.secret = tmp / "cluster.secret"  # the keys every node shares, made once
        ClusterSecret.load_or_create(self.secret)
        self.nodes: list[Node] = []

    def start(self, extra_app: str = "", app: str = STATEFUL, index: int | None = None,
              wait: bool = True, **kw: Any) -> Node:
        i = len(self.nodes) if index is None else index
        host, name = f"127.0.0.{11 + i}", f"web-{i + 1}"
        gw = self.factory(app=app, mode="sessions", workers=kw.pop("workers", 1),
                          extra_gateway=f'listen = "{host}:0"\nadmin_listen = "{host}:0"\n'
                          f'store = "{self.store}"\nnode = "{name}"\n'
                          f'cluster_secret = "{self.secret}"\n'
                          + kw.pop("extra_gateway", ""),
                          extra_app='session_cookie = "sid"\nstop_grace = "3s"\n' + extra_app,
                          **kw)
        node = Node(gw, name, host)
        self.nodes.append(node)
        if wait:
            gw.wait_ready(60)
            self.wait_joined()
        return node

    def wait_joined(self) -> None:
        """Every node lists every live node, each ready."""
        names = {n.name for n in self.nodes if n.gw.proc.poll() is None}
        for node in self.nodes:
            if node.gw.proc.poll() is None:
                wait_for(lambda node=node: {n["name"] for n in node.status()["nodes"]
                                            if n["ready"]} == names, 30,
                         what=f"{node.name} to see {sorted(names)}")


@pytest.fixture
def cluster(gateway_factory, redis_url, tmp_path) -> Cluster:
    return Cluster(gateway_factory, redis_url, tmp_path)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it stops and starts."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


class Browser:
    """A client with its own cookie jar, on one node (see the module's docstring)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} \
                if self.cookies else {}
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            for sc in r.headers.get_all("Set-Cookie") or []:
                name, _, value = sc.split(";")[0].strip().partition("=")
                if value:
                    self.cookies[name] = value
            return r.status, json.loads(body) if body.startswith(b"{") else {}
        finally:
            conn.close()


class AnyNode(Browser):
    """A browser behind a balancer with no stickiness: each request to a random node."""

    def __init__(self, nodes: list[Node], rnd: random.Random) -> None:
        super().__init__(nodes[0].host, nodes[0].gw.port)
        self.nodes, self.rnd = nodes, rnd

    def request(self, method: str, path: str) -> tuple[int, dict]:
        node = self.rnd.choice(self.nodes)
        self.host, self.port = node.host, node.gw.port
        return super().request(method, path)


def revs_of(node: Node) -> dict[str, str]:
    return {r["id"]: r["state"] for r in node.status()["revisions"]}


# -- operations ---------------------------------------------------------------------------


def test_deploy_and_rollback_given_on_different_nodes_act_on_the_whole_cluster_under_load(
        cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()
    stop = threading.Event()
    failures: list[str] = []
    moved: list[str] = []
    served = [0]

    def client(node: Node, seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            br = AnyNode([a, b], rnd)  # every request to a random node, as behind an L4 balancer
            code, info = br.request("POST", f"/login?user=u{seed}")
            if code != 200:
                failures.append(f"{node.name} login {code}")
                continue
            for n in range(1, rnd.randint(2, 6)):
                code, again = br.request("GET", "/")
                served[0] += 1
                if code != 200:
                    failures.append(f"{node.name} GET {code}")
                elif (again["pid"], again["count"]) != (info["pid"], n):
                    moved.append(f"{node.name}: {info['pid']} -> {again['pid']}")
    threads = [threading.Thread(target=client, args=(node, i), daemon=True)
               for i, node in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: served[0] > 20, 30, what="load")
        code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
        assert code == 200, out
        assert set(out["nodes"]) == {"web-1", "web-2"}, out
        assert all(n["state"] == "done" for n in out["nodes"].values()), out
        for node in (a, b):  # active on both when the command returns
            st = node.status()
            assert st["active"] == "v2", (node.name, st)
        seen = served[0]
        wait_for(lambda: served[0] > seen + 20, 30, what="load on v2")
        code, out = b.api("POST", "/api/rollback", {})
        assert code == 200, out
        assert out["revision"] == "v1" and set(out["nodes"]) == {"web-1", "web-2"}, out
        for node in (a, b):
            assert node.status()["active"] == "v1", node.name
        seen = served[0]
        wait_for(lambda: served[0] > seen + 20, 30, what="load after the rollback")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:10]
    assert not moved, moved[:10]
    assert a.status()["sessions_lost"] == 0
    # Every node lists both nodes' workers, each with its node.
    st = a.status()
    nodes_of = {w["node"] for r in st["revisions"] for w in r["workers"]}
    assert nodes_of == {"web-1", "web-2"}, st
    # The admin page's snapshot shows the nodes and the whole cluster's sessions.
    def summed() -> bool:
        code, snap = a.api("GET", "/api/stream?once=1")
        here = a.status()["sessions_here"] + b.status()["sessions_here"]
        return code == 200 and snap["sessions"]["total"] == here > 0 and \
            {n["name"] for n in snap["status"]["nodes"]} == {"web-1", "web-2"}
    wait_for(summed, 15, what="whole-cluster figures on the admin page")
    kinds = {(e["kind"], e["data"].get("node")) for e in json.loads(
        a.gw.cli("events", "--json", "--limit", "200").stdout)["events"]}
    assert {("deploy", "web-1"), ("deploy", "web-2"), ("rollback", "web-1"),
            ("rollback", "web-2")} <= kinds, kinds


def test_a_deploy_counts_the_sessions_left_draining_on_every_node(cluster: Cluster) -> None:
    """`holdover deploy` says how many sessions the old revision keeps: the cluster's,
    not only those of the node the command was given on."""
    a, b = cluster.start(), cluster.start()
    for node, users in ((a, 1), (b, 2)):
        for i in range(users):
            code, _ = Browser(node.host, node.gw.port).request("POST", f"/login?user={i}")
            assert code == 200
    wait_for(lambda: a.status()["sessions"] == 3, 15, what="both nodes' sessions in status")
    code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
    assert code == 200, out
    assert out["nodes"]["web-1"]["previous_sessions"] == 1, out
    assert out["nodes"]["web-2"]["previous_sessions"] == 2, out
    assert out["previous_sessions"] == 3, out


def test_a_deploy_failing_on_one_node_fails_everywhere_and_the_active_stays(
        cluster: Cluster, tmp_path: Path) -> None:
    # web-2's workers of revision "bad" exit at once; web-1's start fine.
    wrapper = tmp_path / "fails_bad.py"
    wrapper.write_text("import os, runpy, sys\n"
                       "if os.environ.get('HOLDOVER_REVISION') == 'bad':\n"
                       "    sys.exit(3)\n"
                       f"runpy.run_path({str(APPS / 'stateful.py')!r}, run_name='__main__')\n")
    a = cluster.start()
    b = cluster.start(app=f"{PY} {wrapper} {{port}}",
                      extra_app='start_timeout = "10s"\n')
    code, out = a.api("POST", "/api/deploy", {"revision": "bad"})
    assert code == 422, out
    err = out["error"]
    assert "web-2" in err["message"], err
    assert err["nodes"]["web-2"]["state"] == "failed", err
    assert err["nodes"]["web-1"]["state"] == "failed", err
    for node in (a, b):
        wait_for(lambda node=node: revs_of(node).get("bad") == "failed", 30,
                 what=f"bad failed on {node.name}")
        assert node.status()["active"] == "v1"
    # The cluster still deploys a good revision afterwards (the lock was let go).
    code, out = b.api("POST", "/api/deploy", {"revision": "good"})
    assert code == 200, out
    assert {a.status()["active"], b.status()["active"]} == {"good"}


def test_from_dir_must_hold_the_same_release_on_every_node(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()
    for node, text in ((a, "one"), (b, "one")):  # "copied by CI": the same files
        rel = node.gw.dir / "release"
        rel.mkdir()
        (rel / "stateful.py").write_text((APPS / "stateful.py").read_text())
        (rel / "VERSION").write_text(text)
    code, out = a.api("POST", "/api/deploy", {"revision": "r1", "from": "release"})
    assert code == 200, out
    (b.gw.dir / "release" / "VERSION").write_text("two")  # web-2 has another release
    code, out = a.api("POST", "/api/deploy", {"revision": "r2", "from": "release"})
    assert code == 422, out
    assert "differs from the deploying node's" in out["error"]["message"], out
    assert out["error"]["nodes"]["web-2"]["state"] == "failed", out
    # web-1 started r2 and failed it; web-2 refused it before starting anything.
    wait_for(lambda: revs_of(a).get("r2") == "failed", 30, what="r2 failed on web-1")
    assert "r2" not in revs_of(b) or revs_of(b)["r2"] == "failed"
    for node in (a, b):
        assert node.status()["active"] == "r1"


def test_a_canary_is_one_on_every_node_promoted_or_aborted_from_any(cluster: Cluster
                                                                    ) -> None:
    a, b = cluster.start(), cluster.start()
    code, out = a.api("POST", "/api/deploy", {"revision": "c1", "canary": 50})
    assert code == 200 and out["canary_percent"] == 50, out
    for node in (a, b):
        st = node.status()
        assert (st["active"], st["canary"]) == ("v1", "c1"), (node.name, st)
    code, out = b.api("POST", "/api/promote", {})
    assert code == 200 and out["revision"] == "c1" and set(out["nodes"]) == {"web-1", "web-2"}
    for node in (a, b):
        st = node.status()
        assert (st["active"], st["canary"]) == ("c1", None), (node.name, st)
    code, out = b.api("POST", "/api/deploy", {"revision": "c2", "canary": 10})
    assert code == 200, out
    code, out = a.api("POST", "/api/drain", {"revision": "c2"})  # aborts the canary
    assert code == 200, out
    for node in (a, b):
        st = node.status()
        assert (st["active"], st["canary"]) == ("c1", None), (node.name, st)
        assert revs_of(node)["c2"] in ("draining", "retired")
    code, out = b.api("POST", "/api/promote", {})
    assert code == 409 and "no canary" in out["error"]["message"], out


def test_two_commands_at_once_one_wins_the_other_is_refused(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start(extra_app='env = { START_DELAY = "2" }\n')
    results: dict[str, tuple[int, dict]] = {}

    def deploy(node: Node, rid: str) -> None:
        results[node.name] = node.api("POST", "/api/deploy", {"revision": rid})
    threads = [threading.Thread(target=deploy, args=(n, rid)) for n, rid in
               ((a, "one"), (b, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = sorted(code for code, _ in results.values())
    assert codes == [200, 409], results
    loser = next(body for code, body in results.values() if code == 409)
    assert "for the whole cluster" in loser["error"]["message"] or \
        "in progress" in loser["error"]["message"], loser
    winner = next(body["revision"] for code, body in results.values() if code == 200)
    for node in (a, b):
        assert node.status()["active"] == winner


def test_a_joining_node_starts_the_active_revision_and_retirement_spans_nodes(
        cluster: Cluster) -> None:
    a = cluster.start()
    b = cluster.start()
    code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
    assert code == 200, out
    c = cluster.start()  # three nodes: the third joins after the deploy
    st = c.status()
    assert st["active"] == "v2", st
    assert [w["state"] for w in c.revision("v2")["workers"] if w["node"] == "web-3"] == \
        ["ready"]
    # A session on web-2 holds v1 there; web-1 retires its own v1 workers meanwhile.
    br = Browser(b.host, b.gw.port)
    code, info = br.request("POST", "/login?user=held")
    assert code == 200 and info["revision"] == "v2"
    code, out = b.api("POST", "/api/rollback", {})
    assert code == 200 and out["revision"] == "v1", out
    code, info = br.request("GET", "/")
    assert code == 200 and info["revision"] == "v2"  # pinned to v2's worker on web-2
    wait_for(lambda: a.status()["nodes"] and all(
        w["state"] == "stopped" or w["node"] == "web-2"
        for w in a.revision("v2")["workers"]), 60, what="v2 stopped except on web-2")
    v2 = a.revision("v2")
    assert v2["state"] == "draining", v2  # not retired: a node still runs it
    assert v2["node_states"].get("web-2") == "draining", v2
    assert v2["sessions"] == 1
    code, out = c.api("POST", "/api/retire", {"revision": "v2"})
    assert code == 200, out
    assert out["nodes"]["web-2"]["result"]["sessions_ended"] == 1, out

    def retired_everywhere() -> bool:
        events = json.loads(a.gw.cli("events", "--json", "--limit", "200").stdout)["events"]
        return sum(e["kind"] == "retired-everywhere" and e["revision"] == "v2"
                   for e in events) == 1
    wait_for(retired_everywhere, 60, what="one retired-everywhere event for v2")
    for node in (a, b, c):
        wait_for(lambda node=node: node.revision("v2")["state"] == "retired", 30,
                 what=f"v2 retired as {node.name} sees it")


def test_a_node_joining_while_a_deploy_runs_ends_up_on_the_deployed_revision(
        cluster: Cluster) -> None:
    """A node whose first look at the feed comes after a deploy was published, and which
    would otherwise restore the cluster before that deploy is decided, must not stay on
    the revision it replaced: it starts once the operation under way has ended."""
    a = cluster.start()
    b = cluster.start()
    slow = f"sh -c 'sleep 6; exec {STATEFUL}'"  # v2 takes a while to start, on each node
    answer: dict[str, Any] = {}
    deploy = threading.Thread(target=lambda: answer.update(
        zip(("code", "out"), a.api("POST", "/api/deploy", {"revision": "v2",
                                                           "command": slow}), strict=True)))
    deploy.start()
    try:
        wait_for(lambda: (a.revision("v2") or {}).get("state") == "starting", 30,
                 what="v2 starting on web-1")
        c = cluster.start(wait=False)  # joins while the deploy waits for its workers
        c.gw.wait_ready(120)
    finally:
        deploy.join(180)
    assert answer.get("code") == 200, answer
    wait_for(lambda: c.status()["active"] == "v2", 60, what="web-3 on v2")
    mine = [w for w in c.revision("v2")["workers"] if w["node"] == "web-3"]
    assert [w["state"] for w in mine] == ["ready"], mine
    assert all(n.status()["active"] == "v2" for n in (a, b))
    assert "Traceback" not in c.gw.log, c.gw.log[-3000:]


# -- the store's faults ---------------------------------------------------------------------


def test_while_redis_is_away_changes_are_refused_and_what_happened_is_written_after(
        gateway_factory, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", args=("--appendonly", "yes",
                                                  "--appendfsync", "always")).start()
    try:
        cluster = Cluster(gateway_factory, redis.url("outage"), tmp_path)
        a = cluster.start(extra_gateway='store_outage_grace = "6s"\n')
        b = cluster.start()
        redis.stop()
        code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
        if code != 503:  # the first failed store call marks it away
            wait_for(lambda: a.api("POST", "/api/deploy", {"revision": "v2"})[0] == 503, 30,
                     what="the refusal")
            code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
        msg = out["error"]["message"]
        assert code == 503 and "127.0.0.1" in msg and "has not answered for" in msg, out
        code, out = b.api("POST", "/api/retire", {"revision": "v1"})
        assert code == 503, out
        # A change of this node alone goes on; its event waits for the store.
        code, out = b.api("POST", "/api/worker-restart", {"worker": "v1-1"})
        assert code == 200, out
        wait_for(lambda: b.revision("v1")["workers"][-1]["state"] == "ready" and all(
            w["state"] in ("ready", "stopped") for w in b.revision("v1")["workers"]
            if w["node"] == "web-2"), 30, what="web-2's worker back")
        # Sessions start and are served meanwhile, on both nodes.
        browsers = [Browser(n.host, n.gw.port) for n in (a, b, a, b)]
        for i, br in enumerate(browsers):
            code, info = br.request("POST", f"/login?user=away{i}")
            assert code == 200 and br.request("GET", "/")[1]["count"] == 1
        # Past the grace the node says it is not ready; web-2 keeps its default 30 s.
        ready = a.gw.admin_url.rstrip("/") + "/readyz"

        def readyz(url: str) -> int:
            host, port = url.split("//")[1].split("/")[0].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("GET", "/readyz")
                return conn.getresponse().status
            finally:
                conn.close()
        wait_for(lambda: readyz(ready) == 503, 30, what="web-1 unready")
        assert readyz(b.gw.admin_url.rstrip("/") + "/readyz") == 200
        redis.start()  # the same port, its data back from the append-only file
        wait_for(lambda: readyz(ready) == 200, 30, what="web-1 ready again")
        # The pins of the sessions that began meanwhile and the events are written.
        probe = RedisProbe(redis, "outage")
        wait_for(lambda: probe.pins() >= 4, 30, what="the sessions' pins in Redis")
        events = json.loads(b.gw.cli("events", "--json", "--limit", "500").stdout)["events"]
        queued = [e for e in events if e["kind"] == "worker-restart"]
        assert len(queued) == 1 and queued[0]["data"]["node"] == "web-2", queued
        assert queued[0]["data"]["happened_at"] < queued[0]["ts"], queued
        code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
        assert code == 200, out
        for br in browsers:
            code, info = br.request("GET", "/")
            assert code == 200 and (info["revision"], info["count"]) == ("v1", 2), info
    finally:
        for node in cluster.nodes:
            node.gw.stop()
        redis.stop()


def test_a_redis_that_comes_back_empty_is_filled_again_by_the_nodes(
        gateway_factory, own_redis: RedisServer, tmp_path: Path) -> None:
    cluster = Cluster(gateway_factory, own_redis.url("empty"), tmp_path)
    a, b = cluster.start(), cluster.start()
    code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
    assert code == 200, out
    browsers = [Browser(n.host, n.gw.port) for n in (a, b)]
    for i, br in enumerate(browsers):
        assert br.request("POST", f"/login?user=e{i}")[0] == 200
    probe = RedisProbe(own_redis, "empty")
    wait_for(lambda: probe.pins() == 2, 30, what="two pins")
    own_redis.stop()
    own_redis.start()  # no persistence: it comes back empty
    assert probe.pins() == 0 and probe.revisions() == 0
    wait_for(lambda: probe.revisions() == 2 and probe.pins() == 2 and
             probe.meta("active") == "v2", 60, what="the nodes to publish again")
    cluster.wait_joined()
    for node in (a, b):
        st = node.status()
        assert st["active"] == "v2" and st["sessions"] == 2, st
    for br in browsers:
        code, info = br.request("GET", "/")
        assert code == 200 and (info["revision"], info["count"]) == ("v2", 1), info
    code, out = b.api("POST", "/api/deploy", {"revision": "v3"})
    assert code == 200, out
    assert a.status()["active"] == "v3"


class RedisProbe:
    """Reads a cluster's keys straight from Redis (what a node restoring would find)."""

    def __init__(self, server: RedisServer, cluster: str) -> None:
        self.server, self.prefix = server, f"holdover:{{{cluster}}}:"

    def _call(self, *args: str) -> Any:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.server.port, decode_responses=True,
                             socket_timeout=5)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def pins(self) -> int:
        return sum(int(self._call("HLEN", key)) for key in
                   self._call("KEYS", self.prefix + "pins*"))

    def revisions(self) -> int:
        return int(self._call("HLEN", self.prefix + "rev"))

    def meta(self, key: str) -> str | None:
        return self._call("HGET", self.prefix + "meta", key)


class Relay:
    """A TCP relay on loopback between one node and Redis, which a test can cut and mend
    (a network partition between that node and the store, the other nodes unaffected)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> Relay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_a_node_cut_off_from_redis_serves_what_it_holds_and_catches_up_when_it_rejoins(
        gateway_factory, own_redis: RedisServer, tmp_path: Path) -> None:
    relay = Relay(own_redis.port).start()
    try:
        direct = own_redis.url("split")
        cluster = Cluster(gateway_factory, direct, tmp_path)
        a = cluster.start()
        cluster.store = direct.replace(f":{own_redis.port}/", f":{relay.port}/")
        b = cluster.start()
        br = Browser(b.host, b.gw.port)
        assert br.request("POST", "/login?user=split")[0] == 200
        relay.cut()
        wait_for(lambda: b.api("POST", "/api/deploy", {"revision": "v2"})[0] == 503, 30,
                 what="web-2 to refuse changes")
        wait_for(lambda: [n["name"] for n in a.status()["nodes"]] == ["web-1"], 30,
                 what="web-1 to see web-2's heartbeat lapse")
        code, out = a.api("POST", "/api/deploy", {"revision": "v2"})
        assert code == 200 and set(out["nodes"]) == {"web-1"}, out
        code, info = br.request("GET", "/")  # web-2 serves what it holds
        assert code == 200 and (info["revision"], info["count"]) == ("v1", 1), info
        relay.start()  # mended, on the same port
        wait_for(lambda: b.status()["active"] == "v2", 60, what="web-2 to catch up")
        cluster.wait_joined()
        code, info = br.request("GET", "/")
        assert code == 200 and (info["revision"], info["count"]) == ("v1", 2), info
        code, info = Browser(b.host, b.gw.port).request("POST", "/login?user=new")
        assert code == 200 and info["revision"] == "v2"
    finally:
        relay.cut()


def test_a_revision_forgotten_on_one_node_stays_in_the_store_while_another_runs_it(
        gateway_factory, own_redis: RedisServer, tmp_path: Path) -> None:
    cluster = Cluster(gateway_factory, own_redis.url("keep"), tmp_path)
    a, b = (cluster.start(extra_app="keep_retired = 1\n") for _ in range(2))
    probe = RedisProbe(own_redis, "keep")
    held = Browser(b.host, b.gw.port)  # a session on web-2's v1 worker keeps v1 there
    code, info = held.request("POST", "/login?user=held")
    assert code == 200 and info["revision"] == "v1"
    for rid in ("v2", "v3"):
        code, out = a.api("POST", "/api/deploy", {"revision": rid})
        assert code == 200, out
    # web-1 has no session on v1: it retires there at once, and keep_retired = 1 forgets
    # it on web-1 once v2 retires too, while web-2 still drains v1.
    wait_for(lambda: re.search(r"forgot finished revision\(s\) v1\b", a.gw.log), 60,
             what="web-1 to forget v1")
    assert "revision v1 retired" not in b.gw.log  # web-2 still drains it
    assert probe._call("HEXISTS", probe.prefix + "rev", "v1") == 1, \
        "the shared record of a revision another node runs stays"
    # Once no node runs it, the last node to forget it takes the record away.
    code, _ = held.request("POST", "/logout")
    assert code == 200
    wait_for(lambda: re.search(r"forgot finished revision\(s\) v1\b", b.gw.log), 60,
             what="web-2 to forget v1")
    wait_for(lambda: probe._call("HEXISTS", probe.prefix + "rev", "v1") == 0, 30,
             what="v1's record to leave the store")
    # The cluster's events, printed on any node, say where each happened.
    table = a.gw.cli("events", "--limit", "200").stdout
    assert re.search(r"retired\s+\[web-1\] ", table) and re.search(r"retired\s+\[web-2\] ",
                                                                   table), table
