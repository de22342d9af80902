"""What ``holdover check --store`` says of a cluster node before it starts.

``holdover run`` refuses to join a cluster whose live nodes use another cluster secret,
or where a live node of its name runs on another host (control/peers.py) — but only once
it has started, and a missing secret file is created on the spot, so the mistake of
starting a new node without a copy of the secret shows only in its log.  This asks the
shared store the same questions ahead of time and changes nothing: the store is opened
to read only (no layout key made, no pins moved, expired heartbeats left to the nodes),
no heartbeat is written, no secret file created, no permission tightened.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from ..config import Config
from ..core.peers import ClusterSecret, advertised_host
from ..core.private_files import loose_mode
from ..state import RedisStore, StoreError
from ..state.url import is_redis_url


def _same_host(a: str, b: str) -> bool:
    """``a`` and ``b`` name one host (``::1`` and ``0:0::1`` do)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _peer_host(c: Config) -> str:
    """The host this node's heartbeat will name, as app.py's ``_join_keys`` makes it: the
    advertised host, or the address ``peer_listen`` binds to unless that is a wildcard."""
    here = advertised_host(c.gateway_advertise or c.gateway_listen[0])
    if c.gateway_peer_listen is None:
        return here
    try:  # where binding it would land (a name resolves to its first address)
        bound = socket.getaddrinfo(c.gateway_peer_listen[0] or None, None,
                                   type=socket.SOCK_STREAM)[0][4][0]
        if ipaddress.ip_address(bound).is_unspecified:
            return here
        return bound
    except (OSError, ValueError):
        return here


async def store_report(c: Config) -> tuple[list[str], list[str]]:
    """``(found, problems)``: what the shared store and this node's files say, and what
    would stop this node from joining (empty when it can).  StoreError when the store
    cannot be reached, which would stop ``holdover run`` too."""
    if not is_redis_url(c.gateway_store):
        return [f"the store is this node's own ({c.gateway_store or c.state_dir / 'state.db'}): "
                "no cluster to check"], []
    store = RedisStore(c.gateway_store, base_dir=c.base_dir, node=c.node_name, read_only=True)
    await store.open()
    try:
        live = await store.live_nodes()
    finally:
        await store.close()
    me, path = c.node_name, c.cluster_secret_path
    here = _peer_host(c)
    others = [n for n in live if n.name != me]
    known = [n for n in others if n.info.get("fingerprint") is not None]
    found = ["the shared store answers; live nodes: " + (", ".join(
        f"{n.name} at {n.info.get('peer') or n.info.get('advertise') or '?'}"
        for n in live) or "none")]
    problems: list[str] = []
    for n in live:
        if n.name == me:
            at = str(n.info.get("peer", "")).rpartition(":")[0]
            if at and not _same_host(advertised_host(at), here):
                problems.append(
                    f"node {me} is already live at {at}: every node of a cluster needs its "
                    f"own name ([gateway] node); give this one another, or stop that node")
            else:
                found.append(f"a node {me} is live on this host: this node, already "
                             "running (or its heartbeat from before a crash, for a few "
                             "seconds more)")
    if not path.exists():
        if others:  # a secret made now is new: it cannot be the one they use
            problems.append(
                f"{path} does not exist ([gateway] cluster_secret): `holdover run` would "
                f"make a new secret there, and the live nodes would refuse this node; copy "
                f"that file (mode 0600) from node {others[0].name}")
        else:
            found.append(f"{path} will be created at the first start (no other node is "
                         "live: copy it to every other node before starting them)")
        return found, problems
    try:
        secret = ClusterSecret.read(path)
    except ValueError as exc:
        return found, [*problems, str(exc)]
    mode = loose_mode(path)
    if mode is not None:  # run makes it 0600, or refuses when it may not
        found.append(f"{path} is readable by other users (mode {mode:04o}): `holdover run` "
                     "makes it 0600 (chmod 600 it now if this user may not)")
    mine = secret.fingerprint()
    differ = [n.name for n in known if n.info.get("fingerprint") != mine]
    if differ:
        problems.append(
            f"node{'s' if len(differ) > 1 else ''} {', '.join(differ)} of this cluster "
            f"use{'' if len(differ) > 1 else 's'} another cluster secret than {path} "
            f"([gateway] cluster_secret): copy that file from node {differ[0]} to this "
            "node (every node needs the same one)")
    elif known:
        found.append(f"{path} is the secret the live nodes use")
    elif others:
        found.append(f"the live nodes announce no secret fingerprint (an older holdover): "
                     f"{path} could not be compared with theirs")
    return found, problems


def store_lines(c: Config) -> tuple[list[str], list[str]]:
    """``holdover check --store``'s lines for standard output and for standard error."""
    try:
        found, problems = asyncio.run(store_report(c))
    except StoreError as exc:
        return [], [f"holdover: error: {exc} (a node does not start without its store)"]
    return ([f"holdover: {line}" for line in found],
            [f"holdover: error: {line}" for line in problems])
