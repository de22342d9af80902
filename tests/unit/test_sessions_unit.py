"""Property tests of sessions, pins, the affinity cookie and routing/lifecycle decisions.

No sockets and no processes: ``SessionTable``, ``Keys`` and the cookie parsers are plain
data; routing and the revision lifecycle are driven through a real ``Gateway`` and
``RevisionManager`` whose supervisor starts *fake* workers (real ``Worker`` objects that
are made ``ready`` without a process) and whose ``dispatch`` only records the worker a
request was sent to.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from holdover.config import from_dict
from holdover.control.facade import Control
from holdover.control.router import Router
from holdover.core.affinity import PIN_COOKIE, Keys, cookie_value, parse_set_cookie
from holdover.core.errors import Refused as DeployError
from holdover.core.lifecycle import WorkerEvent
from holdover.core.sessions import Pin, SessionTable
from holdover.proxy.server import Exchange
from holdover.state import MemoryStore
from holdover.supervisor.supervisor import RevisionFailed, Supervisor
from holdover.supervisor.worker import Worker

# -- SessionTable -----------------------------------------------------------------------

KEYS = [f"k{i}" for i in range(6)]
WORKERS = {"w1": "r1", "w2": "r1", "w3": "r2", "w4": "r3"}  # worker -> its revision


class SessionTableMachine(RuleBasedStateMachine):
    """Any sequence of pin/end/touch/take_changes keeps counts and the flushed copy right.

    ``store`` plays the state store: it only ever sees what ``take_changes`` hands out,
    and after each flush it must equal the live table (no lost or phantom pins)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = SessionTable()
        self.model: dict[str, tuple[str, str, str]] = {}  # key -> (worker, incarnation, rev)
        self.created: dict[str, float] = {}
        self.store: dict[str, tuple[str, str, str]] = {}
        self.now = 0.0
        self.stale: list[Pin] = []  # pin objects of ended sessions, still held by requests

    @rule(key=st.sampled_from(KEYS), worker=st.sampled_from(sorted(WORKERS)),
          inc=st.sampled_from(["a", "b"]), expires=st.none() | st.floats(0, 100))
    def pin(self, key: str, worker: str, inc: str, expires: float | None) -> None:
        self.now += 1
        old = self.t.get(key)
        p = self.t.pin(key, worker, inc, WORKERS[worker], self.now, expires)
        same = key in self.model and self.model[key][:2] == (worker, inc)
        if same:
            assert p is old, "re-pinning to the same worker incarnation keeps the pin"
            assert p.created_at == self.created[key]
        else:
            if old is not None:
                self.stale.append(old)
            assert p.created_at == self.now
            self.created[key] = self.now
        assert (p.key, p.worker, p.incarnation, p.revision) == (key, worker, inc,
                                                                WORKERS[worker])
        assert p.last_seen == self.now and p.expires_at == expires
        self.model[key] = (worker, inc, WORKERS[worker])

    @rule(key=st.sampled_from(KEYS))
    def end(self, key: str) -> None:
        p = self.t.end(key)
        if key in self.model:
            assert p is not None and p.key == key
            self.stale.append(p)
            del self.model[key]
        else:
            assert p is None
        assert self.t.get(key) is None

    @rule(key=st.sampled_from(KEYS))
    def touch(self, key: str) -> None:
        self.now += 1
        p = self.t.get(key)
        if p is not None:
            self.t.touch(p, self.now)
            assert p.last_seen == self.now

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def touch_stale(self, data: st.DataObject) -> None:
        """A request that finishes after its session ended touches a forgotten pin."""
        self.now += 1
        self.t.touch(data.draw(st.sampled_from(self.stale)), self.now)

    @rule()
    def flush(self) -> None:
        changed, removed = self.t.take_changes()
        assert not {p.key for p in changed} & set(removed)
        for p in changed:
            assert self.t.get(p.key) is p, "only live pins are written"
            self.store[p.key] = (p.worker, p.incarnation, p.revision)
        for k in removed:
            assert k not in self.model, "a live session must not be deleted from the store"
            self.store.pop(k, None)
        assert self.store == self.model
        assert self.t.take_changes() == ([], [])

    @invariant()
    def counts_match(self) -> None:
        assert len(self.t) == len(self.model)
        assert set(self.t.pins) == set(self.model)
        per_worker = Counter(w for w, _, _ in self.model.values())
        per_rev = Counter(r for _, _, r in self.model.values())
        assert self.t.per_worker == dict(per_worker)
        assert self.t.per_revision == dict(per_rev)
        for w in WORKERS:
            assert sorted(p.key for p in self.t.of_worker(w)) == sorted(
                k for k, v in self.model.items() if v[0] == w)
        for r in set(WORKERS.values()):
            assert sorted(p.key for p in self.t.of_revision(r)) == sorted(
                k for k, v in self.model.items() if v[2] == r)


TestSessionTable = SessionTableMachine.TestCase
TestSessionTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


pin_st = st.builds(
    lambda key, last, expires, active: Pin(key, "w", "i", "r", 0.0, last, expires, active),
    key=st.uuids().map(str), last=st.floats(0, 1000), active=st.integers(0, 2),
    expires=st.none() | st.floats(0, 1000))


