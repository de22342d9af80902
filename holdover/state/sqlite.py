"""The default state store: one SQLite file in ``state_dir``, so a restart forgets nothing.

SQLite needs no server and survives crashes (WAL journal; ``synchronous=NORMAL`` may lose
the last commits on power loss, never the file).  Its calls block on disk, so every call
runs on one dedicated thread that owns the connection, and coroutines await it through
``run_in_executor``: the event loop never waits for the disk, and calls run one at a time
in the order they were made.

The file is marked as holdover's with ``PRAGMA application_id`` and versioned with
``PRAGMA user_version``; a file that is not an SQLite database, belongs to another
application, or was written by a newer holdover is refused without being modified.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import (
    Event,
    PinRecord,
    RevisionRecord,
    StateStore,
    StoreError,
    check_limits,
    check_meta_value,
    dump_json,
)

APPLICATION_ID = 0x686F6C64  # "hold": marks the file as a holdover state database
SCHEMA_VERSION = 2
# What each older schema lacks, added in place when such a file is opened for writing.
_MIGRATIONS = {
    2: ("ALTER TABLE revisions ADD COLUMN kind TEXT NOT NULL DEFAULT 'supervised'",
        "ALTER TABLE revisions ADD COLUMN upstreams TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE revisions ADD COLUMN discover TEXT NOT NULL DEFAULT ''"),
}

_SCHEMA = (
    """CREATE TABLE revisions (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        command TEXT NOT NULL,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL,
        workers INTEGER NOT NULL,
        created_at REAL NOT NULL,
        release_dir TEXT,
        updated_at REAL NOT NULL,
        canary_percent REAL NOT NULL DEFAULT 0,
        meta TEXT NOT NULL DEFAULT '{}',
        kind TEXT NOT NULL DEFAULT 'supervised',
        upstreams TEXT NOT NULL DEFAULT '[]',
        discover TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE pins (
        key TEXT PRIMARY KEY,
        worker TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        revision TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        expires_at REAL
    ) WITHOUT ROWID""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        revision TEXT,
        worker TEXT,
        message TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX events_kind ON events (kind, id)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_TABLES = {"revisions", "pins", "events", "meta"}

_REVISION_COLUMNS = ("id, state, command, cwd, env, workers, created_at, release_dir, "
                     "updated_at, canary_percent, meta, kind, upstreams, discover")
# A read-only store over a version 1 file reads the columns it lacks as their defaults.
_REVISION_COLUMNS_V1 = _REVISION_COLUMNS.replace(
    "kind, upstreams, discover", "'supervised', '[]', ''")
_PUT_REVISION = (
    f"INSERT INTO revisions ({_REVISION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (id) DO UPDATE SET state=excluded.state, command=excluded.command, "
    "cwd=excluded.cwd, env=excluded.env, workers=excluded.workers, "
    "created_at=excluded.created_at, release_dir=excluded.release_dir, "
    "updated_at=excluded.updated_at, canary_percent=excluded.canary_percent, "
    "meta=excluded.meta, kind=excluded.kind, upstreams=excluded.upstreams, "
    "discover=excluded.discover"
)
_PUT_PIN = (
    "INSERT INTO pins (key, worker, incarnation, revision, created_at, last_seen, expires_at) "
    "VALUES (?,?,?,?,?,?,?) ON CONFLICT (key) DO UPDATE SET worker=excluded.worker, "
    "incarnation=excluded.incarnation, revision=excluded.revision, "
    "created_at=excluded.created_at, last_seen=excluded.last_seen, "
    "expires_at=excluded.expires_at"
)
_EVENT_COLUMNS = "id, ts, kind, revision, worker, message, data"

# Said after the error when it has a usual cause the operator can fix.
_HINTS = {
    "SQLITE_READONLY": "is the file or its directory read-only?",
    "SQLITE_FULL": "is the disk full?",
    "SQLITE_IOERR": "the disk failed to read or write: is it full or failing?",
    "SQLITE_BUSY": "another process holds the database locked",
    "SQLITE_CANTOPEN": "does the directory exist and is it writable?",
    "SQLITE_CORRUPT": "the file is damaged; restore it or move it away",
    "SQLITE_NOTADB": "the file is not an SQLite database",
}

T = TypeVar("T")


class SQLiteStore(StateStore):
    """The state store in one SQLite file at ``path``.

    The file and any directory created for it get modes 0600 and 0700 (SQLite gives its
    ``-wal`` and ``-shm`` files the database file's mode).  ``readonly=True`` opens an
    existing database without ever writing to it (e.g. for inspection); every write
    then raises StoreError.  ``busy_timeout`` is how long a call waits for another
    process's lock before failing.

    Calls are serialised on one thread in the order they were made; a call whose
    awaiting task is cancelled still completes (a write is not undone).
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 busy_timeout: float = 5.0) -> None:
        self.path = Path(path).absolute()  # error messages name it unambiguously
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._columns = _REVISION_COLUMNS  # what a revision row is read from (see open)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}{', readonly=True' if self.readonly else ''})"

    # -- running calls on the store's thread -------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread and wait for it without blocking."""
        executor = self._executor
        if executor is None:
            raise StoreError(f"state store {self.path}: not open (call open() first)")
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except RuntimeError as e:  # closed by another task between the check and now
            raise StoreError(f"state store {self.path}: closed") from e
        return await future

    def _error(self, action: str, exc: BaseException) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        hint = next((h for code, h in _HINTS.items() if name.startswith(code)), None)
        return StoreError(f"state store {self.path}: cannot {action}: {exc}"
                          + (f" ({hint})" if hint else ""))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {self.path}: not open (call open() first)")
        return self._conn

    def _write(self, action: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in one write transaction: all of it is stored, or nothing."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite rolled back by itself, or the next BEGIN will say why
                raise
        except sqlite3.Error as e:
            raise self._error(action, e) from e
        return result

    def _read(self, action: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            return fn(conn)
        except sqlite3.Error as e:
            raise self._error(action, e) from e
        except ValueError as e:  # a JSON column that does not decode: damaged by hand
            raise StoreError(f"state store {self.path}: cannot {action}: "
                             f"stored JSON is damaged ({e})") from e

    # -- open and close ----------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="holdover-state")
        # Set before awaiting: calls made while opening queue up behind the open.
        self._executor = executor
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            if self._executor is executor:
                self._executor = None
            executor.submit(self._close_sync)  # if cancelled, the open may still succeed
            executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        self._executor = None  # new calls fail now; queued ones run first
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as e:
                raise self._error("close", e) from e

    def _open_sync(self) -> None:
        path = self.path
        if self.readonly:
            if not path.is_file():
                raise StoreError(f"state store {path}: cannot open read-only: no such file")
        else:
            self._create_file()
        try:
            if self.readonly:
                conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, timeout=self.busy_timeout)
            else:
                conn = sqlite3.connect(path, isolation_level=None, timeout=self.busy_timeout)
        except sqlite3.Error as e:
            raise self._error("open", e) from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._check_schema(conn)
            if not self.readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            conn.close()
            raise self._error("open", e) from e
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _create_file(self) -> None:
        """Create missing directories (0700) and the database file (0600)."""
        path = self.path
        if path.is_dir():
            raise StoreError(f"state store {path}: is a directory, not a database file")
        try:
            missing = []
            parent = path.parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for directory in reversed(missing):
                try:
                    directory.mkdir(mode=0o700)
                except FileExistsError:
                    continue  # made by someone else meanwhile: not ours to chmod
                os.chmod(directory, 0o700)  # whatever the umask
            if not path.exists():
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    return
                try:
                    os.fchmod(fd, 0o600)
                finally:
                    os.close(fd)
        except OSError as e:
            raise StoreError(f"state store {path}: cannot create: {e.strerror or e}") from e

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Accept holdover's own database, create it in an empty file, refuse the rest."""
        for _ in range(2):
            app_id, version, tables = self._inspect(conn)
            if app_id == 0 and version == 0 and not tables:
                if self.readonly:
                    raise StoreError(f"state store {self.path}: the file is empty; "
                                     "a read-only store cannot create its tables")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._inspect(conn) != (0, 0, []):  # another process was quicker
                        conn.execute("ROLLBACK")
                        continue
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return
            break
        found = (f"application_id {app_id:#x}, user_version {version}, "
                 f"tables: {', '.join(tables) or 'none'}")
        if app_id != APPLICATION_ID:
            raise StoreError(f"state store {self.path}: not a holdover state database "
                             f"(an SQLite database of another application: {found}); "
                             "refusing to touch it: choose another state_dir")
        if version > SCHEMA_VERSION:
            raise StoreError(f"state store {self.path}: written by a newer holdover (schema "
                             f"version {version}; this holdover knows up to "
                             f"{SCHEMA_VERSION}): upgrade holdover or use another state_dir")
        if version < 1:
            raise StoreError(f"state store {self.path}: unknown schema version {version} "
                             f"({found})")
        missing = sorted(_TABLES - set(tables))
        if missing:
            raise StoreError(f"state store {self.path}: damaged holdover state database: "
                             f"missing tables {', '.join(missing)}")
        if version < SCHEMA_VERSION:
            self._migrate(conn, version)

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring a file of an older holdover up to this schema, all in one transaction."""
        if self.readonly:
            self._columns = _REVISION_COLUMNS_V1  # read as it is, with today's defaults
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found < SCHEMA_VERSION:  # not migrated by another process meanwhile
                for step in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _inspect(self, conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise StoreError(f"state store {self.path}: not a holdover state database "
                                 f"(not an SQLite database at all: {e})") from e
            raise
        return app_id, version, tables

    # -- revisions ---------------------------------------------------------------------

    async def put_revision(self, rec: RevisionRecord) -> None:
        where = f"state store {self.path}"
        row = (rec.id, rec.state, rec.command, rec.cwd,
               dump_json(rec.env, where, f"revision {rec.id!r} env"), rec.workers,
               rec.created_at, rec.release_dir, rec.updated_at, rec.canary_percent,
               dump_json(rec.meta, where, f"revision {rec.id!r} meta"), rec.kind,
               dump_json(list(rec.upstreams), where, f"revision {rec.id!r} upstreams"),
               rec.discover)
        await self._run(self._write, f"save revision {rec.id!r}",
                        lambda conn: conn.execute(_PUT_REVISION, row))

    async def delete_revision(self, id: str) -> None:
        await self._run(self._write, f"forget revision {id!r}",
                        lambda conn: conn.execute("DELETE FROM revisions WHERE id = ?", (id,)))

    @staticmethod
    def _revision(row: tuple[Any, ...]) -> RevisionRecord:
        (id_, state, command, cwd, env, workers, created_at, release_dir, updated_at,
         canary_percent, meta, kind, upstreams, discover) = row
        return RevisionRecord(id_, state, command, cwd, json.loads(env), workers, created_at,
                              release_dir, updated_at, canary_percent, json.loads(meta), kind,
                              json.loads(upstreams), discover)

    async def get_revision(self, id: str) -> RevisionRecord | None:
        def get(conn: sqlite3.Connection) -> RevisionRecord | None:
            row = conn.execute(f"SELECT {self._columns} FROM revisions WHERE id = ?",
                               (id,)).fetchone()
            return None if row is None else self._revision(row)

        return await self._run(self._read, f"read revision {id!r}", get)

    async def list_revisions(self) -> list[RevisionRecord]:
        def list_(conn: sqlite3.Connection) -> list[RevisionRecord]:
            rows = conn.execute(f"SELECT {self._columns} FROM revisions "
                                "ORDER BY created_at, rowid")
            return [self._revision(row) for row in rows]

        return await self._run(self._read, "read revisions", list_)

    # -- pins --------------------------------------------------------------------------

    async def put_pins(self, recs: Sequence[PinRecord]) -> None:
        rows = [(p.key, p.worker, p.incarnation, p.revision, p.created_at, p.last_seen,
                 p.expires_at) for p in recs]
        if rows:
            await self._run(self._write, f"save {len(rows)} pins",
                            lambda conn: conn.executemany(_PUT_PIN, rows))

    async def delete_pins(self, keys: Sequence[str]) -> None:
        rows = [(key,) for key in keys]
        if rows:
            await self._run(self._write, f"delete {len(rows)} pins",
                            lambda conn: conn.executemany("DELETE FROM pins WHERE key = ?",
                                                          rows))

    async def load_pins(self) -> list[PinRecord]:
        def load(conn: sqlite3.Connection) -> list[PinRecord]:
            rows = conn.execute("SELECT key, worker, incarnation, revision, created_at, "
                                "last_seen, expires_at FROM pins ORDER BY key")
            return [PinRecord(*row) for row in rows]

        return await self._run(self._read, "read pins", load)

    # -- events ------------------------------------------------------------------------

    async def add_event(self, kind: str, message: str, revision: str | None = None,
                        worker: str | None = None, data: dict[str, Any] | None = None) -> Event:
        text = dump_json(data or {}, f"state store {self.path}", f"event {kind!r} data")
        ts = time.time()

        def add(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("INSERT INTO events (ts, kind, revision, worker, message, "
                                  "data) VALUES (?,?,?,?,?,?)",
                                  (ts, kind, revision, worker, message, text))
            return cursor.lastrowid or 0

        event_id = await self._run(self._write, f"record event {kind!r}", add)
        return Event(event_id, ts, kind, revision, worker, message, json.loads(text))

    async def events(self, limit: int = 100, after_id: int = 0,
                     kind: str | None = None) -> list[Event]:
        check_limits(limit, after_id)
        if limit == 0:
            return []
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        if after_id > 0:
            where = f"{where} AND id > ?" if where else "WHERE id > ?"
            params.append(after_id)
            sql = f"SELECT {_EVENT_COLUMNS} FROM events {where} ORDER BY id LIMIT ?"
        else:
            sql = f"SELECT {_EVENT_COLUMNS} FROM events {where} ORDER BY id DESC LIMIT ?"
        params.append(limit)

        def read(conn: sqlite3.Connection) -> list[Event]:
            found = [Event(*row[:6], json.loads(row[6])) for row in conn.execute(sql, params)]
            if after_id == 0:
                found.reverse()
            return found

        return await self._run(self._read, "read events", read)

    async def prune_events(self, keep: int) -> int:
        if keep < 0:
            raise ValueError(f"prune_events(): keep must be >= 0, got {keep}")

        def prune(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("DELETE FROM events WHERE id <= (SELECT id FROM events "
                                  "ORDER BY id DESC LIMIT 1 OFFSET ?)", (keep,))
            return cursor.rowcount

        return await self._run(self._write, "prune events", prune)

    # -- small settings ----------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        def get(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else row[0]

        return await self._run(self._read, f"read setting {key!r}", get)

    async def set_meta(self, key: str, value: str) -> None:
        check_meta_value(key, value)
        await self._run(self._write, f"save setting {key!r}",
                        lambda conn: conn.execute(
                            "INSERT INTO meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (key, value)))
