"""Holdover's state store: what must survive a gateway restart.

Revisions (what runs, and which one is active), session pins (which worker holds each
session's memory) and events (deploys, crashes, lost sessions) are the gateway's memory.
If they lived only in the gateway process, restarting the gateway would forget every
pin and log every user out, which is the one thing holdover exists to prevent (SPEC,
"Operating it").  So they go through one interface, ``StateStore``, with an embedded
SQLite file in ``state_dir`` by default, an in-memory store for tests, and Redis for a
cluster of gateways serving one app (``SharedStore``, docs/cluster.md).

    store = open_store(state_dir / "state.db")   # or "sqlite:///PATH", "memory:",
    async with store:                            # "redis://10.0.0.9:6379/0" ...
        await store.put_pins(batch)

Every method is a coroutine and none blocks the event loop; every failure is a
StoreError whose message says what went wrong and where.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import (
    Change,
    ChangeBatch,
    Event,
    LiveNode,
    PinRecord,
    RevisionRecord,
    SharedStore,
    StateStore,
    StoreError,
)
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .url import is_redis_url, parse_redis_url

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "Change",
    "ChangeBatch",
    "Event",
    "LiveNode",
    "MemoryStore",
    "PinRecord",
    "RedisStore",
    "RevisionRecord",
    "SQLiteStore",
    "SharedStore",
    "StateStore",
    "StoreError",
    "check_store",
    "open_store",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def __getattr__(name: str) -> Any:
    # redis-py is imported only by a gateway that uses Redis (it costs start-up time)
    if name == "RedisStore":
        from .redis import RedisStore
        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url_or_path: str | os.PathLike[str], *,
               base_dir: str | os.PathLike[str] | None = None, node: str = "") -> StateStore:
    """The store named by the ``store`` setting (not yet opened).

    A file path or ``sqlite:///PATH`` is an SQLite file; ``memory:`` keeps state in this
    process; ``redis://``, ``rediss://`` and ``unix://`` URLs name a Redis shared by a
    cluster.  Relative paths (the file, and files the URL names) are relative to
    ``base_dir`` (the config file's folder), or the working directory without one.  As
    in SQLAlchemy, ``sqlite:///state.db`` is relative and ``sqlite:////var/x.db``
    absolute.  Anything else is refused with a StoreError naming it.  ``node`` names
    the cluster node whose pins a shared store saves and loads.
    """
    if not isinstance(url_or_path, str):
        return SQLiteStore(_under(url_or_path, base_dir))
    value = url_or_path
    if value == "memory:":
        return MemoryStore(node=node)
    if is_redis_url(value):
        from .redis import RedisStore
        return RedisStore(value, base_dir=base_dir, node=node)
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return SQLiteStore(_under(value[len("sqlite:///"):], base_dir))
    if not value.strip() or _SCHEME.match(value):
        raise StoreError(f"unsupported state store {value!r}: use a file path, "
                         "sqlite:///PATH, memory:, or a redis://, rediss:// or unix:// URL")
    return SQLiteStore(_under(value, base_dir))


def check_store(value: str) -> None:
    """Refuse (StoreError) a ``store`` setting that ``open_store`` could not open.

    Touches no file: files that a URL names are checked by ``url.check_files``.
    """
    if is_redis_url(value):
        parse_redis_url(value)
    elif value not in ("", "memory:"):
        open_store(value)


def _under(path: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(path)
    return path if base_dir is None or path.is_absolute() else Path(base_dir) / path
