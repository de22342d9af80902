"""Holdover's state store: what must survive a gateway restart.

Revisions (what runs, and which one is active), session pins (which worker holds each
session's memory) and events (deploys, crashes, lost sessions) are the gateway's memory.
If they lived only in the gateway process, restarting the gateway would forget every
pin and log every user out, which is the one thing holdover exists to prevent (SPEC,
"Operating it").  So they go through one interface, ``StateStore``, with an embedded
SQLite file in ``state_dir`` by default, an in-memory store for tests, and room for a
shared backend (several gateways serving one app) later.

    store = open_store(state_dir / "state.db")   # or "sqlite:///PATH", or "memory:"
    async with store:                            # open() ... close()
        await store.put_pins(batch)

Every method is a coroutine and none blocks the event loop; every failure is a
StoreError whose message says what went wrong and where.
"""

from __future__ import annotations

import os
import re

from .base import Event, PinRecord, RevisionRecord, StateStore, StoreError
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "Event",
    "MemoryStore",
    "PinRecord",
    "RevisionRecord",
    "SQLiteStore",
    "StateStore",
    "StoreError",
    "open_store",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def open_store(url_or_path: str | os.PathLike[str]) -> StateStore:
    """The store named by a file path, ``sqlite:///PATH`` or ``memory:`` (not yet opened).

    As in SQLAlchemy, ``sqlite:///state.db`` is relative and ``sqlite:////var/x.db`` is
    absolute.  Anything else that looks like a URL is refused with a StoreError.
    """
    if not isinstance(url_or_path, str):
        return SQLiteStore(url_or_path)
    value = url_or_path
    if value == "memory:":
        return MemoryStore()
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return SQLiteStore(value[len("sqlite:///"):])
    if not value.strip() or _SCHEME.match(value):
        raise StoreError(f"unsupported state store {value!r}: use a file path, "
                         "sqlite:///PATH or memory:")
    return SQLiteStore(value)
