"""What the ``store`` setting can name, parsed once for the config check and the store.

A cluster's nodes share Redis, named by a URL; a single gateway keeps its embedded SQLite
file.  The URL forms (docs/cluster.md):

    redis://[[user]:password@]host[:port][/db][?param=value&...]
    rediss://...                           TLS; ca_file=, cert_file=, key_file=
    unix:///path/to/redis.sock[?db=N&...]

with the parameters ``password_file`` (instead of a password in the URL), ``cluster``
(the name that keeps several apps apart in one Redis) and ``timeout`` (the longest any
store call may take).  Parsing touches no file; ``read_secret`` reads a password or key
file and refuses one that other users may read.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from .base import StoreError

REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379
DEFAULT_CLUSTER = "default"
DEFAULT_TIMEOUT = 2.0

_COMMON = ("password_file", "cluster", "timeout")
_PARAMS = {
    "redis": _COMMON,
    "rediss": (*_COMMON, "ca_file", "cert_file", "key_file"),
    "unix": (*_COMMON, "db"),
}
_CLUSTER = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_TIMEOUT = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)?$")
_MAX_SECRET = 4096


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A parsed Redis store URL; ``password`` never appears in ``repr`` or ``display``."""

    scheme: str
    host: str | None
    port: int | None
    socket_path: str | None
    db: int
    username: str | None
    password: str | None = field(repr=False)
    password_file: str | None
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    cluster: str
    timeout: float

    @property
    def display(self) -> str:
        """The URL for messages and logs: no password, no query."""
        secret = ":***" if self.password or self.password_file else ""
        user = f"{self.username or ''}{secret}@" if (self.username or secret) else ""
        if self.scheme == "unix":
            return f"unix://{user}{self.socket_path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"

    @property
    def prefix(self) -> str:
        """The prefix of every key; the hash tag keeps one cluster's keys in one slot."""
        return f"holdover:{{{self.cluster}}}:"

    def files(self) -> dict[str, str]:
        """The files the URL names, by parameter name."""
        named = {"password_file": self.password_file, "ca_file": self.ca_file,
                 "cert_file": self.cert_file, "key_file": self.key_file}
        return {k: v for k, v in named.items() if v}


def is_redis_url(value: str) -> bool:
    """Whether ``value`` names a Redis store (rather than a file or ``memory:``)."""
    return value.split(":", 1)[0].lower() in REDIS_SCHEMES and "://" in value


