"""Following the change feed: one failing handler must not stop this node following it.

The feed task is the only way a node learns of other nodes' operations; if it ended,
the node would serve on while ignoring every later deploy, with nothing but one log line.
"""

from __future__ import annotations

import asyncio
from typing import Any

from holdover.control.cluster import Cluster
from holdover.state import MemoryStore


async def wait_until(cond: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_failing_resync_handler_does_not_stop_the_feed() -> None:
    async def main() -> None:
        store = MemoryStore(feed_maxlen=2)
        await store.open()
        tasks: list[asyncio.Task[Any]] = []

        def spawn(coro: Any, name: str = "") -> asyncio.Task[Any]:
            tasks.append(asyncio.get_running_loop().create_task(coro, name=name))
            return tasks[-1]

        cluster = Cluster(store, "web-1", dict, spawn, heartbeat=0.05)
        resyncs: list[int] = []
        seen: list[str] = []

        def resync() -> None:
            resyncs.append(1)
            raise RuntimeError("cannot restore")

        cluster.on_resync(resync)
        cluster.on("op", lambda change: seen.append(change.data["n"]))

        async def lost_position() -> int:
            return 5  # a position the store no longer has: it lost its data

        store.feed_position = lost_position  # type: ignore[method-assign]
        await cluster.join()
        try:
            await wait_until(lambda: resyncs, 5.0)
            await store.publish_change("web-2", "op", {"n": "after"})
            await wait_until(lambda: seen == ["after"], 5.0)
        finally:
            await cluster.leave()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(main())