@given(pins=st.lists(pin_st, max_size=20, unique_by=lambda p: p.key),
       now=st.floats(0, 2000), later=st.floats(0, 500), timeout=st.floats(0.5, 600))
def test_idle_sessions(pins: list[Pin], now: float, later: float, timeout: float) -> None:
    t = SessionTable()
    t.restore(pins)
    idle = {p.key for p in t.idle(now, timeout)}
    for p in pins:
        if p.active:
            assert p.key not in idle, "a session with a request or stream open is never idle"
        elif p.expires_at is not None:
            assert (p.key in idle) == (p.expires_at <= now), "explicit expiry decides"
        else:
            assert (p.key in idle) == (now - p.last_seen >= timeout)
    # Once idle, a session stays idle as time passes (nothing brings it back but a request).
    assert idle <= {p.key for p in t.idle(now + later, timeout)}
    # A request now makes it live again.
    for p in t.pins.values():
        t.touch(p, now)
    assert not [p for p in t.idle(now, timeout) if p.expires_at is None]


# -- Keys: the signed affinity cookie --------------------------------------------------

pin_keys = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
secret = st.binary(min_size=16, max_size=64)


@given(hash_key=secret, signing=secret, key=pin_keys)
def test_sign_verify_roundtrip(hash_key: bytes, signing: bytes, key: str) -> None:
    keys = Keys(hash_key, [signing])
    value = keys.sign(key)
    assert re.fullmatch(rb"[0-9a-f]{32}\.[A-Za-z0-9_\-]+", value), value
    assert keys.verify(value) == key


@given(signing=secret, key=pin_keys, data=st.data())
def test_tampered_cookie_is_no_pin(signing: bytes, key: str, data: st.DataObject) -> None:
    keys = Keys(b"h" * 32, [signing])
    value = bytearray(keys.sign(key))
    i = data.draw(st.integers(0, len(value) - 1), label="position")
    c = data.draw(st.sampled_from(b"0123456789abcdefABCDEF_-.x=;"), label="replacement")
    assume(value[i] != c)
    value[i] = c
    assert keys.verify(bytes(value)) is None


@given(mine=secret, theirs=secret, key=pin_keys)
def test_foreign_cookie_is_no_pin(mine: bytes, theirs: bytes, key: str) -> None:
    assume(mine != theirs)
    assert Keys(b"h" * 32, [mine]).verify(Keys(b"h" * 32, [theirs]).sign(key)) is None


@given(value=st.binary(max_size=200))
def test_verify_never_raises(value: bytes) -> None:
    keys = Keys(b"h" * 32, [b"s" * 32])
    got = keys.verify(value)
    if got is not None:  # only a value we signed ourselves verifies
        assert keys.sign(got) == value


@given(old=secret, new=secret, key=pin_keys)
def test_signing_key_rotation(old: bytes, new: bytes, key: str) -> None:
    assume(old != new)
    before = Keys(b"h" * 32, [old])
    during = Keys(b"h" * 32, [new, old])
    after = Keys(b"h" * 32, [new])
    old_cookie = before.sign(key)
    assert during.verify(old_cookie) == key, "cookies signed before a rotation stay valid"
    new_cookie = during.sign(key)
    assert new_cookie != old_cookie, "the first key signs"
    assert after.verify(new_cookie) == key
    assert before.verify(new_cookie) is None
    assert after.verify(old_cookie) is None, "a dropped key no longer verifies"


@given(h1=secret, h2=secret, sid=st.binary(min_size=1, max_size=64))
def test_session_key_is_opaque(h1: bytes, h2: bytes, sid: bytes) -> None:
    k = Keys(h1, [b"s"])
    key = k.session_key(b"app", sid)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == Keys(h1, [b"other"]).session_key(b"app", sid), "signing keys don't matter"
    assert key != k.session_key(b"sp", sid), "id spaces are kept apart"
    if h1 != h2:
        assert key != Keys(h2, [b"s"]).session_key(b"app", sid)
    assert Keys(h1, [b"s"]).verify(k.sign(key)) == key


def test_secret_file_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret.json"
    a = Keys.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b = Keys.load_or_create(path)
    key = Keys.new_key()
    assert b.verify(a.sign(key)) == key
    assert a.session_key(b"app", b"x") == b.session_key(b"app", b"x")
    data = json.loads(path.read_text())
    data["signing_keys"].insert(0, os.urandom(32).hex())  # rotate: a new key in front
    path.write_text(json.dumps(data))
    c = Keys.load_or_create(path)
    assert c.verify(a.sign(key)) == key
    assert c.sign(key) != a.sign(key)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="secret"):
        Keys.load_or_create(path)


# -- cookie parsing -------------------------------------------------------------------

cookie_names = st.text(alphabet="sidxa_-", min_size=1, max_size=4)
cookie_octets = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F)
                                         if chr(c) not in ' ",;\\'), max_size=24)


@given(pairs=st.lists(st.tuples(cookie_names, cookie_octets, st.booleans()), max_size=8),
       name=cookie_names, sep=st.sampled_from(["; ", ";"]))
def test_cookie_value_first_match(pairs: list[tuple[str, str, bool]], name: str,
                                  sep: str) -> None:
    header = sep.join(f"{n}={chr(34) + v + chr(34) if q else v}" for n, v, q in pairs)
    want = next((v for n, v, _ in pairs if n == name), None)
    got = cookie_value(header.encode() or None, name.encode())
    assert got == (want.encode() if want is not None else None), header


