"""The shared state store: Redis, so that the nodes of a cluster agree on one state.

Several gateway nodes serving one app must share revisions, pins and events, and know who
else is alive (docs/cluster.md).  Redis is an existing, well-understood engine for this;
redis-py's asyncio client (with hiredis) talks to it.  This backend passes the same
contract suite as SQLite and memory, and adds what only a shared store needs
(``SharedStore``): heartbeats, a change feed, and pins claimed atomically.

Every key lives under ``holdover:{CLUSTER}:`` (``cluster`` in the URL), so several apps can
share one Redis.  Updates of several keys are one Lua script each (``redis_scripts``);
single commands are atomic by themselves.  Calls are served one at a time in the order
they were made, like the SQLite store's: a pin saved and then deleted is never deleted
first.  Every call, its wait for the previous ones included, is bounded by the URL's
``timeout``, so a gateway never waits long on a lost Redis; every failure (refused,
timed out, read-only replica, wrong password ...) is a StoreError naming the URL,
never the password.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import redis_scripts as lua
from .base import (
    MAX_FEED_WAIT,
    Change,
    ChangeBatch,
    Event,
    LiveNode,
    PinEnd,
    PinRecord,
    PinTouch,
    RevisionRecord,
    SharedStore,
    StoreError,
    check_feed_args,
    check_limits,
    check_meta_value,
    check_ttl,
    dump_json,
)
from .url import RedisURL, check_file, parse_redis_url, read_secret, resolve

LAYOUT_VERSION = 1
"""Version of the key layout below; a Redis written by a newer holdover is refused."""

T = TypeVar("T")
_SCAN_COUNT = 2000
_DAMAGED = (ValueError, TypeError, KeyError, IndexError, AttributeError)


class RedisStore(SharedStore):
    """The state store in a Redis server named by a ``redis://``, ``rediss://`` or
    ``unix://`` URL (see ``url.py`` for its forms and parameters).

    ``base_dir`` is where relative file names in the URL (password_file, ca_file ...)
    are found.  ``feed_maxlen`` is about how many changes the feed keeps (Redis trims
    it approximately, which is cheap); a consumer further behind is told it missed some.

    Every key is ``prefix`` (``holdover:{CLUSTER}:``) + a name: ``layout``, ``rev``,
    ``rev:order``, ``rev:seq``, ``pins``, ``ev``, ``ev:ids``, ``ev:k:KIND``, ``ev:seq``,
    ``meta``, ``nodes``, ``nodes:info``, ``feed``, ``feed:seq``, ``feed:start``,
    ``lock:NAME``, ``once:KEY`` (what each holds: docs/cluster.md, "Keys").  Opened for a
    ``node``, its pins are ``pins:NODE`` (the ``pins`` of a single gateway from before is
    renamed to it).
    """

    def __init__(self, url: str | RedisURL, *, base_dir: str | os.PathLike[str] | None = None,
                 feed_maxlen: int = 10_000, node: str = "", read_only: bool = False) -> None:
        # read_only: open changes nothing (no layout key made, no pins moved) and only
        # live_nodes may be called: what ``holdover check --store`` needs.
        self.read_only = read_only
        self.url = url if isinstance(url, RedisURL) else parse_redis_url(url)
        self.base_dir = base_dir
        self.feed_maxlen = feed_maxlen
        self.prefix = self.url.prefix
        self.node = node
        self._pins_key = self._key(f"pins:{node}" if node else "pins")
        self._where = f"state store {self.url.display}"
        self._password: str | None = None
        self._client: aioredis.Redis | None = None
        self._feed_client: aioredis.Redis | None = None  # blocking reads of the feed
        self._lock: asyncio.Lock | None = None
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.url.display!r})"

    def _key(self, name: str) -> str:
        return self.prefix + name

    # -- calls and their failures ------------------------------------------------------

    async def _call(self, action: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """``fn(client)`` after the calls made before it, within the timeout."""
        client, lock = self._client, self._lock
        if client is None or lock is None:
            raise StoreError(f"{self._where}: not open (call open() first)")
        try:
            async with asyncio.timeout(self.url.timeout):
                async with lock:
                    return await fn(client)
        except TimeoutError:
            raise self._timed_out(action) from None
        except rx.RedisError as e:
            raise self._error(action, e) from e

    async def _script(self, name: str, action: str, keys: Sequence[str],
                      args: Sequence[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            raise StoreError(f"{self._where}: not open (call open() first)")
        if self.read_only and name != "LIVE_NODES_READ":
            raise StoreError(f"{self._where}: opened to read only: cannot {action}")
        return await self._call(action, lambda client: script(keys=keys, args=args,
                                                              client=client))

    def _timed_out(self, action: str) -> StoreError:
        return StoreError(f"{self._where}: cannot {action}: no answer within "
                          f"{self.url.timeout:g}s (is Redis running and reachable?)")

    def _error(self, action: str, exc: rx.RedisError) -> StoreError:
        text = str(exc)
        if self._password:
            text = text.replace(self._password, "***")
        upper = text.upper()
        if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError) \
                or upper.startswith(("NOAUTH", "WRONGPASS", "INVALID PASSWORD")):
            why = ("authentication failed: Redis requires a password (in the URL or a "
                   "password_file)" if not self._password else
                   "authentication failed: check the password (or password_file) and user")
        elif isinstance(exc, rx.ReadOnlyError):
            why = "Redis is a read-only replica: the store must name the primary"
        elif isinstance(exc, rx.NoPermissionError) or "NOPERM" in upper \
                or "CAN'T RUN THIS COMMAND" in upper:
            why = f"the Redis user may not do this (ACL): {text}"
        elif isinstance(exc, rx.BusyLoadingError):
            why = "Redis is still loading its data set; try again shortly"
        elif isinstance(exc, rx.TimeoutError):
            return self._timed_out(action)
        elif isinstance(exc, rx.ConnectionError):
            why = f"cannot reach Redis: {text}"
        elif isinstance(exc, rx.OutOfMemoryError) or upper.startswith("OOM"):
            why = f"Redis is out of memory (maxmemory): {text}"
        else:
            why = f"Redis answered: {text}"
        return StoreError(f"{self._where}: cannot {action}: {why}")

    def _damaged(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"{self._where}: cannot {action}: stored data is damaged or was "
                          f"written by another program ({type(exc).__name__}: {exc})")

    # -- open and close ----------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        u = self.url
        files = {k: resolve(v, self.base_dir) for k, v in u.files().items()}
        password = u.password
        if "password_file" in files:
            password = read_secret(files["password_file"], "store password_file")
        for param in ("ca_file", "cert_file", "key_file"):
            if param in files:
                check_file(files[param], f"store {param}", secret=param == "key_file")
        options: dict[str, Any] = {
            "db": u.db, "username": u.username, "password": password,
            "socket_connect_timeout": u.timeout, "decode_responses": True,
            "protocol": 2,  # RESP2: any Redis since 2.x, and no HELLO round trip per connect
            # A stale pooled connection (Redis restarted) is retried once on a new one;
            # nothing else is retried, so a failure is reported within the timeout.
            "retry": Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
        }
        if u.scheme == "unix":
            options["unix_socket_path"] = u.socket_path
        else:
            options.update(host=u.host, port=u.port)
        if u.scheme == "rediss":
            options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                           ssl_ca_certs=str(files["ca_file"]) if "ca_file" in files else None,
                           ssl_certfile=str(files["cert_file"]) if "cert_file" in files else None,
                           ssl_keyfile=str(files["key_file"]) if "key_file" in files else None)
        client = aioredis.Redis(socket_timeout=u.timeout, **options)
        feed_client = aioredis.Redis(socket_timeout=u.timeout + MAX_FEED_WAIT, **options)
        self._password = password
        self._client, self._feed_client, self._lock = client, feed_client, asyncio.Lock()
        self._scripts = {name: client.register_script(getattr(lua, name)) for name in (
            "LAYOUT", "PUT_REVISION", "DELETE_REVISION", "LIST_REVISIONS", "ADD_EVENT",
            "READ_EVENTS", "PRUNE_EVENTS", "HEARTBEAT", "LIVE_NODES", "FORGET_NODE", "PUBLISH",
            "READ_CHANGES", "CLAIM_PIN", "TOUCH_PINS", "END_PINS", "ACQUIRE", "RELEASE",
            "LIVE_NODES_READ")}
        try:
            if self.read_only:
                found = await self._call("open", lambda c: c.get(self._key("layout")))
                if found is None:  # no holdover has used this cluster name yet
                    found = str(LAYOUT_VERSION)
            else:
                found = await self._script("LAYOUT", "open", [self._key("layout")],
                                           [str(LAYOUT_VERSION)])
            if found != str(LAYOUT_VERSION):
                newer = str(found).isdigit() and int(found) > LAYOUT_VERSION
                raise StoreError(
                    f"{self._where}: " + (
                        f"written by a newer holdover (layout version {found}; this "
                        f"holdover knows up to {LAYOUT_VERSION}): upgrade holdover or "
                        "use another cluster name" if newer else
                        f"key {self._key('layout')} holds {found!r}, not a holdover layout "
                        "version: choose another cluster name"))
            if self.node and not self.read_only:  # the pins of the one gateway before it
                await self._call("move the pins to this node's key", lambda c: _move_pins(
                    c, self._key("pins"), self._pins_key))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        clients = [c for c in (self._client, self._feed_client) if c is not None]
        self._client = self._feed_client = self._lock = None
        self._scripts = {}
        for client in clients:
            try:
                await client.aclose()
            except (rx.RedisError, OSError):
                pass  # the connection is gone already: nothing left to release

    # -- revisions ---------------------------------------------------------------------

    async def put_revision(self, rec: RevisionRecord) -> None:
        # check the JSON fields one by one first, so that the error names the one that failed
        dump_json(rec.env, self._where, f"revision {rec.id!r} env")
        dump_json(rec.meta, self._where, f"revision {rec.id!r} meta")
        dump_json(list(rec.upstreams), self._where, f"revision {rec.id!r} upstreams")
        body = dump_json(asdict(rec), self._where, f"revision {rec.id!r}")
        await self._script("PUT_REVISION", f"save revision {rec.id!r}",
                           [self._key("rev"), self._key("rev:order"), self._key("rev:seq")],
                           [rec.id, body])

    async def delete_revision(self, id: str) -> None:
        await self._script("DELETE_REVISION", f"forget revision {id!r}",
                           [self._key("rev"), self._key("rev:order")], [id])

    def _revision(self, action: str, text: str) -> RevisionRecord:
        try:
            return RevisionRecord(**json.loads(text))
        except _DAMAGED as e:
            raise self._damaged(action, e) from e

    async def get_revision(self, id: str) -> RevisionRecord | None:
        text = await self._call(f"read revision {id!r}",
                                lambda c: c.hget(self._key("rev"), id))
        return None if text is None else self._revision(f"read revision {id!r}", text)

    async def list_revisions(self) -> list[RevisionRecord]:
        bodies, order = await self._script(
            "LIST_REVISIONS", "read revisions", [self._key("rev"), self._key("rev:order")], [])
        try:
            seq = {order[i]: int(order[i + 1]) for i in range(0, len(order), 2)}
            found = [self._revision("read revisions", bodies[i + 1])
                     for i in range(0, len(bodies), 2)]
            return sorted(found, key=lambda r: (r.created_at, seq.get(r.id, math.inf)))
        except _DAMAGED as e:
            raise self._damaged("read revisions", e) from e

    # -- pins --------------------------------------------------------------------------

    def _pin_value(self, p: PinRecord) -> str:
        """``[worker, incarnation, revision, created_at]``, newline, ``last_seen expires_at``.

        The times that change are plain text after the newline, so the scripts update them
        without decoding (or re-encoding) the rest.
        """
        binding = dump_json([p.worker, p.incarnation, p.revision, p.created_at], self._where,
                            f"pin {p.key!r}")
        return f"{binding}\n{self._times(p.key, p.last_seen, p.expires_at)}"

    def _times(self, key: str, last_seen: float, expires_at: float | None) -> str:
        try:
            seen, expiry = float(last_seen), None if expires_at is None else float(expires_at)
        except (TypeError, ValueError):
            seen = expiry = math.nan
        if not math.isfinite(seen) or (expiry is not None and not math.isfinite(expiry)):
            raise StoreError(f"{self._where}: cannot store pin {key!r}: last_seen and "
                             f"expires_at must be finite numbers, got {last_seen!r}, "
                             f"{expires_at!r}")
        return f"{seen!r} {'-' if expiry is None else repr(expiry)}"

    def _pin(self, action: str, key: str, value: str) -> PinRecord:
        try:
            binding, _, times = value.partition("\n")
            worker, incarnation, revision, created_at = json.loads(binding)
            seen, expiry = times.split(" ")
            return PinRecord(key, worker, incarnation, revision, float(created_at),
                             float(seen), None if expiry == "-" else float(expiry))
        except _DAMAGED as e:
            raise self._damaged(action, e) from e

    async def put_pins(self, recs: Sequence[PinRecord]) -> None:
        mapping = {p.key: self._pin_value(p) for p in recs}
        if mapping:
            await self._call(f"save {len(mapping)} pins",
                             lambda c: c.hset(self._pins_key, mapping=mapping))

    async def delete_pins(self, keys: Sequence[str]) -> None:
        if keys:
            await self._call(f"delete {len(keys)} pins",
                             lambda c: c.hdel(self._pins_key, *keys))

    async def load_pins(self) -> list[PinRecord]:
        """Every pin, read in steps (HSCAN) so that a large table never stalls Redis."""
        found: dict[str, str] = {}
        cursor = 0
        while True:
            cursor, page = await self._call("read pins", lambda c, at=cursor: c.hscan(
                self._pins_key, at, count=_SCAN_COUNT))
            found.update(page)
            if cursor == 0:
                break
        return [self._pin("read pins", k, found[k]) for k in sorted(found)]

    async def get_pin(self, key: str) -> PinRecord | None:
        value = await self._call("read a pin", lambda c: c.hget(self._pins_key, key))
        return None if value is None else self._pin("read a pin", key, value)

    async def claim_pin(self, rec: PinRecord) -> PinRecord:
        held = await self._script("CLAIM_PIN", "claim a pin", [self._pins_key],
                                  [rec.key, self._pin_value(rec)])
        return rec if held is None else self._pin("claim a pin", rec.key, held)

    async def touch_pins(self, touches: Sequence[PinTouch]) -> list[str]:
        args: list[str] = []
        for key, incarnation, last_seen, expires_at in touches:
            args += [key, incarnation, *self._times(key, last_seen, expires_at).split(" ")]
        if not args:
            return []
        return await self._script("TOUCH_PINS", f"touch {len(touches)} pins",
                                  [self._pins_key], args)

    async def end_pins(self, ends: Sequence[PinEnd]) -> list[str]:
        args = [part for end in ends for part in end]
        if not args:
            return []
        return await self._script("END_PINS", f"end {len(ends)} pins", [self._pins_key],
                                  args)

    # -- events ------------------------------------------------------------------------

    async def add_event(self, kind: str, message: str, revision: str | None = None,
                        worker: str | None = None, data: dict[str, Any] | None = None) -> Event:
        text = dump_json(data or {}, self._where, f"event {kind!r} data")
        ts = time.time()
        body = dump_json([ts, kind, revision, worker, message, json.loads(text)], self._where,
                         f"event {kind!r}")
        event_id = await self._script(
            "ADD_EVENT", f"record event {kind!r}",
            [self._key("ev:seq"), self._key("ev"), self._key("ev:ids"),
             self._key(f"ev:k:{kind}")], [body])
        return Event(int(event_id), ts, kind, revision, worker, message, json.loads(text))

    async def events(self, limit: int = 100, after_id: int = 0,
                     kind: str | None = None) -> list[Event]:
        check_limits(limit, after_id)
        if limit == 0:
            return []
        ids_key = self._key("ev:ids" if kind is None else f"ev:k:{kind}")
        mode = "after" if after_id > 0 else "tail"
        ids, bodies = await self._script("READ_EVENTS", "read events", [ids_key, self._key("ev")],
                                         [mode, str(after_id), str(limit)])
        try:
            found = [Event(int(i), *json.loads(b)) for i, b in zip(ids, bodies, strict=True)
                     if b is not None]
        except _DAMAGED as e:
            raise self._damaged("read events", e) from e
        if mode == "tail":
            found.reverse()
        return found

    async def prune_events(self, keep: int) -> int:
        if keep < 0:
            raise ValueError(f"prune_events(): keep must be >= 0, got {keep}")
        return int(await self._script("PRUNE_EVENTS", "prune events",
                                      [self._key("ev:ids"), self._key("ev")],
                                      [str(keep), self._key("ev:k:")]))

    # -- small settings ----------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        return await self._call(f"read setting {key!r}",
                                lambda c: c.hget(self._key("meta"), key))

    async def set_meta(self, key: str, value: str) -> None:
        check_meta_value(key, value)
        await self._call(f"save setting {key!r}",
                         lambda c: c.hset(self._key("meta"), key, value))

    # -- nodes -------------------------------------------------------------------------

    async def heartbeat(self, node: str, info: dict[str, Any], ttl: float) -> None:
        check_ttl(ttl)
        text = dump_json(info, self._where, f"node {node!r} info")
        await self._script("HEARTBEAT", f"renew the heartbeat of node {node!r}",
                           [self._key("nodes"), self._key("nodes:info")],
                           [node, repr(float(ttl)), text])

    async def live_nodes(self) -> list[LiveNode]:
        flat = await self._script("LIVE_NODES_READ" if self.read_only else "LIVE_NODES",
                                  "read live nodes",
                                  [self._key("nodes"), self._key("nodes:info")], [])
        try:
            nodes = [LiveNode(flat[i], json.loads(flat[i + 2]), float(flat[i + 1]))
                     for i in range(0, len(flat), 3)]
        except _DAMAGED as e:
            raise self._damaged("read live nodes", e) from e
        return sorted(nodes, key=lambda n: n.name)

    async def forget_node(self, node: str) -> None:
        await self._script("FORGET_NODE", f"forget node {node!r}",
                           [self._key("nodes"), self._key("nodes:info")], [node])

    async def claim_once(self, key: str, ttl: float) -> bool:
        check_ttl(ttl)
        ms = max(1, int(ttl * 1000))
        return bool(await self._call(f"claim {key!r}", lambda c: c.set(
            self._key(f"once:{key}"), self.node or "-", nx=True, px=ms)))

    async def forget_pins_of(self, node: str) -> None:
        await self._call(f"forget the pins of node {node!r}",
                         lambda c: c.delete(self._key(f"pins:{node}")))

    # -- change feed (a Redis stream; docs/cluster.md says why not pub/sub) -------------

    def _feed_keys(self) -> list[str]:
        return [self._key("feed"), self._key("feed:seq"), self._key("feed:start")]

    async def publish_change(self, node: str, kind: str,
                             data: dict[str, Any] | None = None) -> Change:
        text = dump_json(data or {}, self._where, f"change {kind!r} data")
        ts = time.time()
        seq = await self._script("PUBLISH", f"publish change {kind!r}", self._feed_keys(),
                                 [str(self.feed_maxlen), repr(ts), node, kind, text])
        return Change(int(seq), ts, node, kind, json.loads(text))

    async def _read_batch(self, after: int, limit: int) -> ChangeBatch:
        missed, position, entries = await self._script(
            "READ_CHANGES", "read changes", self._feed_keys(), [str(after), str(limit)])
        try:
            if int(missed):
                return ChangeBatch([], int(position), missed=True)
            changes = [Change(int(entry_id.split("-")[0]), float(f["ts"]), f["node"],
                              f["kind"], json.loads(f["data"]))
                       for entry_id, f in ((e[0], _fields(e[1])) for e in entries)]
        except _DAMAGED as e:
            raise self._damaged("read changes", e) from e
        return ChangeBatch(changes, changes[-1].seq if changes else int(position))

    async def read_changes(self, after: int = 0, limit: int = 100,
                           wait: float = 0.0) -> ChangeBatch:
        check_feed_args(after, limit, wait)
        batch = await self._read_batch(after, limit)
        feed = self._feed_client
        if batch.changes or batch.missed or wait <= 0 or limit == 0 or feed is None:
            return batch
        try:  # on a connection of its own: the other calls go on meanwhile
            async with asyncio.timeout(wait + self.url.timeout):
                await feed.xread({self._key("feed"): f"{batch.position}-0"}, count=1,
                                 block=max(1, int(wait * 1000)))
        except TimeoutError:
            raise self._timed_out("wait for changes") from None
        except rx.RedisError as e:
            raise self._error("wait for changes", e) from e
        return await self._read_batch(batch.position, limit)

    async def feed_position(self) -> int:
        seq = await self._call("read the feed position",
                               lambda c: c.get(self._key("feed:seq")))
        return int(seq or 0)


    # -- locks -------------------------------------------------------------------------

    async def acquire(self, name: str, owner: str, ttl: float) -> str:
        check_ttl(ttl)
        return await self._script("ACQUIRE", f"take the lock {name!r}",
                                  [self._key(f"lock:{name}")],
                                  [owner, str(max(1, int(ttl * 1000)))])

    async def release(self, name: str, owner: str) -> bool:
        return bool(await self._script("RELEASE", f"release the lock {name!r}",
                                       [self._key(f"lock:{name}")], [owner]))


async def _move_pins(client: aioredis.Redis, old: str, new: str) -> None:
    if await client.exists(old) and not await client.exists(new):
        await client.renamenx(old, new)


def _fields(flat: Any) -> dict[str, str]:
    """A stream entry's fields: Lua hands them over as a flat list, redis-py as a dict."""
    if isinstance(flat, dict):
        return flat
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
