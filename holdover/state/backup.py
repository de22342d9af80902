"""``holdover backup``: a consistent copy of the state store, made while the gateway runs.

Copying ``state.db`` with ``cp`` while the gateway writes to it (and to its ``-wal``)
can give a torn file, and the ``sqlite3`` command-line tool is often not installed on a
server.  Python's own SQLite backup API reads one consistent snapshot of the database
(in WAL mode a reader never blocks the gateway's writes), so the copy is always a
database the gateway can start from.  The keys in ``secret.json`` go with it: without
them the stored session keys and every ``holdover_pin`` cookie mean nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .sqlite import APPLICATION_ID

SECRET_SUFFIX = ".secret.json"


class BackupError(Exception):
    """The backup could not be made; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    database: Path
    secret: Path | None  # None: the state_dir has no secret.json (yet)
    revisions: int
    pins: int
    events: int
    schema_version: int  # PRAGMA user_version of the copy (see sqlite.py)


def _owner_hint(path: Path) -> str:
    try:
        owner = pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return "run it as the user that runs the gateway"
    return f"run it as the user that runs the gateway: sudo -u {owner} holdover backup ..."


def _write_private(dest: Path, data: bytes | None = None) -> Path:
    """A new 0600 temporary file next to ``dest`` (filled with ``data``), for a rename."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        if data is not None:
            os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def backup(state_dir: Path, dest: Path) -> BackupResult:
    """Copy ``state_dir/state.db`` to ``dest`` and ``secret.json`` beside it (both 0600).

    Each file is written under a temporary name and renamed into place, so ``dest`` is
    either the old file or a complete new copy, never half of one."""
    src = state_dir / "state.db"
    try:
        readable = src.is_file() and os.access(src, os.R_OK)
    except PermissionError:  # state_dir is 0700: another user cannot even look inside
        raise BackupError(f"cannot read {src}: {_owner_hint(state_dir)}") from None
    if not src.exists():
        raise BackupError(f"no state database at {src}: has `holdover run` ever started "
                          f"with this configuration?")
    if not readable:
        raise BackupError(f"cannot read {src}: {_owner_hint(src)}")
    if dest.is_dir():
        raise BackupError(f"{dest} is a directory: name the file to write, e.g. "
                          f"{dest / 'holdover-state.db'}")
    if not dest.parent.is_dir():
        raise BackupError(f"cannot write {dest}: no directory {dest.parent}")
    try:
        tmp = _write_private(dest)
    except OSError as exc:
        raise BackupError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        counts = _copy(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    secret = state_dir / "secret.json"
    secret_dest: Path | None = None
    if secret.is_file():
        secret_dest = dest.with_name(dest.name + SECRET_SUFFIX)
        try:
            stmp = _write_private(secret_dest, data=secret.read_bytes())
            os.replace(stmp, secret_dest)
        except OSError as exc:
            raise BackupError(f"the database is copied to {dest}, but {secret} is not: "
                              f"{exc.strerror or exc}") from None
    return BackupResult(dest, secret_dest, *counts)


def _copy(src: Path, tmp: Path) -> tuple[int, int, int, int]:
    """SQLite's online backup of ``src`` into ``tmp``; checks and counts the copy."""
    try:
        source = sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {src}: {exc}") from None
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)  # all pages in one step: one consistent snapshot
            # One self-contained file (no -wal beside it); the gateway sets WAL again.
            target.execute("PRAGMA journal_mode = DELETE")
            check = target.execute("PRAGMA quick_check").fetchone()[0]
            app_id = target.execute("PRAGMA application_id").fetchone()[0]
            version = target.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise BackupError(f"{src} is not a holdover state database (application_id "
                                  f"{app_id:#x}); nothing was backed up")
            if check != "ok":
                raise BackupError(f"the copy of {src} fails SQLite's check ({check}); the "
                                  f"database itself may be damaged")
            counts = tuple(target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                           for table in ("revisions", "pins", "events"))
        finally:
            target.close()
    except sqlite3.Error as exc:
        hint = f" ({_owner_hint(src)})" if "readonly" in str(exc).lower() or \
            "unable to open" in str(exc).lower() else ""
        raise BackupError(f"cannot back up {src}: {exc}{hint}") from None
    finally:
        source.close()
    return (*counts, version)  # type: ignore[return-value]
