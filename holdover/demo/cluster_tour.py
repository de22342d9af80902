"""``holdover demo --tour --cluster``: a session moving between nodes, a deploy given on
one node, and a node killed, narrated in the terminal.

Two real nodes and a real redis-server (demo/cluster.py).  A visitor's browser would
follow the balancer; here each user sends every request to a node of its own choosing
(alternating), carrying its cookies from node to node as one browser does behind one
host name, so the tour can show which node each request entered and which node's
worker answered.  The tour exits 0 only if every request a live node was asked
succeeded, every session was kept on its worker until its node died, and the dead
node's sessions were counted as lost.

Bounded in time (``LIMIT``); everything it started is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from . import RELEASES
from .cluster import DemoFailed, Node, Nodes, run_cluster_demo

LIMIT = 90.0  # seconds, start to summary
IDLE = "30s"


class Visitor:
    """One browser: its cookies, whatever node each request goes to."""

    def __init__(self, name: str, http: aiohttp.ClientSession, tally: list[str]) -> None:
        self.name = name
        self.http = http
        self.cookies: dict[str, str] = {}
        self.failed = tally
        self.made = 0
        self.me: dict[str, Any] = {}

    async def request(self, node: Node, method: str, path: str, **kw: Any) -> Any:
        self.made += 1
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} \
            if self.cookies else {}
        headers.update(kw.pop("headers", {}))
        try:
            async with self.http.request(method, node.url + path, headers=headers,
                                         allow_redirects=False, **kw) as resp:
                body = await resp.read()
                for raw in resp.headers.getall("Set-Cookie", []):
                    jar = SimpleCookie()
                    jar.load(raw)
                    for key, morsel in jar.items():
                        if morsel["max-age"] == "0" or not morsel.value:
                            self.cookies.pop(key, None)
                        else:
                            self.cookies[key] = morsel.value
                if resp.status >= 400:
                    self.failed.append(f"{self.name} via {node.name}: {method} {path}: "
                                       f"HTTP {resp.status}")
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failed.append(f"{self.name} via {node.name}: {method} {path}: {exc!r}")
            raise

    async def whoami(self, node: Node) -> dict[str, Any]:
        self.me = json.loads(await self.request(node, "GET", "/api/me",
                                                headers={"Accept": "application/json"}))
        return self.me

    async def login(self, node: Node, note: str) -> None:
        await self.request(node, "GET", "/")
        await self.request(node, "POST", "/login", data={"name": self.name})
        await self.request(node, "POST", "/notes", data={"text": note})
        await self.whoami(node)


class ClusterTour:
    def __init__(self, template: str, verbose: bool = False) -> None:
        self.t0 = time.monotonic()
        self.home = Path(tempfile.mkdtemp(prefix="holdover-cluster-tour-"))
        self.nodes = Nodes(template, self.home, 0, IDLE, verbose)
        self.failed: list[str] = []
        self.problems: list[str] = []
        self.http: aiohttp.ClientSession | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s] {text}", flush=True)

    async def api(self, node: Node, method: str, name: str, body: Any = None) -> Any:
        assert self.http is not None
        async with self.http.request(method, f"{node.admin_url}/api/{name}", json=body,
                                     headers={"Authorization": f"Bearer {node.token}"},
                                     timeout=aiohttp.ClientTimeout(total=120)) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise DemoFailed(f"{node.name} /api/{name}: HTTP {resp.status}: {data}")
            return data

    async def run(self) -> dict[str, Any]:
        print("\n1. a cluster: redis-server and two nodes, revision v1 on both", flush=True)
        self.say("starting redis-server, node web-1 (127.0.0.11) and node web-2 "
                 "(127.0.0.12) ...")
        await self.nodes.start()
        web1, web2 = self.nodes.nodes
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                          timeout=aiohttp.ClientTimeout(total=15))
        st = await self.api(web1, "GET", "status")
        self.say(f"up: {web1.name} at {web1.url}/, {web2.name} at {web2.url}/; "
                 f"{len(st.get('nodes', []))} nodes in web-1's status")

        print("\n2. a session moves between nodes", flush=True)
        alice = Visitor("alice", self.http, self.failed)
        await alice.login(web1, "buy milk")
        home = dict(alice.me)
        self.say(f"alice logs in via {web1.name} -> worker {home['worker']} on node "
                 f"{home.get('node')} (pid {home['pid']})")
        same = 0
        for node in itertools.islice(itertools.cycle((web2, web1)), 6):
            me = await alice.whoami(node)
            same += me["pid"] == home["pid"] and me["notes"] == home["notes"]
            self.say(f"  request via {node.name:<5} -> answered by worker {me['worker']} on "
                     f"node {me.get('node')} (pid {me['pid']}), notes {me['notes']}")
        if same != 6:
            self.problems.append(f"alice's session left its worker ({6 - same} of 6)")
        bob = Visitor("bob", self.http, self.failed)
        await bob.login(web2, "ship v2")
        bob_home = dict(bob.me)
        self.say(f"bob logs in via {web2.name} -> worker {bob_home['worker']} on node "
                 f"{bob_home.get('node')}")

        print("\n3. deploy v2 on one node: both start it", flush=True)
        v2 = RELEASES / "v2"
        self.say(f"deploy via {web2.name}: holdover deploy --revision v2 --from {v2}")
        t = time.monotonic()
        await self.api(web2, "POST", "deploy", {"revision": "v2", "from": str(v2)})
        for node in (web1, web2):
            st = await self.api(node, "GET", "status")
            self.say(f"  {node.name}: active {st['active']}")
            if st["active"] != "v2":
                self.problems.append(f"{node.name} has {st['active']} active, not v2")
        self.say(f"v2 active on both nodes after {time.monotonic() - t:.1f} s")
        kept = 0
        for v, want, node in ((alice, home, web2), (bob, bob_home, web1)):
            me = await v.whoami(node)
            kept += me["pid"] == want["pid"] and me["revision"] == "v1"
            self.say(f"{v.name:<5} via {node.name}: still revision {me['revision']}, worker "
                     f"{me['worker']} on node {me.get('node')}")
        carol = Visitor("carol", self.http, self.failed)
        await carol.login(web1, "hello from a new visitor")
        self.say(f"carol (new) via {web1.name} -> revision {carol.me['revision']}, worker "
                 f"{carol.me['worker']} on node {carol.me.get('node')}")
        if carol.me["revision"] != "v2":
            self.problems.append(f"a new visitor got {carol.me['revision']}, not v2")

        # They go on for a few heartbeats: what a node last said of itself is what the
        # others count when it dies (docs/cluster.md, "A node that dies").
        self.say("alice, bob and carol keep browsing for a few seconds ...")
        for _ in range(6):
            for v, node in ((alice, web2), (bob, web1), (carol, web2)):
                await v.whoami(node)
            await asyncio.sleep(0.5)

        print(f"\n4. node {web1.name} dies (SIGKILL: the gateway and its workers)", flush=True)
        self.nodes.kill_node(web1)
        assert web1.proc is not None
        await web1.proc.wait()
        self.say(f"{web1.name} is gone; the balancer in front stops sending to it "
                 f"(its /readyz no longer answers)")
        before = len(self.failed)
        for _ in range(5):
            await bob.whoami(web2)
        bob_ok = bob.me["pid"] == bob_home["pid"] and len(self.failed) == before
        self.say(f"bob via {web2.name}: still worker {bob.me['worker']} on node "
                 f"{bob.me.get('node')} (same pid: {bob.me['pid'] == bob_home['pid']})")
        me = await alice.whoami(web2)
        self.say(f"alice via {web2.name}: her worker was on {web1.name}, so her session "
                 f"is lost; she gets a fresh page from worker {me['worker']} "
                 f"(logged in: {me.get('user') is not None})")
        lost = await self._lost_counted(web2, deadline=self.t0 + LIMIT - 5)
        return {"moved": same, "kept": kept, "bob_ok": bob_ok, "lost": lost,
                "carol": carol.me["revision"]}

    async def _lost_counted(self, node: Node, deadline: float) -> int:
        """Wait for ``node`` to count the dead node's sessions as lost."""
        while time.monotonic() < deadline:
            st = await self.api(node, "GET", "status")
            if st.get("sessions_lost"):
                self.say(f"{node.name} noticed: {st['sessions_lost']} session(s) counted as "
                         f"lost, once")
                return int(st["sessions_lost"])
            await asyncio.sleep(0.5)
        self.problems.append("the dead node's sessions were not counted as lost in time")
        return 0

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        await self.nodes.stop()