def parse_redis_url(value: str) -> RedisURL:
    """Parse a Redis store URL; StoreError says what is wrong (never quoting a password)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:  # its text may quote a piece of a password: not shown
        problem = ("the port is out of range 1-65535" if "range" in str(e) else
                   "cannot read host:port (a '/', '?', '#' or '@' in a password must be "
                   "percent-encoded, e.g. %40 for '@')")
        raise StoreError(f"store URL {_redacted(value)!r}: {problem}") from None
    scheme = parts.scheme.lower()
    shown = _redacted(value)
    if scheme not in REDIS_SCHEMES:
        raise StoreError(f"store URL {shown!r}: unknown scheme {scheme!r}; expected "
                         "redis://, rediss:// or unix://")
    if parts.fragment:
        raise StoreError(f"store URL {shown!r}: a '#' fragment has no meaning here")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise StoreError(f"store URL {shown!r}: cannot read the query {parts.query!r}; "
                         "expected name=value&name=value") from None
    for name, v in pairs:
        if name not in _PARAMS[scheme]:
            raise StoreError(f"store URL {shown!r}: unknown parameter {name!r}; {scheme}:// "
                             f"takes {', '.join(_PARAMS[scheme])}")
        if name in params:
            raise StoreError(f"store URL {shown!r}: parameter {name!r} given twice")
        if not v:
            raise StoreError(f"store URL {shown!r}: parameter {name!r} is empty")
        params[name] = v

    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if password and "password_file" in params:
        raise StoreError(f"store URL {shown!r}: a password in the URL and a password_file: "
                         "give one of them")

    if scheme == "unix":
        host, socket_path = None, unquote(parts.path)
        if parts.hostname or port is not None:
            raise StoreError(f"store URL {shown!r}: a unix:// URL names a socket file, "
                             "e.g. unix:///run/redis/redis.sock (three slashes)")
        if not socket_path.startswith("/") or socket_path == "/":
            raise StoreError(f"store URL {shown!r}: expected an absolute socket path, "
                             "e.g. unix:///run/redis/redis.sock")
        db_text = params.get("db", "0")
    else:
        host, socket_path = parts.hostname, None
        if not host:
            raise StoreError(f"store URL {shown!r}: no host; expected e.g. "
                             f"{scheme}://10.0.0.9:6379/0")
        port = DEFAULT_PORT if port is None else port
        if not 0 < port <= 65535:
            raise StoreError(f"store URL {shown!r}: port {port} is out of range 1-65535")
        db_text = parts.path.lstrip("/") or "0"
        if "/" in db_text:
            raise StoreError(f"store URL {shown!r}: the path is the database number, "
                             f"e.g. /0; got {parts.path!r}")
    if not db_text.isdigit() or not 0 <= int(db_text) <= 10_000:
        raise StoreError(f"store URL {shown!r}: the database must be a number like 0, "
                         f"got {db_text!r}")

    cluster = params.get("cluster", DEFAULT_CLUSTER)
    if not _CLUSTER.match(cluster):
        raise StoreError(f"store URL {shown!r}: cluster must be 1-64 letters, digits, "
                         f"'_', '.' or '-', got {cluster!r}")
    timeout = DEFAULT_TIMEOUT
    if "timeout" in params:
        m = _TIMEOUT.match(params["timeout"])
        timeout = float(m.group(1)) * (0.001 if m.group(2) == "ms" else 1.0) if m else 0.0
        if not m or not 0.01 <= timeout <= 600:
            raise StoreError(f"store URL {shown!r}: timeout must be a duration from 10ms "
                             f"to 600s like 2s or 500ms, got {params['timeout']!r}")
    if ("cert_file" in params) != ("key_file" in params):
        raise StoreError(f"store URL {shown!r}: cert_file and key_file go together "
                         "(a client certificate and its key)")
    return RedisURL(scheme=scheme, host=host, port=port if scheme != "unix" else None,
                    socket_path=socket_path, db=int(db_text), username=username,
                    password=password, password_file=params.get("password_file"),
                    ca_file=params.get("ca_file"), cert_file=params.get("cert_file"),
                    key_file=params.get("key_file"), cluster=cluster, timeout=timeout)


def _redacted(value: str) -> str:
    """``value`` with any password in its user info replaced by ``***``.

    Cautious on purpose: everything up to the last ``@`` counts as user info, so even a
    malformed URL (an unencoded ``/`` in the password) does not leak it into a message.
    """
    scheme, sep, rest = value.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return value
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{after}"


def resolve(name: str, base_dir: str | os.PathLike[str] | None) -> Path:
    """A file named in the URL: absolute, or relative to ``base_dir`` (the config's folder)."""
    path = Path(name).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def read_secret(path: Path, what: str) -> str:
    """The text of a password file; refused if other users can read or change it.

    One trailing newline is dropped (``echo pw > file`` writes one).  Group access is
    allowed so that a file can be shared with a service's group (mode 0640).
    """
    check_file(path, what, secret=True)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StoreError(f"{what} {path}: cannot read: {e.strerror or e}") from None
    text = data.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
    if not text:
        raise StoreError(f"{what} {path}: the file is empty")
    return text


def check_file(path: Path, what: str, *, secret: bool = False) -> None:
    """``path`` must be a readable regular file; a secret one private to its owner/group."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StoreError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise StoreError(f"{what} {path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{what} {path}: not a regular file")
    if secret:
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o007:
            raise StoreError(f"{what} {path}: other users can read or change it (mode "
                             f"{mode:04o}); run chmod 600 {path}")
        if st.st_size > _MAX_SECRET:
            raise StoreError(f"{what} {path}: {st.st_size} bytes is too long for a secret; "
                             "is this the right file?")
    if not os.access(path, os.R_OK):
        raise StoreError(f"{what} {path}: not readable by this user")


def check_files(url: RedisURL, base_dir: str | os.PathLike[str] | None) -> None:
    """Every file the URL names exists and is readable (secrets: and private)."""
    for param, name in url.files().items():
        check_file(resolve(name, base_dir), f"store {param}",
                   secret=param in ("password_file", "key_file"))
