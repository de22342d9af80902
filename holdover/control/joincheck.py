"""What ``holdover check --store`` says of a cluster node before it starts.

``holdover run`` refuses to join a cluster whose live nodes use another cluster secret,
or where a live node of its name runs on another host (control/peers.py) — but only once
it has started, and a missing secret file is created on the spot, so the mistake of
starting a new node without a copy of the secret shows only in its log.  This asks the
shared store the same questions ahead of time and changes nothing: no heartbeat, no
secret file created, no permission tightened.
"""

from __future__ import annotations

import asyncio

from ..config import Config
from ..core.peers import ClusterSecret, advertised_host
from ..state import StoreError, open_store
from ..state.url import is_redis_url


async def store_report(c: Config) -> tuple[list[str], list[str]]:
    """``(found, problems)``: what the shared store and this node's files say, and what
    would stop this node from joining (empty when it can).  StoreError when the store
    cannot be reached, which would stop ``holdover run`` too."""
    if not is_redis_url(c.gateway_store):
        return [f"the store is this node's own ({c.gateway_store or c.state_dir / 'state.db'}): "
                "no cluster to check"], []
    store = open_store(c.gateway_store, base_dir=c.base_dir, node=c.node_name)
    await store.open()
    try:
        live = await store.live_nodes()  # type: ignore[attr-defined]
    finally:
        await store.close()
    me, path = c.node_name, c.cluster_secret_path
    here = advertised_host(c.gateway_advertise or c.gateway_listen[0])
    bound = c.gateway_peer_listen
    if bound is not None and bound[0] not in ("", "0.0.0.0", "::"):
        here = bound[0]  # the peer listener's own address is what its heartbeat names
    others = [n for n in live if n.name != me]
    found = ["the shared store answers; live nodes: " + (", ".join(
        f"{n.name} at {n.info.get('peer') or n.info.get('advertise') or '?'}"
        for n in live) or "none")]
    problems: list[str] = []
    for n in live:
        if n.name == me:
            at = str(n.info.get("peer", "")).rpartition(":")[0]
            if at and advertised_host(at) != here:
                problems.append(
                    f"node {me} is already live at {at}: every node of a cluster needs its "
                    f"own name ([gateway] node); give this one another, or stop that node")
            else:
                found.append(f"a node {me} is live on this host: this node, already "
                             "running (or its heartbeat from before a crash, for a few "
                             "seconds more)")
    if not path.exists():
        if others:
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
    mine = secret.fingerprint()
    differ = [n.name for n in others
              if n.info.get("fingerprint") not in (None, mine)]
    if differ:
        problems.append(
            f"node{'s' if len(differ) > 1 else ''} {', '.join(differ)} of this cluster "
            f"use{'' if len(differ) > 1 else 's'} another cluster secret than {path} "
            f"([gateway] cluster_secret): copy that file from node {differ[0]} to this "
            "node (every node needs the same one)")
    elif others:
        found.append(f"{path} is the secret the live nodes use")
    return found, problems


def store_lines(c: Config) -> tuple[list[str], list[str]]:
    """``holdover check --store``'s lines for standard output and for standard error."""
    try:
        found, problems = asyncio.run(store_report(c))
    except StoreError as exc:
        return [], [f"holdover: error: {exc} (a node does not start without its store)"]
    return ([f"holdover: {line}" for line in found],
            [f"holdover: error: {line}" for line in problems])
