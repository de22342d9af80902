"""Session keys and holdover's own signed affinity cookie.

Two kinds of secret live in ``state_dir/secret.json`` (created 0600 on first start):

- a *hash key*, never shown to anyone, that turns a session id into the opaque key the
  pin table and the state store use (so neither holds a usable session cookie), and
- *signing keys* for the ``holdover_pin`` cookie: the first signs, all verify, so a key
  can be rotated by adding a new one in front and dropping the old one later.

A forged, foreign (another gateway's key) or malformed cookie simply verifies to None:
the request is treated as having no pin (rule 4 of docs/design.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

from .private_files import tighten, write_private

log = logging.getLogger("holdover.affinity")

PIN_COOKIE = b"holdover_pin"
NODE_COOKIE = b"holdover_node"  # in a cluster: which node holds the session (signed)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class Keys:
    """The gateway's secrets: hashing session ids, signing and checking its cookie."""

    __slots__ = ("_hash_key", "_signing")

    def __init__(self, hash_key: bytes, signing_keys: list[bytes]) -> None:
        if not signing_keys:
            raise ValueError("at least one signing key is needed")
        self._hash_key = hash_key
        self._signing = signing_keys

    @classmethod
    def load_or_create(cls, path: Path) -> Keys:
        """Read ``secret.json``, creating it (mode 0600) with fresh keys if missing."""
        if not path.exists():
            data = {"hash_key": secrets.token_hex(32), "signing_keys": [secrets.token_hex(32)]}
            write_private(path, json.dumps(data, indent=2))
        try:
            data = json.loads(path.read_text())
            keys = cls(bytes.fromhex(data["hash_key"]),
                       [bytes.fromhex(k) for k in data["signing_keys"]])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid holdover secret file ({exc})") from None
        mode = tighten(path)
        if mode is not None:
            log.warning("%s was readable by other users (mode %04o); made it 0600. If "
                        "someone read it, rotate its signing keys (SECURITY.md)", path, mode)
        return keys

    def secrets(self) -> dict[str, object]:
        """The key material, for a data-plane process's control channel (never argv/env)."""
        return {"hash_key": self._hash_key.hex(), "signing_keys": [k.hex() for k in self._signing]}

    @classmethod
    def from_secrets(cls, data: dict[str, object]) -> Keys:
        """The inverse of ``secrets``."""
        return cls(bytes.fromhex(str(data["hash_key"])),
                   [bytes.fromhex(str(k)) for k in data["signing_keys"]])  # type: ignore[attr-defined]

    def session_key(self, kind: bytes, session_id: bytes) -> str:
        """The opaque pin-table key of a session id (``kind`` keeps id spaces apart)."""
        return hashlib.blake2b(kind + b":" + session_id, key=self._hash_key,
                               digest_size=16).hexdigest()

    def _sig(self, key: bytes, pin: bytes) -> bytes:
        return _b64(hashlib.blake2b(pin, key=key, digest_size=12, person=b"holdover-pin").digest())

    @staticmethod
    def new_key() -> str:
        """A fresh random pin-table key, for a session holdover itself tracks."""
        return secrets.token_hex(16)

    def sign(self, pin_key: str) -> bytes:
        """The ``holdover_pin`` cookie value that carries ``pin_key``."""
        k = pin_key.encode()
        return k + b"." + self._sig(self._signing[0], k)

    def verify(self, value: bytes) -> str | None:
        """The pin key in a cookie value, or None if the cookie is not ours."""
        k, dot, sig = value.partition(b".")
        if not dot or len(k) != 32 or not sig:
            return None
        for key in self._signing:
            if hmac.compare_digest(sig, self._sig(key, k)):
                return k.decode("ascii", "replace")
        return None

    def _route_sig(self, key: bytes, node: bytes, pin_key: str) -> bytes:
        return _b64(hashlib.blake2b(node + b":" + pin_key.encode(), key=key, digest_size=12,
                                    person=b"holdover-node").digest())

    def sign_route(self, node: str, pin_key: str) -> bytes:
        """The ``holdover_node`` cookie value saying that ``node`` holds session ``pin_key``.

        The signature covers the session's key, so the cookie of one session is worth
        nothing beside another session's cookie."""
        n = node.encode()
        return n + b"." + self._route_sig(self._signing[0], n, pin_key)

    def verify_route(self, value: bytes, pin_key: str) -> str | None:
        """The node a ``holdover_node`` cookie names for ``pin_key``, or None if forged."""
        n, dot, sig = value.rpartition(b".")
        if not dot or not n or len(n) > 63 or not sig:
            return None
        for key in self._signing:
            if hmac.compare_digest(sig, self._route_sig(key, n, pin_key)):
                return n.decode("ascii", "replace")
        return None


def iter_cookie_values(header: bytes | None, name: bytes) -> Iterator[bytes]:
    """Every value of cookie ``name`` in a Cookie request header, in order."""
    if not header:
        return
    start = 0
    needle = name + b"="
    while True:
        i = header.find(needle, start)
        if i < 0:
            return
        if i == 0 or header[i - 1] in b" ;":
            j = header.find(b";", i)
            v = header[i + len(needle): j if j >= 0 else len(header)].strip()
            if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                v = v[1:-1]
            yield v
        start = i + 1


def cookie_value(header: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie request header (first one wins)."""
    return next(iter_cookie_values(header, name), None)


def cookie_values(header: bytes | None, name: bytes) -> list[bytes]:
    """Every value of cookie ``name`` in a Cookie request header, in order."""
    return list(iter_cookie_values(header, name))


def parse_set_cookie(value: bytes) -> tuple[bytes, bytes, bool]:
    """``(name, value, deleted)`` of a Set-Cookie header.

    A cookie counts as deleted (the app logged the user out) when it is set empty, with
    ``Max-Age`` <= 0, or — without a Max-Age, which wins (RFC 6265 5.3) — with an
    ``Expires`` date in the past.
    """
    first, _, attrs = value.partition(b";")
    name, _, val = first.partition(b"=")
    name, val = name.strip(), val.strip()
    max_age: int | None = None
    expired = False
    for attr in attrs.split(b";"):
        k, _, v = attr.partition(b"=")
        k, v = k.strip().lower(), v.strip()
        if k == b"max-age":
            try:
                max_age = int(v)
            except ValueError:
                pass
        elif k == b"expires":
            try:
                expired = parsedate_to_datetime(v.decode("latin-1")).timestamp() < time.time()
            except (ValueError, TypeError, IndexError, OverflowError):
                pass
    deleted = not val or val == b'""' or (max_age <= 0 if max_age is not None else expired)
    return name, val, deleted
