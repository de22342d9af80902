"""``holdover demo --cluster``: the demo app on two nodes that share one Redis.

What a cluster looks like on one machine (docs/cluster.md): a local ``redis-server``
holds the shared state, two gateway nodes (``holdover run``, each its own process with
its own workers and state_dir) listen on 127.0.0.11 and 127.0.0.12, and a plain TCP
balancer on 127.0.0.1 hands each new connection to the next node in turn, with no
stickiness of its own — the part a real site's L4 load balancer or DNS plays.  The
balancer is the demo's only stand-in; everything behind it is the product.

``Nodes`` starts and stops all of it; the interactive demo and the cluster tour
(``demo/cluster_tour.py``) both use it.  Everything it starts is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..supervisor.worker import free_port
from .launch import CONFIG_NAME, fresh_state, holdover_prog, write_config

NODE_HOSTS = ("127.0.0.11", "127.0.0.12")
REDIS_MISSING = (
    "holdover demo --cluster needs redis-server, which is not installed (or not on PATH).\n"
    "  Debian/Ubuntu: sudo apt-get install redis-server\n"
    "  Fedora:        sudo dnf install redis\n"
    "  macOS:         brew install redis\n"
    "then run holdover demo --cluster again (the demo starts its own redis-server; nothing "
    "needs to be configured).")


class DemoFailed(Exception):
    """Something the cluster demo cannot go on without; the message says what."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Node:
    """One gateway node of the demo: its name, addresses and process."""

    name: str
    host: str
    config: Path
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    admin_url: str = ""
    token: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.config.parent / "state"


class Nodes:
    """redis-server, the gateway nodes and the balancer of one cluster demo."""

    def __init__(self, template: str, home: Path, port: int = 0, idle_timeout: str = "60s",
                 verbose: bool = False) -> None:
        self.template = template
        self.home = home
        self.port = port
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self.redis: asyncio.subprocess.Process | None = None
        self.redis_url = ""
        self.nodes: list[Node] = []
        self.balancer: asyncio.Server | None = None
        self.balancer_url = ""
        self._pipes: set[asyncio.Task[None]] = set()

    # -- redis-server ----------------------------------------------------------------

    async def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DemoFailed(REDIS_MISSING)
        folder = self.home / "redis"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        port = free_port("127.0.0.1")
        # No persistence: the demo's store lives as long as the demo.
        self.redis = await asyncio.create_subprocess_exec(
            binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log"),
            "--daemonize", "no", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                answer = await asyncio.wait_for(reader.readline(), 2)
                writer.close()
                if answer.startswith(b"+PONG"):
                    break
            except (OSError, TimeoutError):
                pass
            if self.redis.returncode is not None or time.monotonic() > deadline:
                raise DemoFailed(f"redis-server did not start (its log: {folder}/redis.log)")
            await asyncio.sleep(0.05)
        self.redis_url = f"redis://127.0.0.1:{port}/0?cluster=demo"

    # -- the nodes -------------------------------------------------------------------

    def _write_configs(self) -> None:
        secret = self.home / "cluster.secret"  # one file that both nodes share
        for i, host in enumerate(NODE_HOSTS, start=1):
            name = f"web-{i}"
            node_home = self.home / name
            busy = fresh_state(node_home)
            if busy:
                raise DemoFailed(busy)
            path = write_config(self.template, node_home, self.port, 0, self.idle_timeout)
            text = path.read_text().replace('"127.0.0.1:', f'"{host}:')
            text = text.replace("[gateway]\n", "[gateway]\n"
                                f'store = "{self.redis_url}"\n'
                                f'node = "{name}"\n'
                                f'advertise = "{host}"\n'
                                f'cluster_secret = "{secret}"\n', 1)
            path.write_text(text)
            self.nodes.append(Node(name, host, path))

    async def start_node(self, node: Node) -> None:
        node.log.clear()
        node.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "holdover", "run", "-c", str(node.config),
            cwd=node.config.parent, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        asyncio.get_running_loop().create_task(self._read_log(node))
        deadline = time.monotonic() + 40
        while True:
            m = re.search(r"serving (http://[\d.]+:\d+)/", "".join(node.log))
            if m:
                node.url = m.group(1)
                break
            if node.proc.returncode is not None or time.monotonic() > deadline:
                raise DemoFailed(f"node {node.name} did not start:\n"
                                 + "".join(node.log[-20:]))
            await asyncio.sleep(0.05)
        node.admin_url = (node.state / "admin.url").read_text().strip().rstrip("/")
        node.token = (node.state / "admin.token").read_text().strip()

    async def _read_log(self, node: Node) -> None:
        proc = node.proc
        assert proc is not None and proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            node.log.append(line)
            if len(node.log) > 2000:  # what start_node and a failure message read
                del node.log[:1000]
            if self.verbose:
                sys.stderr.write(f"  {node.name} | {line}")

    def kill_node(self, node: Node) -> None:
        """SIGKILL the node's gateway and its workers: a machine that died."""
        if node.proc is not None and node.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)

    # -- the balancer in front (the demo's stand-in for an L4 load balancer) ---------

    async def start_balancer(self) -> None:
        ring = itertools.cycle(self.nodes)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(len(self.nodes)):
                node = next(ring)
                host, port = node.url.removeprefix("http://").rsplit(":", 1)
                try:
                    up_r, up_w = await asyncio.open_connection(host, int(port))
                except OSError:
                    continue  # that node is down: the next one (what a health check does)
                await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
                return
            writer.close()

        port = self.port if self.port and _port_free("127.0.0.1", self.port) else 0
        self.balancer = await asyncio.start_server(accept, "127.0.0.1", port)
        self.balancer_url = f"http://127.0.0.1:{self.balancer.sockets[0].getsockname()[1]}"

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

    # -- all of it -------------------------------------------------------------------

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        await self.start_redis()
        self._write_configs()
        # One after the other: the first creates the cluster secret the second reads.
        for node in self.nodes:
            await self.start_node(node)
        await self.wait_joined()
        await self.start_balancer()

    async def wait_joined(self, timeout: float = 20.0) -> None:
        """Until every node lists every node (so each routes the others' sessions)."""
        import aiohttp

        names = {n.name for n in self.nodes}
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for node in self.nodes:
                while True:
                    async with http.get(f"{node.admin_url}/api/status", headers={
                            "Authorization": f"Bearer {node.token}"}) as resp:
                        seen = {n["name"] for n in (await resp.json()).get("nodes", [])}
                    if seen == names:
                        break
                    if time.monotonic() > deadline:
                        raise DemoFailed(f"node {node.name} sees {sorted(seen)}, not "
                                         f"{sorted(names)}")
                    await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.close()
        for node in self.nodes:
            if node.proc is not None and node.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    await asyncio.wait_for(node.proc.wait(), 20)
                except TimeoutError:
                    self.kill_node(node)
                    await node.proc.wait()
        if self.redis is not None and self.redis.returncode is None:
            self.redis.terminate()
            try:
                await asyncio.wait_for(self.redis.wait(), 10)
            except TimeoutError:
                self.redis.kill()
                await self.redis.wait()


