"""The cluster's operations lock on a real redis-server: renewal, and a lapsed lock.

An operation holds the store lock ``ops`` and renews it every third of its ttl.  When the
lock lapsed (the store was away for longer than the ttl) and another node took it, the
holder must stop renewing and say so loudly, naming that node: two cluster operations
may now overlap, and the operator has to look (control/clusterops.py, ``_renew``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest

from holdover.control import clusterops
from holdover.control.clusterops import LOCK, ClusterOps
from holdover.state import RedisStore

TTL = 2.0  # seconds: renewed every 0.67 s; a busy machine may stall the loop a while


def renewer(store: RedisStore) -> ClusterOps:
    """A ClusterOps with only what ``_renew`` uses: the control side's store."""
    ops = ClusterOps.__new__(ClusterOps)
    ops.ctl = SimpleNamespace(store=store)  # type: ignore[assignment]
    return ops


def test_renewal_keeps_the_lock_past_its_ttl(redis_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clusterops, "LOCK_TTL", TTL)
    owner = "node-a deploy 1a2b"

    async def main() -> None:
        async with RedisStore(redis_url) as store:
            assert await store.acquire(LOCK, owner, TTL) == owner
            renew = asyncio.ensure_future(renewer(store)._renew(owner))
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 2.5 * TTL:  # lapsed twice without renewal
                    assert await store.acquire(LOCK, "node-b rollback 9f", TTL) == owner
                    await asyncio.sleep(TTL / 4)
                assert not renew.done()
            finally:
                renew.cancel()
            await store.release(LOCK, owner)

    asyncio.run(main())


def test_a_lapsed_lock_taken_by_another_node_is_reported_and_not_fought_for(
        redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(clusterops, "LOCK_TTL", TTL)
    mine, theirs = "node-a deploy 1a2b", "node-b rollback 9f3c"

    async def main() -> None:
        async with RedisStore(redis_url) as store:
            assert await store.acquire(LOCK, mine, TTL) == mine
            # The lock lapses while node-a cannot reach the store (its renewals fail),
            # and node-b takes it: here node-a's hold ends and node-b's begins at once
            # (the shared redis-server of the tests is not stopped for one test).
            assert await store.release(LOCK, mine)
            assert await store.acquire(LOCK, theirs, TTL) == theirs
            renew = asyncio.ensure_future(renewer(store)._renew(mine))
            await asyncio.wait_for(renew, 5 * TTL)  # it gives up by itself
            assert await store.acquire(LOCK, "node-c drain 77", TTL) == theirs, \
                "node-a must not take the lock back from node-b"
            await store.release(LOCK, theirs)

    with caplog.at_level(logging.ERROR, logger="holdover.cluster"):
        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "lapsed during this deploy" in errors[0] and "node node-b holds it" in errors[0]
    assert "holdover status" in errors[0]