async def _main(template: str, verbose: bool) -> int:
    tour = ClusterTour(template, verbose)
    try:
        result = await asyncio.wait_for(tour.run(), LIMIT)
    except (DemoFailed, TimeoutError, aiohttp.ClientError, OSError) as exc:
        print(f"\nholdover demo --tour --cluster: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            await tour.close()
        shutil.rmtree(tour.home, ignore_errors=True)
    failed = tour.failed  # after the kill, nothing is sent to the dead node
    print("\nsummary")
    print(f"  a session across nodes        {result['moved']} of 6 requests on its worker")
    print(f"  sessions kept through deploy  {result['kept']} of 2")
    print(f"  new visitor after the deploy  revision {result['carol']}")
    print(f"  node killed: other sessions   {'kept' if result['bob_ok'] else 'DISTURBED'}")
    print(f"  lost sessions counted         {result['lost']}")
    print(f"  failed requests               {len(failed)}")
    problems = tour.problems + failed
    for p in problems:
        print(f"  problem: {p}")
    print("PASS" if not problems else "FAIL")
    return 0 if not problems else 1


def run_cluster_tour(template: str, verbose: bool = False) -> int:
    import uvloop

    return uvloop.run(_main(template, verbose))


def cluster_demo(args: Any, template: str) -> int:
    """``holdover demo --cluster`` and ``--tour --cluster``, from the CLI's arguments."""
    if args.tour:
        return run_cluster_tour(template, verbose=args.verbose)
    return run_cluster_demo(template, Path(args.dir).resolve(), args.port, args.idle_timeout,
                            verbose=args.verbose)