def test_cookie_value_edges() -> None:
    assert cookie_value(None, b"sid") is None
    assert cookie_value(b"", b"sid") is None
    assert cookie_value(b"xsid=1; sid=2", b"sid") == b"2"
    assert cookie_value(b"a=sid=1; sid=2", b"sid") == b"2"
    assert cookie_value(b"sidx=1", b"sid") is None
    assert cookie_value(b"sid=", b"sid") == b""


NOW = time.time()


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


@given(name=st.text(alphabet="abcsid_-", min_size=1, max_size=6),
       value=st.sampled_from(["", '""']) | cookie_octets,
       max_age=st.none() | st.integers(-100, 10**7),
       expires_in=st.none() | st.sampled_from([-1, 1]).flatmap(
           lambda sign: st.floats(2 * 86400, 20 * 365 * 86400).map(lambda d: sign * d)),
       extras=st.lists(st.sampled_from(["Path=/", "HttpOnly", "Secure", "SameSite=Lax",
                                        "Domain=example.org"]), max_size=3),
       upper=st.booleans(), data=st.data())
def test_parse_set_cookie(name: str, value: str, max_age: int | None,
                          expires_in: float | None, extras: list[str], upper: bool,
                          data: st.DataObject) -> None:
    # Max-Age wins over Expires (RFC 6265 5.3): only consistent pairs here, see below.
    assume(not (max_age is not None and expires_in is not None
                and (max_age <= 0) != (expires_in < 0)))
    attrs = list(extras)
    if max_age is not None:
        attrs.append(f"{'MAX-AGE' if upper else 'Max-Age'}={max_age}")
    if expires_in is not None:
        attrs.append(f"{'expires' if upper else 'Expires'}={_http_date(NOW + expires_in)}")
    attrs = data.draw(st.permutations(attrs))
    header = "; ".join([f"{name}={value}", *attrs]).encode()
    got_name, got_value, deleted = parse_set_cookie(header)
    assert got_name == name.encode() and got_value == value.encode()
    want = value in ("", '""') or (max_age is not None and max_age <= 0) or (
        expires_in is not None and expires_in < 0)
    assert deleted == want, header


@given(raw=st.binary(max_size=120))
def test_parse_set_cookie_never_raises(raw: bytes) -> None:
    _name, _, deleted = parse_set_cookie(raw)
    assert isinstance(deleted, bool)


def test_max_age_wins_over_expires() -> None:
    past = _http_date(NOW - 86400)
    assert parse_set_cookie(f"sid=abc; Max-Age=3600; Expires={past}".encode())[2] is False


def test_max_age_with_spaces_deletes() -> None:
    assert parse_set_cookie(b"sid=abc; Max-Age = 0; Path=/")[2] is True


# -- routing and lifecycle through a real Gateway with fake workers ---------------------


class FakeWorker(Worker):
    """A real Worker object with no process: ``ready`` at once, stopped at once."""

    async def stop(self) -> None:
        self._stopping = True
        if self.state not in ("stopped", "failed"):
            self._on(WorkerEvent.STOPPED)


_PORTS = itertools.count(20000)


class FakeSupervisor(Supervisor):
    """Starts FakeWorkers; ``fail_calls`` says, per call, whether its last worker fails."""

    fail_calls: list[bool]

    async def start_workers(self, rev: Any, count: int, standby: bool = False
                            ) -> list[Worker]:
        fail = self.fail_calls.pop(0) if self.fail_calls else False
        new = []
        for _ in range(count):
            w = FakeWorker(id=f"{rev.id}-{rev.next_index}", spec=rev.spec,
                           on_state=self.on_worker_state)
            rev.next_index += 1
            rev.workers.append(w)
            new.append(w)
            w.port, w.pid, w.incarnation = next(_PORTS), 0, uuid.uuid4().hex[:12]
            w._on(WorkerEvent.SPAWN)
        if fail:
            new[-1]._on(WorkerEvent.NEVER_READY)
            for w in new:
                await w.stop()
            raise RevisionFailed(rev.id, new[-1].id, "boom")
        for w in new:
            w.ready_at = time.monotonic()
            w._on(WorkerEvent.READY)
        return new


class NoIORouter(Router):
    """Routes to endpoints without connecting: the test plays the worker."""

    def dispatch(self, ex: Any, ep: Any) -> None:
        ex.worker = ep
        ep.inflight += 1

    async def _connect(self, ex: Any, ep: Any) -> None:
        self.connects = [*getattr(self, "connects", []), ep.id]


