"""``holdover demo --tour``: a deploy with simulated users, narrated in the terminal.

A real gateway (``holdover run``, a child process on free loopback ports) runs the demo
app.  Three users log in on v1, write notes, keep a WebSocket open and browse; revision
v2 is deployed through the admin API while they do; then they are checked (same
revision, same worker process, notes intact, WebSocket still ticking), two new visitors
arrive (v2), two old users log out (and land on v2), the third just leaves, and the tour
waits for v1 to retire when her session idles out.  It ends with a summary and exits 0
only if no request failed, no session was lost and every session was kept.

Everything is bounded in time (about 25 s, at most ``LIMIT``) and every process it
started is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from . import RELEASES
from .launch import write_config

LIMIT = 55.0  # seconds: the whole tour, start to summary
IDLE = 5  # the tour's session_idle_timeout, in seconds


class TourFailed(Exception):
    """Something the tour cannot go on without (the gateway did not start, ...)."""


@dataclass
class Tally:
    """Every request the simulated users made, and the ones that failed."""

    made: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class User:
    name: str
    base: str
    tally: Tally
    http: aiohttp.ClientSession = None  # type: ignore[assignment]
    me: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    ws: aiohttp.ClientWebSocketResponse | None = None
    ticks: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    browsing: asyncio.Task[None] | None = None
    wrong: list[str] = field(default_factory=list)  # answers from the wrong place

    async def open(self) -> None:
        # unsafe=True: keep cookies of an IP-address host (127.0.0.1).
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          timeout=aiohttp.ClientTimeout(total=15))

    async def request(self, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
        """One request; a network error or an unexpected status counts as failed."""
        self.tally.made += 1
        try:
            resp = await self.http.request(method, self.base + path, allow_redirects=False,
                                           **kw)
            await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.tally.failed.append(f"{self.name}: {method} {path}: {exc!r}")
            raise
        if resp.status >= 400:
            self.tally.failed.append(f"{self.name}: {method} {path}: HTTP {resp.status}")
        return resp

    async def whoami(self) -> dict[str, Any]:
        resp = await self.request("GET", "/api/me", headers={"Accept": "application/json"})
        self.me = json.loads(await resp.read())
        self.headers = {k: v for k, v in resp.headers.items() if k.startswith("X-Holdover")}
        return self.me

    async def login(self, notes: tuple[str, ...] = ()) -> None:
        await self.request("GET", "/")
        await self.request("POST", "/login", data={"name": self.name})
        for text in notes:
            await self.request("POST", "/notes", data={"text": text})
        await self.whoami()

    async def connect(self) -> None:
        self.tally.made += 1
        try:
            self.ws = await self.http.ws_connect(self.base.replace("http", "ws", 1) + "/ws")
        except (aiohttp.ClientError, OSError) as exc:
            self.tally.failed.append(f"{self.name}: WebSocket: {exc!r}")
            raise
        asyncio.get_running_loop().create_task(self._listen(self.ws))

    async def _listen(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.ticks.append((time.monotonic(), json.loads(msg.data)))

    async def first_tick(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.ticks:
            if time.monotonic() > deadline:
                raise TourFailed(f"{self.name}'s WebSocket sent nothing in {timeout:g}s")
            await asyncio.sleep(0.05)
        return self.ticks[-1][1]

    def browse(self, expect_worker: str, expect_notes: list[str]) -> None:
        """Keep reading pages in the background, checking who answers."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(0.2)
                try:
                    me = await self.whoami()
                    await self.request("GET", "/")
                except (aiohttp.ClientError, TimeoutError, OSError):
                    continue  # counted as failed already
                if me.get("worker") != expect_worker or me.get("notes") != expect_notes:
                    self.wrong.append(f"{me.get('worker')} with notes {me.get('notes')}")
        self.browsing = asyncio.get_running_loop().create_task(loop())

    async def stop_browsing(self) -> None:
        if self.browsing is not None:
            self.browsing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.browsing
            self.browsing = None

    async def close_tab(self) -> None:
        """What closing the tab does: stop browsing, close the WebSocket."""
        await self.stop_browsing()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()

    async def logout(self) -> None:
        await self.close_tab()
        await self.request("POST", "/logout")
        await self.request("GET", "/")  # the page after the redirect
        await self.whoami()

    async def close(self) -> None:
        await self.close_tab()
        if self.http is not None:
            await self.http.close()


