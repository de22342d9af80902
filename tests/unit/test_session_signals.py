"""What an app or a client says about sessions, and what holdover believes (issue 11).

- point 7: ``X-Holdover-Session`` ``max-age`` is a whole number within a year; a
  malformed header (``inf``, ``nan``, ``1e23``, a bad id) is ignored whole and, in
  particular, does not switch off holdover's own pin cookie for every anonymous client;
- point 8: of several ``holdover_pin`` cookies the first valid one names the session, and a flood
  of them costs a bounded number of MAC checks.

The policy functions are tested directly, the behaviour through the real control plane
with fake workers (``test_sessions_unit.Harness``).  Observations go into the fault table.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_sessions_unit import Harness

from holdover.core import policy
from holdover.core.affinity import Keys
from holdover.proxy.exchange import Exchange

pytest.register_assert_rewrite("faultlog")
import faultlog  # noqa: E402,F401  (rewritten asserts; loaded as a plugin below)

pytest_plugins = ["faultlog"]

KEYS = Keys(b"h" * 32, [b"s" * 32])


# == 7. X-Holdover-Session ===========================================================


@pytest.mark.parametrize("raw", [b"inf", b"nan", b"1e23", b"-1", b"1.5", b"", b"+5", b"0x10",
                                 b"\xd9\xa3", b"5s", b"Infinity", b"1_000", b"9" * 13])
def test_max_age_that_is_not_a_whole_number_is_refused(raw: bytes) -> None:
    assert policy.parse_max_age(raw) is None


@given(st.integers(0, 10**15))
def test_max_age_whole_numbers_within_a_year(n: int) -> None:
    got = policy.parse_max_age(str(n).encode())
    assert got == (n if n <= policy.MAX_SESSION_AGE else None)


@pytest.mark.parametrize("raw", [b"u1; max-age=inf", b"u1; max-age=nan", b"u1; max-age=1e23",
                                 b"u1; max-age=-5", b"u1; max-age=99999999999",
                                 b"u 1; max-age=5", b"u\x001", b"u,1", b"\xe9t\xe9"])
def test_malformed_session_header_has_no_action(raw: bytes) -> None:
    assert policy.session_header_action(raw, KEYS) is None


def test_well_formed_session_headers() -> None:
    key = KEYS.session_key(b"sp", b"u1")
    act = policy.session_header_action
    assert act(b"u1; max-age=60", KEYS) == policy.HeaderAction(key, max_age=60.0)
    assert act(b"u1; Max-Age=0", KEYS) == policy.HeaderAction(key, max_age=0.0)
    assert act(b"u1", KEYS) == policy.HeaderAction(key)
    assert act(b"u1; end", KEYS) == policy.HeaderAction(key, end=True)
    assert act(b"end", KEYS) == act(b"", KEYS) == policy.HeaderAction(end_current=True)


@given(st.binary(max_size=60))
def test_session_header_parser_never_raises(raw: bytes) -> None:
    got = policy.session_header_action(raw, KEYS)
    assert got is None or got.max_age is None or 0 <= got.max_age <= policy.MAX_SESSION_AGE


def _answer(h: Harness, cookie: bytes | None, session_header: bytes | None = None
            ) -> tuple[Any, bytes]:
    """Route one request through the real router; the worker answers with
    ``session_header``; return the exchange (its worker kept) and the added headers."""
    conn = SimpleNamespace(cookie_cache=None, client_ip=b"127.0.0.1", current=None,
                           fail=lambda ex, status, **kw: None)
    ex = Exchange(conn, time.monotonic())  # type: ignore[arg-type]
    ex.method, ex.url, ex.cookie = b"GET", b"/", cookie
    router = h.gw.router
    router.route(ex)
    assert ex.worker is not None, "not routed"
    ex.status = 200
    worker = h.worker_of(ex.worker)
    if session_header is not None:
        router.on_session_header(ex, session_header)
    extra = router.response_extra_headers(ex) or b""
    router.exchange_done(ex)
    ex.worker = worker
    return ex, extra


def test_malformed_session_header_is_ignored(observe) -> None:
    h = Harness(cookie="")
    try:
        seen = {}
        for value in (b"u1; max-age=inf", b"u2; max-age=nan", b"u3; max-age=1e23"):
            _answer(h, None, value)
            key = h.gw.keys.session_key(b"sp", value.split(b";")[0])
            seen[value.decode()] = "no pin" if h.gw.sessions.get(key) is None else "pinned"
        _, extra = _answer(h, None)  # an anonymous client afterwards
        gets_cookie = b"Set-Cookie: holdover_pin=" in extra
        observe("session-header-max-age",
                f"{seen}; an anonymous client afterwards gets holdover's pin cookie: "
                f"{gets_cookie}")
        assert set(seen.values()) == {"no pin"}
        assert gets_cookie, "one malformed header switched off the pin cookie for everyone"
    finally:
        h.close()


# == 8. several holdover_pin cookies =================================================


def test_first_valid_pin_cookie_names_the_session() -> None:
    real = KEYS.sign("a" * 32)
    forged = Keys(b"h" * 32, [b"other"]).sign("b" * 32)
    names = policy.request_session_keys
    assert names(b"holdover_pin=" + forged + b"; holdover_pin=" + real, KEYS, None) == (
        "a" * 32, None)
    assert names(b"holdover_pin=junk; holdover_pin=" + forged, KEYS, None) == (None, None)


def test_pin_cookie_flood_costs_a_bounded_number_of_checks() -> None:
    calls = []

    class Counting(Keys):
        def verify(self, value: bytes) -> str | None:
            calls.append(value)
            return super().verify(value)

    keys = Counting(b"h" * 32, [b"s" * 32])
    flood = b"; ".join(b"holdover_pin=%032d.sig" % i for i in range(5000))
    assert policy.request_session_keys(flood, keys, None) == (None, None)
    assert len(calls) == policy.MAX_PIN_COOKIES


def test_forged_pin_cookie_in_front_does_not_hide_the_real_one(observe) -> None:
    h = Harness(cookie="")
    try:
        ex, extra = _answer(h, None)
        m = re.search(rb"Set-Cookie: holdover_pin=([^;\r]+)", extra)
        assert m, extra
        real, home = m.group(1), ex.worker
        h.run(h.gw.revs.deploy(revision="v2"))
        forged = Keys(b"h" * 32, [b"another-gateway"]).sign("f" * 32)
        ex, extra = _answer(h, b"holdover_pin=" + forged + b"; holdover_pin=" + real)
        observe("pin-cookie-several",
                f"forged cookie first, real second: routed to "
                f"{'its own worker' if ex.worker is home else ex.worker.spec.revision}; "
                f"new pin issued: {b'Set-Cookie' in extra}")
        assert ex.worker is home and b"Set-Cookie" not in extra
    finally:
        h.close()
