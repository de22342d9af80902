"""A holdover cluster on one machine, and a client that sends each request to any node.

``start_cluster`` runs N ``holdover run`` nodes against one redis-server, node ``web-K``
on its own loopback address ``127.0.0.(10+K)`` (public and admin listeners, and so its
peer listener) with its own state_dir, all sharing one cluster secret file that the
test creates first.  The nodes are GatewayProcesses of the ``gateway_factory`` fixture,
which stops each of them (and checks for leftover processes) at the end of the test.

``ClusterClient`` is a browser behind a plain L4 balancer: one cookie jar per session,
sent to whichever node a request goes to (the nodes are one site to the client), each
request to a random node of ``nodes`` unless told which.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from conftest import APPS, PY, GatewayProcess, wait_for

from holdover.core.peers import ClusterSecret


def node_host(k: int) -> str:
    return f"127.0.0.{10 + k}"


class Cluster:
    """N nodes of one app on one store; ``nodes[i]`` is ``web-{i+1}``."""

    def __init__(self, factory: Callable[..., GatewayProcess], tmp: Path, store: str, n: int,
                 workers: int = 2, app: str = "", extra_gateway: str = "",
                 extra_app: str = "", session_cookie: str = "sid") -> None:
        self.store = store
        self.secret_path = tmp / "cluster.secret"
        self.secret = ClusterSecret.load_or_create(self.secret_path)
        self.nodes: list[GatewayProcess] = []
        self.names: list[str] = []
        for k in range(1, n + 1):
            host = node_host(k)
            self.names.append(f"web-{k}")
            self.nodes.append(factory(
                workers=workers, mode="sessions",
                app=app or f"{PY} {APPS / 'stateful.py'} {{port}}",
                extra_gateway=f'listen = "{host}:0"\nadmin_listen = "{host}:0"\n'
                              f'store = "{store}"\nnode = "web-{k}"\n'
                              f'cluster_secret = "{self.secret_path}"\n' + extra_gateway,
                extra_app=f'session_cookie = "{session_cookie}"\n' + extra_app))

    def wait_ready(self, timeout: float = 60.0) -> Cluster:
        for node in self.nodes:
            node.wait_ready(timeout)
        # Every node routes to every other one once it has seen its heartbeat.
        wait_for(lambda: all(len(self.status(i).get("peers", {})) == len(self.nodes) - 1
                             for i in range(len(self.nodes))), 30,
                 what="every node to see the others")
        return self

    def check_logs(self) -> None:
        """No node logged an unexpected exception."""
        for name, node in zip(self.names, self.nodes, strict=True):
            assert "Traceback" not in node.log, f"{name}:\n{node.log[-4000:]}"

    def node(self, name: str) -> GatewayProcess:
        return self.nodes[self.names.index(name)]

    def status(self, i: int) -> dict[str, Any]:
        code, _, body = self.nodes[i].admin_request("GET", "/api/status")
        assert code == 200, body
        return json.loads(body)

    def held(self, i: int) -> int:
        """The sessions node ``i`` holds itself.  (Where status reports the whole
        cluster's ``sessions``, the node's own are ``sessions_here``.)"""
        st = self.status(i)
        return int(st.get("sessions_here", st["sessions"]))

    def worker_pids(self, i: int) -> set[int]:
        """The pids of node ``i``'s own workers (status may list other nodes' too)."""
        me = self.names[i]
        return {w["pid"] for rev in self.status(i)["revisions"] for w in rev["workers"]
                if w["pid"] and w.get("node", me) == me}

    def addresses(self, names: list[str] | None = None) -> list[tuple[str, int]]:
        return [(n.host, n.port) for name, n in zip(self.names, self.nodes, strict=True)
                if names is None or name in names]

    def client(self, names: list[str] | None = None) -> ClusterClient:
        return ClusterClient(self.addresses(names))

    def kill(self, name: str) -> None:
        """SIGKILL a node's gateway and every process it started, at once."""
        gw = self.node(name)
        procs = [psutil.Process(gw.proc.pid), *gw.all_descendants()]
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs(procs, timeout=15)
        gw.proc.wait(15)


@dataclass
class Session:
    """One browser: its cookies, as the site set them."""

    cookies: dict[str, str] = field(default_factory=dict)
    user: str = ""

    def header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def take(self, set_cookies: list[str]) -> None:
        for line in set_cookies:
            first, _, attrs = line.partition(";")
            name, _, value = first.strip().partition("=")
            gone = not value or "max-age=0" in attrs.lower().replace(" ", "")
            if gone:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    @property
    def holder(self) -> str | None:
        """The node the route cookie names (its signature is the gateway's to check)."""
        value = self.cookies.get("holdover_node")
        return value.rpartition(".")[0] if value else None


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    address: tuple[str, int]
    headers: list[tuple[str, str]]


class ClusterClient:
    """Requests to random nodes, each session with its own cookies."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.addresses = list(addresses)
        self._lock = threading.Lock()
        self.sent = 0

    def request(self, session: Session, method: str, path: str,
                address: tuple[str, int] | None = None, cookies: str | None = None,
                timeout: float = 30.0, body: bytes | None = None) -> Reply:
        """One request (to a random node unless ``address``); its Set-Cookies are kept."""
        if address is None:
            with self._lock:
                address = random.choice(self.addresses)
        conn = http.client.HTTPConnection(*address, timeout=timeout)
        try:
            headers = {"Host": "shop.example"}
            jar = session.header() if cookies is None else cookies
            if jar:
                headers["Cookie"] = jar
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            session.take(r.headers.get_all("Set-Cookie") or [])
            try:
                body = json.loads(data) if data else {}
            except ValueError:
                body = {"raw": data.decode(errors="replace")}
            with self._lock:
                self.sent += 1
            return Reply(r.status, body, address, list(r.headers.items()))
        finally:
            conn.close()

    def login(self, user: str, address: tuple[str, int] | None = None) -> tuple[Session, Reply]:
        s = Session(user=user)
        reply = self.request(s, "POST", f"/login?user={user}", address)
        assert reply.status == 200, reply
        assert "sid" in s.cookies and s.holder is not None, (reply, s.cookies)
        return s, reply
