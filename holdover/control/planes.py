"""Several data-plane processes on one port, started and fed by the control process.

``PlaneSet`` starts ``[gateway] processes`` plane processes (``python -m holdover.plane``,
holdover/plane/) on the listening socket this process bound, and keeps each one's copy
of what routing needs: the routing table (after every change), the pin table (all of it
when a plane starts, then every change), and its answers to pin claims and lookups.
The protocol and its guarantees are docs/design.md's "Several processes"; in short:

- a claim (a response that pins or ends a session) is applied to the authoritative
  table, sent to every plane, and only then acknowledged — so the plane that holds the
  response releases it after every other plane can see the pin;
- every fifth of a second each plane is asked for its report (requests in flight and
  counters per worker, sessions seen, connections, its queue): the sums are what
  draining, status and /metrics read (holdover/control/shared.py);
- a worker that takes no new session and holds no pin is stopped only once every plane
  has answered a report request sent after that became true, with 0 requests to it;
- a plane that dies is started again; its connections are lost, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import sys
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..core.affinity import Keys
from ..plane import wire
from ..proxy.endpoint import Stats
from ..proxy.ports import Limits
from .shared import PlanesRouter, SharedTable, SummedConnections

if TYPE_CHECKING:
    from .facade import Control

log = logging.getLogger("holdover.planes")

SYNC_EVERY = 0.2  # seconds between report requests
COPY_CHUNK = 2000  # pins per message of a starting plane's copy of the table
START_TIMEOUT = 30.0
LOOKUP_TIMEOUT = 0.2  # a plane's wait for a pin it has to ask for
CLAIM_TIMEOUT = 1.0  # a plane's longest hold of a response waiting for its claim's ack
RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class PlaneFailed(Exception):
    """A plane process could not be started."""


class PlaneHandle:
    """One plane process as the control process sees it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.chan: wire.Channel | None = None
        self.pid = 0
        self.up: asyncio.Future[None] | None = None
        self.alive = False
        self.seq = -1  # the latest report request it answered
        self.report: dict[str, Any] = {}
        self.started_at = 0.0