class Tour:
    def __init__(self, template: str, verbose: bool = False) -> None:
        self.template = template
        self.verbose = verbose
        self.t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="holdover-tour-"))
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.tally = Tally()
        self.users: list[User] = []
        self.admin: aiohttp.ClientSession | None = None
        self.admin_base = ""
        self.base = ""
        self.problems: list[str] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s] {text}", flush=True)

    # -- the gateway ---------------------------------------------------------------

    async def start_gateway(self) -> None:
        config = write_config(self.template, self.dir, 0, 0, f"{IDLE}s")
        self.say("starting the gateway with revision v1 of the demo app (2 workers) ...")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "holdover", "run", "-c", str(config), cwd=self.dir,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        asyncio.get_running_loop().create_task(self._read_log())
        deadline = time.monotonic() + 30
        while True:
            m = re.search(r"serving (http://127\.0\.0\.1:\d+)/", "".join(self.log))
            if m:
                self.base = m.group(1)
                break
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise TourFailed("the gateway did not start:\n" + "".join(self.log[-20:]))
            await asyncio.sleep(0.05)
        state = self.dir / "state"
        self.admin_base = (state / "admin.url").read_text().strip().rstrip("/")
        token = (state / "admin.token").read_text().strip()
        self.admin = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                           timeout=aiohttp.ClientTimeout(total=60))
        self.say(f"gateway up: the app at {self.base}/, revision v1 active")

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            if self.verbose:
                sys.stderr.write("  | " + line)

    async def api(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        assert self.admin is not None
        async with self.admin.request(method, f"{self.admin_base}/api/{name}",
                                      json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise TourFailed(f"/api/{name}: HTTP {resp.status}: {data}")
            return data

    async def stop_gateway(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    # -- the story -----------------------------------------------------------------

    async def user(self, name: str) -> User:
        u = User(name, self.base, self.tally)
        await u.open()
        self.users.append(u)
        return u

    def step(self, title: str) -> None:
        print(f"\n{title}", flush=True)

    async def run(self) -> dict[str, Any]:
        self.step("1. revision v1 is running")
        await self.start_gateway()
        old: list[User] = []
        notes = {"alice": ("buy milk", "call Bob"), "bob": ("ship v2",),
                 "carol": ("read the holdover README", "lunch at noon", "water the plants")}
        for name, texts in notes.items():
            u = await self.user(name)
            await u.login(texts)
            await u.connect()
            tick = await u.first_tick()
            self.say(f"{name:<5} logs in   -> revision {u.me['revision']}, worker "
                     f"{u.me['worker']} (pid {u.me['pid']}); {len(u.me['notes'])} note(s); "
                     f"live WebSocket connected to {tick['worker']}")
            old.append(u)
        for u in old:
            u.browse(u.me["worker"], u.me["notes"])
        self.say("they keep browsing: a page every 0.2 s each, WebSockets ticking")
        await asyncio.sleep(1.0)

        v2 = RELEASES / "v2"
        self.step("2. deploy v2 while they browse")
        self.say(f"deploy: holdover deploy --revision v2 --from {v2}")
        before = self.tally.made, len(self.tally.failed)
        t_deploy = time.monotonic()
        result = await self.api("POST", "deploy", {"revision": "v2", "from": str(v2)})
        deployed_at = time.monotonic()
        st = await self.api("GET", "status")
        v1 = next(r for r in st["revisions"] if r["id"] == "v1")
        self.say(f"v2 is active after {deployed_at - t_deploy:.1f} s; {result['previous']} is "
                 f"{v1['state']} with {v1['sessions']} session(s); "
                 f"{self.tally.made - before[0]} requests during the deploy, "
                 f"{len(self.tally.failed) - before[1]} failed")

        self.step("3. the users of v1 are still on v1; new visitors get v2")
        kept = ws_kept = 0
        # Give every WebSocket the time to tick after the deploy (once a second).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
                u.ticks and u.ticks[-1][0] > deployed_at + 0.5 for u in old):
            await asyncio.sleep(0.1)
        for u in old:
            was = dict(u.me)
            me = await u.whoami()
            after = [m for t, m in u.ticks if t > deployed_at]
            same = (me["revision"] == "v1" and me["pid"] == was["pid"]
                    and me["notes"] == was["notes"] and not u.wrong)
            kept += same
            live = bool(after) and all(m["worker"] == was["worker"] for m in after) \
                and u.ws is not None and not u.ws.closed
            ws_kept += live
            latest = u.headers.get("X-Holdover-Latest", "?")
            self.say(f"{u.name:<5} {'still on' if same else 'MOVED to'} revision "
                     f"{me['revision']}, worker {me['worker']} (same pid "
                     f"{me['pid']}), {len(me['notes'])} note(s) intact; newest is {latest}, "
                     f"so the page offers it; WebSocket "
                     + (f"still ticking on {after[-1]['worker']} (tick {after[-1]['tick']})"
                        if live else "LOST"))
            if not same:
                self.problems.append(f"{u.name}'s session was not kept: {me} "
                                     f"(wrong answers: {u.wrong[:3]})")
            if not live:
                self.problems.append(f"{u.name}'s WebSocket did not stay on "
                                     f"{was['worker']}")

        new_on_v2 = 0
        for name in ("dave", "erin"):
            u = await self.user(name)
            await u.login(("hello from a new visitor",))
            new_on_v2 += u.me["revision"] == "v2"
            features = ", ".join(k for k, v in u.me["features"].items() if v) or "none"
            self.say(f"{name:<5} (a new visitor) logs in -> revision {u.me['revision']}, "
                     f"worker {u.me['worker']} (new features: {features})")
            if u.me["revision"] != "v2":
                self.problems.append(f"new visitor {name} got {u.me['revision']}, not v2")

        self.step("4. the users of v1 leave; v1 retires")
        moved = 0
        for u in old[:2]:
            await asyncio.sleep(0.5)
            await u.logout()
            page_from = u.me["revision"]
            await u.login(("first note on v2",))
            moved += page_from == "v2" and u.me["revision"] == "v2"
            self.say(f"{u.name:<5} logs out  -> the next page comes from revision "
                     f"{page_from}; logged in again on {u.me['revision']}, worker "
                     f"{u.me['worker']}")
            if u.me["revision"] != "v2":
                self.problems.append(f"{u.name} did not move to v2 after logging out")
        carol = old[2]
        await carol.close_tab()
        self.say(f"carol closes her tab without logging out: her session ends after "
                 f"{IDLE} s idle")

        retired_at = await self.watch_retirement(deadline=self.t0 + LIMIT - 3)
        st = await self.api("GET", "status")
        return {"kept": kept, "ws_kept": ws_kept, "old": len(old), "new_on_v2": new_on_v2,
                "moved": moved, "lost": st["sessions_lost"],
                "retire_s": None if retired_at is None else retired_at - deployed_at}

    async def watch_retirement(self, deadline: float) -> float | None:
        """Report v1's workers stopping; the time v1 retired, or None at the deadline."""
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            st = await self.api("GET", "status")
            v1 = next(r for r in st["revisions"] if r["id"] == "v1")
            for w in v1["workers"]:
                if w["state"] == "stopped" and seen.get(w["id"]) != "stopped":
                    self.say(f"worker {w['id']} stopped: no session, request or WebSocket "
                             f"left on it")
                seen[w["id"]] = w["state"]
            if v1["state"] == "retired":
                self.say("revision v1 retired: its last worker has stopped")
                return time.monotonic()
            await asyncio.sleep(0.25)
        self.problems.append("v1 did not retire in time")
        return None

    async def close(self) -> None:
        for u in self.users:
            with contextlib.suppress(Exception):
                await u.close()
        if self.admin is not None:
            await self.admin.close()
        await self.stop_gateway()


def _summary(r: dict[str, Any], tally: Tally) -> str:
    retire = f"{r['retire_s']:.1f} s after the deploy" if r["retire_s"] is not None \
        else "not within the tour's time limit"
    rows = [
        ("sessions kept through the deploy", f"{r['kept']} of {r['old']} (same worker "
         f"process, notes intact)"),
        ("WebSockets kept", f"{r['ws_kept']} of {r['old']} (still ticking on v1)"),
        ("new visitors on v2", f"{r['new_on_v2']} of 2"),
        ("moved to v2 by logging out", f"{r['moved']} of 2"),
        ("requests", f"{tally.made} made, {len(tally.failed)} failed"),
        ("lost sessions", f"{r['lost']}"),
        ("time to retire v1", retire),
    ]
    width = max(len(k) for k, _ in rows)
    return "\nsummary\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


async def _main(template: str, verbose: bool) -> int:
    tour = Tour(template, verbose)
    print("holdover demo --tour: simulated users through a deploy, on 127.0.0.1 only",
          flush=True)
    ok = False
    try:
        try:
            result = await asyncio.wait_for(tour.run(), LIMIT)
        except TourFailed as exc:
            tour.say(f"the tour could not go on: {exc}")
            return 1
        except TimeoutError:
            tour.say(f"the tour took longer than {LIMIT:g} s")
            return 1
        print(_summary(result, tour.tally), flush=True)
        problems = tour.problems + tour.tally.failed
        if result["lost"]:
            problems.append(f"the gateway counted {result['lost']} lost session(s)")
        if problems:
            print("\nFAIL:\n  " + "\n  ".join(problems[:20]), flush=True)
            return 1
        ok = True
        print("\nPASS: nobody was logged out, nothing in memory was lost, no request "
              "failed.", flush=True)
        return 0
    finally:
        await tour.close()
        if ok:
            shutil.rmtree(tour.dir, ignore_errors=True)
        else:
            print(f"(the gateway's files and worker logs are in {tour.dir})", flush=True)


def run_tour(template: str, verbose: bool = False) -> int:
    """``holdover demo --tour``; the exit code (0: no failure and no loss)."""
    return asyncio.run(_main(template, verbose))
