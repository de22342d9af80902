"""Fakes of the data plane's ports (holdover/proxy/ports.py), shared by the protocol tests.

``FakePorts`` subclasses the real Protocols, and ``test_fakes_match_the_ports`` (in the
protocol tests) checks every method's signature against them, so a fake cannot drift
from the interface the proxy really uses.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from holdover.proxy.ports import Limits, Plane, Releaser, Reporter, Router, SessionHooks

PORTS = (Router, Releaser, Reporter, SessionHooks)
LIMIT_FIELDS = {f.name for f in dataclasses.fields(Limits) if f.init}


class FakePorts(Router, Releaser, Reporter, SessionHooks):
    """Records what the proxy asks of the control side; limits from keyword arguments."""

    def __init__(self, **kw: Any) -> None:
        limits = {k: kw.pop(k) for k in list(kw) if k in LIMIT_FIELDS}
        limits.setdefault("listen_host", b"gw.test:8080")
        self.limits = Limits(**limits)
        self.plane = Plane(self.limits, self, self, self, self)
        self.plane.closing = kw.pop("closing", False)
        self.connections = self.plane.connections
        self.retry_result = False
        self.extra_headers: bytes | None = None
        self.__dict__.update(kw)
        self.routed: list[Any] = []
        self.route_state: list[tuple[bool, list[bytes]]] = []
        self.done: list[tuple[Any, str | None]] = []
        self.released: list[tuple[Any, bool]] = []
        self.retried: list[Any] = []
        self.cookies: list[bytes] = []
        self.session_headers: list[bytes] = []
        self.on_route = None

    def route(self, ex: Any) -> None:
        self.routed.append(ex)
        self.route_state.append((ex.request_done, list(ex.body_buf or [])))
        if self.on_route is not None:
            self.on_route(ex)

    def retry(self, ex: Any) -> bool:
        self.retried.append(ex)
        return self.retry_result

    def release_upstream(self, up: Any, reusable: bool) -> None:
        self.released.append((up, reusable))

    def exchange_done(self, ex: Any, note: str | None = None) -> None:
        self.done.append((ex, note))

    def on_set_cookie(self, ex: Any, value: bytes) -> None:
        self.cookies.append(value)

    def on_session_header(self, ex: Any, value: bytes) -> None:
        self.session_headers.append(value)

    def response_extra_headers(self, ex: Any) -> bytes | None:
        return self.extra_headers


def signature_drift(impl: type, protocol: type) -> list[str]:
    """Methods of ``protocol`` that ``impl`` lacks or defines with other parameters."""
    problems = []
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        mine = getattr(impl, name, None)
        if mine is None or mine is member:
            problems.append(f"{impl.__name__}.{name} is missing")
            continue
        want = [p.name for p in inspect.signature(member).parameters.values()]
        got = [p.name for p in inspect.signature(mine).parameters.values()]
        if want != got:
            problems.append(f"{impl.__name__}.{name}{tuple(got)} != {protocol.__name__}"
                            f".{name}{tuple(want)}")
    return problems
