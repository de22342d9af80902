"""The whole cluster's status and the store's recovery, decided from what nodes say.

Other nodes' heartbeats carry a summary of their revisions and workers; status on any
node adds them to its own, each worker naming its node, sessions summed, and a revision
shows the most alive state any node has it in.  After missed changes a node publishes
again what it knows when the store lost its data, and follows the store otherwise.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from holdover.control.clusterview import ClusterView
from holdover.core.errors import Refused
from holdover.state import MemoryStore
from holdover.state.base import LiveNode


class FakeCluster:
    def __init__(self, nodes: dict[str, dict[str, Any]]) -> None:
        self.me = "web-1"
        self.ttl = 6.0
        self.nodes_at = 0.0
        self.nodes = {name: LiveNode(name, {"advertise": f"10.0.0.{i + 2}", "summary": s}, 5.0)
                      for i, (name, s) in enumerate(nodes.items())}
        self.handlers: dict[str, Any] = {}
        self.away, self.store_error = 0.0, ""

    def store_away_for(self) -> float:
        return self.away

    def on(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    def on_resync(self, handler: Any) -> None:
        self.handlers["resync"] = handler


class Sessions(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.pins)


def fake_ctl(store: Any = None, active: str | None = "v2", known: tuple[str, ...] = ("v1", "v2"),
             busy: str | None = None) -> SimpleNamespace:
    calls: list[Any] = []

    async def save_revisions() -> None:
        calls.append("save")

    async def record_event(kind: str, message: str, revision: str | None = None) -> None:
        calls.append((kind, revision))

    async def rollback(rid: str) -> dict:
        if rid == "v9":
            raise Refused("revision v9 failed to start; deploy it anew instead")
        calls.append(("rollback", rid))
        return {}

    revs = SimpleNamespace(active=SimpleNamespace(id=active) if active else None, _busy=busy,
                           revisions={rid: object() for rid in known}, rollback=rollback)
    sessions = Sessions(pins={"k1": 1, "k2": 2}, dirty=set())
    return SimpleNamespace(store=store, revs=revs, sessions=sessions, calls=calls,
                           save_revisions=save_revisions, record_event=record_event,
                           config=SimpleNamespace(gateway_advertise="10.0.0.1",
                                                  gateway_listen=("0.0.0.0", 8080)),
                           ready=True, tasks=None)


def local_status() -> dict[str, Any]:
    return {"revisions": [
        {"id": "v1", "state": "retired", "sessions": 0, "canary_percent": 0, "workers": []},
        {"id": "v2", "state": "active", "sessions": 3, "canary_percent": 0,
         "workers": [{"id": "v2-1", "state": "ready", "pid": 10, "port": 9001}]}],
        "sessions": 3, "sessions_lost": 1, "active": "v2"}


def summary(v1: str | None, sessions: int) -> dict[str, Any]:
    revisions = {"v2": {"state": "active", "sessions": sessions,
                        "workers": [["v2-1", "ready", 20, 9101, 0, sessions]]}}
    if v1:
        revisions["v1"] = {"state": v1, "sessions": 1,
                           "workers": [["v1-1", "ready", 21, 9102, 0, 1]]}
    return {"ready": True, "sessions": sessions + (1 if v1 else 0), "lost": 2,
            "revisions": revisions}


def test_status_adds_every_node_and_sums_their_sessions() -> None:
    cluster = FakeCluster({"web-2": summary("draining", 4), "web-3": summary(None, 5)})
    view = ClusterView(fake_ctl(), cluster)  # type: ignore[arg-type]
    st = view.status(local_status())
    assert st["node"] == "web-1" and st["sessions_here"] == 3
    assert st["sessions"] == 3 + 5 + 5 and st["sessions_lost"] == 1 + 2 + 2
    assert [(n["name"], n["this"], n["ready"]) for n in st["nodes"]] == [
        ("web-1", True, True), ("web-2", False, True), ("web-3", False, True)]
    assert [n["advertise"] for n in st["nodes"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    v1, v2 = st["revisions"]
    # v1 retired here but still draining on web-2: the cluster says draining.
    assert v1["state"] == "draining" and v1["node_states"] == {"web-1": "retired",
                                                                 "web-2": "draining"}
    assert v1["sessions"] == 1 and [w["node"] for w in v1["workers"]] == ["web-2"]
    assert v2["state"] == "active" and v2["sessions"] == 3 + 4 + 5
    assert [(w["node"], w["id"], w["port"]) for w in v2["workers"]] == [
        ("web-1", "v2-1", 9001), ("web-2", "v2-1", 9101), ("web-3", "v2-1", 9101)]


def test_status_says_how_long_the_store_has_been_away() -> None:
    """An operator whose balancer took every node out (/readyz 503 past
    store_outage_grace) sees why in status, not only "ready" nodes."""
    cluster = FakeCluster({"web-2": summary(None, 1)})
    view = ClusterView(fake_ctl(), cluster)  # type: ignore[arg-type]
    st = view.status(local_status())
    assert st["store_away"] == 0.0 and "store_error" not in st
    cluster.away, cluster.store_error = 32.46, "cannot reach Redis"
    st = view.status(local_status())
    assert st["store_away"] == 32.5 and st["store_error"] == "cannot reach Redis"


def test_a_revision_only_another_node_runs_is_listed_too() -> None:
    other = summary(None, 1)
    other["revisions"]["v3"] = {"state": "starting", "sessions": 0,
                                "workers": [["v3-1", "starting", 30, 9200, 0, 0]]}
    view = ClusterView(fake_ctl(), FakeCluster({"web-2": other}))  # type: ignore[arg-type]
    st = view.status(local_status())
    v3 = next(r for r in st["revisions"] if r["id"] == "v3")
    assert v3["state"] == "starting" and v3["workers"][0]["node"] == "web-2"


def test_missed_changes_on_an_emptied_store_publish_everything_again() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        ctl = fake_ctl(store)
        view = ClusterView(ctl, FakeCluster({}))  # type: ignore[arg-type]
        await view.republish()
        assert ctl.calls == ["save", ("resync", None)]
        assert ctl.sessions.dirty == {"k1", "k2"}
    asyncio.run(main())


def test_missed_changes_on_a_whole_store_follow_its_active_revision() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        for stored, known, busy, expect in (
                ("v2", ("v1", "v2"), None, []),  # in step: nothing to do
                ("v1", ("v1", "v2"), None, [("rollback", "v1"), ("caught-up", "v1")]),
                ("v7", ("v1", "v2"), None, [("out-of-step", "v7")]),
                ("v9", ("v2", "v9"), None, [("out-of-step", "v9")]),
                ("v1", ("v1", "v2"), "a deploy", [])):  # busy: the operation brings it
            await store.set_meta("active", stored)
            ctl = fake_ctl(store, known=known, busy=busy)
            await ClusterView(ctl, FakeCluster({})).republish()  # type: ignore[arg-type]
            assert ctl.calls == expect, (stored, ctl.calls)
            assert ctl.sessions.dirty == {"k1", "k2"}  # its own pins: always again
    asyncio.run(main())
