"""Fuzzing the socket-free request path with hypothesis.

- request bytes fed to ``ClientConnection`` (whole, and in random splits) with a fake
  transport and gateway: never an exception; every input ends routed, answered with one
  complete error response and closed, or waiting for more; whatever is routed re-parses
  cleanly with a strict parser and carries no smuggling shape (``fuzzing.one_input``).
- worker response bytes fed to ``UpstreamConnection``.

The live fuzz and atheris, which start processes, are in tests/e2e/test_fuzz_live.py.
Bounded by default; ``HOLDOVER_FUZZ_EXAMPLES=N`` (hypothesis examples, default 300) makes
longer runs.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdover.proxy.server import Exchange
from holdover.proxy.upstream import UpstreamConnection

pytest.register_assert_rewrite("faultlog", "fuzzing")

from fakes import FakePorts  # noqa: E402
from fuzzing import SEEDS, TOKENS, VALID, Transport, mutate, one_input  # noqa: E402

pytest_plugins = ["faultlog"]

EXAMPLES = int(os.environ.get("HOLDOVER_FUZZ_EXAMPLES", "300"))


inputs = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from(VALID), st.randoms(use_true_random=False)).map(
        lambda t: mutate(t[1], t[0], edits=1)),
    st.tuples(st.sampled_from(SEEDS), st.randoms(use_true_random=False)).map(
        lambda t: mutate(t[1], t[0])),
    st.lists(st.sampled_from([*TOKENS, b"GET", b"POST", b"/x", b"a", b"Host"]), max_size=40)
    .map(b"".join),
)



def test_fuzz_protocol_core(observe):
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inputs, st.lists(st.integers(0, 400), max_size=6))
    def prop(data: bytes, cuts: list[int]) -> None:
        for how in (one_input(data, []), one_input(data, cuts)):
            seen[how] = seen.get(how, 0) + 1

    try:
        prop()
    finally:
        observe("fuzz-protocol-core",
                f"{sum(seen.values()) // 2} inputs, each fed whole and split: "
                + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
                + "; no exception, routed heads all re-parse cleanly")


# -- the worker side --------------------------------------------------------------------------


class _ClientSide:
    def __init__(self) -> None:
        self.transport = Transport()
        self.plane = FakePorts().plane
        self.write_paused = False
        self.outcome = "waiting"

    def response_complete(self, ex: Exchange, up: Any, reusable: bool) -> None:
        self.outcome = "complete"

    def upstream_broke(self, ex: Exchange, up: Any, malformed: bool) -> None:
        self.outcome = "broke"

    def start_tunnel(self, ex: Exchange, early: bytes) -> None:
        self.outcome = "tunnel"

    def tunnel_closed(self, ex: Exchange) -> None:
        pass


class _Pool:
    def forget(self, conn: Any) -> None:
        pass


RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=1\r\nX-Holdover-Session: s; max-age=5\r\n\r\nbody",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
]


def test_fuzz_worker_responses(observe):
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(st.binary(max_size=300),
                     st.tuples(st.sampled_from(RESPONSE_SEEDS),
                               st.randoms(use_true_random=False))
                     .map(lambda t: mutate(t[1], t[0]))),
           st.sampled_from([b"GET", b"HEAD", b"POST"]), st.booleans())
    def prop(data: bytes, method: bytes, upgrade: bool) -> None:
        client = _ClientSide()
        ex = Exchange(client, 0.0)  # type: ignore[arg-type]
        ex.method, ex.upgrade, ex.request_done = method, upgrade, True
        ex.head = method + b" / HTTP/1.1\r\nHost: h\r\n\r\n"
        up = UpstreamConnection(_Pool())  # type: ignore[arg-type]
        ut = Transport()
        up.connection_made(ut)  # type: ignore[arg-type]
        up.attach(ex)
        up.data_received(data)
        if client.outcome == "waiting" and not ut.closed:
            up.connection_lost(None)  # the worker closes: that must end it too
        out = bytes(client.transport.out)
        if out and client.outcome != "tunnel":
            assert out.startswith(b"HTTP/1.1 "), out[:100]
        assert client.outcome in ("complete", "broke", "tunnel"), (data, client.outcome)
        seen[client.outcome] = seen.get(client.outcome, 0) + 1

    try:
        prop()
    finally:
        observe("fuzz-worker-responses",
                f"{sum(seen.values())} responses: "
                + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
                + "; no exception, every one ended (answer, 502 path or tunnel)")


# -- a live gateway ---------------------------------------------------------------------------
