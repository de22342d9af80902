"""Every admin command, defined once for the JSON API, the OpenAPI document and the CLI.

A ``Command`` names its parameters with types and help text; ``server`` turns each into
an authenticated endpoint that validates its JSON body against those parameters, and
``cli`` turns each into a subcommand with the same options.  Adding a command here adds
it everywhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import Refused

CommandError = Refused  # what the admin commands raise: the one "refused" error

if TYPE_CHECKING:
    from ..control.facade import Control as Gateway




@dataclass(frozen=True)
class Param:
    name: str
    type: type  # str, int, float, bool, dict (str -> str), list (of str; a repeated flag)
    help: str
    required: bool = False
    cli: str | None = None  # the CLI flag, e.g. "--from"; without dashes: positional
    is_path: bool = False  # the CLI makes it absolute (the gateway may run elsewhere)

    def check(self, value: Any) -> Any:
        """The value if it has this parameter's type; CommandError naming it if not."""
        t = self.type
        ok = (isinstance(value, t) and not (t is int and isinstance(value, bool))) or (
            t is float and isinstance(value, int) and not isinstance(value, bool))
        if t is dict:
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        if t is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            want = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                    dict: "an object of string values", list: "a list of strings"}[t]
            raise CommandError(f"{self.name}: expected {want}, got {value!r}", 400, field=self.name)
        return float(value) if t is float else value


