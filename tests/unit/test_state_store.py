"""One contract for every state store backend, so a restart (or a backend swap) forgets nothing.

The contract (tests/storecontract.py) runs here against MemoryStore and SQLiteStore, and
in tests/e2e/test_state_store_redis.py against a real redis-server; the tests here are about what only a file can do
wrong (permissions, foreign files, read-only, full disk) and about the SQLite store never
blocking the event loop.  What only Redis can do wrong is in tests/test_redis_store.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
from storecontract import (  # noqa: F401 - the contract's tests, collected here
    Backend,
    pin,
    rev,
    run,
    test_closed_store_refuses_calls_and_reopen_keeps_everything,
    test_concurrent_calls_all_land_with_unique_increasing_ids,
    test_events_have_increasing_ids_and_filter_and_prune,
    test_meta,
    test_pins_upsert_delete_load_in_batches_of_10k,
    test_records_handed_out_are_independent_copies,
    test_revisions_say_who_runs_their_workers,
    test_revisions_upsert_get_and_list_in_creation_order,
    test_values_json_cannot_hold_are_refused_and_nothing_is_stored,
    with_store,
)

from holdover.state import (
    MemoryStore,
    RedisStore,
    RevisionRecord,
    SQLiteStore,
    StoreError,
    open_store,
)
from holdover.state.sqlite import APPLICATION_ID, SCHEMA_VERSION


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


def test_open_store_chooses_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    by_path = open_store(tmp_path / "a.db")
    assert isinstance(by_path, SQLiteStore) and by_path.path == tmp_path / "a.db"
    assert open_store(str(tmp_path / "b.db")).path == tmp_path / "b.db"
    assert open_store(f"sqlite:///{tmp_path}/c.db").path == tmp_path / "c.db"
    assert open_store("sqlite:///rel.db").path == Path.cwd() / "rel.db"
    # relative to the config file's folder when one is given
    assert open_store("sqlite:///rel.db", base_dir=tmp_path).path == tmp_path / "rel.db"
    assert open_store("sub/d.db", base_dir=tmp_path).path == tmp_path / "sub" / "d.db"
    assert open_store(f"{tmp_path}/e.db", base_dir="/elsewhere").path == tmp_path / "e.db"
    for url in ("redis://localhost/0", "rediss://10.0.0.9:6380/2", "unix:///run/redis.sock"):
        store = open_store(url)
        assert isinstance(store, RedisStore) and store.url.scheme == url.split(":")[0]
    for bad in ("postgres://db/holdover", "memory://x", "sqlite://", "sqlite:///", ""):
        with pytest.raises(StoreError) as info:
            open_store(bad)
        assert repr(bad) in str(info.value)
    with pytest.raises(StoreError, match="unknown parameter 'nope'"):
        open_store("redis://localhost/0?nope=1")


# -- SQLite only -----------------------------------------------------------------------


def test_sqlite_file_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "state.db"
    old = os.umask(0)  # even with a permissive umask
    try:
        async def main() -> None:
            async with SQLiteStore(path) as store:
                await store.put_pins([pin(1)])
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                wal = Path(f"{path}-wal")
                assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        run(main())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def make_filled(path: Path) -> None:
    async def main() -> None:
        async with SQLiteStore(path) as store:
            await store.put_revision(rev("v1", 1.0))
            await store.put_pins([pin(i) for i in range(10)])
            await store.add_event("deploy", "v1")
            await store.set_meta("k", "v")
    run(main())


def refused(path: Path, **kw: Any) -> str:
    """The StoreError message of opening ``path``, which must leave the file untouched."""
    before = path.read_bytes()
    store = SQLiteStore(path, **kw)
    with pytest.raises(StoreError) as info:
        run(store.open())
    assert path.read_bytes() == before
    with pytest.raises(StoreError, match="not open"):
        run(store.load_pins())
    message = str(info.value)
    assert str(path) in message
    assert "Traceback" not in message
    return message


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(os.urandom(8192))
    message = refused(path)
    assert "not a holdover state database" in message
    assert "not an SQLite database" in message


def test_sqlite_refuses_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    message = refused(path)
    assert "another application" in message and "users" in message
    assert "user_version 7" in message


def test_sqlite_refuses_a_newer_or_damaged_holdover_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_filled(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    message = refused(path)
    assert "newer holdover" in message and "99" in message

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("DROP TABLE pins")
    conn.commit()
    conn.close()
    assert "missing tables pins" in refused(path)


# The revisions table as the first holdover release wrote it (schema version 1).
_V1_REVISIONS = """CREATE TABLE revisions (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, command TEXT NOT NULL, cwd TEXT NOT NULL,
    env TEXT NOT NULL, workers INTEGER NOT NULL, created_at REAL NOT NULL, release_dir TEXT,
    updated_at REAL NOT NULL, canary_percent REAL NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}')"""


