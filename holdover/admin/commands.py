"""Every admin command, defined once for the JSON API, the OpenAPI document and the CLI.

A ``Command`` names its parameters with types and help text; ``server`` turns each into
an authenticated endpoint that validates its JSON body against those parameters, and
``cli`` turns each into a subcommand with the same options.  Adding a command here adds
it everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..gateway import Gateway


class CommandError(Exception):
    """A request the command refuses; ``status`` is the HTTP status, ``field`` what's wrong."""

    def __init__(self, message: str, status: int = 400, field: str | None = None,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.detail = detail or {}


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # str, int, float, bool, dict (str -> str)
    help: str
    required: bool = False
    cli: str | None = None  # the CLI flag, e.g. "--from"
    is_path: bool = False  # the CLI makes it absolute (the gateway may run elsewhere)

    def check(self, value: Any) -> Any:
        """The value if it has this parameter's type; CommandError naming it if not."""
        t = self.type
        ok = (isinstance(value, t) and not (t is int and isinstance(value, bool))) or (
            t is float and isinstance(value, int) and not isinstance(value, bool))
        if t is dict:
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        if not ok:
            want = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                    dict: "an object of string values"}[t]
            raise CommandError(f"{self.name}: expected {want}, got {value!r}", 400, self.name)
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
                                   f"{', '.join(known) or 'none'}", 400, key)
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in body and body[p.name] is not None:
                out[p.name] = p.check(body[p.name])
            elif p.required:
                raise CommandError(f"{p.name}: required", 400, p.name)
        return out


# -- handlers ------------------------------------------------------------------------


async def _status(gw: Gateway, args: dict[str, Any]) -> Any:
    return gw.revs.status()


async def _deploy(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.deploy(revision=args.get("revision"), from_dir=args.get("from"),
                                command=args.get("command"), workers=args.get("workers"),
                                env=args.get("env"), canary=args.get("canary"))


async def _rollback(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.rollback()


async def _promote(gw: Gateway, args: dict[str, Any]) -> Any:
    return await gw.revs.promote()


async def _reload(gw: Gateway, args: dict[str, Any]) -> Any:
    # Answer first: the reload stops this admin server on its way.
    gw.loop.call_later(0.2, gw.schedule_reload)
    return {"reloading": True, "pid": os.getpid()}


async def _events(gw: Gateway, args: dict[str, Any]) -> Any:
    events = await gw.store.events(limit=args.get("limit", 50), after_id=args.get("after", 0))
    return {"events": [{"id": e.id, "ts": e.ts, "kind": e.kind, "revision": e.revision,
                        "worker": e.worker, "message": e.message, "data": e.data}
                       for e in events]}


COMMANDS: tuple[Command, ...] = (
    Command("status", "GET", "revisions, workers and live sessions per revision", _status),
    Command("deploy", "POST", "start a new revision, make it active once healthy, drain "
            "the old one", _deploy, (
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
            ), long_running=True),
    Command("rollback", "POST", "make the previous revision active again (or abort a canary)",
            _rollback, long_running=True),
    Command("promote", "POST", "make the canary the active revision", _promote),
    Command("reload", "POST", "re-execute the gateway program in place: workers, sessions "
            "and the listening socket are kept (use after upgrading holdover)", _reload),
    Command("events", "GET", "recent events (deploys, crashes, retirements, lost sessions)",
            _events, (
                Param("limit", int, "how many (default 50)", cli="--limit"),
                Param("after", int, "only events after this id", cli="--after"),
            )),
)

BY_NAME = {c.name: c for c in COMMANDS}
