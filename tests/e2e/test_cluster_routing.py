"""Any node routes any session: two and three nodes, clients hitting random nodes.

Each node runs the stateful test app (tests/apps/stateful.py: sessions in process memory)
on its own loopback address against one real redis-server (tests/cluster.py).  A session
begins on whichever node the balancer in front picked; every later request of it goes
to a random node and must reach the very worker that holds the session (same pid, the
session's count going up by one each time), whichever node it entered.  The peer
listener serves only requests with a valid token, never routes a request to a worker
its session is not pinned to, and a route cookie that is forged or belongs to another
session is ignored.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cluster import Cluster, Session
from conftest import APPS, PY, wait_for
from websockets.sync.client import connect as ws_connect

from holdover.core.peers import PeerAuth

SESSIONS = 200
REQUESTS = 4  # per session, after its login


@pytest.mark.parametrize("n", [2, 3])
def test_every_request_of_a_session_reaches_its_own_worker_through_any_node(
        gateway_factory, tmp_path, redis_url, n) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, n).wait_ready()
    client = cl.client()
    addresses = cl.addresses()
    entered: dict[str, int] = {}  # how often a request entered a node not holding it
    errors: list[str] = []
    lock = threading.Lock()

    def one_session(i: int) -> None:
        s, first = client.login(f"u{i}")
        holder = s.holder
        # The node the client's login reached holds the session (it names itself).
        assert cl.names[addresses.index(first.address)] == holder, (holder, first.address)
        pid = first.body["pid"]
        for count in range(1, REQUESTS + 1):
            r = client.request(s, "GET", "/")
            entry = cl.names[addresses.index(r.address)]
            where = "holder" if entry == holder else "other"
            with lock:
                entered[where] = entered.get(where, 0) + 1
            if (r.status, r.body.get("user"), r.body.get("pid"), r.body.get("count")) != \
                    (200, f"u{i}", pid, count):
                errors.append(f"session u{i} (on {holder}, pid {pid}) via {entry}: "
                              f"{r.status} {r.body}")
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one_session, range(SESSIONS)))
    assert not errors, errors[:5]
    total = SESSIONS * REQUESTS
    assert entered["holder"] + entered["other"] == total
    # Random entry: most requests of a session on n nodes enter another node than its own.
    assert entered["other"] > total * (n - 1) / n * 0.8, entered
    # The sessions are where they began; nothing was lost on the way.
    held = [cl.held(i) for i in range(n)]
    assert sum(held) == SESSIONS, held
    assert all(cl.status(i)["sessions_lost"] == 0 for i in range(n))
    cl.check_logs()


def _peer_request(address: tuple[str, int], cookies: str, token: bytes | None,
                  extra: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        headers = {"Host": "shop.example", "Cookie": cookies, **(extra or {})}
        if token is not None:
            headers["X-Holdover-Peer"] = token.decode()
        conn.request("GET", "/", headers=headers)
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, {}
    finally:
        conn.close()


def test_the_peer_listener_serves_only_nodes_and_only_by_the_pin(
        gateway_factory, tmp_path, redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 3).wait_ready()
    a, c = cl.addresses(["web-1"])[0], cl.addresses(["web-3"])[0]
    client = cl.client()
    on_a, first = client.login("alice", a)
    on_c, _ = client.login("carol", c)
    assert (on_a.holder, on_c.holder) == ("web-1", "web-3")
    pid = first.body["pid"]
    peer_a = cl.status(1)["peers"]["web-1"]["address"]  # as web-2 reaches web-1
    host, _, port = peer_a.rpartition(":")
    peer = (host, int(port))
    assert host == "127.0.0.11", peer_a
    auth = cl.secret.auth("web-2")
    now = time.time()
    forged = PeerAuth("web-2", b"\x00" * 32).token(now)  # the right shape, another key
    for token in (None, b"", forged, auth.token(now - 120), b"web-2:%d:" % now,
                  b"garbage"):
        code, body = _peer_request(peer, on_a.header(), token)
        assert code == 403, (token, code, body)
    # None of those reached a worker: the session's count is where it was.
    r = client.request(on_a, "GET", "/", a)
    assert (r.body["user"], r.body["pid"], r.body["count"]) == ("alice", pid, 1), r.body
    # With a valid token: always the session's own worker, whatever else the request says.
    for i in range(2, 8):
        code, body = _peer_request(peer, on_a.header(), cl.secret.auth("web-3").token(),
                                   {"X-Holdover-Worker": "v1-2", "X-Forwarded-For": "10.9.9.9"})
        assert (code, body.get("user"), body.get("pid"), body.get("count")) == \
            (200, "alice", pid, i), body
    # A session web-1 does not hold is never passed on (no second hop) nor given to the
    # worker holding it elsewhere: web-1 serves it as a new visitor on its own workers.
    code, body = _peer_request(peer, on_c.header(), auth.token())
    assert code == 200 and body["user"] is None, body
    assert body["pid"] in cl.worker_pids(0)


def test_a_forged_or_borrowed_route_cookie_is_ignored(gateway_factory, tmp_path,
                                                      redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 3).wait_ready()
    a, b, c = cl.addresses()
    client = cl.client()
    alice, first = client.login("alice", a)
    carol, _ = client.login("carol", c)
    pid = first.body["pid"]
    b_pids = cl.worker_pids(1)
    sid = f"sid={alice.cookies['sid']}"
    route = alice.cookies["holdover_node"]
    cookies = [f"holdover_node=web-1.{'A' * 16}", "holdover_node=web-1",
               f"holdover_node={route}x", f"holdover_node=web-3{route[5:]}",
               # carol's is genuine, and names web-3; but it is carol's session's
               f"holdover_node={carol.cookies['holdover_node']}"]
    for cookie in cookies:
        r = client.request(Session(), "GET", "/", b, cookies=f"{sid}; {cookie}")
        assert r.status == 200 and r.body["user"] is None, (cookie, r.body)
        assert r.body["pid"] in b_pids, ("served by web-2 itself, passed nowhere", cookie)
    # alice's real cookies still reach her session, through any node.
    for i, addr in enumerate((b, c, a, b), start=1):
        r = client.request(alice, "GET", "/", addr)
        assert (r.body["user"], r.body["pid"], r.body["count"]) == ("alice", pid, i), r.body
    assert cl.held(1) == 0, "web-2 pinned nothing for the forged requests"


def test_streams_and_session_ends_pass_through_another_node(gateway_factory, tmp_path,
                                                            redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 2).wait_ready()
    a, b = cl.addresses()
    client = cl.client()
    alice, first = client.login("alice", a)
    pid = first.body["pid"]
    # A WebSocket opened through web-2 reaches alice's worker on web-1, and holds it:
    # web-1 counts the stream as in flight on that worker while it is open.
    with ws_connect(f"ws://{b[0]}:{b[1]}/ws", proxy=None, open_timeout=15,
                    additional_headers={"Cookie": alice.header()}) as ws:
        for i in range(3):
            ws.send(f"m{i}")
            got = json.loads(ws.recv(timeout=15))
            assert (got["user"], got["pid"], got["echo"]) == ("alice", pid, f"m{i}"), got
        st = cl.status(0)
        busy = [w for rev in st["revisions"] for w in rev["workers"] if w["pid"] == pid]
        assert busy and busy[0]["inflight"] == 1, busy
        assert cl.status(1)["peers"]["web-1"]["inflight"] == 1
    # Logging out through web-2 ends the session where it lives.
    r = client.request(alice, "POST", "/logout", b)
    assert r.status == 200 and r.body["logged_out"] is True, r.body
    assert "sid" not in alice.cookies
    wait_for(lambda: cl.held(0) == 0, 10, what="web-1 to end the session")
    assert cl.status(0)["sessions_lost"] == 0


def test_holdovers_own_pin_cookie_bodies_and_the_clients_address_cross_nodes(
        gateway_factory, tmp_path, redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 2, session_cookie="",
                 app=f"{PY} {APPS / 'backend.py'} {{port}}").wait_ready()
    a, b = cl.addresses()
    client = cl.client()
    s = Session()
    first = client.request(s, "GET", "/echo", a)  # holdover offers its own pin cookie
    assert "holdover_pin" in s.cookies and s.holder == "web-1", s.cookies
    pid = first.body["pid"]
    direct_xff = dict(first.body["headers"])["X-Forwarded-For"]
    for i, addr in enumerate((b, b, a, b)):
        data = b"x" * (70_000 + i)
        r = client.request(s, "POST", "/echo", addr, body=data)
        assert (r.status, r.body["pid"], r.body["length"]) == (200, pid, len(data)), r.body
        seen = dict(r.body["headers"])
        assert "X-Holdover-Peer" not in seen, "the token never reaches the app"
        # The app sees the client's address as the node it entered saw it, no node's.
        assert seen["X-Forwarded-For"] == direct_xff and "," not in seen["X-Forwarded-For"]
        assert seen["X-Forwarded-Proto"] == "http"
        got = dict(r.headers)
        assert got.get("X-Holdover-Revision") == "v1", got  # web-1's header, passed on
    assert (cl.held(0), cl.held(1)) == (1, 0)
    cl.check_logs()


def test_a_reloaded_node_keeps_its_peer_listener_and_its_sessions(gateway_factory, tmp_path,
                                                                 redis_url) -> None:
    cl = Cluster(gateway_factory, tmp_path, redis_url, 2).wait_ready()
    a, b = cl.addresses()
    client = cl.client()
    alice, first = client.login("alice", a)
    pid = first.body["pid"]
    address = cl.status(1)["peers"]["web-1"]["address"]
    assert cl.nodes[0].cli("reload").returncode == 0
    wait_for(lambda: cl.nodes[0].log.count("holdover: serving") >= 2, 30, what="re-exec")
    for i, addr in enumerate((b, a, b, b), start=1):
        r = client.request(alice, "GET", "/", addr)
        assert (r.status, r.body["user"], r.body["pid"], r.body["count"]) == \
            (200, "alice", pid, i), r.body
    assert cl.status(1)["peers"]["web-1"]["address"] == address, "the same peer port"
    statuses = [cl.status(i) for i in (0, 1)]
    assert [st["sessions_lost"] for st in statuses] == [0, 0]
    assert [st["lost_nodes"] for st in statuses] == [{}, {}]
    cl.check_logs()


def _raw_get(address: tuple[str, int], lines: list[bytes]) -> tuple[int, bytes]:
    """A GET with exactly these header lines (http.client would add its own)."""
    with socket.create_connection(address, timeout=15) as s:
        s.sendall(b"GET / HTTP/1.1\r\n" + b"".join(ln + b"\r\n" for ln in lines)
                  + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_request_at_the_head_limits_is_served_through_another_node_as_directly(
        gateway_factory, tmp_path, redis_url) -> None:
    """The node a request enters adds its forwarding headers and its token: the holder
    must not refuse (431) a head that it would have taken from the client itself."""
    cl = Cluster(gateway_factory, tmp_path, redis_url, 2,
                 extra_gateway='max_headers = 12\nmax_header_size = "2KiB"\n').wait_ready()
    a, b = cl.addresses()
    client = cl.client()
    alice, first = client.login("alice", a)
    pid = first.body["pid"]
    base = [b"Host: shop.example", b"Cookie: " + alice.header().encode()]
    many = base + [b"X-Pad-%d: x" % i for i in range(12 - len(base) - 1)]  # + Connection
    used = sum(len(ln) + 2 for ln in base) + len(b"Connection: close") + 2
    big = [*base, b"X-Pad: " + b"y" * (2048 - used - len(b"X-Pad: ") - 2 - 8)]
    count = 0
    for lines in (many, big):
        for address in (a, b):  # directly to the holder, then through web-2
            code, body = _raw_get(address, lines)
            count += 1
            got = json.loads(body) if code == 200 else body
            assert code == 200, (address, code, got)
            assert (got["user"], got["pid"], got["count"]) == ("alice", pid, count), got
        # One header more than the limit is refused, wherever it enters.
        assert _raw_get(a, [*lines, b"X-One-More: z"])[0] == 431
        assert _raw_get(b, [*lines, b"X-One-More: z"])[0] == 431
    # What the peer listener allows for a sending node's lines stays bounded for anyone.
    host, _, port = cl.status(1)["peers"]["web-1"]["address"].rpartition(":")
    flood = [b"Host: shop.example", *[b"Forwarded: for=" + b"1" * 60_000] * 4]
    assert _raw_get((host, int(port)), flood)[0] == 431
    cl.check_logs()
