"""Property tests of ``holdover.core.balancer``: plain data, no sockets, no clock.

Workers are small dataclass fakes with the three attributes the balancer reads; they
compare by identity (``eq=False``) as the real ``Worker`` does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from holdover.core.balancer import Balancer, WaitQueue


@dataclass(eq=False)
class W:
    routable: bool = True
    standby: bool = False
    inflight: int = 0
    name: str = field(default="")

    def __repr__(self) -> str:
        return (f"W({self.name} r={self.routable:d} s={self.standby:d} "
                f"i={self.inflight})")


workers_st = st.lists(
    st.builds(W, routable=st.booleans(), standby=st.booleans(),
              inflight=st.integers(0, 5)),
    max_size=8,
).map(lambda ws: [W(w.routable, w.standby, w.inflight, f"w{i}") for i, w in enumerate(ws)])


def expected_candidates(workers: list[W], exclude: list[W] = ()) -> list[W]:
    """The workers ``pick`` may rightly return: least loaded of the best class."""
    ok = [w for w in workers if w.routable and not any(w is x for x in exclude)]
    ordinary = [w for w in ok if not w.standby]
    pool = ordinary or [w for w in ok if w.standby]
    if not pool:
        return []
    low = min(w.inflight for w in pool)
    return [w for w in pool if w.inflight == low]


# -- Balancer.pick -----------------------------------------------------------------------


@given(workers=workers_st, turns=st.integers(0, 20))
def test_pick_returns_least_loaded_routable(workers: list[W], turns: int) -> None:
    b = Balancer(workers)
    for _ in range(turns):  # wherever the rotation stands
        b.pick()
    got = b.pick()
    want = expected_candidates(workers)
    if not want:
        assert got is None
    else:
        assert any(got is w for w in want), (got, want)


@given(workers=workers_st, data=st.data())
def test_pick_respects_exclude(workers: list[W], data: st.DataObject) -> None:
    exclude = data.draw(st.lists(st.sampled_from(workers), unique_by=id) if workers
                        else st.just([]))
    b = Balancer(workers)
    got = b.pick(exclude=exclude)
    want = expected_candidates(workers, exclude)
    if not want:
        assert got is None
    else:
        assert any(got is w for w in want), (got, want)
        assert not any(got is x for x in exclude)


@given(workers=workers_st)
def test_standby_only_when_no_ordinary_worker_routable(workers: list[W]) -> None:
    b = Balancer(workers)
    for _ in range(2 * len(workers) + 1):
        got = b.pick()
        if any(w.routable and not w.standby for w in workers):
            assert got is not None and not got.standby
        elif any(w.routable for w in workers):
            assert got is not None and got.standby
        else:
            assert got is None


def test_standby_with_lower_load_is_not_preferred() -> None:
    busy = W(inflight=50, name="busy")
    idle_standby = W(standby=True, inflight=0, name="standby")
    b = Balancer([idle_standby, busy])
    assert all(b.pick() is busy for _ in range(5))
    busy.routable = False
    assert b.pick() is idle_standby


def test_empty_and_all_unroutable() -> None:
    assert Balancer().pick() is None
    ws = [W(routable=False), W(routable=False, standby=True)]
    assert Balancer(ws).pick() is None
    live = W()
    assert Balancer([live]).pick(exclude=[live]) is None


def test_exclude_is_by_identity_not_equality() -> None:
    # two workers with identical fields are still different workers
    a, b = W(name="x"), W(name="x")
    bal = Balancer([a, b])
    assert all(bal.pick(exclude=[a]) is b for _ in range(4))


@given(n=st.integers(1, 8), data=st.data())
def test_ties_spread_over_all_tied_workers(n: int, data: st.DataObject) -> None:
    workers = [W(routable=data.draw(st.booleans()), inflight=3, name=f"w{i}")
               for i in range(n)]
    # a few busier ones that must never be chosen while a tie at 3 exists
    workers += [W(inflight=4, name="busy")] * data.draw(st.integers(0, 2))
    tied = [w for w in workers if w.routable and w.inflight == 3]
    b = Balancer(workers)
    for _ in range(data.draw(st.integers(0, 10))):
        b.pick()
    seen = Counter(id(b.pick()) for _ in range(len(workers)))
    if not tied:
        busy = [w for w in workers if w.name == "busy"]
        assert set(seen) == ({id(busy[0])} if busy else {id(None)})
    else:
        # one full rotation of picks (load unchanged) reaches every tied worker
        assert set(seen) == {id(w) for w in tied}


@given(n=st.integers(2, 6), picks=st.integers(1, 60))
def test_equal_workers_share_load_evenly(n: int, picks: int) -> None:
    workers = [W(name=f"w{i}") for i in range(n)]
    b = Balancer(workers)
    for _ in range(picks):
        w = b.pick()
        assert w is not None
        w.inflight += 1
    loads = [w.inflight for w in workers]
    assert max(loads) - min(loads) <= 1
    assert sum(loads) == picks


@given(workers=workers_st, ops=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(
    ["pick", "finish", "flip"])), max_size=40))
def test_pick_stays_correct_as_load_changes(workers: list[W],
                                            ops: list[tuple[int, str]]) -> None:
    b = Balancer(workers)
    for i, op in ops:
        if op == "pick":
            got = b.pick()
            want = expected_candidates(workers)
            assert (got is None) if not want else any(got is w for w in want)
            if got is not None:
                got.inflight += 1
        elif workers:
            w = workers[i % len(workers)]
            if op == "finish" and w.inflight:
                w.inflight -= 1
            elif op == "flip":
                w.routable = not w.routable


# -- WaitQueue -----------------------------------------------------------------------------


class ListBalancer:
    """Hands out the given workers one per pick, then None (no worker left)."""

    def __init__(self, workers: list[object]) -> None:
        self.left = list(workers)
        self.picks = 0

    def pick(self) -> object | None:
        self.picks += 1
        return self.left.pop(0) if self.left else None


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, object]] = []

    def cb(self, i: int):
        return lambda worker: self.events.append(("run", i, worker))

    def ex(self, i: int):
        return lambda: self.events.append(("expire", i, None))


@given(limit=st.integers(0, 10), extra=st.integers(1, 5))
def test_queue_is_bounded(limit: int, extra: int) -> None:
    q = WaitQueue(limit)
    rec = Recorder()
    added = [q.add(rec.cb(i), rec.ex(i), 10.0) for i in range(limit + extra)]
    assert all(w is not None for w in added[:limit])
    assert all(w is None for w in added[limit:])
    assert len(q) == limit
    assert rec.events == []


@given(n=st.integers(0, 12), k=st.integers(0, 15))
def test_release_is_fifo_and_stops_without_worker(n: int, k: int) -> None:
    q = WaitQueue(100)
    rec = Recorder()
    for i in range(n):
        q.add(rec.cb(i), rec.ex(i), 10.0)
    workers = [W(name=f"w{j}") for j in range(k)]
    released = q.release(ListBalancer(workers))
    assert released == min(n, k)
    assert rec.events == [("run", i, workers[i]) for i in range(min(n, k))]
    assert len(q) == n - min(n, k)
    # the rest go next, still in order, and only once
    more = [W(name=f"m{j}") for j in range(n)]
    assert q.release(ListBalancer(more)) == n - min(n, k)
    assert [e[1] for e in rec.events] == list(range(n))
    assert len(q) == 0


def test_release_with_real_balancer() -> None:
    q = WaitQueue(10)
    got: list[tuple[int, W]] = []
    for i in range(3):
        q.add(lambda w, i=i: got.append((i, w)), lambda: None, 10.0)
    down = W(routable=False)
    bal = Balancer([down])
    assert q.release(bal) == 0
    assert got == [] and len(q) == 3
    down.routable = True
    assert q.release(bal) == 3
    assert got == [(0, down), (1, down), (2, down)]


def test_release_stops_when_worker_becomes_unroutable() -> None:
    only = W()
    bal = Balancer([only])
    q = WaitQueue(10)
    got: list[int] = []

    def take(i: int):
        def cb(w: W) -> None:
            got.append(i)
            w.routable = False  # e.g. the worker just died
        return cb

    for i in range(4):
        q.add(take(i), lambda: None, 10.0)
    assert q.release(bal) == 1
    assert got == [0]
    assert len(q) == 3


@given(deadlines=st.lists(st.floats(0, 100, allow_nan=False), max_size=15),
       now=st.floats(0, 100, allow_nan=False))
def test_expire_exactly_the_late_ones(deadlines: list[float], now: float) -> None:
    q = WaitQueue(100)
    rec = Recorder()
    for i, d in enumerate(deadlines):
        q.add(rec.cb(i), rec.ex(i), d)
    late = [i for i, d in enumerate(deadlines) if d <= now]
    assert q.expire(now) == len(late)
    assert rec.events == [("expire", i, None) for i in late]
    assert len(q) == len(deadlines) - len(late)
    # expiring again at the same time does nothing more; release sees only the others
    assert q.expire(now) == 0
    q.release(ListBalancer([W() for _ in deadlines]))
    ran = [e[1] for e in rec.events if e[0] == "run"]
    assert ran == [i for i, d in enumerate(deadlines) if d > now]
    assert Counter(e[1] for e in rec.events) == Counter(range(len(deadlines)))


def test_cancelled_waiters_are_skipped() -> None:
    q = WaitQueue(10)
    rec = Recorder()
    ws = [q.add(rec.cb(i), rec.ex(i), 5.0) for i in range(4)]
    ws[0].cancel()
    ws[2].cancel()
    assert len(q) == 2
    assert q.release(ListBalancer(["a", "b", "c"])) == 2
    assert rec.events == [("run", 1, "a"), ("run", 3, "b")]
    assert q.expire(100.0) == 0
    assert rec.events == [("run", 1, "a"), ("run", 3, "b")]


def test_cancelled_waiter_does_not_expire() -> None:
    q = WaitQueue(10)
    rec = Recorder()
    w = q.add(rec.cb(0), rec.ex(0), 1.0)
    q.add(rec.cb(1), rec.ex(1), 1.0)
    w.cancel()
    assert q.expire(2.0) == 1
    assert rec.events == [("expire", 1, None)]


@given(limit=st.integers(1, 8), cancel=st.data())
def test_cancelled_waiters_free_their_place(limit: int, cancel: st.DataObject) -> None:
    q = WaitQueue(limit)
    rec = Recorder()
    ws = [q.add(rec.cb(i), rec.ex(i), 5.0) for i in range(limit)]
    assert q.add(rec.cb(-1), rec.ex(-1), 5.0) is None  # full
    gone = cancel.draw(st.sets(st.integers(0, limit - 1), min_size=1))
    for i in gone:
        ws[i].cancel()
    for j in range(len(gone)):  # exactly as many new ones fit as were cancelled
        assert q.add(rec.cb(100 + j), rec.ex(100 + j), 5.0) is not None
    assert q.add(rec.cb(-2), rec.ex(-2), 5.0) is None
    assert len(q) == limit
    q.release(ListBalancer(list(range(2 * limit))))
    order = [e[1] for e in rec.events]
    assert order == [i for i in range(limit) if i not in gone] + [100 + j
                                                                  for j in range(len(gone))]


def test_expire_callback_that_parks_another_request_keeps_it() -> None:
    q = WaitQueue(2)
    rec = Recorder()
    parked: list[object] = []

    def expire_and_repark() -> None:
        rec.events.append(("expire", 0, None))
        parked.append(q.add(rec.cb(9), rec.ex(9), 50.0))

    q.add(rec.cb(0), expire_and_repark, 1.0)
    q.add(rec.cb(1), rec.ex(1), 50.0)
    assert q.expire(10.0) == 1
    assert parked[0] is not None  # the expired one freed its place
    assert len(q) == 2
    assert q.release(ListBalancer(["a", "b", "c"])) == 2
    assert rec.events == [("expire", 0, None), ("run", 1, "a"), ("run", 9, "b")]


@pytest.mark.parametrize("limit", [3, 100])
def test_release_callback_that_parks_another_request_keeps_it(limit: int) -> None:
    # limit 3: the add inside the callback finds the deque "full" of done waiters and
    # compacts it while release is walking it.
    q = WaitQueue(limit)
    rec = Recorder()
    added: list[object] = []

    def run_and_repark(worker: object) -> None:
        rec.events.append(("run", 0, worker))
        added.append(q.add(rec.cb(9), rec.ex(9), 50.0))

    q.add(run_and_repark, rec.ex(0), 50.0)
    q.add(rec.cb(1), rec.ex(1), 50.0)
    q.add(rec.cb(2), rec.ex(2), 50.0)
    q.release(ListBalancer(["a", "b", "c"]))
    assert added[0] is not None
    assert [e[:2] for e in rec.events] == [("run", 0), ("run", 1), ("run", 2)]
    assert len(q) == 1  # the re-parked request is still waiting, not lost
    q.release(ListBalancer(["d"]))
    assert rec.events[-1] == ("run", 9, "d")
    assert q.expire(1000.0) == 0  # released requests never expire afterwards


# -- a model-checked sequence of everything ------------------------------------------------


class QueueMachine(RuleBasedStateMachine):
    """WaitQueue against a list model: add, cancel, expire, release in any order."""

    waiters = Bundle("waiters")

    def __init__(self) -> None:
        super().__init__()
        self.limit = 5
        self.q = WaitQueue(self.limit)
        self.now = 0.0
        self.model: list[tuple[int, float]] = []  # live (id, deadline), FIFO
        self.calls: Counter[int] = Counter()
        self.next_id = 0
        self.ran: list[int] = []
        self.expired: list[int] = []

    @rule(target=waiters, ttl=st.integers(0, 5))
    def add(self, ttl: int):
        i = self.next_id
        self.next_id += 1
        deadline = self.now + ttl

        def cb(worker: object, i: int = i) -> None:
            self.calls[i] += 1
            self.ran.append(i)

        def ex(i: int = i) -> None:
            self.calls[i] += 1
            self.expired.append(i)

        w = self.q.add(cb, ex, deadline)
        if len(self.model) >= self.limit:
            assert w is None
            return None
        assert w is not None
        self.model.append((i, deadline))
        return (i, w)

    @rule(item=consumes(waiters))
    def cancel(self, item) -> None:
        if item is None:
            return
        i, w = item
        w.cancel()
        self.model = [(j, d) for j, d in self.model if j != i]

    @rule(dt=st.integers(0, 3))
    def tick_and_expire(self, dt: int) -> None:
        self.now += dt
        late = [j for j, d in self.model if d <= self.now]
        before = list(self.expired)
        assert self.q.expire(self.now) == len(late)
        assert self.expired[len(before):] == late
        self.model = [(j, d) for j, d in self.model if d > self.now]

    @rule(k=st.integers(0, 4))
    def release(self, k: int) -> None:
        before = len(self.ran)
        n = self.q.release(ListBalancer([object() for _ in range(k)]))
        want = [j for j, _ in self.model[:k]]
        assert n == len(want)
        assert self.ran[before:] == want
        self.model = self.model[k:]

    @invariant()
    def consistent(self) -> None:
        assert len(self.q) == len(self.model)
        assert all(c == 1 for c in self.calls.values())


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