class Harness:
    """The real control plane (revisions, routing, session table) with fake workers."""

    def __init__(self, mode: str = "sessions", cookie: str = "sid", workers: int = 2,
                 strategy: str = "replace", max_sessions: int = 1_000_000,
                 **app: object) -> None:
        self.loop = asyncio.new_event_loop()
        # The app's folder: the first revision is a snapshot of it, under state/releases.
        self.home = Path(tempfile.mkdtemp(prefix="holdover-unit-"))
        cfg = from_dict({
            "gateway": {"access_log": "off", "state_dir": "state"},
            "app": {"command": "app {port}", "workers": workers, "mode": mode,
                    "health_path": "/healthz", "max_sessions": max_sessions, **app,
                    "session_cookie": cookie, "strategy": strategy}},
            path=self.home / "holdover.toml")
        gw = self.gw = Control(cfg, supervisor=FakeSupervisor, router=NoIORouter)
        gw.use_keys(Keys(b"h" * 32, [b"s" * 32]))
        gw.store = MemoryStore()
        self.fail_calls = []
        self.run(gw.store.open())
        self.run(gw.revs.start_first())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def tick(self) -> None:
        async def go() -> None:
            for _ in range(2):  # one tick stops idle workers, the next retires
                self.gw.revs.tick(time.monotonic())
                for _ in range(5):
                    await asyncio.sleep(0)
        self.run(go())

    def request(self, cookie: bytes | None = None, set_cookie: bytes | None = None
                ) -> tuple[Any, bytes]:
        """Route one request, let the worker answer (maybe with a Set-Cookie), finish it."""
        failed: list[int] = []
        conn = SimpleNamespace(cookie_cache=None, client_ip=b"127.0.0.1", current=None,
                               fail=lambda ex, status, **kw: failed.append(status))
        ex = Exchange(conn, time.monotonic())  # type: ignore[arg-type]
        ex.method, ex.url, ex.cookie = b"GET", b"/", cookie
        router = self.gw.router
        router.route(ex)
        assert ex.worker is not None, f"request not routed (failed={failed})"
        ex.status = 200
        worker = self.worker_of(ex.worker)
        if set_cookie is not None:
            router.on_set_cookie(ex, set_cookie)
        extra = router.response_extra_headers(ex) or b""
        router.exchange_done(ex)
        ex.worker = worker  # the test speaks of workers, the router of their endpoints
        return ex, extra

    @property
    def fail_calls(self) -> list[bool]:
        """Per start_workers call to come: does its last worker fail?"""
        return self.gw.supervisor.fail_calls  # type: ignore[attr-defined]

    @fail_calls.setter
    def fail_calls(self, value: list[bool]) -> None:
        self.gw.supervisor.fail_calls = value  # type: ignore[attr-defined]

    def worker_of(self, ep: Any) -> Worker:
        return next(w for w in self.gw.supervisor.all_workers() if w.id == ep.id)

    def balanced(self) -> set[str]:
        """Ids of the workers the balancer would give new sessions to."""
        return {ep.id for ep in self.gw.router.balancer.workers if ep.routable}

    def close(self) -> None:
        pending = asyncio.all_tasks(self.loop)
        if pending:  # events being recorded, workers being retired: let them finish
            self.run(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()
        shutil.rmtree(self.home, ignore_errors=True)


class RoutingMachine(RuleBasedStateMachine):
    """Sessions and deploys interleaved in any order keep SPEC's routing rules."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.gw = self.h.gw
        self.rm = self.gw.revs
        self.sessions: dict[bytes, Any] = {}  # sid -> worker it is pinned to
        self.lost: set[bytes] = set()
        self.n = 0

    def teardown(self) -> None:
        self.h.close()

    def _new_revision_ok(self, w: Any) -> None:
        allowed = {self.rm.active.id} | ({self.rm.canary.id} if self.rm.canary else set())
        assert w.spec.revision in allowed, (w.spec.revision, allowed)
        assert w.state == "ready"

    @rule()
    def new_session(self) -> None:
        self.n += 1
        sid = b"s%d" % self.n
        ex, _ = self.h.request(None, b"sid=" + sid + b"; Path=/; HttpOnly")
        self._new_revision_ok(ex.worker)
        self.sessions[sid] = ex.worker

    @rule()
    def anonymous_request(self) -> None:
        ex, extra = self.h.request(b"theme=dark")
        self._new_revision_ok(ex.worker)
        assert PIN_COOKIE not in extra, "with an app cookie, holdover pins nothing itself"

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def session_request(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.sessions)))
        ex, extra = self.h.request(b"theme=dark; sid=" + sid)
        w = self.sessions[sid]
        assert ex.worker is w, "rule 1: a pinned session goes to its worker"
        assert b"X-Holdover-Revision: " + w.spec.revision.encode() in extra
        assert b"X-Holdover-Latest: " + self.rm.active.id.encode() in extra

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.sessions)))
        ex, _ = self.h.request(b"sid=" + sid, b"sid=; Max-Age=0; Path=/")
        assert ex.worker is self.sessions.pop(sid)
        assert self.gw.sessions.get(self.gw.keys.session_key(b"app", sid)) is None

    @precondition(lambda self: self.lost)
    @rule(data=st.data())
    def lost_session_request(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.lost)))
        ex, _ = self.h.request(b"sid=" + sid)
        self._new_revision_ok(ex.worker)  # rule 5: a lost session starts anew

    @precondition(lambda self: self.rm.canary is None)
    @rule(canary=st.none() | st.floats(5, 95))
    def deploy(self, canary: float | None) -> None:
        old = self.rm.active
        res = self.h.run(self.rm.deploy(canary=canary))
        new = self.rm.revisions[res["revision"]]
        assert res["previous"] == old.id
        assert new.state == ("active" if canary is None else "canary")
        assert len(new.running()) == new.size
        if canary is None:
            assert self.rm.active is new and old.state == "draining"
        else:
            assert self.rm.canary is new and self.rm.active is old
            assert old.state == "active"

    @rule(canary=st.booleans())
    def failed_deploy(self, canary: bool) -> None:
        before = (self.rm.active, self.rm.canary, self.rm.active.state)
        self.h.fail_calls = [True]
        try:
            self.h.run(self.rm.deploy(canary=30.0 if canary else None))
        except DeployError as exc:
            if "canary" in str(exc) and "running" in str(exc):
                assert before[1] is not None  # refused before starting anything
                return
            assert exc.status == 422 and "unchanged" in str(exc)
        else:
            raise AssertionError("a deploy whose worker fails must be refused")
        finally:
            self.h.fail_calls = []
        assert (self.rm.active, self.rm.canary, self.rm.active.state) == before
        failed = list(self.rm.revisions.values())[-1]
        assert failed.state == "failed" and not failed.running()
        assert not {w.id for w in failed.workers} & self.h.balanced()

    @precondition(lambda self: self.rm.canary is not None)
    @rule()
    def promote(self) -> None:
        canary, old = self.rm.canary, self.rm.active
        self.h.run(self.rm.promote())
        assert self.rm.active is canary and self.rm.canary is None
        assert old.state == "draining" and canary.canary_percent == 0

    @rule()
    def promote_without_canary_refused(self) -> None:
        if self.rm.canary is not None:
            return
        with pytest.raises(DeployError, match="no canary"):
            self.h.run(self.rm.promote())

    @rule()
    def rollback(self) -> None:
        active, canary = self.rm.active, self.rm.canary
        prev = self.rm.previous()
        try:
            res = self.h.run(self.rm.rollback())
        except DeployError as exc:
            assert canary is None and prev is None and "nothing to roll back" in str(exc)
            assert self.rm.active is active
            return
        if canary is not None:
            assert res["aborted_canary"] == canary.id and self.rm.active is active
            assert canary.state == "draining" and self.rm.canary is None
        else:
            assert self.rm.active is prev and res["revision"] == prev.id
            assert active.state == "draining"
            assert prev.running(), "the revision rolled back to runs"

    @precondition(lambda self: any(w.state == "ready" for r in self.rm.revisions.values()
                                   for w in r.workers))
    @rule(data=st.data())
    def worker_restarts(self, data: st.DataObject) -> None:
        """A worker process dies and is restarted: its sessions' memory is gone."""
        ready = [w for r in self.rm.revisions.values() for w in r.workers
                 if w.state == "ready"]
        w = data.draw(st.sampled_from(ready))
        gone = {sid for sid, sw in self.sessions.items() if sw is w}
        lost_before = self.gw.sessions_lost
        w.incarnation = uuid.uuid4().hex[:12]

        async def restart() -> None:  # the supervisor reports from inside the loop
            for event in (WorkerEvent.EXITED, WorkerEvent.SPAWN, WorkerEvent.READY):
                w._on(event)
        self.h.run(restart())
        assert self.gw.sessions_lost == lost_before + len(gone), "rule 5: counted"
        for sid in gone:
            del self.sessions[sid]
        self.lost |= gone

    @rule()
    def tick(self) -> None:
        self.h.tick()
        for rev in self.rm.revisions.values():
            if rev.state == "draining":
                assert self.gw.sessions.per_revision.get(rev.id), \
                    f"draining revision {rev.id} has no session left but was not retired"

    @invariant()
    def pinned_sessions_keep_their_worker(self) -> None:
        assert self.gw.sessions.per_revision == dict(Counter(
            w.spec.revision for w in self.sessions.values()))
        for w in self.sessions.values():
            assert w.state == "ready", f"worker {w.id} holding a session was stopped"
            assert self.rm.revisions[w.spec.revision].state in ("active", "canary", "draining")
            ep = self.gw.router.endpoints[w.id]
            assert ep.ready and ep.incarnation == w.incarnation

    @invariant()
    def one_active(self) -> None:
        rm = self.rm
        assert rm.active is not None and rm.active.state == "active"
        actives = {r.id for r in rm.revisions.values() if r.state == "active"}
        assert actives == {rm.active.id}, "exactly one active revision"
        canaries = {r.id for r in rm.revisions.values() if r.state == "canary"}
        assert canaries == ({rm.canary.id} if rm.canary else set()), "a canary is its own state"
        for r in rm.revisions.values():
            if r.state in ("retired", "failed"):
                assert not r.running(), f"{r.state} revision {r.id} has running workers"
        st_ = json.loads(json.dumps(rm.status()))
        assert st_["active"] == rm.active.id
        for r in st_["revisions"]:
            assert set(r) >= {"id", "state", "sessions", "workers"}
            for w in r["workers"]:
                assert set(w) >= {"id", "pid", "port", "state"}


TestRouting = RoutingMachine.TestCase
TestRouting.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])