def make_v1(path: Path) -> None:
    """A state file of schema version 1 with one revision, written without holdover."""
    conn = sqlite3.connect(path)
    conn.execute(_V1_REVISIONS)
    conn.execute("CREATE TABLE pins (key TEXT PRIMARY KEY, worker TEXT NOT NULL, incarnation "
                 "TEXT NOT NULL, revision TEXT NOT NULL, created_at REAL NOT NULL, last_seen "
                 "REAL NOT NULL, expires_at REAL) WITHOUT ROWID")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
                 "kind TEXT NOT NULL, revision TEXT, worker TEXT, message TEXT NOT NULL, "
                 "data TEXT NOT NULL DEFAULT '{}')")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    conn.execute("INSERT INTO revisions VALUES ('v1', 'active', 'python app.py', '/srv', "
                 "'{\"A\":\"1\"}', 2, 10.0, NULL, 11.0, 0, '{}')")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_sqlite_reads_a_version_1_file_read_only_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_v1(path)
    before = path.read_bytes()

    async def main() -> RevisionRecord | None:
        async with SQLiteStore(path, readonly=True) as store:
            return await store.get_revision("v1")
    got = run(main())
    assert got is not None and got.kind == "supervised" and got.upstreams == ()
    assert got.env == {"A": "1"} and got.command == "python app.py"
    assert path.read_bytes() == before


def test_sqlite_migrates_a_version_1_file_and_keeps_its_revisions(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_v1(path)

    async def main() -> tuple[RevisionRecord | None, RevisionRecord | None]:
        async with SQLiteStore(path) as store:
            old = await store.get_revision("v1")
            await store.put_revision(rev("v2", 20.0, kind="external",
                                         upstreams=("http://10.1.0.5:8000",)))
        async with SQLiteStore(path) as store:
            return old, await store.get_revision("v2")
    old, new = run(main())
    assert old is not None and old.kind == "supervised" and old.discover == ""
    assert new is not None and new.kind == "external"
    assert new.upstreams == ("http://10.1.0.5:8000",)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()


def test_sqlite_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=f"{tmp_path}.*directory"):
        run(SQLiteStore(tmp_path).open())


async def writes_fail_reads_work(store: SQLiteStore) -> None:
    """Every write raises StoreError naming the file; every read still answers."""
    writes = [store.put_revision(rev("v2", 2.0)), store.put_pins([pin(99)]),
              store.delete_pins([pin(1).key]), store.add_event("deploy", "v2"),
              store.prune_events(keep=0), store.set_meta("k", "w")]
    for write in writes:
        with pytest.raises(StoreError) as info:
            await write
        assert str(store.path) in str(info.value)
        assert "readonly" in str(info.value)
    assert [r.id for r in await store.list_revisions()] == ["v1"]
    assert len(await store.load_pins()) == 10
    assert [e.message for e in await store.events()] == ["v1"]
    assert await store.get_meta("k") == "v"


