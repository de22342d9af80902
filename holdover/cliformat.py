"""What the CLI prints for people: tables and sentences from the admin API's JSON.

``--json`` prints the API's answer as it is; without it, each command gets a table or a
sentence with local times and durations instead of epoch floats, so that the output
can be read at a glance (and ``--json`` piped into tools).  Kept apart from ``cli.py``
so that every format can be tested with plain data, without a gateway.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

# Worker states in which its process no longer runs: its last pid means nothing now.
NO_PROCESS = frozenset({"stopped", "failed", "backoff"})


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
                     for r in rows)


def local_time(ts: float | None) -> str:
    """An epoch time as the local date and time, ``-`` if there is none."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h04m``, ``2d03h``: as long as it needs to be."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def pid_of(worker: dict[str, Any]) -> str:
    """The worker's pid, or ``-`` when its process is gone (stopped, failed, restarting)."""
    return "-" if worker["state"] in NO_PROCESS or not worker.get("pid") else str(worker["pid"])


def port_of(worker: dict[str, Any]) -> str:
    return "-" if worker["state"] in NO_PROCESS or not worker.get("port") else str(worker["port"])


def workers(result: dict[str, Any]) -> str:
    rows = [("REVISION", "WORKER", "STATE", "PID", "PORT", "SESSIONS", "IN FLIGHT", "REQUESTS",
             "5XX", "RESTARTS", "UP", "NOTE")]
    for w in result["workers"]:
        note = ", ".join(n for n, on in (("standby", w.get("standby")),
                                         ("disabled", w.get("disabled")),
                                         ("crash-looping", w.get("crash_loop"))) if on)
        rows.append((w["revision"], w["id"], w["state"], pid_of(w), port_of(w),
                     str(w.get("sessions", 0)), str(w.get("inflight", 0)),
                     str(w.get("requests", 0)), str(w.get("errors", 0)),
                     str(w.get("restarts", 0)),
                     duration(w["uptime"]) if w.get("uptime") else "-", note))
    if len(rows) == 1:
        return "no workers"
    return table(rows)


LOST_MEANS = "since this gateway started or was reloaded"


def sessions(result: dict[str, Any]) -> str:
    """Live sessions per revision; ``lost`` counts since the gateway (re)started."""
    head = (f"live sessions {result['total']}  lost {result['lost']} ({LOST_MEANS})")
    by_rev = result.get("by_revision") or {}
    lines = [head]
    if by_rev:
        lines.append(table([("REVISION", "SESSIONS"),
                            *((rid, str(n)) for rid, n in by_rev.items())]))
    history = result.get("history") or []
    if history:
        lines.append(f"history: {len(history)} samples from {local_time(history[0]['ts'])} "
                     f"to {local_time(history[-1]['ts'])} (--json prints them)")
    return "\n".join(lines)


def session(result: dict[str, Any], now: float | None = None) -> str:
    """One user's session (found by a cookie): named by its keyed hash, never the cookie."""
    s = result["session"]
    now = time.time() if now is None else now
    rows = [("session", f"{s['key']} (keyed hash)"), ("revision", s["revision"]),
            ("worker", s["worker"]), ("started", local_time(s["started"])),
            ("last seen", f"{local_time(s['last_seen'])} "
                          f"({duration(now - s['last_seen'])} ago)"),
            ("expires", local_time(s.get("expires"))),
            ("in flight", str(s.get("in_flight", 0)))]
    if s.get("state") == "offered":
        rows.insert(1, ("state", "offered: the client has not come back with the cookie "
                                 "yet, so it is no session (not counted)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def worker_action(result: dict[str, Any]) -> str:
    wid, action = result["worker"], result["action"]
    if action == "restart":
        return (f"worker {wid}: a new process is starting; the {result['sessions_lost']} "
                f"session(s) the old one held are lost")
    what = {"disable": "takes no new sessions (its pinned sessions are still served)",
            "enable": "takes new sessions again",
            "standby": "is a hot standby (used only when no other worker is ready)",
            "unstandby": "is an ordinary worker again"}.get(action, f"{action} done")
    return f"worker {wid} {what}; state {result.get('state', '-')}"


def reload(result: dict[str, Any]) -> str:
    return (f"the gateway (pid {result['pid']}) is re-executing in place; workers and "
            f"sessions are kept (`holdover status` answers again once it is back)")


def drain(result: dict[str, Any]) -> str:
    if result.get("aborted_canary"):
        return (f"canary {result['aborted_canary']} aborted: it gets no new sessions and "
                f"drains; {result['revision']} stays active")
    return f"revision {result['revision']} is {result['state']}"


def retire(result: dict[str, Any]) -> str:
    return (f"revision {result['revision']} is retiring: {result['sessions_ended']} "
            f"session(s) ended and counted as lost")


PRINTERS = {"workers": workers, "reload": reload, "drain": drain, "retire": retire,
            **{f"worker-{a}": worker_action
               for a in ("restart", "disable", "enable", "standby", "unstandby")}}


def render(name: str, result: dict[str, Any]) -> str | None:
    """The text for command ``name``'s result, or None when this module has no format."""
    if name == "sessions":
        return session(result) if "session" in result else sessions(result)
    fmt = PRINTERS.get(name)
    return fmt(result) if fmt is not None else None