def test_canary_share_of_new_sessions() -> None:
    h = Harness(workers=1)
    try:
        h.run(h.gw.revs.deploy(revision="v2", canary=20.0))
        random.seed(1234)
        revs = Counter()
        for i in range(4000):
            ex, _ = h.request(None, b"sid=c%d" % i)
            revs[ex.worker.spec.revision] += 1
        assert 0.17 < revs["v2"] / 4000 < 0.23, revs
        # Each of those sessions stays where it started.
        for i in range(0, 4000, 97):
            key = h.gw.keys.session_key(b"app", b"c%d" % i)
            pin = h.gw.sessions.get(key)
            ex, _ = h.request(b"sid=c%d" % i)
            assert ex.worker.id == pin.worker
    finally:
        h.close()


def test_forged_pin_cookie_is_no_pin() -> None:
    """Without an app cookie holdover pins each client with its own signed cookie."""
    h = Harness(cookie="")
    try:
        ex, extra = h.request(None)
        m = re.search(rb"Set-Cookie: holdover_pin=([^;\r]+)", extra)
        assert m, extra
        value, home = m.group(1), ex.worker
        h.run(h.gw.revs.deploy(revision="v2"))
        ex, extra = h.request(b"holdover_pin=" + value)
        assert ex.worker is home and b"Set-Cookie" not in extra
        key = value.split(b".")[0]
        forged = [key + b".AAAAAAAAAAAAAAAA", key + b"." + value.split(b".")[1][::-1],
                  Keys(b"h" * 32, [b"other-gateway"]).sign(key.decode()), key, b"",
                  b"." * 40, value + b"x", b"x" + value]
        for f in forged:
            ex, extra = h.request(b"holdover_pin=" + f)
            assert ex.worker.spec.revision == "v2", f
            m2 = re.search(rb"Set-Cookie: holdover_pin=([^;\r]+)", extra)
            assert m2 and m2.group(1) != value, "a forged cookie gets a fresh pin"
        ex, _ = h.request(b"holdover_pin=" + value)
        assert ex.worker is home, "forgeries did not disturb the real session"
    finally:
        h.close()


