"""Workers another engine runs: revisions by address or by DNS, and the hooks that tell it.

The engine is the test itself: it starts the stateful app (tests/apps/stateful.py) on
loopback addresses of its own (127.0.0.2, 127.0.0.3, …), publishes them in a real DNS
server (dnsmasq, tests/dnsserver.py) as SRV or A records, and changes those records
while the gateway runs.  holdover starts none of these processes: it finds them,
health-checks them, pins sessions to them, drains them and runs ``on_drain`` /
``on_retire``.  The app keeps its sessions in process memory, so a ``count`` that goes
on rising proves a session stayed with its very process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, PY, GatewayProcess, wait_for
from dnsserver import ZONE, DnsServer
from promtext import parse, value
from test_revisions import Client, api, events, holdover, rev_of, status

FAST = """
health_interval = "0.5s"
health_timeout = "1s"
health_failures = 2
discover_interval = "0.5s"
session_cookie = "sid"
"""


# -- the engine: app processes on their own loopback addresses ---------------------------


class Engine:
    """Runs app processes the way an orchestrator would, outside the gateway."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.where: dict[str, tuple[str, int]] = {}

    def start(self, name: str, ip: str, revision: str, port: int = 0) -> str:
        """Start worker ``name`` of ``revision`` on ``ip`` (``port`` or a free one)."""
        if not port:
            with socket.socket() as s:
                s.bind((ip, 0))
                port = s.getsockname()[1]
        env = {**os.environ, "HOST": ip, "HOLDOVER_REVISION": revision,
               "HOLDOVER_WORKER": name}
        self.procs[name] = subprocess.Popen([PY, str(APPS / "stateful.py"), str(port)],
                                            env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        self.where[name] = (ip, port)

        def listening() -> bool:
            if self.procs[name].poll() is not None:
                raise AssertionError(f"engine worker {name} exited")
            try:
                socket.create_connection((ip, port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, 20, what=f"engine worker {name} to listen on {ip}:{port}")
        return f"http://{ip}:{port}"

    def url(self, name: str) -> str:
        ip, port = self.where[name]
        return f"http://{ip}:{port}"

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def running(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in self.procs:
            self.stop(name)


def common_port(ips: list[str]) -> int:
    """A port free on every one of ``ips`` (dns:NAME:PORT gives all workers one port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = s.getsockname()[1]
        try:
            for ip in ips[1:]:
                with socket.socket() as s:
                    s.bind((ip, port))
            return port
        except OSError:
            continue
    raise AssertionError(f"no port free on all of {ips}")


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine()
    try:
        yield e
    finally:
        e.stop_all()


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DnsServer]:
    with DnsServer(tmp_path / "dns") as server:
        yield server


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        yield started
    finally:
        for gw in started:
            gw.stop_and_check()


def external_gateway(tmp: Path, started: list[GatewayProcess], extra_app: str,
                     mode: str = "sessions", command: bool = False, **kw: Any
                     ) -> GatewayProcess:
    tmp.mkdir(exist_ok=True)
    gw = GatewayProcess(tmp, mode=mode, command=command, extra_app=FAST + extra_app, **kw)
    started.append(gw)
    return gw.wait_ready()


def worker_by_url(st: dict, url: str) -> dict | None:
    return next((w for r in st["revisions"] for w in r["workers"]
                 if w.get("url") == url and w["state"] != "stopped"), None)


def metrics(gw: GatewayProcess) -> Any:
    code, _, body = gw.admin_request("GET", "/metrics")
    assert code == 200
    return parse(body.decode())


def kinds(events_: list[dict]) -> list[str]:
    return [e["kind"] for e in events_]


# -- a deploy of external revisions, found by SRV records -------------------------------


def test_sessions_stay_across_an_external_deploy_and_retirement_runs_on_retire(
        tmp_path: Path, engine: Engine, dns: DnsServer, gateways: list[GatewayProcess]
        ) -> None:
    srv = "_http._tcp.app-{rev}." + ZONE
    for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
        engine.start(name, ip, "v1")
    dns.publish(hosts={f"{n}.{ZONE}": [engine.where[n][0]] for n in ("a", "b")},
                srv={srv.format(rev="v1"): [(f"{n}.{ZONE}", engine.where[n][1])
                                            for n in ("a", "b")]})
    gw = external_gateway(tmp_path / "gw", gateways, f"""
        discover = "dns+srv:_http._tcp.app-{{revision}}.{ZONE}"
        dns_servers = ["{dns.server}"]
        on_drain = "echo {{revision}} $HOLDOVER_REVISION >> drained.txt"
        on_retire = "echo {{revision}} $HOLDOVER_REVISION >> retired.txt"
    """)
    st = status(gw)
    v1 = rev_of(st, "v1")
    assert v1 is not None and v1["state"] == "active" and v1["kind"] == "external"
    assert v1["discover"] == f"dns+srv:{srv.format(rev='v1')}"
    assert sorted(w["url"] for w in v1["workers"]) == sorted(engine.url(n) for n in "ab")
    assert all(w["state"] == "ready" and w["pid"] == 0 for w in v1["workers"])

    clients = [Client(gw.port) for _ in range(4)]
    first = {}
    for i, c in enumerate(clients):
        info = c.login(f"user{i}")
        assert info["revision"] == "v1"
        first[i] = info["pid"]
    assert set(first.values()) <= {engine.pid("a"), engine.pid("b")}

    for name, ip in (("c", "127.0.0.4"), ("d", "127.0.0.5")):
        engine.start(name, ip, "v2")
    dns.publish(hosts={f"{n}.{ZONE}": [engine.where[n][0]] for n in ("c", "d")},
                srv={srv.format(rev="v2"): [(f"{n}.{ZONE}", engine.where[n][1])
                                            for n in ("c", "d")]})
    r = holdover(gw, "deploy", "--revision", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "revision v2 is active; v1 is draining with 4 session(s)" in r.stdout

    for i, c in enumerate(clients):  # every session stays with its very process
        got = c.get("/")
        assert (got["revision"], got["pid"], got["count"]) == ("v1", first[i], 1)
    newcomer = Client(gw.port)
    assert newcomer.login("new")["pid"] in (engine.pid("c"), engine.pid("d"))
    wait_for(lambda: (gw.dir / "drained.txt").exists(), 15, what="on_drain to run")
    assert (gw.dir / "drained.txt").read_text() == "v1 v1\n"
    assert not (gw.dir / "retired.txt").exists()

    for c in clients:
        c.logout()
    wait_for(lambda: rev_of(status(gw), "v1")["state"] == "retired", 20,
             what="v1 to retire once its last session ended")
    wait_for(lambda: (gw.dir / "retired.txt").exists(), 15, what="on_retire to run")
    assert (gw.dir / "retired.txt").read_text() == "v1 v1\n"
    # holdover stopped checking v1's workers; their processes are the engine's to end
    assert engine.running("a") and engine.running("b")
    assert all(w["state"] == "stopped" for w in rev_of(status(gw), "v1")["workers"])
    evs = events(gw)
    hooks = [e for e in evs if e["kind"] == "hook"]
    assert [e["data"]["hook"] for e in hooks] == ["on_drain", "on_retire"]
    assert all(e["data"]["exit"] == 0 for e in hooks)
    assert status(gw)["sessions_lost"] == 0


# -- DNS changes under load, found by A records ------------------------------------------


def test_an_endpoint_removed_and_one_added_under_load(
        tmp_path: Path, engine: Engine, dns: DnsServer, gateways: list[GatewayProcess]
        ) -> None:
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = common_port(ips)
    name = f"app-v1.{ZONE}"
    engine.start("a", ips[0], "v1", port)
    engine.start("b", ips[1], "v1", port)
    dns.publish(hosts={name: ips[:2]})
    gw = external_gateway(tmp_path / "gw", gateways, f"""
        discover = "dns:app-{{revision}}.{ZONE}:{port}"
        dns_servers = ["{dns.server}"]
    """)
    assert len(rev_of(status(gw), "v1")["workers"]) == 2

    # Pinned sessions on both workers, each one under load from its own thread.
    pinned: list[tuple[Client, int]] = []
    for i in range(20):
        c = Client(gw.port)
        pinned.append((c, c.login(f"u{i}")["pid"]))
        if len(pinned) >= 6 and {p for _, p in pinned} == {engine.pid("a"), engine.pid("b")}:
            break
    on_a = [c for c, p in pinned if p == engine.pid("a")]
    assert on_a and len(on_a) < len(pinned), "logins did not reach both workers"
    failures: list[str] = []
    done = {id(c): threading.Event() for c, _ in pinned}
    served = {id(c): 0 for c, _ in pinned}

    def load(c: Client, pid: int) -> None:
        last = 0
        for _ in range(3000):  # bounded, and stopped by the test long before
            if done[id(c)].is_set():
                return
            try:
                got = c.get("/")
            except Exception as exc:  # a failed request is what this test counts
                failures.append(f"{pid}: {exc!r}")
                return
            if got["pid"] != pid or got["count"] != last + 1:
                failures.append(f"session of {pid} answered by {got}")
                return
            last = got["count"]
            served[id(c)] += 1
            done[id(c)].wait(0.02)
    threads = [threading.Thread(target=load, args=p, daemon=True) for p in pinned]
    for t in threads:
        t.start()

    def a_worker() -> dict:
        w = worker_by_url(status(gw), f"http://{ips[0]}:{port}")
        assert w is not None
        return w

    # The engine takes a out of DNS (a terminating pod): it keeps its sessions.
    dns.publish(hosts={name: [ips[1]]})
    wait_for(lambda: a_worker()["in_discovery"] is False, 15, what="a to leave discovery")
    assert a_worker()["state"] == "ready"
    for i in range(4):  # and takes no new session
        assert Client(gw.port).login(f"after-{i}")["pid"] == engine.pid("b")

    # The engine adds c: it joins and takes new sessions.
    engine.start("c", ips[2], "v1", port)
    dns.publish(hosts={name: ips[1:]})
    wait_for(lambda: (w := worker_by_url(status(gw), f"http://{ips[2]}:{port}")) is not None
             and w["state"] == "ready", 15, what="c to join and answer")
    reached = {Client(gw.port).login(f"new-{i}")["pid"] for i in range(6)}
    assert engine.pid("c") in reached and engine.pid("a") not in reached

    # a's sessions end (logout): holdover stops following it, then the engine ends it.
    before = {id(c): served[id(c)] for c in on_a}
    wait_for(lambda: all(served[id(c)] > before[id(c)] + 3 for c in on_a), 20,
             what="a's sessions to be served after it left DNS")
    for c in on_a:
        done[id(c)].set()
    for t, (c, _) in zip(threads, pinned, strict=True):
        if c in on_a:
            t.join(10)
    for c in on_a:
        c.logout()
    wait_for(lambda: a_worker_gone(gw, f"http://{ips[0]}:{port}"), 15,
             what="a to be stopped once its last session ended")
    engine.stop("a")

    for ev in done.values():
        ev.set()
    for t in threads:
        t.join(10)
    assert failures == []
    assert all(served[id(c)] > 5 for c, _ in pinned)
    st = status(gw)
    assert st["sessions_lost"] == 0
    assert kinds(events(gw)).count("worker-left") == 1


def a_worker_gone(gw: GatewayProcess, url: str) -> bool:
    return worker_by_url(status(gw), url) is None


# -- a worker that stops answering; DNS that stops answering ------------------------------


def test_a_worker_that_stops_answering_loses_its_sessions_once(
        tmp_path: Path, engine: Engine, gateways: list[GatewayProcess]) -> None:
    urls = [engine.start("a", "127.0.0.2", "v1"), engine.start("b", "127.0.0.3", "v1")]
    gw = external_gateway(tmp_path / "gw", gateways,
                          f"upstreams = {json.dumps(urls)}\n")
    v1 = rev_of(status(gw), "v1")
    assert v1["kind"] == "external" and v1["upstreams"] == urls
    pinned = []
    for i in range(12):
        c = Client(gw.port)
        pinned.append((c, c.login(f"u{i}")["pid"]))
        if {p for _, p in pinned} == {engine.pid("a"), engine.pid("b")} and len(pinned) >= 4:
            break
    on_a = [c for c, p in pinned if p == engine.pid("a")]
    assert on_a, "no session reached a"
    a_pid = engine.pid("a")
    engine.stop("a")  # the engine's process is gone, and its sessions' memory with it
    wait_for(lambda: status(gw)["sessions_lost"] == len(on_a), 15,
             what="a's sessions to be counted as lost")
    wait_for(lambda: worker_by_url(status(gw), urls[0])["state"] == "starting", 15,
             what="a to be waited for again")
    for c in on_a:  # their next request starts a new session elsewhere
        got = c.get("/")
        assert got["user"] is None and got["pid"] == engine.pid("b")
    engine.start("a", "127.0.0.2", "v1", int(urls[0].rsplit(":", 1)[1]))
    wait_for(lambda: worker_by_url(status(gw), urls[0])["state"] == "ready", 15,
             what="a to answer again")
    reached = {Client(gw.port).login(f"n{i}")["pid"] for i in range(4)}
    assert engine.pid("a") in reached and a_pid not in reached
    assert status(gw)["sessions_lost"] == len(on_a)  # counted once
    lost = [e for e in events(gw) if e["kind"] == "sessions-lost"]
    assert sum(e["data"]["count"] for e in lost) == len(on_a)


def test_dns_failure_keeps_the_known_workers(
        tmp_path: Path, engine: Engine, dns: DnsServer, gateways: list[GatewayProcess]
        ) -> None:
    ips = ["127.0.0.2", "127.0.0.3"]
    port = common_port(ips)
    for n, ip in zip("ab", ips, strict=True):
        engine.start(n, ip, "v1", port)
    dns.publish(hosts={f"app-v1.{ZONE}": ips})
    gw = external_gateway(tmp_path / "gw", gateways, f"""
        discover = "dns:app-{{revision}}.{ZONE}:{port}"
        dns_servers = ["{dns.server}"]
    """)
    client = Client(gw.port)
    client.login("u")
    dns.stop()
    wait_for(lambda: value(metrics(gw), "holdover_discovery_failures_total",
                           revision="v1") >= 3, 30, what="discovery failures to be counted")
    v1 = rev_of(status(gw), "v1")
    assert v1["discovery_failing"] and len(v1["workers"]) == 2
    assert all(w["state"] == "ready" and w["in_discovery"] for w in v1["workers"])
    assert client.get("/")["count"] == 1
    assert {Client(gw.port).login(f"n{i}")["pid"] for i in range(4)} == {
        engine.pid("a"), engine.pid("b")}
    dns.start()
    wait_for(lambda: rev_of(status(gw), "v1")["discovery_failing"] is None, 15,
             what="discovery to recover")
    evs = kinds(events(gw))
    assert evs.count("discovery-failed") == 1 and evs.count("discovery") == 1


# -- hooks that fail or hang --------------------------------------------------------------


def test_a_failing_hook_and_a_hanging_hook_are_events_and_metrics(
        tmp_path: Path, engine: Engine, gateways: list[GatewayProcess]) -> None:
    url1 = engine.start("a", "127.0.0.2", "v1")
    gw = external_gateway(tmp_path / "gw", gateways, f"""
        upstreams = ["{url1}"]
        on_drain = "echo draining {{revision}}; exit 3"
        on_retire = "echo scaling $HOLDOVER_REVISION down; exec sleep 30"
        hook_timeout = "1s"
    """, mode="stateless")
    url2 = engine.start("b", "127.0.0.3", "v2")
    r = holdover(gw, "deploy", "--revision", "v2", "--upstream", url2)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: kinds(events(gw)).count("hook-failed") == 2, 20,
             what="both hooks to fail")
    evs = events(gw)
    failed = {e["data"]["hook"]: e for e in evs if e["kind"] == "hook-failed"}
    assert "exited with 3" in failed["on_drain"]["message"]
    assert failed["on_drain"]["data"]["output"] == "draining v1\n"
    assert "did not finish within 1s" in failed["on_retire"]["message"]
    assert failed["on_retire"]["data"]["output"] == "scaling v1 down\n"
    retired = next(e for e in evs if e["kind"] == "retired" and e["revision"] == "v1")
    assert retired["id"] < failed["on_retire"]["id"]  # retirement did not wait for it
    s = metrics(gw)
    assert value(s, "holdover_hook_failures_total", hook="on_drain") == 1
    assert value(s, "holdover_hook_failures_total", hook="on_retire") == 1
    wait_for(lambda: not any("sleep" in " ".join(p.cmdline()) for p in gw.all_descendants()),
             10, what="the hanging hook to be killed")
    assert Client(gw.port).request("GET", "/").status == 200  # the gateway serves on


# -- supervised, then external, then supervised again -------------------------------------


def test_supervised_then_external_then_supervised(
        tmp_path: Path, engine: Engine, gateways: list[GatewayProcess]) -> None:
    gw = external_gateway(tmp_path / "gw", gateways, 'start_timeout = "3s"\n', command=True,
                          app=f"{PY} {APPS / 'stateful.py'} {{port}}", workers=1)
    a, b, c = Client(gw.port), Client(gw.port), Client(gw.port)
    first = a.login("a")
    assert first["revision"] == "v1"
    url = engine.start("ext", "127.0.0.2", "v2")
    r = holdover(gw, "deploy", "--revision", "v2", "--upstream", url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert b.login("b")["pid"] == engine.pid("ext")
    r = holdover(gw, "deploy", "--revision", "v3")  # the configured command again
    assert r.returncode == 0, r.stdout + r.stderr
    third = c.login("c")
    assert third["revision"] == "v3" and third["pid"] not in (first["pid"], engine.pid("ext"))
    assert (a.get("/")["pid"], a.get("/")["count"]) == (first["pid"], 2)
    assert b.get("/")["pid"] == engine.pid("ext")
    st = status(gw)
    assert [(r["id"], r["state"], r["kind"]) for r in st["revisions"]] == [
        ("v1", "draining", "supervised"), ("v2", "draining", "external"),
        ("v3", "active", "supervised")]

    # A deploy whose workers never answer fails, and v3 stays active.
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        nobody = f"http://127.0.0.2:{s.getsockname()[1]}"
    r = holdover(gw, "deploy", "--revision", "v4", "--upstream", nobody)
    assert r.returncode == 1
    assert "did not answer its health check within 3s" in r.stderr
    assert "the active revision is unchanged" in r.stderr
    r = holdover(gw, "deploy", "--revision", "v5", "--upstream", url, "--command", "x")
    assert r.returncode == 1 and "does not go with --command" in r.stderr
    st = status(gw)
    assert st["active"] == "v3" and rev_of(st, "v4")["state"] == "failed"
    code, _, body = api(gw, "POST", "/api/deploy", {"upstreams": "http://x"})
    assert code == 400 and "list of strings" in body["error"]["message"]

    gw.stop_and_check()
    gateways.remove(gw)
    assert engine.running("ext")  # stopping the gateway leaves the engine's worker alone
    db = sqlite3.connect(f"file:{gw.dir / 'state' / 'state.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT id, kind, upstreams FROM revisions ORDER BY id").fetchall()
    db.close()
    assert rows == [("v1", "supervised", "[]"), ("v2", "external", json.dumps([url])),
                    ("v3", "supervised", "[]"), ("v4", "external", json.dumps([nobody]))]


def test_reload_keeps_external_workers_and_their_sessions(
        tmp_path: Path, engine: Engine, dns: DnsServer, gateways: list[GatewayProcess]
        ) -> None:
    ips = ["127.0.0.2", "127.0.0.3"]
    port = common_port(ips)
    for n, ip in zip("ab", ips, strict=True):
        engine.start(n, ip, "v1", port)
    dns.publish(hosts={f"app-v1.{ZONE}": ips})
    gw = external_gateway(tmp_path / "gw", gateways, f"""
        discover = "dns:app-{{revision}}.{ZONE}:{port}"
        dns_servers = ["{dns.server}"]
    """)
    client = Client(gw.port)
    pid = client.login("u")["pid"]
    before = {w["id"]: w for w in rev_of(status(gw), "v1")["workers"]}
    r = holdover(gw, "reload")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: gw.log.count("holdover: serving") >= 2, 30, what="the re-exec")
    client.close()
    got = client.get("/")
    assert (got["pid"], got["count"]) == (pid, 1)
    after = {w["id"]: w for w in rev_of(status(gw), "v1")["workers"]}
    assert after.keys() == before.keys()
    assert all(w["state"] == "ready" and w["url"] == before[k]["url"] for k, w in after.items())
    assert status(gw)["sessions_lost"] == 0
    # discovery goes on in the new image: a removed address leaves
    dns.publish(hosts={f"app-v1.{ZONE}": ips[1:]})
    wait_for(lambda: not worker_by_url(status(gw), f"http://{ips[0]}:{port}")["in_discovery"]
             if worker_by_url(status(gw), f"http://{ips[0]}:{port}") else True, 15,
             what="discovery to run after the reload")
