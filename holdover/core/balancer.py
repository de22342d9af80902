"""Choosing a worker for a request, and holding requests when no worker can take one.

Plain data structures with no I/O: the proxy asks ``pick`` for a worker, and parks a
request in ``WaitQueue`` when there is none; the supervisor calls ``WaitQueue.release``
whenever a worker becomes ready.  Decisions are returned as values so that they can be
tested exhaustively without sockets (see tests/unit/test_balancer.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class Routable(Protocol):
    """What the balancer needs to know of a worker."""

    routable: bool  # ready and in rotation
    standby: bool  # a hot standby gets traffic only when no ordinary worker is routable
    inflight: int  # requests (and open streams) being served right now


class Balancer:
    """Fewest requests in flight over routable workers; ties rotate.

    Hot-standby workers are considered only when no ordinary worker is routable, as
    Apache's ``+H`` does.
    """

    __slots__ = ("_turn", "workers")

    def __init__(self, workers: Sequence[Routable] = ()) -> None:
        self.workers: list[Routable] = list(workers)
        self._turn = 0

    def pick(self, exclude: Iterable[Routable] = ()) -> Routable | None:
        """The worker the next request should go to, or None when none can take it."""
        workers = self.workers
        n = len(workers)
        if not n:
            return None
        self._turn = start = (self._turn + 1) % n
        best = None
        best_standby = None
        for i in range(n):
            w = workers[(start + i) % n]
            if not w.routable or (exclude and w in exclude):
                continue
            if w.standby:
                if best_standby is None or w.inflight < best_standby.inflight:
                    best_standby = w
            elif best is None or w.inflight < best.inflight:
                best = w
        return best if best is not None else best_standby


class Waiter:
    """A request parked until a worker is ready: ``callback(worker)`` or ``expire()``."""

    __slots__ = ("callback", "deadline", "done", "expire")

    def __init__(self, callback: Callable[[Routable], None], expire: Callable[[], None],
                 deadline: float) -> None:
        self.callback = callback
        self.expire = expire
        self.deadline = deadline
        self.done = False

    def cancel(self) -> None:
        """Forget this waiter (its client went away)."""
        self.done = True


class WaitQueue:
    """A bounded FIFO of requests waiting for a worker, each with a deadline.

    Rule 6 (docs/design.md): when all workers are restarting, a request waits a bounded time in a
    bounded queue, then gets 503 with Retry-After (the caller's ``expire``).
    """

    __slots__ = ("_q", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._q: deque[Waiter] = deque()

    def __len__(self) -> int:
        return sum(1 for w in self._q if not w.done)

    def add(self, callback: Callable[[Routable], None], expire: Callable[[], None],
            deadline: float) -> Waiter | None:
        """Park a request; None when the queue is full (the caller answers 503 at once)."""
        if len(self._q) >= self.limit:
            self._compact()
            if len(self._q) >= self.limit:
                return None
        w = Waiter(callback, expire, deadline)
        self._q.append(w)
        return w

    def _compact(self) -> None:
        self._q = deque(w for w in self._q if not w.done)

    def release(self, balancer: Balancer) -> int:
        """Hand parked requests to workers while the balancer has one; returns how many."""
        n = 0
        q = self._q
        while q:
            w = q[0]
            if w.done:
                q.popleft()
                continue
            worker = balancer.pick()
            if worker is None:
                break
            q.popleft()
            w.done = True
            n += 1
            w.callback(worker)
        return n

    def expire(self, now: float) -> int:
        """Time out parked requests whose deadline passed; returns how many."""
        expired = []
        keep: deque[Waiter] = deque()
        for w in self._q:
            if w.done:
                continue
            if w.deadline <= now:
                w.done = True
                expired.append(w)
            else:
                keep.append(w)
        self._q = keep
        for w in expired:  # after the queue is consistent: an expiry may park another request
            w.expire()
        return len(expired)
