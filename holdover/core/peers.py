"""The secret a cluster's nodes share, and how one node proves itself to another.

Every node of a cluster must compute the same key from a session cookie and accept the
cookies another node signed, so the session hash key and the cookie signing keys are
one file copied to every node (``[gateway] cluster_secret``, the JSON of
``secret.json`` plus a ``peer_key``).  The peer key authenticates the requests one
node forwards to another: each carries a token, a keyed hash of the sending node's name
and the current second, that only a holder of the file can make.  A token is good for
``TOKEN_WINDOW`` seconds either side of the receiver's clock (so nodes' clocks need only
roughly agree), and a receiver checks each token value once and remembers it.

Peer traffic is authenticated, not encrypted: a private network or VPN between nodes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .affinity import Keys
from .private_files import tighten, write_private

log = logging.getLogger("holdover.cluster")

PEER_HEADER = b"X-Holdover-Peer"

TOKEN_WINDOW = 30  # seconds a token is accepted either side of the receiver's clock


def advertised_host(advertise: str) -> str:
    """The host part of an ``advertise`` (or listen) address: ``host``, ``host:port``,
    ``[v6]`` or ``[v6]:port``; a bare IPv6 address is its own host."""
    if advertise.startswith("["):
        return advertise[1:].partition("]")[0]
    return advertise.rpartition(":")[0] if advertise.count(":") == 1 else advertise


@dataclass(frozen=True)
class ClusterSecret:
    """The shared keys: sessions and cookies (``keys``) and node-to-node (``peer_key``)."""

    keys: Keys
    peer_key: bytes
    path: Path
    created: bool = False

    @classmethod
    def load_or_create(cls, path: Path) -> ClusterSecret:
        """Read the cluster secret file, creating it (0600) with fresh keys if missing.

        Raises ValueError naming the file when it is not a valid cluster secret."""
        created = False
        if not path.exists():
            write_private(path, json.dumps({
                "hash_key": secrets.token_hex(32), "signing_keys": [secrets.token_hex(32)],
                "peer_key": secrets.token_hex(32)}, indent=2))
            created = True
        keys, peer_key = cls._read(path)
        mode = tighten(path)
        if mode is not None:
            log.warning("%s was readable by other users (mode %04o); made it 0600. If "
                        "someone read it, replace it on every node (SECURITY.md)", path, mode)
        return cls(keys, peer_key, path, created)

    @classmethod
    def read(cls, path: Path) -> ClusterSecret:
        """The cluster secret file as it is, changing nothing (``holdover check``)."""
        keys, peer_key = cls._read(path)
        return cls(keys, peer_key, path)

    @staticmethod
    def _read(path: Path) -> tuple[Keys, bytes]:
        try:
            data = json.loads(path.read_text())
            keys = Keys.from_secrets(data)
            peer_key = bytes.fromhex(data["peer_key"])
            if len(peer_key) < 16:
                raise ValueError("peer_key is shorter than 16 bytes")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a valid holdover cluster secret file ({exc}): "
                             f"copy it from another node of the cluster") from None
        return keys, peer_key

    def fingerprint(self) -> str:
        """A keyed hash of the whole secret: equal on nodes that share it, and no key."""
        material = json.dumps(self.keys.secrets(), sort_keys=True).encode()
        return hashlib.blake2b(material, key=self.peer_key, digest_size=8,
                               person=b"holdover-fp").hexdigest()

    def auth(self, node: str) -> PeerAuth:
        return PeerAuth(node, self.peer_key)


class PeerAuth:
    """Tokens this node sends with forwarded requests, and checks of the ones it gets."""

    __slots__ = ("_key", "_mine", "_seen", "node")

    def __init__(self, node: str, peer_key: bytes) -> None:
        self.node = node
        self._key = peer_key
        self._mine: tuple[int, bytes] = (-1, b"")
        self._seen: dict[bytes, tuple[int, str]] = {}  # token -> (its second, its node)

    def _mac(self, node: bytes, second: int) -> bytes:
        return hashlib.blake2b(node + b":%d" % second, key=self._key, digest_size=16,
                               person=b"holdover-peer").hexdigest().encode()

    def token(self, now: float | None = None) -> bytes:
        """This node's token for the current second (made once a second)."""
        second = int(time.time() if now is None else now)
        if self._mine[0] != second:
            n = self.node.encode()
            self._mine = (second, n + b":%d:" % second + self._mac(n, second))
        return self._mine[1]

    def verify(self, value: bytes, now: float | None = None) -> str | None:
        """The sending node of a valid token within the window, else None."""
        now_s = int(time.time() if now is None else now)
        seen = self._seen.get(value)
        if seen is not None:
            return seen[1] if abs(now_s - seen[0]) <= TOKEN_WINDOW else None
        node, _, rest = value.partition(b":")
        second_b, _, mac = rest.partition(b":")
        if not node or not mac or len(value) > 200 or not second_b.isdigit():
            return None
        second = int(second_b)
        if abs(now_s - second) > TOKEN_WINDOW or \
                not hmac.compare_digest(mac, self._mac(node, second)):
            return None
        if len(self._seen) > 1024:  # only valid tokens are kept: about one a node a second
            self._seen = {k: v for k, v in self._seen.items()
                          if abs(now_s - v[0]) <= TOKEN_WINDOW}
        name = node.decode("ascii", "replace")
        self._seen[value] = (second, name)
        return name
