"""A cluster's faults, routing side: a node dies with its workers; Redis goes away.

- A node SIGKILLed with its workers under load from clients hitting the live nodes:
  not one failed request for the sessions the live nodes hold; the dead node's sessions
  are served again (as new ones) at once, counted lost exactly once in the cluster and
  shown so in every node's status; new sessions begin as usual.
- Redis stopped (SIGSTOP: it holds its connections and answers nothing) for longer than
  a heartbeat's ttl: every node keeps routing every session, new sessions begin on any
  node and are routed from every node (the route cookie needs no store), and the pins
  saved meanwhile reach Redis when it answers again; nothing is counted lost.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from cluster import Cluster, ClusterClient, Session
from conftest import wait_for
from redisserver import RedisServer

from holdover.state.url import parse_redis_url


def _redis(url: str) -> tuple[redis.Redis, str]:
    u = parse_redis_url(url)
    return redis.Redis(host=u.host, port=u.port, db=u.db, decode_responses=True), u.prefix


def _login_many(client: ClusterClient, users: list[str]) -> list[tuple[Session, int]]:
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(client.login, users))
    return [(s, reply.body["pid"]) for s, reply in done]


def test_a_killed_node_costs_its_own_sessions_once_and_no_request_of_the_others(
        gateway_factory, tmp_path, redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 3).wait_ready()
    sessions = _login_many(cl.client(), [f"u{i}" for i in range(90)])
    doomed = [(s, pid) for s, pid in sessions if s.holder == "web-3"]
    kept = [(s, pid) for s, pid in sessions if s.holder != "web-3"]
    assert doomed and kept
    r, prefix = _redis(redis_url)
    try:
        # web-3's last heartbeat reports what it holds (that is what will be counted).
        wait_for(lambda: json.loads(r.hget(prefix + "nodes:info", "web-3") or "{}").get(
            "sessions") == len(doomed), 10, what="web-3's heartbeat to count its sessions")
    finally:
        r.close()
    live = cl.client(["web-1", "web-2"])  # the balancer in front takes web-3 out
    stop = threading.Event()
    failures: list[str] = []
    served = [0]

    def load(mine: list[tuple[Session, int]]) -> None:
        counts = {id(s): 0 for s, _ in mine}
        while not stop.is_set():
            for s, pid in mine:
                try:
                    reply = live.request(s, "GET", "/")
                except OSError as exc:
                    failures.append(f"{s.user}: {exc!r}")
                    continue
                counts[id(s)] += 1
                got = (reply.status, reply.body.get("user"), reply.body.get("pid"),
                       reply.body.get("count"))
                if got != (200, s.user, pid, counts[id(s)]):
                    failures.append(f"{s.user} on {s.holder}: {got}")
                served[0] += 1
    threads = [threading.Thread(target=load, args=(kept[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: served[0] > 50, 30, what="load before the kill")
        cl.kill("web-3")
        killed_at = served[0]
        # The dead node's sessions are served at once, by the live nodes, as new ones.
        for s, _ in doomed:
            reply = live.request(s, "GET", "/")
            assert reply.status == 200 and reply.body["user"] is None, reply
        # New sessions begin as usual.
        fresh = _login_many(live, [f"new{i}" for i in range(10)])
        assert {s.holder for s, _ in fresh} <= {"web-1", "web-2"}

        def counted() -> bool:
            return all(cl.status(i).get("lost_nodes", {}).get("web-3", {}).get("sessions")
                       == len(doomed) for i in (0, 1))
        wait_for(counted, 40, interval=0.5, what="both live nodes to count web-3 as lost")
        wait_for(lambda: served[0] > killed_at + 100, 30, what="load after the loss")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:10]
    statuses = [cl.status(i) for i in (0, 1)]
    if "sessions_here" in statuses[0]:  # status speaks for the cluster: each node, the sum
        wait_for(lambda: [cl.status(i)["sessions_lost"] for i in (0, 1)] == [len(doomed)] * 2,
                 10, what="both nodes to show the loss, counted once")
    else:  # each node its own: the two add up to one count of web-3's sessions
        assert sum(st["sessions_lost"] for st in statuses) == len(doomed), "counted once"
    assert {st["lost_nodes"]["web-3"]["counted_by"] for st in statuses} <= {"web-1", "web-2"}
    assert all("web-3" not in st["peers"] for st in statuses)
    events = json.loads(cl.nodes[0].cli("events", "--json").stdout)["events"]
    lost = [e for e in events if e["kind"] == "node-lost"]
    assert len(lost) == 1 and lost[0]["data"]["sessions"] == len(doomed), lost
    # web-3's pins are gone from the store with it; the others' are there.
    r, prefix = _redis(redis_url)
    try:
        assert not r.exists(prefix + "pins:web-3")
        wait_for(lambda: r.hlen(prefix + "pins:web-1") + r.hlen(prefix + "pins:web-2")
                 == len(kept) + len(fresh), 10, what="the live nodes' pins in Redis")
    finally:
        r.close()
    for s, pid in fresh:
        reply = live.request(s, "GET", "/")
        assert (reply.body["user"], reply.body["pid"]) == (s.user, pid), reply
    cl.check_logs()


def test_sessions_are_routed_through_every_node_while_redis_is_away(
        gateway_factory, tmp_path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        url = server.url("outage")
        cl = Cluster(gateway_factory, tmp_path, url, 2).wait_ready()
        client = cl.client()
        addresses = cl.addresses()
        before = _login_many(client, [f"b{i}" for i in range(20)])
        counts = {id(s): 0 for s, _ in before}

        def check_all(sessions: list[tuple[Session, int]]) -> None:
            for s, pid in sessions:
                for addr in addresses:  # through every node
                    counts[id(s)] = counts.get(id(s), 0) + 1
                    reply = client.request(s, "GET", "/", addr, timeout=5)
                    assert (reply.status, reply.body.get("user"), reply.body.get("pid"),
                            reply.body.get("count")) == (200, s.user, pid, counts[id(s)]), \
                        (s.user, s.holder, addr, reply)
        server.pause()
        away_since = time.monotonic()
        check_all(before)
        during = []
        for i, addr in enumerate(addresses * 10):  # sessions begin on every node
            s, reply = client.login(f"d{i}", addr)
            during.append((s, reply.body["pid"]))
        assert {s.holder for s, _ in during} == {"web-1", "web-2"}
        check_all(during)
        # Traffic goes on until Redis has been away longer than a heartbeat lives, so that
        # its return finds every node's heartbeat lapsed (each node is then cut off, not
        # dead: its peer listener answers).
        while time.monotonic() - away_since < 8:
            check_all(before[:4])
        server.resume()
        r, prefix = _redis(url)
        try:
            wait_for(lambda: r.hlen(prefix + "pins:web-1") + r.hlen(prefix + "pins:web-2")
                     == len(before) + len(during), 30,
                     what="the pins saved during the outage to reach Redis")
        finally:
            r.close()
        wait_for(lambda: all(not p["cut_off"] for i in (0, 1)
                             for p in cl.status(i)["peers"].values()), 30,
                 what="the nodes to see each other live again")
        check_all(before + during)
        statuses = [cl.status(i) for i in (0, 1)]
        assert [st["sessions_lost"] for st in statuses] == [0, 0]
        assert [st["lost_nodes"] for st in statuses] == [{}, {}]
        assert cl.held(0) + cl.held(1) == len(before) + len(during)
        cl.check_logs()
    finally:
        server.stop()