def test_sqlite_read_only_mode_fails_writes_and_keeps_reads(tmp_path: Path) -> None:
    """Simulates a read-only file with SQLite's ``mode=ro`` (``readonly=True``).

    Tests run as root, for whom chmod 0400 does not stop writes; the next test does the
    real chmod when it can.
    """
    path = tmp_path / "state.db"
    make_filled(path)

    async def main() -> None:
        async with SQLiteStore(path, readonly=True) as store:
            await writes_fail_reads_work(store)
    run(main())
    with pytest.raises(StoreError, match="no such file"):
        run(SQLiteStore(tmp_path / "missing.db", readonly=True).open())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to 0400 files; see the test above")
def test_sqlite_chmod_0400_file_fails_writes_and_keeps_reads(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_filled(path)
    path.chmod(0o400)

    async def main() -> None:
        async with SQLiteStore(path) as store:
            await writes_fail_reads_work(store)
    run(main())


def test_sqlite_full_disk_fails_the_whole_batch_and_the_store_recovers(tmp_path: Path) -> None:
    """A real SQLITE_FULL, made by capping the file's size (``PRAGMA max_page_count``)."""
    path = tmp_path / "state.db"

    async def main() -> None:
        async with SQLiteStore(path) as store:
            first = [pin(i) for i in range(1000)]
            await store.put_pins(first)
            on_store_thread = store._run  # test hook: runs a function on the store's thread
            pages = await on_store_thread(
                lambda: store._conn.execute("PRAGMA page_count").fetchone()[0])
            await on_store_thread(lambda: store._conn.execute(f"PRAGMA max_page_count = {pages}"))

            more = [pin(i, worker="w2") for i in range(1000, 6000)]
            with pytest.raises(StoreError) as info:
                await store.put_pins(more)
            assert str(path) in str(info.value) and "full" in str(info.value)
            assert await store.load_pins() == sorted(first, key=lambda p: p.key)  # no part

            await on_store_thread(lambda: store._conn.execute("PRAGMA max_page_count = 1000000"))
            await store.put_pins(more)
            assert len(await store.load_pins()) == 6000
    run(main())


def test_sqlite_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def main() -> None:
        async with SQLiteStore(path) as a, SQLiteStore(path) as b:
            await a.put_pins([pin(1)])
            assert await b.load_pins() == [pin(1)]
            await b.set_meta("k", "from b")
            assert await a.get_meta("k") == "from b"
    run(main())


def test_sqlite_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """While 30,000 pins are written and read back, a 1 ms ticker keeps ticking (uvloop)."""
    loop_threads: set[int] = set()

    async def main() -> tuple[int, float, set[int]]:
        loop = asyncio.get_running_loop()
        ticks: list[float] = []

        def tick() -> None:
            ticks.append(time.perf_counter())
            handle[0] = loop.call_later(0.001, tick)

        handle = [loop.call_later(0.001, tick)]
        async with SQLiteStore(tmp_path / "state.db") as store:
            store_threads = {await store._run(threading.get_ident) for _ in range(3)}
            batches = [[pin(i) for i in range(b * 10_000, (b + 1) * 10_000)] for b in range(3)]
            deadline = time.monotonic() + 5
            while len(ticks) < 5 and time.monotonic() < deadline:  # the ticker is running
                await asyncio.sleep(0.001)
            start = time.perf_counter()
            n0 = len(ticks)
            for batch in batches:
                await store.put_pins(batch)
            assert len(await store.load_pins()) == 30_000
            busy = time.perf_counter() - start
            during = len(ticks) - n0
        handle[0].cancel()
        loop_threads.add(threading.get_ident())
        return during, busy, store_threads

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        during, busy, store_threads = runner.run(main())
    # one dedicated thread, not the loop's
    assert len(store_threads) == 1 and store_threads.isdisjoint(loop_threads)
    # a blocked loop ticks only between the awaits (a handful of times); a free one about
    # once per ms of work (a tenth of that leaves room for a slow, loaded machine)
    assert during >= max(10, busy * 1000 / 10), (during, busy)
