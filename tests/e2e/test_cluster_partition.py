"""Fault (4) of docs/cluster.md over a real network: a node cut off from Redis.

Redis, node A, node B and a client each live in their own network namespace, joined by
veth pairs to one bridge (tests/netns.py).  The partition drops everything Redis sends
to A, so A's store calls hang and time out as they would over a broken link, while A
still reaches B and the client.  A keeps serving what it holds (its own sessions,
through itself and through B), turns unready once the outage passes its grace, and
nothing is counted lost; when the link heals A rejoins: ready again, seen by B, and a
deploy given on B runs on both.
"""

from __future__ import annotations

import json
import shlex
import textwrap
import time
from pathlib import Path

import pytest
from conftest import APPS, PY, wait_for
from netns import Host, Lab, netns_unavailable
from redisserver import redis_server_binary

from holdover.core.peers import ClusterSecret

# One HTTP request from inside the client's namespace: prints status, body and cookies.
CLIENT = textwrap.dedent("""
    import http.client, json, sys
    method, host, port, path, cookies = sys.argv[1:6]
    c = http.client.HTTPConnection(host, int(port), timeout=15)
    c.request(method, path, headers={"Cookie": cookies} if cookies else {})
    r = c.getresponse()
    body = r.read().decode(errors="replace")
    print(json.dumps({"status": r.status, "body": body,
                      "set_cookies": r.headers.get_all("Set-Cookie") or []}))
""")
PORT = 8000


@pytest.fixture(scope="module", autouse=True)
def _netns_possible() -> None:
    why = netns_unavailable()
    if why is not None:
        pytest.fail(f"network namespace tests need root and iproute2: {why}", pytrace=False)


class Browser:
    """One user's cookies, sent from the client namespace to whichever node is named."""

    def __init__(self, client: Host) -> None:
        self.client = client
        self.cookies: dict[str, str] = {}

    def request(self, method: str, node: Host, path: str) -> tuple[int, dict]:
        jar = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        out = self.client.run([PY, "-c", CLIENT, method, node.address, str(PORT), path, jar],
                              timeout=40)
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        for line in reply["set_cookies"]:
            first, _, attrs = line.partition(";")
            name, _, value = first.strip().partition("=")
            if not value or "max-age=0" in attrs.lower().replace(" ", ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        try:
            body = json.loads(reply["body"])
        except ValueError:
            body = {"raw": reply["body"]}
        return reply["status"], body


def _config(home: Path, host: Host, name: str, redis: Host, secret: Path) -> Path:
    home.mkdir()
    path = home / "holdover.toml"
    path.write_text(textwrap.dedent(f"""
        [gateway]
        listen = "{host.address}:{PORT}"
        admin_listen = "{host.address}:{PORT + 1}"
        state_dir = "state"
        store = "redis://{redis.address}:6379/0?cluster=part&timeout=1s"
        node = "{name}"
        advertise = "{host.address}"
        cluster_secret = "{secret}"
        store_outage_grace = "3s"
        shutdown_timeout = "5s"

        [app]
        command = "{PY} {APPS / 'stateful.py'} {{port}}"
        workers = 1
        mode = "sessions"
        session_cookie = "sid"
        health_path = "/healthz"
        health_interval = "1s"
        stop_grace = "3s"
        """))
    return path


def _cli(host: Host, config: Path, *args: str) -> dict:
    out = host.run([PY, "-m", "holdover", *args, "--json", "-c", str(config)], timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def _ready(client: Host, node: Host) -> int:
    out = client.run([PY, "-c", CLIENT, "GET", node.address, str(PORT + 1), "/readyz", ""],
                     timeout=30)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else 0


def test_a_node_cut_off_from_redis_keeps_serving_and_rejoins_cleanly(tmp_path: Path) -> None:
    with Lab(["redis", "a", "b", "client"]) as lab:
        r, a, b, client = lab["redis"], lab["a"], lab["b"], lab["client"]
        r.popen([redis_server_binary(), "--bind", r.address, "--port", "6379", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp_path), "--protected-mode", "no"],
                stdout=(tmp_path / "redis.out").open("wb"))
        secret = tmp_path / "cluster.secret"
        ClusterSecret.load_or_create(secret)  # the keys both nodes share
        configs = {}
        for host, name in ((a, "web-a"), (b, "web-b")):
            configs[name] = _config(tmp_path / name, host, name, r, secret)
            log = (tmp_path / f"{name}.log").open("wb")
            host.popen(shlex.split(f"{PY} -m holdover run -c {configs[name]}"),
                       cwd=configs[name].parent, stdout=log, stderr=log)
            wait_for(lambda host=host: _ready(client, host) == 200, 60,
                     what=f"node {name} ready")
        wait_for(lambda: len(_cli(b, configs["web-b"], "status")["nodes"]) == 2, 30,
                 what="both nodes in the cluster")

        ann = Browser(client)
        status, me = ann.request("POST", a, "/login?user=ann")
        assert status == 200, me
        home_pid = me["pid"]
        for node in (b, a):
            status, me = ann.request("GET", node, "/")
            assert (status, me["pid"]) == (200, home_pid)

        lab.partition("a", "redis")  # nothing Redis sends reaches A any more
        t_cut = time.monotonic()
        # A keeps serving what it holds, through itself and through B ...
        for node in (a, b, a, b):
            status, me = ann.request("GET", node, "/")
            assert (status, me["pid"], me["user"]) == (200, home_pid, "ann")
        # ... and a session begun on A meanwhile is routed from B too.
        bob = Browser(client)
        status, me = bob.request("POST", a, "/login?user=bob")
        assert status == 200, me
        bob_pid = me["pid"]
        status, me = bob.request("GET", b, "/")
        assert (status, me["pid"], me["user"]) == (200, bob_pid, "bob")
        # Past the grace A says it cannot serve new work well, so a balancer moves on.
        wait_for(lambda: _ready(client, a) == 503, 30, what="A unready past the grace")
        assert time.monotonic() - t_cut >= 3
        # B sees A's heartbeat lapse, but A answers: cut off, not dead, nothing lost.
        wait_for(lambda: _cli(b, configs["web-b"], "status")["peers"]["web-a"]["cut_off"],
                 30, what="B to see A's heartbeat lapse")
        st_b = _cli(b, configs["web-b"], "status")
        assert "web-a" not in {n["name"] for n in st_b["nodes"]}, st_b["nodes"]
        assert st_b["sessions_lost"] == 0 and not st_b["lost_nodes"], st_b
        status, me = ann.request("GET", b, "/")
        assert (status, me["pid"]) == (200, home_pid)

        lab.heal("a", "redis")
        wait_for(lambda: _ready(client, a) == 200, 60, what="A ready again")
        def rejoined() -> bool:
            st = _cli(b, configs["web-b"], "status")
            return {n["name"] for n in st["nodes"]} == {"web-a", "web-b"} and \
                not st["peers"]["web-a"]["cut_off"]
        wait_for(rejoined, 30, what="B to see A again")
        for cfg, host in ((configs["web-a"], a), (configs["web-b"], b)):
            st = _cli(host, cfg, "status")
            assert st["sessions_lost"] == 0, st
        for user, pid in ((ann, home_pid), (bob, bob_pid)):
            for node in (a, b):
                status, me = user.request("GET", node, "/")
                assert (status, me["pid"]) == (200, pid)
        # Rejoined for real: a deploy given on B is carried out on A as well.
        _cli(b, configs["web-b"], "deploy", "--revision", "v2")
        assert _cli(a, configs["web-a"], "status")["active"] == "v2"
