"""The idle-session sweep itself: the ticker's ``idle-sessions`` job ends sessions (rule 3).

``SessionTable.idle`` is tested on its own in test_sessions_unit.py; this drives the real
control plane (its ticker, router, pin directory, store flush and drain) with fake
workers, so that a sweep that never runs, or runs and ends nothing, fails here.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from test_sessions_unit import Harness

from holdover.proxy.server import Exchange


def route(h: Harness, cookie: bytes | None = None, set_cookie: bytes | None = None,
          session_header: bytes | None = None, finish: bool = True) -> Exchange:
    """One request through the real router; ``finish=False`` leaves it in flight."""
    conn = SimpleNamespace(cookie_cache=None, client_ip=b"127.0.0.1", current=None,
                           fail=lambda ex, status, **kw: None)
    ex = Exchange(conn, time.monotonic())  # type: ignore[arg-type]
    ex.method, ex.url, ex.cookie = b"GET", b"/", cookie
    router = h.gw.router
    router.route(ex)
    assert ex.worker is not None
    ex.status = 200
    if set_cookie is not None:
        router.on_set_cookie(ex, set_cookie)
    if session_header is not None:
        router.on_session_header(ex, session_header)
    router.response_extra_headers(ex)
    endpoint = ex.worker
    if finish:
        router.exchange_done(ex)
        ex.worker = endpoint  # the test asks which worker served it
    return ex


def run_jobs(h: Harness, now: float) -> None:
    """Every periodic job once, at ``now``, inside the loop; then let spawned tasks end."""
    async def go() -> None:
        for job in h.gw.ticker.jobs:
            job.next_at = 0.0
        h.gw.ticker.run_due(now)
        for _ in range(20):
            await asyncio.sleep(0)
    h.run(go())


def key_of(h: Harness, sid: bytes) -> str:
    return h.gw.keys.session_key(b"app", sid)


def test_the_sweep_ends_idle_and_expired_sessions_and_keeps_the_others() -> None:
    h = Harness()
    try:
        c = h.gw
        c.add_jobs()
        idle_timeout = c.config.app_session_idle_timeout
        t0 = time.monotonic()
        route(h, set_cookie=b"sid=idle; Path=/")
        route(h, set_cookie=b"sid=fresh; Path=/")
        route(h, set_cookie=b"sid=busy; Path=/")
        route(h, cookie=b"sid=busy", finish=False)  # a request (or WebSocket) still open
        route(h, session_header=b"explicit; max-age=60")
        explicit = next(p for p in c.sessions.pins.values() if p.expires_at is not None)
        run_jobs(h, t0 + 1)  # nothing is idle yet, and the pins reach the store
        assert len(c.sessions) == 4

        now = t0 + idle_timeout + 1
        c.sessions.touch(c.sessions.get(key_of(h, b"fresh")), now - 5)  # used a moment ago
        run_jobs(h, now)

        left = set(c.sessions.pins)
        assert key_of(h, b"idle") not in left, "idle past session_idle_timeout: ended"
        assert explicit.key not in left, "past its max-age: ended"
        assert key_of(h, b"fresh") in left and key_of(h, b"busy") in left
        assert sum(c.sessions.per_revision.values()) == 2
        assert c.ticker.errors == {j.name: 0 for j in c.ticker.jobs}
        stored = {p.key for p in h.run(c.store.load_pins())}
        assert stored == left, "the ended sessions are gone from the store too"
    finally:
        h.close()


def test_an_idle_session_on_a_draining_revision_lets_its_worker_go() -> None:
    h = Harness(workers=1)
    try:
        c = h.gw
        c.add_jobs()
        t0 = time.monotonic()
        first = route(h, set_cookie=b"sid=alice; Path=/")
        old: Any = h.worker_of(first.worker)
        h.run(c.revs.deploy(revision="v2"))
        run_jobs(h, t0 + 1)
        assert old.state == "ready", "her session keeps the draining worker"
        run_jobs(h, t0 + c.config.app_session_idle_timeout + 1)  # ends it, then drains
        run_jobs(h, t0 + c.config.app_session_idle_timeout + 2)  # the revision retires
        assert c.sessions.get(key_of(h, b"alice")) is None
        assert old.state == "stopped"
        assert c.revs.revisions["v1"].state.value == "retired"
    finally:
        h.close()
