#!/usr/bin/env python3
"""Load generator for the upgrade benchmark: virtual users with real sessions.

Why it exists: an upgrade is only "zero downtime" if the people using the app notice
nothing.  This process plays N such people against ``bench/app/app.py`` behind some
proxy, each with its own cookie jar (and, with ``--source-ips``, its own loopback source
address 127.0.0.X, so address-hash stickiness works), and checks after every response
that its session is still the one it logged in to:

* a user logs in (``POST /login``), opens a WebSocket, then for a session length drawn
  from ``[0.5, 1.5] x --session-seconds`` does a mix of page views (``GET /``), form posts
  (``POST /notes``), WebSocket messages and, now and then, a streamed download
  (``GET /download?n=...``), with think time between them; then it closes the WebSocket,
  logs out (``POST /logout``) and logs in again -- so old revisions can drain;
* every response names the revision, pid, user, counter and note count the app sees;
  the session is **lost** when the app no longer knows the user, its counter or notes go
  backwards, or the revision changes while the user is logged in (a revision may only
  change across a logout);
* a request **failed** when it raised (reset, refused, timeout), got a 5xx or an
  unexpected status, or its body was cut short.

With ``--stateless`` users do not log in and nothing is checked but the responses.

Output (``--out``): JSON lines. ``{"ev": "req", ...}`` per request or WebSocket message
with ``t`` (epoch s at start), ``ph`` (phase), ``k`` (kind), ``lat`` (ms), ``ok``,
``st`` (status), ``rev``/``pid`` (who answered), ``srev``/``spid`` (where the user's
session lives), ``u`` (user), ``err``; ``{"ev": "lost", ...}`` per lost session with the
reason; ``{"ev": "tick", ...}`` once a second with live sessions per revision as the
users see them; a final ``{"ev": "summary", ...}``. The phase is the content of
``--phase-file`` (re-read every 0.1 s), which the orchestrator rewrites.

Bounded: it stops after ``--duration`` seconds or ``--max-requests`` requests, or on
SIGTERM/SIGINT; then every user closes its WebSocket and logs out (at most
``--grace`` seconds) and the process exits.  Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

KINDS = ("page", "form", "ws", "download")
BENCH_HEADERS = ("X-Bench-Rev", "X-Bench-Pid", "X-Bench-User", "X-Bench-Count", "X-Bench-Notes")


class Stats:
    """Everything the users share: the output file, the phase, the request budget."""

    def __init__(self, out: Any, max_requests: int, phase_file: Path | None) -> None:
        self.out = out
        self.max_requests = max_requests
        self.requests = 0
        self.failed = 0
        self.lost = 0
        self.phase = "start"
        self.phase_file = phase_file
        self.stop = asyncio.Event()
        self.by_kind: Counter[str] = Counter()
        self.fail_kind: Counter[str] = Counter()
        self.lost_reasons: Counter[str] = Counter()
        self.live: dict[str, str] = {}  # user -> revision of its live session

    def write(self, rec: dict[str, Any]) -> None:
        self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def budget_left(self) -> bool:
        if self.requests >= self.max_requests:
            self.stop.set()
            return False
        return not self.stop.is_set()


class User:
    def __init__(self, idx: int, args: argparse.Namespace, stats: Stats) -> None:
        self.idx = idx
        self.args = args
        self.stats = stats
        self.base = args.url.rstrip("/")
        self.rng = random.Random(args.seed * 100003 + idx)
        self.gen = 0
        self.name = ""
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ws_pid = 0  # the process that answered on the open WebSocket
        self.logged_in = False
        self.srev = ""
        self.spid = 0
        self.count = 0
        self.notes = 0

    # -- plumbing --------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        local = None
        if self.args.source_ips:
            local = (f"127.0.{1 + self.idx // 250}.{2 + self.idx % 250}", 0)
        connector = aiohttp.TCPConnector(limit=4, local_addr=local, force_close=False,
                                         enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=self.args.timeout)
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     connector=connector, timeout=timeout)

    def record(self, kind: str, t0: float, lat: float, ok: bool, status: int = 0,
               rev: str = "", pid: int = 0, err: str = "", phase: str = "") -> None:
        st = self.stats
        st.requests += 1
        st.by_kind[kind] += 1
        if not ok:
            st.failed += 1
            st.fail_kind[kind] += 1
        rec: dict[str, Any] = {"ev": "req", "t": round(t0, 4), "ph": phase, "k": kind,
                               "lat": round(lat * 1000, 2), "ok": ok, "st": status,
                               "rev": rev, "pid": pid, "u": self.name}
        if self.logged_in or kind in ("login", "logout"):
            rec["srev"], rec["spid"] = self.srev, self.spid
        if err:
            rec["err"] = err[:200]
        st.write(rec)

    def lose(self, reason: str, detail: str, rev: str, pid: int) -> None:
        st = self.stats
        st.lost += 1
        st.lost_reasons[reason] += 1
        st.write({"ev": "lost", "t": round(time.time(), 4), "ph": st.phase, "u": self.name,
                  "reason": reason, "detail": detail[:300], "srev": self.srev,
                  "spid": self.spid, "rev": rev, "pid": pid, "count": self.count,
                  "notes": self.notes})
        self.logged_in = False
        st.live.pop(self.name, None)

    def check(self, user: str | None, rev: str, pid: int, count: int, notes: int,
              counting: bool = True) -> bool:
        """Is the session still the one this user logged in to? Records a loss if not.

        ``counting``: the request added one to the session's counter (so it must have
        grown); otherwise it must not have gone back."""
        if self.args.stateless or not self.logged_in:
            return True
        where = f"answered by {rev or '?'} pid {pid}; session was on {self.srev} pid {self.spid}"
        if user != self.name:
            if pid == self.spid:
                self.lose("state-reset", f"the app no longer knows the user ({where})", rev, pid)
            elif rev == self.srev:
                self.lose("other-process", f"another process of the same revision ({where})",
                          rev, pid)
            else:
                self.lose("other-revision", f"another revision, without the session ({where})",
                          rev, pid)
            return False
        if rev != self.srev:
            self.lose("revision-changed", f"revision changed while logged in ({where})", rev, pid)
            return False
        if (count <= self.count if counting else count < self.count) or notes < self.notes:
            self.lose("counter-reset", f"counter {self.count}->{count}, notes "
                      f"{self.notes}->{notes} ({where})", rev, pid)
            return False
        self.count, self.notes = count, notes
        return True

    # -- requests --------------------------------------------------------------------

    async def http_op(self, kind: str, method: str, path: str, *, data: Any = None,
                      expect_bytes: int | None = None,
                      want_user: str | None = None) -> tuple[bool, dict[str, str]]:
        """One request; returns (ok, X-Bench headers). Records it.

        ``want_user``: the response must name this user (a login that did not create the
        session is a failed request)."""
        assert self.http is not None
        phase = self.stats.phase
        t0 = time.time()
        p0 = time.perf_counter()
        status, hdrs, err = 0, {}, ""
        try:
            async with self.http.request(method, self.base + path, data=data,
                                         allow_redirects=False) as resp:
                status = resp.status
                # Header names are case-insensitive (HAProxy sends them in lower case).
                hdrs = {k: resp.headers[k] for k in BENCH_HEADERS if k in resp.headers}
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                if expect_bytes is not None and size != expect_bytes:
                    err = f"short body: {size} of {expect_bytes} bytes"
                elif status >= 400:
                    err = f"HTTP {status}"
                elif want_user is not None and hdrs.get("X-Bench-User") != want_user:
                    err = f"login answered without the new session ({hdrs or 'no headers'})"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            err = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        lat = time.perf_counter() - p0
        rev, pid = hdrs.get("X-Bench-Rev", ""), int(hdrs.get("X-Bench-Pid", "0") or 0)
        ok = not err
        self.record(kind, t0, lat, ok, status, rev, pid, err, phase)
        return ok, hdrs

    async def stateful(self, kind: str, method: str, path: str, **kw: Any) -> bool:
        ok, h = await self.http_op(kind, method, path, **kw)
        if ok and kind not in ("login", "logout"):
            user = h.get("X-Bench-User", "-")
            self.check(None if user == "-" else user, h.get("X-Bench-Rev", ""),
                       int(h.get("X-Bench-Pid", "0") or 0), int(h.get("X-Bench-Count", "0")),
                       int(h.get("X-Bench-Notes", "0")))
        return ok

    async def login(self) -> bool:
        self.gen += 1
        self.name = f"u{self.idx}g{self.gen}"
        if self.args.stateless:
            return True
        ok, h = await self.http_op("login", "POST", f"/login?user={self.name}",
                                   want_user=self.name)
        if not ok:
            return False
        self.logged_in = True
        self.srev, self.spid = h.get("X-Bench-Rev", ""), int(h.get("X-Bench-Pid", "0"))
        self.count = self.notes = 0
        self.stats.live[self.name] = self.srev
        return True

    async def logout(self) -> None:
        if self.args.stateless:
            return
        ok, h = await self.http_op("logout", "POST", "/logout")
        if ok and self.logged_in and h.get("X-Bench-User") != self.name:
            # The app did not know the session any more when the user logged out.
            self.check(None, h.get("X-Bench-Rev", ""), int(h.get("X-Bench-Pid", "0") or 0),
                       0, 0)
        self.logged_in = False
        self.stats.live.pop(self.name, None)
        assert self.http is not None
        self.http.cookie_jar.clear()

    async def ws_open(self) -> bool:
        """Open the WebSocket and read the app's hello (who answers, which session)."""
        assert self.http is not None
        phase = self.stats.phase
        t0, p0 = time.time(), time.perf_counter()
        try:
            self.ws = await self.http.ws_connect(self.base + "/ws", autoping=True,
                                                 heartbeat=None)
            msg = await self.ws.receive(timeout=self.args.timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise aiohttp.ClientError(f"no hello: {msg.type.name}, code "
                                          f"{self.ws.close_code}")
            hello = json.loads(msg.data)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            await self.ws_close()
            self.record("wsopen", t0, time.perf_counter() - p0, False, 0, "", 0,
                        f"{type(exc).__name__}: {exc}", phase)
            return False
        self.ws_pid = hello["pid"]
        self.record("wsopen", t0, time.perf_counter() - p0, True, 101, hello["rev"],
                    hello["pid"], "", phase)
        if self.logged_in and not self.args.stateless:
            # the hello does not count: the session must be exactly as the user left it
            self.check(hello["user"], hello["rev"], hello["pid"], hello["count"],
                       hello["notes"], counting=False)
        return True

    async def ws_message(self) -> bool:
        if self.ws is None or self.ws.closed:
            self.ws = None
            if not await self.ws_open():
                return False
        assert self.ws is not None
        phase = self.stats.phase
        t0, p0 = time.time(), time.perf_counter()
        try:
            await self.ws.send_str(f"hello {self.name} {self.count}")
            msg = await self.ws.receive(timeout=self.args.timeout)
        except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as exc:
            self.record("ws", t0, time.perf_counter() - p0, False, 0, "", self.ws_pid,
                        f"{type(exc).__name__}: {exc}", phase)
            await self.ws_close()
            return False
        lat = time.perf_counter() - p0
        if msg.type != aiohttp.WSMsgType.TEXT:
            code = self.ws.close_code
            self.record("ws", t0, lat, False, 0, "", self.ws_pid,
                        f"websocket closed by the server ({msg.type.name}, code {code})", phase)
            await self.ws_close()
            return False
        data = json.loads(msg.data)
        self.ws_pid = data["pid"]
        self.record("ws", t0, lat, True, 101, data["rev"], data["pid"], "", phase)
        self.check(data["user"], data["rev"], data["pid"], data["count"], data["notes"])
        return True

    async def ws_close(self) -> None:
        ws, self.ws = self.ws, None
        self.ws_pid = 0
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    # -- the life of a user ----------------------------------------------------------

    async def think(self) -> None:
        lo, hi = self.args.think
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stats.stop.wait(), self.rng.uniform(lo, hi))

    async def one_action(self) -> None:
        r = self.rng.random()
        a = self.args
        if r < a.mix[0]:
            await self.stateful("page", "GET", "/")
        elif r < a.mix[0] + a.mix[1]:
            note = f"note {self.notes + 1} from {self.name}"
            await self.stateful("form", "POST", "/notes", data={"note": note})
        elif r < a.mix[0] + a.mix[1] + a.mix[2]:
            await self.ws_message()
        else:
            n = a.download_bytes
            await self.stateful("download", "GET", f"/download?n={n}", expect_bytes=n)

    async def run(self, deadline: float) -> None:
        st = self.stats
        await asyncio.sleep(self.rng.uniform(0, self.args.ramp))
        self.http = self._client()
        try:
            while time.time() < deadline and st.budget_left():
                if not await self.login():
                    await self.think()
                    continue
                await self.ws_open()
                length = self.args.session_seconds * self.rng.uniform(0.5, 1.5)
                end = min(time.time() + length, deadline)
                while time.time() < end and st.budget_left():
                    if not self.args.stateless and not self.logged_in:
                        break  # the session was lost: log in again
                    await self.one_action()
                    await self.think()
                await self.ws_close()
                await self.logout()
                await self.think()
        finally:
            await self.ws_close()
            if self.logged_in:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.logout(), self.args.grace)
            await self.http.close()