def banner(nodes: Nodes) -> str:
    prog = holdover_prog()
    a, b = nodes.nodes
    cfg_a, cfg_b = (n.config for n in nodes.nodes)
    return f"""
  holdover demo --cluster: the notes app on two nodes that share one Redis.

  1. Open the app through the balancer (it sends each new connection to the next node,
     with no stickiness of its own) and log in; write a note:
       {nodes.balancer_url}/
     Every page says which node's worker answered: always the same one, whichever
     node the connection reached. Each node directly:
       {a.name}: {a.url}/        {b.name}: {b.url}/
  2. The admin pages (either shows the whole cluster):
       {a.name}: {a.admin_url}/#token={a.token}
       {b.name}: {b.admin_url}/#token={b.token}
  3. Deploy revision v2 on one node; both nodes start it, and it becomes active when it
     is ready on both:
       {prog} deploy -c {cfg_b} --revision v2 --from {_v2()}
  4. {prog} status -c {cfg_a}    lists both nodes' workers.

  Redis runs at {nodes.redis_url.split('?')[0]} (no persistence: the demo's store lives as
  long as the demo). Unattended version: {prog} demo --tour --cluster.  Ctrl-C stops it all.
"""


def _v2() -> Path:
    from . import RELEASES

    return RELEASES / "v2"


def run_cluster_demo(template: str, home: Path, port: int, idle_timeout: str,
                     verbose: bool = False) -> int:
    """``holdover demo --cluster``: start everything, say what to try, wait for Ctrl-C."""
    import uvloop

    async def main() -> int:
        nodes = Nodes(template, home, port, idle_timeout, verbose)
        try:
            print("holdover demo --cluster: starting redis-server and two nodes ...",
                  flush=True)
            await nodes.start()
            print(banner(nodes), flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            waits = [asyncio.ensure_future(n.proc.wait()) for n in nodes.nodes if n.proc]
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait([stopper, *waits],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, *waits):
                task.cancel()
            if stopper not in done:
                dead = [n.name for n in nodes.nodes if n.proc and n.proc.returncode is not None]
                print(f"holdover demo --cluster: node {', '.join(dead)} stopped; stopping "
                      "the demo", file=sys.stderr)
                return 1
            return 0
        except DemoFailed as exc:
            print(f"holdover demo --cluster: {exc}", file=sys.stderr)
            return 1
        finally:
            print("stopping the nodes and redis-server ...", file=sys.stderr, flush=True)
            await nodes.stop()

    return uvloop.run(main())


__all__ = ["CONFIG_NAME", "DemoFailed", "Node", "Nodes", "run_cluster_demo"]