Handler = Callable[["Gateway", dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    name: str
    method: str  # GET (reads) or POST (changes)
    help: str
    handler: Handler
    params: tuple[Param, ...] = field(default_factory=tuple)
    long_running: bool = False

    @property
    def path(self) -> str:
        return f"/api/{self.name}"

    def parse(self, body: Any) -> dict[str, Any]:
        """Validate a JSON body (or query) against the parameters."""
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise CommandError("the request body must be a JSON object", 400)
        known = {p.name: p for p in self.params}
        for key in body:
            if key not in known:
                raise CommandError(f"{key}: unknown field; expected one of "
                                   f"{', '.join(known) or 'none'}", 400, field=key)
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in body and body[p.name] is not None:
                out[p.name] = p.check(body[p.name])
            elif p.required:
                raise CommandError(f"{p.name}: required", 400, field=p.name)
        return out


# -- handlers ------------------------------------------------------------------------


async def _status(gw: Gateway, args: dict[str, Any]) -> Any:
    st = gw.revs.status()
    if gw.planes is not None:  # processes > 1: each data-plane process, and the sum
        st["processes"] = gw.planes.status()
        st["connections"] = len(gw.connections)
    if gw.peers is not None:  # a cluster node: the other nodes it routes to, the dead ones
        st.update(gw.peers.status())
    if gw.clusterops is not None:  # every node's workers, sessions summed (clusterview.py)
        st = gw.clusterops.view.status(st)
    return st


def _cluster_wide(op: str, local: Handler) -> Handler:
    """In a cluster the command goes to every live node (control/clusterops.py)."""
    async def run(gw: Gateway, args: dict[str, Any]) -> Any:
        if gw.clusterops is not None:
            return await gw.clusterops.run(op, args)
        return await local(gw, args)

    return run


async def _deploy(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.deploy(revision=args.get("revision"), from_dir=args.get("from"),
                                command=args.get("command"), workers=args.get("workers"),
                                env=args.get("env"), canary=args.get("canary"),
                                upstreams=args.get("upstreams"))


async def _rollback(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.rollback(args.get("revision"))


async def _promote(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.promote()


async def _workers(gw: Gateway, args: dict[str, Any]) -> Any:
    return {"workers": [{"revision": r["id"], **w} for r in (await _status(gw, {}))["revisions"]
                        for w in r["workers"]]}


async def _sessions(gw: Gateway, args: dict[str, Any]) -> Any:
    if "cookie" in args or "pin" in args:
        return _one_session(gw, args)
    return {"total": len(gw.sessions), "lost": gw.sessions_lost,
            "by_revision": dict(gw.sessions.per_revision),
            "history": [{"ts": ts, "by_revision": counts} for ts, counts in gw.session_history]}


def _one_session(gw: Gateway, args: dict[str, Any]) -> Any:
    """Which revision and worker hold one user's session, found by a cookie they send.

    The cookie value is a live credential: it is only hashed (as the proxy hashes it)
    and never echoed; the answer names the session by its keyed hash."""
    if "cookie" in args and "pin" in args:
        raise CommandError("give cookie or pin, not both", 400, field="pin")
    if "cookie" in args:
        if not gw.config.app_session_cookie:
            raise CommandError("cookie: [app] session_cookie is not set, so no session is "
                               "pinned by the app's cookie; look it up with pin (the "
                               "holdover_pin cookie)", 400, field="cookie")
        value = args["cookie"].strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]  # as the proxy reads a quoted cookie value
        if not value:
            raise CommandError("cookie: empty value", 400, field="cookie")
        key = gw.keys.session_key(b"app", value.encode("utf-8", "surrogatepass"))
        what = f"the {gw.config.app_session_cookie} cookie"
    else:
        found = gw.keys.verify(args["pin"].strip().encode("utf-8", "surrogatepass"))
        if found is None:
            raise CommandError("pin: not a holdover_pin cookie signed by this gateway "
                               "(mistyped, forged, from another gateway or signed with a "
                               "key since dropped)", 400, field="pin")
        key, what = found, "this holdover_pin cookie"
    pin = gw.sessions.get(key)
    state = "live"
    if pin is None and key in gw.sessions.offered:
        # Offered, not yet a session: the client has not come back with the cookie.
        pin, state = gw.sessions.offered[key], "offered"
    if pin is None:
        raise CommandError(f"no live session has {what} (keyed hash {key}): it ended, idled "
                           f"out, was lost, or never started", 404, detail={"key": key})
    to_wall = time.time() - time.monotonic()  # pins keep monotonic times
    return {"session": {"key": key, "state": state, "revision": pin.revision,
                        "worker": pin.worker,
                        "started": round(pin.created_at + to_wall, 3),
                        "last_seen": round(pin.last_seen + to_wall, 3),
                        "expires": round(pin.expires_at + to_wall, 3)
                        if pin.expires_at is not None else None,
                        "in_flight": pin.active}}


async def _drain(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.drain(args["revision"])


async def _retire(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.retire(args["revision"])


def _worker_command(action: str) -> Handler:
    async def run(gw: Gateway, args: dict[str, Any]) -> Any:
        return await gw.revs.worker_action(args["worker"], action)

    return run


async def _logs(gw: Gateway, args: dict[str, Any]) -> Any:
    w = gw.revs.worker_any(args["worker"])
    n = min(max(args.get("lines", 100), 1), 5000)
    return {"worker": w.id, "path": str(w.log_path), "lines": w.log_tail(n).splitlines()}


async def _reload(gw: Gateway, args: dict[str, Any]) -> Any:
    gw.check_reload()  # a configuration the new image would refuse: 400, nothing happens
    # Answer first: the reload stops this admin server on its way.  A deploy under way
    # is waited for (``waits_for``), then the gateway re-executes.
    asyncio.get_running_loop().call_later(0.2, gw.schedule_reload)
    return {"reloading": True, "pid": os.getpid(), "waits_for": gw.revs._busy}


async def _events(gw: Gateway, args: dict[str, Any]) -> Any:
    limit, after = args.get("limit", 50), args.get("after", 0)
    if not 0 <= limit <= 10000:
        raise CommandError(f"limit: expected 0 to 10000, got {limit}", 400, field="limit")
    if not 0 <= after < 1 << 63:
        raise CommandError(f"after: expected an event id (>= 0), got {after}", 400, field="after")
    events = await gw.store.events(limit=limit, after_id=after)
    return {"events": [{"id": e.id, "ts": e.ts, "kind": e.kind, "revision": e.revision,
                        "worker": e.worker, "message": e.message, "data": e.data}
                       for e in events]}


COMMANDS: tuple[Command, ...] = (
    Command("status", "GET", "revisions, workers and live sessions per revision", _status),
    Command("deploy", "POST", "start a new revision, make it active once healthy, drain "
            "the old one", _cluster_wide("deploy", _deploy), (
                Param("revision", str, "id of the new revision (default: git short sha of "
                      "--from, else v<N>)", cli="--revision"),
                Param("from", str, "directory to snapshot as the revision's files",
                      cli="--from", is_path=True),
                Param("command", str, "command of its workers (default: the config's)",
                      cli="--command"),
                Param("workers", int, "number of workers (default: the config's)",
                      cli="--workers"),
                Param("env", dict, "extra environment, K=V", cli="--env"),
                Param("canary", float, "send only this percentage of new sessions to it",
                      cli="--canary"),
                Param("upstreams", list, "URL of a worker another engine runs (repeat for "
                      "each); no process is started (default: found by discover)",
                      cli="--upstream"),
            ), long_running=True),
    Command("rollback", "POST", "make the previous revision (the one active before this "
            "one), or REV, active again; or abort a canary", _cluster_wide("rollback", _rollback),
            (Param("revision", str, "the revision to go back to (default: the previous one; "
                   "a retired revision is started again)", cli="revision"),),
            long_running=True),
    Command("promote", "POST", "make the canary the active revision",
            _cluster_wide("promote", _promote)),
    Command("workers", "GET", "every worker with its state, load and sessions", _workers),
    Command("sessions", "GET", "live sessions per revision, and their history; or which "
            "revision and worker hold one user's session", _sessions, (
                Param("cookie", str, "value of the app's session cookie (session_cookie) "
                      "that the user sends", cli="--cookie"),
                Param("pin", str, "value of the holdover_pin cookie that the user sends",
                      cli="--pin"))),
    Command("drain", "POST", "abort a canary: it gets no new sessions and drains (the "
            "active revision is not drained: deploy another or roll back)",
            _cluster_wide("drain", _drain),
            (Param("revision", str, "revision id", required=True, cli="revision"),)),
    Command("retire", "POST", "retire a draining revision now (its sessions are lost)",
            _cluster_wide("retire", _retire),
            (Param("revision", str, "revision id", required=True, cli="revision"),)),
    *(Command(f"worker-{action}", "POST", help_, _worker_command(action),
              (Param("worker", str, "worker id, e.g. v2-1", required=True, cli="worker"),))
      for action, help_ in (
          ("restart", "replace a worker's process (its sessions are lost)"),
          ("disable", "no new sessions for a worker (its pinned sessions are still served)"),
          ("enable", "put a disabled worker back in rotation"),
          ("standby", "make a worker a hot standby (used only when no other is ready)"),
          ("unstandby", "make a standby worker an ordinary one"))),
    Command("logs", "GET", "the last lines of a worker's log", _logs, (
        Param("worker", str, "worker id, e.g. v2-1", required=True, cli="worker"),
        Param("lines", int, "how many lines (default 100)", cli="--lines"))),
    Command("reload", "POST", "re-execute the gateway program in place: workers, sessions "
            "and the listening socket are kept (use after upgrading holdover)", _reload),
    Command("events", "GET", "recent events (deploys, crashes, retirements, lost sessions)",
            _events, (
                Param("limit", int, "how many (default 50)", cli="--limit"),
                Param("after", int, "only events after this id", cli="--after"),
            )),
)

BY_NAME = {c.name: c for c in COMMANDS}