async def follow_phase(stats: Stats) -> None:
    while not stats.stop.is_set():
        if stats.phase_file is not None:
            with contextlib.suppress(OSError):
                text = stats.phase_file.read_text().strip()
                if text:
                    stats.phase = text
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stats.stop.wait(), 0.1)


async def ticker(stats: Stats) -> None:
    last = stats.requests
    while not stats.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stats.stop.wait(), 1.0)
        per_rev = Counter(stats.live.values())
        stats.write({"ev": "tick", "t": round(time.time(), 3), "ph": stats.phase,
                     "live": dict(per_rev), "requests": stats.requests,
                     "rps": stats.requests - last, "failed": stats.failed, "lost": stats.lost})
        last = stats.requests
        stats.out.flush()


async def amain(args: argparse.Namespace) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out != "-" else sys.stdout  # noqa: SIM115
    stats = Stats(out, args.max_requests, Path(args.phase_file) if args.phase_file else None)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stats.stop.set)
    t_start = time.time()
    deadline = t_start + args.duration
    stats.write({"ev": "start", "t": round(t_start, 4), "pid": os.getpid(),
                 "args": {k: v for k, v in vars(args).items() if k != "out"}})
    users = [User(i, args, stats) for i in range(args.users)]
    helpers = [asyncio.create_task(follow_phase(stats)), asyncio.create_task(ticker(stats))]
    tasks = [asyncio.create_task(u.run(deadline)) for u in users]
    stopper = asyncio.create_task(stats.stop.wait())
    everyone = asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait([stopper, everyone], timeout=args.duration + 1,
                       return_when=asyncio.FIRST_COMPLETED)
    stats.stop.set()
    # Users notice the stop at their next think; give them --grace seconds to log out.
    _done, pending = await asyncio.wait(tasks, timeout=args.grace + args.timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for h in (*helpers, stopper, everyone):
        h.cancel()
    await asyncio.gather(*helpers, stopper, everyone, return_exceptions=True)
    summary = {"ev": "summary", "t": round(time.time(), 4), "elapsed_s":
               round(time.time() - t_start, 2), "requests": stats.requests,
               "failed": stats.failed, "lost": stats.lost, "by_kind": dict(stats.by_kind),
               "failed_by_kind": dict(stats.fail_kind),
               "lost_reasons": dict(stats.lost_reasons), "users_cancelled": len(pending)}
    stats.write(summary)
    out.flush()
    if out is not sys.stdout:
        out.close()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="base URL, loopback only")
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (hard bound)")
    ap.add_argument("--max-requests", type=int, default=2_000_000, help="request cap")
    ap.add_argument("--session-seconds", type=float, default=8.0,
                    help="mean session length; each is uniform in [0.5, 1.5] x this")
    ap.add_argument("--think", type=float, nargs=2, default=(0.1, 0.5), metavar=("MIN", "MAX"),
                    help="think time between actions, seconds (uniform)")
    ap.add_argument("--mix", type=float, nargs=4, default=(0.5, 0.2, 0.25, 0.05),
                    metavar=("PAGE", "FORM", "WS", "DOWNLOAD"), help="action shares")
    ap.add_argument("--download-bytes", type=int, default=512 * 1024)
    ap.add_argument("--ramp", type=float, default=2.0, help="users start within this many s")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    ap.add_argument("--grace", type=float, default=5.0, help="time to log out at the end, s")
    ap.add_argument("--stateless", action="store_true", help="no login, no session checks")
    ap.add_argument("--source-ips", action="store_true",
                    help="each user connects from its own 127.0.X.Y (for address-hash balancers)")
    ap.add_argument("--phase-file", default="", help="file holding the current phase name")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="-", help="JSON lines output (default stdout)")
    ap.add_argument("--summary", default="", help="also write the summary JSON here")
    args = ap.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        ap.error(f"--url {args.url}: only loopback targets are allowed")
    if abs(sum(args.mix) - 1.0) > 1e-6:
        ap.error("--mix shares must add up to 1")
    if args.duration <= 0 or args.duration > 24 * 3600:
        ap.error("--duration must be in (0, 86400]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(amain(args))
    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