class PlaneSet:
    """The plane processes of one gateway, and what they report, summed."""

    def __init__(self, ctl: Control, count: int) -> None:
        self.ctl = ctl
        self.count = count
        router = ctl.router
        assert isinstance(router, PlanesRouter) and isinstance(ctl.sessions, SharedTable)
        self.router: PlanesRouter = router
        self.table: SharedTable = ctl.sessions
        self.planes: list[PlaneHandle] = [PlaneHandle(i) for i in range(count)]
        self.listen_fds: list[int] = []
        self.hello: dict[str, Any] = {}
        self.closing = False
        self.restarts = 0
        self.table_version = 0
        self.next_seq = 1
        self.clean_at: dict[str, int] = {}  # worker -> first report request after it went idle
        self.gone_stats: dict[str, Stats] = {}  # counters of planes that died
        self.gone_counters: dict[str, int] = {}
        self._push_pending = False
        self._ops_pending = False
        self._deferred: list[tuple[PlaneHandle, list[int]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        router.planes = self
        self.table.on_change = self._ops_changed
        self.table.on_pinned = self._pinned
        ctl.connections = SummedConnections(self.connections)  # type: ignore[assignment]

    # -- start and stop ----------------------------------------------------------------

    def configure(self, listen: list[socket.socket], limits: Limits, keys: Keys,
                  tls: tuple[str, str] | None, access_log: str, cookie_attrs: bytes) -> None:
        """What every plane is told in its first message (the keys only ever there)."""
        c = self.ctl.config
        r = self.router
        self.listen_fds = [sock.fileno() for sock in listen]
        self.hello = {
            "limits": limits_to_wire(limits),
            "routing": {
                "sessions_mode": r.sessions_mode,
                "app_cookie": r.app_cookie.decode() if r.app_cookie else "",
                "pin_clients": r.pin_clients,
                "health_path": r.health_path.decode() if r.health_path else "",
                "cookie_attrs": cookie_attrs.decode(),
                "connect_timeout": c.gateway_connect_timeout,
                "queue_size": c.gateway_queue_size,
                "queue_timeout": c.gateway_queue_timeout,
                "upstream_keepalive": c.gateway_upstream_keepalive,
                "upstream_idle_timeout": c.gateway_upstream_idle_timeout,
                "lookup_timeout": LOOKUP_TIMEOUT,
                "claim_timeout": CLAIM_TIMEOUT,
            },
            "keys": keys.secrets(),
            "access_log": access_log,
            "access_log_format": c.gateway_access_log_format,
            "tls_cert": tls[0] if tls else "",
            "tls_key": tls[1] if tls else "",
            "log_format": c.gateway_log_format,
            "log_level": logging.getLogger().level,
        }

    async def start(self) -> None:
        """Start every plane; return when all of them accept connections."""
        self._loop = asyncio.get_running_loop()
        self.table.take_ops()  # each plane's copy starts from the table as it is now
        for h in self.planes:
            await self._spawn(h)
        try:
            for h in self.planes:
                assert h.up is not None
                await asyncio.wait_for(asyncio.shield(h.up), START_TIMEOUT)
        except (TimeoutError, PlaneFailed) as exc:
            raise PlaneFailed(f"a data-plane process did not start: {exc}") from None
        self._timer = self._loop.call_later(SYNC_EVERY, self._sync_tick)
        log.info("%d data-plane processes serve the public port (pids %s)", self.count,
                 ", ".join(str(h.pid) for h in self.planes))

    async def _spawn(self, h: PlaneHandle) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = wire.pair()
        listen = self.sockets_of(h.index)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "holdover.plane", ",".join(map(str, listen)),
                str(theirs.fileno()), str(h.index), pass_fds=(*listen, theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        h.proc = proc
        h.pid = proc.pid
        h.alive = True
        h.seq = -1
        h.report = {}
        h.started_at = monotonic()
        h.up = loop.create_future()
        h.chan = wire.Channel(mine, lambda m, h=h: self._message(h, m),
                              lambda h=h: self._channel_closed(h))
        h.chan.start()
        h.chan.send(["hello", self.hello])
        h.chan.send(["table", self.table_version, *self.router.table(),
                     self.router.protocol_seen])
        self._spawn_task(self._copy_pins(h), "plane-copy")
        self._spawn_task(self._watch(h, proc), "plane-watch")

    def sockets_of(self, index: int) -> list[int]:
        """The listening sockets plane ``index`` accepts on: its own of the group, or a
        share of those a reload handed over (one socket: every plane shares it)."""
        fds = self.listen_fds
        if len(fds) <= self.count:
            return [fds[index % len(fds)]]
        return [fd for i, fd in enumerate(fds) if i % self.count == index]

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = self.ctl.tasks.spawn(coro, name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy_pins(self, h: PlaneHandle) -> None:
        """The whole pin table for a starting plane, in chunks, then ``warm``.

        Each chunk is read when it is sent, and later changes follow it on the same
        channel, so the copy is current however long it takes."""
        table = self.table
        keys = list(table.pins) + list(table.offered)
        for i in range(0, len(keys), COPY_CHUNK):
            chunk = []
            for key in keys[i:i + COPY_CHUNK]:
                p = table.pins.get(key)
                if p is not None:
                    chunk.append(["+", key, p.worker, p.incarnation, p.revision])
                    continue
                p = table.offered.get(key)
                if p is not None:
                    chunk.append(["o", key, p.worker, p.incarnation, p.revision])
            if h.chan is None or h.chan.closed:
                return
            if chunk:
                h.chan.send(["ops", chunk])
            await asyncio.sleep(0)
        if h.chan is not None:
            h.chan.send(["warm"])

    async def _watch(self, h: PlaneHandle, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        if h.proc is not proc:
            return
        self._gone(h)
        if h.up is not None and not h.up.done():
            h.up.set_exception(PlaneFailed(f"plane {h.index} exited with {rc}"))
            h.up.exception()  # retrieved: start() reports it
        if self.closing:
            return
        log.warning("data-plane process %d (pid %d) exited with %s: starting it again; "
                    "its connections are lost", h.index, h.pid, rc)
        self.restarts += 1
        await self.ctl.record_event("plane-restart", f"data-plane process {h.index} (pid "
                                    f"{h.pid}) exited with {rc}; started again")
        recent = monotonic() - h.started_at < 10.0
        delay = RESTART_DELAYS[min(self.restarts - 1, len(RESTART_DELAYS) - 1)] if recent \
            else RESTART_DELAYS[0]
        await asyncio.sleep(delay)
        if not self.closing:
            await self._spawn(h)

    def _gone(self, h: PlaneHandle) -> None:
        """A plane ended: keep its counters (sums never go down), forget its load."""
        if not h.alive:
            return
        h.alive = False
        for wid, rec in h.report.get("stats", {}).items():
            _add_stats(self.gone_stats.setdefault(wid, Stats()), rec)
        for k, n in h.report.get("counters", {}).items():
            self.gone_counters[k] = self.gone_counters.get(k, 0) + n
        h.report = {}
        if h.chan is not None:
            h.chan.close()
        self._retry_deferred()

    def _channel_closed(self, h: PlaneHandle) -> None:
        if h.alive and h.proc is not None and h.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                h.proc.kill()  # a plane that hung up is of no use

    async def close(self, timeout: float) -> None:
        """Every plane stops accepting, finishes what is in flight (up to ``timeout``)."""
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_now()
        for h in self.planes:
            if h.alive and h.chan is not None:
                h.chan.send(["close", timeout])
                h.chan.flush()
        procs = [h.proc for h in self.planes if h.alive and h.proc is not None]
        if procs:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                               timeout=timeout + 5.0)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for h in self.planes:
            self._gone(h)

    def kill_all(self) -> None:
        for h in self.planes:
            if h.proc is not None and h.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()

    # -- what the planes send -------------------------------------------------------------

    def _message(self, h: PlaneHandle, msg: list[Any]) -> None:
        kind = msg[0]
        try:
            if kind == "report":
                self._report(h, msg[1], msg[2])
            elif kind == "claim":
                self._claims(h, msg[1])
            elif kind == "promote":
                key = msg[1]
                if self.table.promote(key, monotonic()) is None and key not in self.table.pins:
                    self.table.gone(key)  # the offer expired meanwhile: no plane keeps it
            elif kind == "lookup":
                self._lookup(h, msg[1], msg[2])
            elif kind == "lose":
                p = self.table.get(msg[1])
                if p is not None and p.worker == msg[2] and p.incarnation == msg[3]:
                    self.router._lose(p, msg[4])
            elif kind == "suspect":
                ep = self.router.endpoints.get(msg[1])
                if ep is not None:
                    self.router.suspect(ep)
            elif kind == "protocol":
                if not self.router.protocol_seen:
                    self.router.protocol_seen = True
                    self.table_changed()
            elif kind == "up":
                h.pid = int(msg[1])
                if h.up is not None and not h.up.done():
                    h.up.set_result(None)
            else:
                log.error("unknown message from data-plane process %d: %r", h.index, kind)
        except (IndexError, TypeError, ValueError, KeyError) as exc:
            log.error("malformed %r message from data-plane process %d: %s", kind, h.index,
                      exc)

    def _claims(self, h: PlaneHandle, batch: list[list[Any]]) -> None:
        """Apply pin changes, tell every plane, then release the held responses."""
        table = self.table
        now = monotonic()
        ids = []
        for cid, ops in batch:
            for op in ops:
                kind, key = op[0], op[1]
                if kind == "+":
                    max_age = op[5]
                    p = table.pin(key, op[2], op[3], op[4], now,
                                  now + max_age if max_age is not None else None)
                    if p is not None:
                        table.note(p)
                elif kind == "o":
                    table.offer(key, op[2], op[3], op[4], now)
                elif kind == "-":
                    table.end(key)
            ids.append(cid)
        self._flush_now()
        if any(o.alive and o.chan is not None and o.chan.pending_out for o in self.planes
               if o is not h):
            # Acknowledged only once every other plane's kernel buffer holds the change.
            self._deferred.append((h, ids))
            for o in self.planes:
                if o.chan is not None:
                    o.chan.on_drained = self._retry_deferred
            return
        assert h.chan is not None
        h.chan.send(["ack", ids])
        h.chan.flush()

    def _retry_deferred(self) -> None:
        if not self._deferred:
            return
        if any(o.alive and o.chan is not None and o.chan.pending_out for o in self.planes):
            return
        deferred, self._deferred = self._deferred, []
        for h, ids in deferred:
            if h.alive and h.chan is not None:
                h.chan.send(["ack", ids])
                h.chan.flush()

    def _lookup(self, h: PlaneHandle, lid: int, key: str) -> None:
        assert h.chan is not None
        p = self.table.pins.get(key)
        if p is not None:
            h.chan.send(["ops", [["+", key, p.worker, p.incarnation, p.revision]]])
        else:
            p = self.table.offered.get(key)
            if p is not None:
                h.chan.send(["ops", [["o", key, p.worker, p.incarnation, p.revision]]])
        h.chan.send(["found", lid])

    def _report(self, h: PlaneHandle, seq: int, rep: dict[str, Any]) -> None:
        if seq >= 0:
            h.seq = max(h.seq, seq)
        h.report = rep
        seen = rep.get("seen")
        if seen:
            table = self.table
            now = monotonic()
            for key in seen:
                p = table.pins.get(key)
                if p is not None:
                    table.touch(p, now)

    # -- what the planes are told ---------------------------------------------------------

    def table_changed(self) -> None:
        if not self._push_pending and self._loop is not None:
            self._push_pending = True
            self._loop.call_soon(self._push_table)

    def _push_table(self) -> None:
        if not self._push_pending:
            return
        self._push_pending = False
        self._flush_ops()  # pin changes first: a table may name workers they pin to
        self.table_version += 1
        msg = ["table", self.table_version, *self.router.table(), self.router.protocol_seen]
        for h in self.planes:
            if h.alive and h.chan is not None:
                h.chan.send(msg)
        for wid, ep in self.router.endpoints.items():
            if ep.routable:
                self.clean_at.pop(wid, None)

    def _ops_changed(self) -> None:
        if not self._ops_pending and self._loop is not None:
            self._ops_pending = True
            self._loop.call_soon(self._flush_ops)

    def _flush_ops(self) -> None:
        self._ops_pending = False
        ops = self.table.take_ops()
        if not ops:
            return
        msg = ["ops", ops]
        for h in self.planes:
            if h.alive and h.chan is not None:
                h.chan.send(msg)

    def _flush_now(self) -> None:
        """Everything decided so far, into every plane's channel now."""
        self._flush_ops()
        self._push_table()
        for h in self.planes:
            if h.alive and h.chan is not None:
                h.chan.flush()

    def _pinned(self, worker: str) -> None:
        self.clean_at.pop(worker, None)

    def _sync_tick(self) -> None:
        try:
            self.sync()
        except Exception:
            log.exception("asking the data planes for their reports failed")
        finally:
            if not self.closing and self._loop is not None:
                self._timer = self._loop.call_later(SYNC_EVERY, self._sync_tick)

    def sync(self) -> None:
        """Ask every plane for its report, after everything sent before."""
        self._flush_now()
        seq = self.next_seq
        self.next_seq += 1
        for wid, ep in self.router.endpoints.items():
            if self._idle(wid, ep) and wid not in self.clean_at:
                self.clean_at[wid] = seq
        for h in self.planes:
            if h.alive and h.chan is not None:
                h.chan.send(["sync", seq])

    # -- sums -------------------------------------------------------------------------

    def _live(self) -> list[PlaneHandle]:
        return [h for h in self.planes if h.alive]

    def _idle(self, wid: str, ep: Any) -> bool:
        """Takes no new session and holds no pin: only the planes' in-flight work keeps it."""
        return not ep.routable and not self.table.per_worker.get(wid)

    def inflight_of(self, wid: str) -> int:
        """Requests to ``wid`` in flight in every plane; 1 more while that is not certain.

        For a worker that takes no new session and holds no pin, the planes' reports
        count only once they answer a report request sent after that became true (every
        end of its sessions and every table without it were sent before)."""
        n = sum(h.report.get("inflight", {}).get(wid, 0) for h in self.planes if h.alive)
        ep = self.router.endpoints.get(wid)
        if ep is None or not self._idle(wid, ep):
            return n
        at = self.clean_at.get(wid)
        if at is None or self._push_pending or self._ops_pending:
            return n + 1
        return n if all(h.seq >= at for h in self._live()) else n + 1

    def stats_of(self, wid: str) -> Stats:
        out = Stats()
        gone = self.gone_stats.get(wid)
        if gone is not None:
            _add_stats(out, [gone.requests, gone.errors, gone.status_classes, gone.bytes_out,
                             gone.latency_counts, gone.latency_sum])
        for h in self.planes:
            if h.alive:
                rec = h.report.get("stats", {}).get(wid)
                if rec is not None:
                    _add_stats(out, rec)
        return out

    def connections(self) -> int:
        return sum(h.report.get("connections", 0) for h in self.planes if h.alive)

    def queued(self) -> int:
        return sum(h.report.get("queue", 0) for h in self.planes if h.alive)

    def counters(self) -> dict[str, int]:
        out = dict(self.gone_counters)
        for h in self.planes:
            if h.alive:
                for k, n in h.report.get("counters", {}).items():
                    out[k] = out.get(k, 0) + n
        return out

    def status(self) -> list[dict[str, Any]]:
        """Each plane: index, pid, whether it runs, its open connections."""
        return [{"index": h.index, "pid": h.pid, "alive": h.alive,
                 "connections": h.report.get("connections", 0) if h.alive else 0}
                for h in self.planes]


def limits_to_wire(limits: Limits) -> dict[str, Any]:
    """``Limits`` as JSON: bytes as Latin-1 text, networks as text (plane/process.py
    reads it back)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(limits):
        v = getattr(limits, f.name)
        if isinstance(v, bytes):
            v = v.decode("latin-1")
        elif f.name == "trusted":
            v = [str(n) for n in v]
        out[f.name] = v
    return out


def bind_group(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` listening sockets on one address, spread over by the kernel (SO_REUSEPORT).

    Port 0 is chosen by the kernel for the first and taken by the others."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(4096)
            port = s.getsockname()[1]
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _add_stats(s: Stats, rec: list[Any]) -> None:
    requests, errors, classes, nbytes, latency, latency_sum = rec
    s.requests += requests
    s.errors += errors
    s.status_classes = [a + b for a, b in zip(s.status_classes, classes, strict=False)]
    s.bytes_out += nbytes
    s.latency_counts = [a + b for a, b in zip(s.latency_counts, latency, strict=False)]
    s.latency_sum += latency_sum
