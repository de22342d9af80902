"""The cluster demo keeps a bounded tail of each node's log.

A node's stderr is read for as long as the node runs (its start is found there, and a
failure shows its last lines); a node that logs for hours must not grow the demo's
memory without end, and the newest lines must be the ones kept.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from holdover.demo.cluster import Node, Nodes


def test_a_node_log_keeps_its_newest_lines_within_bounds(tmp_path: Path) -> None:
    lines = 5000

    async def main() -> Node:
        nodes = Nodes("", tmp_path)
        node = Node("n1", "127.0.0.1", tmp_path / "unused.toml")
        stderr = asyncio.StreamReader()  # what the node's process writes, fed here
        node.proc = SimpleNamespace(stderr=stderr)  # type: ignore[assignment]
        reading = asyncio.ensure_future(nodes._read_log(node))
        for i in range(lines):
            stderr.feed_data(f"line {i}\n".encode())
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the reader run as the lines come
        stderr.feed_eof()
        await asyncio.wait_for(reading, 30)
        return node

    node = asyncio.run(main())
    assert 1000 <= len(node.log) <= 2000, len(node.log)
    assert node.log[-1] == f"line {lines - 1}\n"
    numbers = [int(line.split()[1]) for line in node.log]
    assert numbers == list(range(lines - len(node.log), lines)), "a contiguous newest tail"
