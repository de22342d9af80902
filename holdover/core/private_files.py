"""Files only the gateway's own user may read: the admin token and the signing secrets.

Both are written atomically (a private temporary file, fsync, rename, fsync of the
folder), so a crash leaves either the old file or the new one, never an empty or half
written one; an empty token file once meant "no authentication".  At start each is
checked for group/other permissions: the gateway takes them away (it owns the file)
and says so, rather than refusing to start, because a start is also how ``holdover
reload`` hands over a running site.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600, durable once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash of this very pid number
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def loose_mode(path: Path) -> int | None:
    """The permission bits of ``path`` when group or others have any; else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def tighten(path: Path) -> int | None:
    """Take group/other permissions away from ``path``; the mode it had, if it changed.

    Raises ValueError (naming the file and the fix) when the gateway may not change it."""
    mode = loose_mode(path)
    if mode is None:
        return None
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ValueError(f"{path} is readable by other users (mode {mode:04o}) and cannot "
                         f"be made private ({exc.strerror}): run chmod 600 {path}") from None
    return mode
