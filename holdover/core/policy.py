"""Pin policy, the drain plan and the canary judgement, as pure functions.

These are the decisions docs/design.md's "Routing rules" describe, returned as values:
which session a request names, what a response's Set-Cookie or ``X-Holdover-Session``
header does to its pin, which draining workers may stop now, and whether a canary has
spent its error budget.  The control side carries them out; tests check them without
sockets or clocks (``now`` is always passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .affinity import PIN_COOKIE, Keys, cookie_value, cookie_values, parse_set_cookie

# The longest max-age the session protocol accepts (a year); longer is a mistake.
MAX_SESSION_AGE = 366 * 24 * 3600
# More holdover_pin cookies than this in one request are not checked: a browser sends
# one per path/domain it was set for, and each check costs a MAC.
MAX_PIN_COOKIES = 8


def request_session_keys(cookie: bytes | None, keys: Keys, app_cookie: bytes | None
                         ) -> tuple[str | None, str | None]:
    """``(pin key, app-session key)`` a request's Cookie header names (rule 4).

    The pin key comes from the first *valid* ``holdover_pin`` cookie (a forged one in
    front of a good one does not hide it), else from the app's session cookie."""
    key = skey = None
    for value in cookie_values(cookie, PIN_COOKIE)[:MAX_PIN_COOKIES]:
        key = keys.verify(value)  # forged, foreign or stale: no pin
        if key is not None:
            break
    if app_cookie is not None:
        value = cookie_value(cookie, app_cookie)
        if value:
            skey = keys.session_key(b"app", value)
            if key is None:
                key = skey
    return key, skey


@dataclass(frozen=True, slots=True)
class CookieAction:
    """What an app's Set-Cookie of its session cookie does: end, or (re)pin ``key``."""

    end: bool
    key: str | None = None


def set_cookie_action(value: bytes, app_cookie: bytes | None, keys: Keys
                      ) -> CookieAction | None:
    """The pin change a ``Set-Cookie: value`` response header asks for (rule 3), if any."""
    if app_cookie is None or not value.startswith(app_cookie + b"="):
        return None
    _, val, deleted = parse_set_cookie(value)
    if deleted:
        return CookieAction(True)
    return CookieAction(False, keys.session_key(b"app", val))


@dataclass(frozen=True, slots=True)
class HeaderAction:
    """What one ``X-Holdover-Session`` header does.

    ``end_current``: end the session the request was pinned to (a bare ``end``);
    ``end``: end session ``key``; otherwise pin ``key`` for ``max_age`` seconds (None:
    until idle)."""

    key: str = ""
    end: bool = False
    end_current: bool = False
    max_age: float | None = None


def parse_max_age(raw: bytes) -> int | None:
    """A ``max-age`` value: a whole number of seconds within a year, else None."""
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 12:
        return None
    n = int(raw)
    return n if n <= MAX_SESSION_AGE else None


def _session_id_ok(sid: bytes) -> bool:
    """Visible ASCII without ``;`` or ``,`` (docs/session-protocol.md)."""
    return all(0x21 <= c <= 0x7E and c != 0x3B and c != 0x2C for c in sid)


def session_header_action(value: bytes, keys: Keys) -> HeaderAction | None:
    """Parse ``X-Holdover-Session: <id>; max-age=N`` / ``<id>; end`` / ``end``.

    None for a malformed header (an id with other characters, a ``max-age`` that is not
    a whole number within MAX_SESSION_AGE): it is ignored whole, so that it neither pins
    a session for ever nor counts as the app speaking the protocol."""
    sid, _, params = value.partition(b";")
    sid = sid.strip()
    params = params.strip().lower()
    if not sid or (sid.lower() == b"end" and not params):
        return HeaderAction(end_current=True)
    if not _session_id_ok(sid):
        return None
    key = keys.session_key(b"sp", sid)
    if params.startswith(b"end"):
        return HeaderAction(key, end=True)
    max_age = None
    if params.startswith(b"max-age="):
        max_age = parse_max_age(params[8:].split(b";")[0])
        if max_age is None:
            return None
    return HeaderAction(key, max_age=float(max_age) if max_age is not None else None)


def workers_to_stop(workers: Iterable[tuple[str, int, int]], stopping: Iterable[str]
                    ) -> list[str]:
    """The drain plan: workers of a draining revision that may stop now.

    ``workers`` are ``(id, requests or streams in flight, pinned sessions)``; a worker
    stops when it has neither and is not being stopped already."""
    busy = set(stopping)
    return [wid for wid, inflight, sessions in workers
            if wid not in busy and inflight == 0 and not sessions]


def drain_expired(now: float, drain_started: float, max_drain: float) -> bool:
    """Whether a draining revision ran past ``max_drain`` (0: no limit)."""
    return bool(max_drain) and now - drain_started > max_drain


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    abort: bool
    requests: int = 0
    errors: int = 0


def judge_canary(samples: Sequence[tuple[float, int, int]], now: float, window: float,
                 min_requests: int, budget: float) -> tuple[CanaryVerdict, int]:
    """Whether the canary's 5xx ratio over the window exceeds its budget.

    ``samples`` are ``(time, requests, errors)`` totals, oldest first, the last taken
    ``now``.  Returns the verdict and how many leading samples fell out of the window
    (the caller drops them)."""
    drop = 0
    while len(samples) - drop > 1 and now - samples[drop + 1][0] >= window:
        drop += 1
    _, reqs0, errs0 = samples[drop]
    _, reqs, errs = samples[-1]
    n, bad = reqs - reqs0, errs - errs0
    abort = bool(budget) and n >= min_requests and n > 0 and bad / n > budget
    return CanaryVerdict(abort, n, bad), drop
