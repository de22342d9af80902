"""Several data-plane processes on one port (``[gateway] processes``), end to end.

The app (tests/apps/stateful.py) keeps each session in its own process's memory: a
request of a session that reaches any other worker finds no session (``user`` is None),
so every answer proves or disproves that the session stayed on its worker, whichever
data-plane process accepted the connection.  Every request here opens a fresh
connection, which the kernel hands to one of the processes' sockets at random.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable

import psutil
from conftest import APPS, PY, GatewayProcess, wait_for
from promtext import parse, total, value

STATEFUL = f"{PY} {APPS / 'stateful.py'} {{port}}"


def multi(gateway_factory: Callable[..., GatewayProcess], processes: int = 2,
          workers: int = 4, extra_gateway: str = "", extra_app: str = "") -> GatewayProcess:
    return gateway_factory(app=STATEFUL, workers=workers, mode="sessions",
                           extra_gateway=f"processes = {processes}\n" + extra_gateway,
                           extra_app='session_cookie = "sid"\nstop_grace = "3s"\n' + extra_app)


# -- a small client: one request per fresh connection --------------------------------------


async def fetch(port: int, method: str, path: str, cookie: str = "",
                timeout: float = 20.0) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on a connection of its own: (status, headers, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                            timeout)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        if cookie:
            head += f"Cookie: {cookie}\r\n"
        if method == "POST":
            head += "Content-Length: 0\r\n"
        writer.write((head + "\r\n").encode())
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    if not data:
        raise ConnectionError("closed without an answer")
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:] if ":" in ln]
    if any(k.lower() == "transfer-encoding" for k, _ in headers):
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if not n:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, headers, body  # type: ignore[return-value]


def cookie_of(headers: list[tuple[str, str]], name: str) -> str:
    for k, v in headers:
        if k.lower() == "set-cookie" and v.startswith(name + "="):
            return v.split(";")[0]
    return ""


def scrape(gw: GatewayProcess):
    code, _, body = gw.admin_request("GET", "/metrics")
    assert code == 200, body
    return parse(body.decode())


def status(gw: GatewayProcess) -> dict:
    out = gw.cli("status", "--json", timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def listeners(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


# -- tests ---------------------------------------------------------------------------------


def test_every_process_listens_and_status_and_metrics_are_sums(gateway_factory):
    gw = multi(gateway_factory, workers=2).wait_ready()
    planes = gw.planes()
    assert len(planes) == 2
    lines = listeners(gw.port)
    assert len(lines) == 2, lines  # one socket per data-plane process (SO_REUSEPORT)
    for plane in planes:
        assert any(f"pid={plane.pid}," in ln for ln in lines), (plane.pid, lines)

    n = 60

    async def traffic() -> list[int]:
        return [(await fetch(gw.port, "GET", "/"))[0] for _ in range(n)]

    assert asyncio.run(traffic()) == [200] * n
    held = []
    for _ in range(30):  # idle keep-alive connections, spread over the processes
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        held.append(s)
    try:
        def summed():
            m = scrape(gw)
            return m if total(m, "holdover_requests_total") == n and \
                value(m, "holdover_connections") == 30 else None
        m = wait_for(summed, 15, what="the processes' reports to add up")
        assert value(m, "holdover_processes") == 2
        per = [value(m, "holdover_process_connections", process=str(i)) for i in (0, 1)]
        assert sum(per) == 30 and min(per) > 0, per
        st = status(gw)
        assert [p["alive"] for p in st["processes"]] == [True, True]
        assert {p["pid"] for p in st["processes"]} == {p.pid for p in planes}
        assert st["connections"] == 30
        workers = [w for r in st["revisions"] for w in r["workers"]]
        assert sum(w["requests"] for w in workers) == n
        plain = gw.cli("status")
        assert "processes 2 of 2 serving" in plain.stdout, plain.stdout
    finally:
        for s in held:
            s.close()


def test_a_thousand_sessions_at_once_each_on_its_own_worker(gateway_factory):
    """Login, then at once two requests on fresh connections, for 1,000 users in parallel."""
    gw = multi(gateway_factory, workers=4).wait_ready()
    users = 1000
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> tuple[str, int, list]:
        async with sem:
            st, headers, body = await fetch(gw.port, "POST", f"/login?user=u{i}")
            assert st == 200, (st, body[:200])
            sid = cookie_of(headers, "sid")
            pid = json.loads(body)["pid"]
            got = []
            for _ in range(2):  # the very next request, on another connection
                st, _, body = await fetch(gw.port, "GET", "/", sid)
                info = json.loads(body)
                got.append((st, info["pid"], info["user"], info["count"]))
            return f"u{i}", pid, got

    async def everyone() -> list:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(users))), 240)

    t0 = time.monotonic()
    results = asyncio.run(everyone())
    elapsed = time.monotonic() - t0
    wrong = [(u, pid, got) for u, pid, got in results
             if got != [(200, pid, u, 1), (200, pid, u, 2)]]
    assert not wrong, f"{len(wrong)} of {users} sessions left their worker: {wrong[:3]}"
    assert len({pid for _, pid, _ in results}) == 4, "the sessions were spread over the workers"
    m = scrape(gw)
    assert total(m, "holdover_sessions") == users
    assert value(m, "holdover_pin_claim_timeouts_total") == 0
    assert value(m, "holdover_pin_lookup_timeouts_total") == 0
    assert elapsed < 240


class Load:
    """Users that log in and keep using their sessions on fresh connections, in a thread.

    Each user checks every answer: its worker (pid) and its count, which its worker alone
    knows.  ``failed`` collects every answer that was not right."""

    def __init__(self, port: int, users: int = 20) -> None:
        self.port = port
        self.users = users
        self.failed: list[object] = []
        self.served = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()

    async def _user(self, i: int) -> None:
        deadline = time.monotonic() + 120
        try:
            st, headers, body = await fetch(self.port, "POST", f"/login?user=l{i}")
        except OSError as exc:
            self.failed.append(("login", i, repr(exc)))
            return
        if st != 200:
            self.failed.append(("login", i, st))
            return
        sid, pid, count = cookie_of(headers, "sid"), json.loads(body)["pid"], 0
        unsure = False  # a request whose answer was lost may have reached the app
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                st, _, body = await fetch(self.port, "GET", "/", sid)
            except OSError as exc:
                self.failed.append(("connection", i, repr(exc), time.strftime("%H:%M:%S")))
                unsure = True
                continue
            count += 1
            info = json.loads(body) if st == 200 else {}
            if unsure and info.get("count") == count + 1:
                count += 1
            unsure = False
            if st != 200 or info.get("pid") != pid or info.get("count") != count:
                self.failed.append((i, st, info, pid, count))
                return
            self.served += 1
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        await asyncio.gather(*(self._user(i) for i in range(self.users)))


def test_deploy_and_rollback_under_load_lose_nothing(gateway_factory):
    gw = multi(gateway_factory, workers=2).wait_ready()
    with Load(gw.port) as load:
        wait_for(lambda: load.served > 100, 30, what="the load to run")
        r = gw.cli("deploy", "--revision", "v2")
        assert r.returncode == 0, r.stderr
        before = load.served
        wait_for(lambda: load.served > before + 100, 30, what="serving after the deploy")
        r = gw.cli("rollback")
        assert r.returncode == 0, r.stderr
        before = load.served
        wait_for(lambda: load.served > before + 100, 30, what="serving after the rollback")
    assert not load.failed, load.failed[:5]
    st = status(gw)
    assert st["sessions_lost"] == 0 and st["active"] == "v1"
    assert st["sessions"] == load.users


def test_a_killed_process_is_replaced_and_only_its_connections_are_lost(gateway_factory):
    gw = multi(gateway_factory, workers=2).wait_ready()
    victim, other = gw.planes()
    with Load(gw.port) as load:
        wait_for(lambda: load.served > 100, 30, what="the load to run")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_for(lambda: len(gw.planes()) == 2 and victim.pid not in
                 {p.pid for p in gw.planes()}, 20, what="a new data-plane process")
        before = load.served
        wait_for(lambda: load.served > before + 200, 30, what="serving after the kill")
    # A request in flight in the killed process may fail (its connection is lost);
    # nothing else may: every session goes on, on its worker, with its count.
    broken = [f for f in load.failed if f[0] != "connection"]
    assert not broken, broken[:5]
    assert len(load.failed) <= load.users, load.failed[:5]
    assert other.is_running()
    st = status(gw)
    assert st["sessions_lost"] == 0 and st["sessions"] == load.users
    assert "data-plane process 0" in gw.log or "data-plane process 1" in gw.log
    m = scrape(gw)
    assert value(m, "holdover_process_restarts_total") == 1


def test_the_control_process_dying_takes_the_planes_with_it(gateway_factory):
    gw = multi(gateway_factory, workers=1).wait_ready()
    planes = gw.planes()
    workers = gw.workers()
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    _, alive = psutil.wait_procs(planes + workers, timeout=15)
    assert not alive, alive


def test_reload_with_several_processes_keeps_sessions_and_refuses_nobody(gateway_factory):
    gw = multi(gateway_factory, workers=2).wait_ready()
    old_planes = {p.pid for p in gw.planes()}
    workers = {p.pid for p in gw.workers()}
    with Load(gw.port) as load:
        wait_for(lambda: load.served > 100, 30, what="the load to run")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloading" in gw.log, 15, what="the reload to start")
        wait_for(lambda: len(gw.planes()) == 2 and not old_planes & {p.pid for p in
                                                                     gw.planes()},
                 60, what="new data-plane processes after the reload")
        before = load.served
        wait_for(lambda: load.served > before + 100, 30, what="serving after the reload")
    assert not load.failed, load.failed[:5]  # not one connection refused or request failed
    assert {p.pid for p in gw.workers()} == workers
    assert len(listeners(gw.port)) == 2
    st = status(gw)
    assert st["sessions_lost"] == 0 and st["sessions"] == load.users


def test_access_log_lines_from_every_process(gateway_factory):
    gw = multi(gateway_factory, workers=2,
               extra_gateway='access_log = "access.log"\n').wait_ready()

    async def traffic() -> None:
        for i in range(40):
            assert (await fetch(gw.port, "GET", f"/?n={i}"))[0] == 200

    asyncio.run(traffic())
    path = gw.dir / "state" / "access.log"

    def lines() -> list[dict]:
        text = path.read_text() if path.exists() else ""
        got = [json.loads(ln) for ln in text.splitlines()]
        return got if len(got) >= 40 else []
    got = wait_for(lines, 15, what="the access log lines")
    paths = Counter(e["path"] for e in got)
    assert all(paths[f"/?n={i}"] == 1 for i in range(40)), paths
    assert not re.search(r"\}\{", path.read_text()), "no line is cut by another"


BACKEND = f"{PY} {APPS / 'backend.py'} {{port}}"


def test_a_draining_worker_waits_for_requests_in_every_process(gateway_factory):
    """No session pins v1 (holdover's cookie is only offered), but slow requests run on
    it in both processes: v1's workers stop only once the last of them has answered."""
    gw = gateway_factory(app=BACKEND, workers=1, mode="sessions",
                         extra_gateway="processes = 2\n",
                         extra_app='stop_grace = "3s"\n').wait_ready()
    v1_pid = gw.workers()[0].pid

    async def slow_ones() -> list[tuple[int, bytes]]:
        async def one(delay: float) -> tuple[int, bytes]:
            st, _, body = await fetch(gw.port, "GET", f"/slow?delay={delay}")
            return st, body
        return await asyncio.gather(*(one(2.0 + i * 0.2) for i in range(16)))

    results: list = []
    t = threading.Thread(target=lambda: results.extend(asyncio.run(slow_ones())))
    t.start()
    # All 16 requests in flight, over both processes, before the deploy.
    wait_for(lambda: total(scrape(gw), "holdover_requests_in_flight") == 16, 10,
             interval=0.05, what="16 slow requests in flight")
    per = [value(scrape(gw), "holdover_process_connections", process=str(i)) for i in (0, 1)]
    assert min(per) > 0, per
    r = gw.cli("deploy", "--revision", "v2")
    assert r.returncode == 0, r.stderr
    t.join(30)
    assert [st for st, _ in results] == [200] * 16, results
    assert all(body == f"slow done {v1_pid}".encode() for _, body in results), results
    wait_for(lambda: not psutil.pid_exists(v1_pid) or psutil.Process(v1_pid).status() ==
             psutil.STATUS_ZOMBIE, 20, what="v1's worker to stop once idle")


def test_ends_reach_every_process(gateway_factory):
    """An idle timeout (decided by the control process) and a logout (seen by one
    process) end the session in every process: the old cookie routes as no session."""
    gw = multi(gateway_factory, workers=2,
               extra_app='session_idle_timeout = "2s"\n').wait_ready()

    async def flow() -> str:
        st, headers, _ = await fetch(gw.port, "POST", "/login?user=ann")
        sid = cookie_of(headers, "sid")
        for _ in range(6):  # pinned, whichever process answers
            st, headers, body = await fetch(gw.port, "GET", "/", sid)
            assert json.loads(body)["user"] == "ann"
            assert ("X-Holdover-Revision", "v1") in headers
        # logout in one process ...
        st, headers, body = await fetch(gw.port, "POST", "/logout", sid)
        assert json.loads(body)["logged_out"] is True
        # ... and a client that keeps sending the old cookie is no session in any process
        for _ in range(6):
            st, headers, body = await fetch(gw.port, "GET", "/", sid)
            assert st == 200 and json.loads(body)["user"] is None
            assert not any(k == "X-Holdover-Revision" for k, _ in headers), headers

        st, headers, _ = await fetch(gw.port, "POST", "/login?user=bob")
        sid = cookie_of(headers, "sid")
        st, headers, _ = await fetch(gw.port, "GET", "/", sid)
        assert ("X-Holdover-Revision", "v1") in headers
        return sid

    bob = asyncio.run(flow())
    wait_for(lambda: status(gw)["sessions"] == 0, 20, what="bob's session to idle out")

    async def after_idle() -> None:
        for _ in range(6):
            st, headers, _ = await fetch(gw.port, "GET", "/", bob)
            assert st == 200
            assert not any(k == "X-Holdover-Revision" for k, _ in headers), headers
    asyncio.run(after_idle())
    assert status(gw)["sessions_lost"] == 0


def test_reload_can_change_the_number_of_processes(gateway_factory):
    gw = multi(gateway_factory, workers=2).wait_ready()
    with Load(gw.port, users=10) as load:
        wait_for(lambda: load.served > 50, 30, what="the load to run")
        text = gw.config.read_text().replace("processes = 2", "processes = 3")
        gw.config.write_text(text)
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(gw.planes()) == 3, 60, what="three data-plane processes")
        before = load.served
        wait_for(lambda: load.served > before + 50, 30, what="serving with three")
        gw.config.write_text(text.replace("processes = 3", "processes = 1"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not gw.planes() and gw.log.count("serving http") >= 3, 60,
                 what="one process again")
        before = load.served
        wait_for(lambda: load.served > before + 50, 30, what="serving in one process")
    assert not load.failed, (load.failed[:5], gw.log[-4000:])
    assert status(gw)["sessions_lost"] == 0
    # The three processes' sockets stay open, all served by the one process now.
    assert len(listeners(gw.port)) == 3


def test_a_port_another_gateway_serves_is_refused_before_any_worker(gateway_factory):
    """SO_REUSEPORT would let a second group share the port: it is refused instead."""
    first = multi(gateway_factory, workers=1).wait_ready()
    second = multi(gateway_factory, workers=1,
                   extra_gateway=f'listen = "127.0.0.1:{first.port}"\n')
    assert second.proc.wait(30) == 1
    assert "cannot listen on 127.0.0.1" in second.log and "[gateway] listen" in second.log
    assert "worker" not in second.log.split("cannot listen")[0], second.log
    assert len(listeners(first.port)) == 2


def test_sigterm_lets_every_process_finish_its_requests(gateway_factory):
    gw = gateway_factory(app=BACKEND, workers=2, mode="sessions",
                         extra_gateway="processes = 2\n").wait_ready()
    planes = gw.planes()

    async def slow_ones() -> list[int]:
        return [st for st, _, _ in await asyncio.gather(
            *(fetch(gw.port, "GET", "/slow?delay=1.5") for _ in range(12)))]

    results: list[int] = []
    t = threading.Thread(target=lambda: results.extend(asyncio.run(slow_ones())))
    t.start()
    wait_for(lambda: total(scrape(gw), "holdover_requests_in_flight") == 12, 10,
             interval=0.05, what="12 slow requests in flight")
    gw.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert results == [200] * 12
    assert gw.proc.wait(30) == 0
    _, alive = psutil.wait_procs(planes, timeout=10)
    assert not alive