def test_rollback_restores_the_revisions_worker_count() -> None:
    h = Harness(workers=2)
    try:
        h.request(None, b"sid=a")  # one session keeps one v1 worker running
        h.run(h.gw.revs.deploy(revision="v2"))
        h.tick()
        v1 = h.gw.revs.revisions["v1"]
        assert len(v1.running()) == 1 and v1.state == "draining"
        h.run(h.gw.revs.rollback())
        assert h.gw.revs.active is v1
        assert len(v1.running()) == v1.size == 2
    finally:
        h.close()


def test_failed_rolling_deploy_leaves_active_as_it_was() -> None:
    h = Harness(mode="stateless", cookie="", workers=2, strategy="rolling")
    try:
        v1 = h.gw.revs.active
        h.fail_calls = [False, True]  # v2-1 starts, v2-2 never becomes ready
        with pytest.raises(DeployError) as exc:
            h.run(h.gw.revs.deploy(revision="v2"))
        assert exc.value.status == 422
        v2 = h.gw.revs.revisions["v2"]
        assert v2.state == "failed"
        assert h.gw.revs.active is v1
        assert not v2.running(), "a failed revision's workers are stopped"
        assert h.balanced() == {w.id for w in v1.running()}
        assert len(v1.running()) == v1.size
    finally:
        h.close()


@given(ops=st.lists(st.sampled_from(["deploy", "rollback", "tick"]), max_size=12))
@settings(max_examples=40, deadline=None)
def test_stateless_requests_always_go_to_the_active_revision(ops: list[str]) -> None:
    h = Harness(mode="stateless", cookie="")
    try:
        for op in ops:
            if op == "deploy":
                h.run(h.gw.revs.deploy())
            elif op == "rollback":
                try:
                    h.run(h.gw.revs.rollback())
                except DeployError as exc:
                    assert "nothing to roll back" in str(exc)
            else:
                h.tick()
            for _ in range(4):
                ex, extra = h.request(b"sid=whatever")
                assert ex.worker.spec.revision == h.gw.revs.active.id
                assert extra == b"", "stateless mode adds no session headers"
            assert not h.gw.sessions.pins
    finally:
        h.close()


class AdoptingSupervisor(FakeSupervisor):
    """Adopts the workers a re-exec hands over as ready FakeWorkers."""

    async def adopt_workers(self, rev: Any, adopted: list[Any]) -> None:
        for wid, standby, info in adopted:
            w = FakeWorker(id=wid, spec=rev.spec, standby=standby,
                           on_state=self.on_worker_state)
            rev.workers.append(w)
            w.port, w.pid, w.incarnation = info.port, info.pid, info.incarnation
            w._on(WorkerEvent.READY)


def test_a_state_dir_of_the_previous_holdover_opens_with_its_canary_migrated() -> None:
    """Before canaries had their own state, a canary was saved as "active" beside the
    meta key ``canary``; a gateway reloading over such a store sees it as the canary."""
    from holdover.state import RevisionRecord

    cfg = from_dict({"gateway": {"access_log": "off", "state_dir": "state"},
                     "app": {"command": "app {port}", "workers": 1, "mode": "sessions",
                             "session_cookie": "sid"}},
                    path=Path("/nonexistent-holdover-unit/holdover.toml"))  # nothing starts
    ctl = Control(cfg, supervisor=AdoptingSupervisor, router=NoIORouter)
    ctl.use_keys(Keys(b"h" * 32, [b"s" * 32]))
    ctl.store = store = MemoryStore()
    ctl.supervisor.fail_calls = []  # type: ignore[attr-defined]

    async def go() -> None:
        await store.open()
        for rid, pct in (("v1", 0.0), ("v2", 25.0)):  # both "active", as it was written
            await store.put_revision(RevisionRecord(
                id=rid, state="active", command="app {port}", cwd=".", env={}, workers=1,
                created_at=1.0, release_dir=None, updated_at=1.0, canary_percent=pct))
        await store.set_meta("active", "v1")
        await store.set_meta("canary", "v2")
        inherit = {"workers": [
            {"id": f"{rid}-1", "revision": rid, "pid": 0, "port": 1000 + i,
             "incarnation": f"inc{i}", "standby": False, "log_fd": -1, "restarts": 0}
            for i, rid in enumerate(("v1", "v2"))]}
        await ctl.persist.restore(inherit)
        await ctl.save_revisions()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(go())
        rm = ctl.revs
        assert rm.active is rm.revisions["v1"] and rm.active.state == "active"
        assert rm.canary is rm.revisions["v2"] and rm.canary.state == "canary"
        saved = {r.id: r.state for r in loop.run_until_complete(store.list_revisions())}
        assert saved == {"v1": "active", "v2": "canary"}, "the store is migrated on save"
        assert ctl.router.canary_percent == 25.0
    finally:
        async def settle() -> None:
            await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not
                                   asyncio.current_task()), return_exceptions=True)
        loop.run_until_complete(settle())
        loop.close()


def test_rollback_goes_to_the_revision_active_before_this_one() -> None:
    """Activations are a stack: a rollback pops, so it never bounces back, and a failed
    deploy (never active) is never its target."""
    h = Harness(workers=1)
    try:
        rm = h.gw.revs
        h.run(rm.deploy(revision="v2"))
        assert rm.previous().id == "v1" and rm.status()["rollback_to"] == "v1"
        h.run(rm.rollback())
        assert rm.active.id == "v1"
        h.fail_calls = [True]
        with pytest.raises(DeployError):
            h.run(rm.deploy(revision="v3"))
        assert rm.previous() is None, "v2 was rolled back from; v3 never ran"
        with pytest.raises(DeployError, match="nothing to roll back to: no revision was "
                                              "active before v1"):
            h.run(rm.rollback())
        h.run(rm.deploy(revision="v4"))  # over v1
        assert rm.status()["rollback_to"] == "v1"
        h.run(rm.rollback())
        assert rm.active.id == "v1"
    finally:
        h.close()


def test_rollback_to_a_named_revision_even_a_retired_one() -> None:
    h = Harness(workers=1)
    try:
        rm = h.gw.revs
        h.run(rm.deploy(revision="v2"))
        h.run(rm.deploy(revision="v3"))
        h.tick()
        assert rm.revisions["v1"].state == "retired"  # no session kept it
        res = h.run(rm.rollback("v1"))
        assert res == {"revision": "v1", "previous": "v3"}
        assert rm.active.id == "v1" and rm.revisions["v1"].running()
        assert rm.previous().id == "v3", "a named rollback is pushed: the next one returns"
        for rid, why in (("v1", "already the active one"), ("nope", "no revision 'nope'")):
            with pytest.raises(DeployError, match=why):
                h.run(rm.rollback(rid))
    finally:
        h.close()


def test_health_checks_of_a_load_balancer_are_never_pinned() -> None:
    h = Harness(cookie="")  # holdover's own pin cookie for every client
    try:
        failed: list[int] = []
        for url in (b"/healthz", b"/healthz?probe=lb"):
            conn = SimpleNamespace(cookie_cache=None, client_ip=b"10.0.0.2", current=None,
                                   fail=lambda ex, status, **kw: failed.append(status))
            ex = Exchange(conn, time.monotonic())
            ex.method, ex.url = b"GET", url
            h.gw.router.route(ex)
            ex.status = 200
            assert not (h.gw.router.response_extra_headers(ex) or b"").count(PIN_COOKIE)
            h.gw.router.exchange_done(ex)
        assert len(h.gw.sessions) == 0 and not failed
        _, extra = h.request(None)  # any other path: offered its pin cookie as before
        assert PIN_COOKIE in extra and len(h.gw.sessions.offered) == 1
    finally:
        h.close()


def pin_of(extra: bytes) -> bytes:
    m = re.search(rb"Set-Cookie: holdover_pin=([^;\r]+)", extra)
    assert m, extra
    return m.group(1)


def test_junk_traffic_is_no_session_and_offers_are_bounded() -> None:
    """Clients that never come back with holdover's cookie make no session (issue:
    115,000 pins from 30 s of one client), and what they leave behind is bounded."""
    h = Harness(cookie="", max_sessions=50)
    try:
        for i in range(400):
            forged = b"holdover_pin=%d.AAAAAAAAAAAAAAAA" % i if i % 2 else None
            _, extra = h.request(forged)
            assert PIN_COOKIE in extra
        assert len(h.gw.sessions) == 0, "nobody came back: no session"
        assert h.gw.sessions.per_revision == {} and h.gw.sessions.per_worker == {}
        assert len(h.gw.sessions.offered) == 50, "offers are bounded, the oldest go first"
        # The v1 workers hold no session: a deploy retires v1 at once.
        h.run(h.gw.revs.deploy(revision="v2"))
        h.tick()
        assert h.gw.revs.revisions["v1"].state == "retired"
        h.gw.end_idle_sessions(time.monotonic() + 3600)
        assert not h.gw.sessions.offered, "offers nobody brought back expire"
    finally:
        h.close()


def test_a_client_that_comes_back_becomes_a_session_on_its_worker() -> None:
    h = Harness(cookie="")
    try:
        first, extra = h.request(None)
        value = pin_of(extra)
        again, extra2 = h.request(b"holdover_pin=" + value)
        assert again.worker is first.worker and b"Set-Cookie" not in extra2
        assert len(h.gw.sessions) == 1 and not h.gw.sessions.offered
        assert h.gw.sessions.per_worker == {first.worker.id: 1}
    finally:
        h.close()


def test_a_full_session_table_refuses_new_sessions_and_keeps_the_live_ones() -> None:
    h = Harness(max_sessions=3)
    try:
        homes = {}
        for i in range(3):
            ex, _ = h.request(None, b"sid=s%d; Path=/" % i)
            homes[i] = ex.worker
        ex, _ = h.request(None, b"sid=late; Path=/")
        assert len(h.gw.sessions) == 3 and h.gw.sessions.refused == 1
        assert h.gw.sessions.get(h.gw.keys.session_key(b"app", b"late")) is None
        for i, w in homes.items():
            ex, _ = h.request(b"sid=s%d" % i)
            assert ex.worker is w, "no live session is pushed out"
    finally:
        h.close()


def test_a_pinned_request_is_retried_only_on_its_own_worker() -> None:
    """Rule 1 over rule 7: a stale pooled connection to a session's worker is retried on
    a fresh connection to that worker, never on another one."""
    h = Harness(workers=2)
    try:
        ex, _ = h.request(None, b"sid=s1; Path=/")
        home = ex.worker
        failed: list[int] = []
        conn = SimpleNamespace(cookie_cache=None, client_ip=b"127.0.0.1", current=None,
                               fail=lambda ex, status, **kw: failed.append(status))
        ex = Exchange(conn, time.monotonic())
        ex.method, ex.url, ex.cookie = b"GET", b"/", b"sid=s1"
        router = h.gw.router
        router.route(ex)
        assert ex.worker.id == home.id and ex.pin is not None
        pin = ex.pin

        async def retried() -> bool:
            ok = router.retry(ex)
            await asyncio.sleep(0)
            return ok
        assert h.run(retried())
        assert ex.worker.id == home.id and ex.pin is pin, "same worker, same pin"
        assert router.connects == [home.id], "on a fresh connection"
        assert not router.retry(ex), "once only: then the client gets its 502"
    finally:
        h.close()


def test_a_revision_whose_standby_fails_leaves_no_worker_running() -> None:
    h = Harness(workers=2, standby=1)
    try:
        h.fail_calls = [False, True]  # its workers start, its hot standby does not
        with pytest.raises(DeployError):
            h.run(h.gw.revs.deploy(revision="v2"))
        v2 = h.gw.revs.revisions["v2"]
        assert v2.state == "failed" and not v2.running()
        assert h.gw.revs.active.id == "v1"
    finally:
        h.close()


def test_retention_never_forgets_the_rollback_target() -> None:
    h = Harness(workers=1, keep_retired=1)
    try:
        rm = h.gw.revs
        h.run(rm.deploy(revision="v2"))
        h.tick()
        h.run(rm.rollback())  # v1 again; v2 drains and retires
        h.tick()
        h.run(rm.deploy(revision="v3"))
        h.tick()
        for n in range(3):  # a bad release tried again and again
            h.fail_calls = [True]
            with pytest.raises(DeployError):
                h.run(rm.deploy(revision=f"bad{n}"))
        assert "v1" in rm.revisions and rm.previous().id == "v1"
        assert rm.status()["rollback_to"] == "v1"
        assert [r for r in rm.revisions if r.startswith("bad")] == ["bad2"]
        h.run(rm.rollback())
        assert rm.active.id == "v1"
    finally:
        h.close()


def test_an_operator_retires_only_a_draining_revision() -> None:
    h = Harness(workers=1)
    try:
        with pytest.raises(DeployError, match="v1 is active: cannot retire"):
            h.run(h.gw.revs.retire("v1"))
    finally:
        h.close()


def test_a_worker_planned_to_stop_is_kept_if_a_session_reached_it_meanwhile() -> None:
    """The drain plan picks idle workers; a client may come back to one before its stop
    runs (an offered pin promoted, a request): then it is not stopped."""
    h = Harness(workers=1)
    try:
        ex, _ = h.request(None, b"sid=s1; Path=/")
        w = ex.worker
        h.run(h.gw.revs.deploy(revision="v2"))
        assert h.gw.sessions.per_worker.get(w.id) == 1
        h.run(h.gw.revs._retire_worker(w, idle=True))  # planned while it looked idle
        assert w.state == "ready", "a worker that holds a session is never stopped"
        h.request(b"sid=s1", b"sid=; Max-Age=0; Path=/")  # logout: now it is idle
        h.run(h.gw.revs._retire_worker(w, idle=True))
        assert w.state == "stopped"
    finally:
        h.close()
