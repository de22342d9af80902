"""The lifecycles of revisions, workers and sessions, as enums and transition tables.

Theory of operation (as h11's ``_state.py`` does for HTTP): each lifecycle is an enum
of states, an enum of events and one table ``(state, event) -> state``.  ``next_state``
looks an event up; an event the state does not accept raises ``Refused`` (409) with a
sentence the admin API and the CLI show as they are.  Nothing else assigns a state.

Invariants over all revisions — one active revision, at most one canary — are checked
by ``check_revisions`` where transitions are applied (holdover/control/revisions.py).
Whether a worker takes new sessions is ``takes_new_sessions``, derived from its state
and its revision's, never a flag written from several places.  The state diagrams in
docs/design.md are generated from these tables (``diagram``) and kept current by a test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from .errors import Refused


class RevisionState(StrEnum):
    STARTING = "starting"  # workers starting; gets no session yet
    ACTIVE = "active"  # gets new sessions
    CANARY = "canary"  # gets its share of new sessions beside the active revision
    DRAINING = "draining"  # gets no new session; serves its pinned sessions
    RETIRED = "retired"  # all its workers stopped
    FAILED = "failed"  # its workers never became ready


class RevisionEvent(StrEnum):
    ACTIVATE = "activate"  # deploy done, rollback to it, or promote of a canary
    START_CANARY = "start-canary"  # deploy with a canary weight done
    FAIL = "fail"  # a worker never became ready
    DRAIN = "drain"  # another revision became active, or the canary was aborted
    RETIRE = "retire"  # its last worker stopped
    RESTART = "restart"  # start its workers again (rollback to a retired revision, restore)


R, RE = RevisionState, RevisionEvent
REVISION_TRANSITIONS: dict[tuple[RevisionState, RevisionEvent], RevisionState] = {
    (R.STARTING, RE.ACTIVATE): R.ACTIVE,
    (R.STARTING, RE.START_CANARY): R.CANARY,
    (R.STARTING, RE.FAIL): R.FAILED,
    (R.STARTING, RE.RETIRE): R.RETIRED,  # started again (rollback) but failed: stays retired
    (R.ACTIVE, RE.DRAIN): R.DRAINING,
    (R.ACTIVE, RE.RESTART): R.STARTING,  # after a restart of the gateway
    (R.CANARY, RE.ACTIVATE): R.ACTIVE,
    (R.CANARY, RE.DRAIN): R.DRAINING,
    (R.DRAINING, RE.ACTIVATE): R.ACTIVE,  # rollback while its workers still run
    (R.DRAINING, RE.RETIRE): R.RETIRED,
    (R.DRAINING, RE.RESTART): R.STARTING,
    (R.RETIRED, RE.RESTART): R.STARTING,
    (R.FAILED, RE.RETIRE): R.RETIRED,
}

# What each refused event means to an operator, for the 409 sentence.
_REVISION_WHY: dict[RevisionEvent, str] = {
    RE.ACTIVATE: "only a starting, canary or draining revision can become active",
    RE.START_CANARY: "only a starting revision can become a canary",
    RE.FAIL: "only a starting revision can fail to start",
    RE.DRAIN: "only the active revision or a canary can start draining",
    RE.RETIRE: "only a draining revision can be retired",
    RE.RESTART: "only a retired, draining or active revision can be started again",
}


class WorkerState(StrEnum):
    STARTING = "starting"  # process spawned, not ready yet
    READY = "ready"  # answers its health check
    UNHEALTHY = "unhealthy"  # failed health_failures checks in a row: being replaced
    BACKOFF = "backoff"  # exited; restarts after a capped exponential delay
    RESTARTING = "restarting"  # an operator asked for a new process
    STOPPING = "stopping"  # SIGTERM sent; in-flight work finishes, then SIGKILL
    STOPPED = "stopped"  # gone for good
    FAILED = "failed"  # never became ready on its first start


class WorkerEvent(StrEnum):
    SPAWN = "spawn"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    EXITED = "exited"
    RESTART = "restart"
    STOP = "stop"
    STOPPED = "stopped"
    NEVER_READY = "never-ready"


W, WE = WorkerState, WorkerEvent
WORKER_TRANSITIONS: dict[tuple[WorkerState, WorkerEvent], WorkerState] = {
    (W.STARTING, WE.READY): W.READY,
    (W.STARTING, WE.EXITED): W.BACKOFF,
    (W.STARTING, WE.NEVER_READY): W.FAILED,
    (W.STARTING, WE.SPAWN): W.STARTING,
    (W.READY, WE.UNHEALTHY): W.UNHEALTHY,
    (W.READY, WE.EXITED): W.BACKOFF,
    (W.READY, WE.RESTART): W.RESTARTING,
    (W.UNHEALTHY, WE.EXITED): W.BACKOFF,
    (W.BACKOFF, WE.SPAWN): W.STARTING,
    (W.RESTARTING, WE.SPAWN): W.STARTING,
    (W.UNHEALTHY, WE.SPAWN): W.STARTING,
}
for _s in (W.STARTING, W.READY, W.UNHEALTHY, W.BACKOFF, W.RESTARTING):
    WORKER_TRANSITIONS[(_s, WE.STOP)] = W.STOPPING
    WORKER_TRANSITIONS[(_s, WE.STOPPED)] = W.STOPPED
WORKER_TRANSITIONS[(W.STOPPING, WE.STOPPED)] = W.STOPPED
WORKER_TRANSITIONS[(W.STOPPING, WE.NEVER_READY)] = W.FAILED  # stopped during its first start
for _e in (WE.STOP, WE.READY, WE.UNHEALTHY, WE.EXITED, WE.RESTART):
    WORKER_TRANSITIONS[(W.STOPPING, _e)] = W.STOPPING  # a stop, once asked for, wins

# Worker states in which the process that held a session's memory no longer runs.
PROCESS_GONE = frozenset({W.STARTING, W.BACKOFF, W.UNHEALTHY, W.RESTARTING, W.STOPPED,
                          W.FAILED})
# Worker states whose process is (or is about to be) up.
RUNNING = frozenset({W.STARTING, W.READY, W.UNHEALTHY, W.BACKOFF, W.RESTARTING})


class SessionState(StrEnum):
    OFFERED = "offered"  # holdover offered its pin cookie; the client has not come back
    LIVE = "live"  # the app (or a returning client) made it a session
    ENDED = "ended"  # logout, idle or expiry
    LOST = "lost"  # its worker's memory is gone


class SessionEvent(StrEnum):
    OFFER = "offer"
    BEGIN = "begin"
    RETURN = "return"
    END = "end"
    LOSE = "lose"


S, SE = SessionState, SessionEvent
SESSION_TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (S.OFFERED, SE.RETURN): S.LIVE,
    (S.OFFERED, SE.BEGIN): S.LIVE,
    (S.OFFERED, SE.END): S.ENDED,
    (S.OFFERED, SE.LOSE): S.ENDED,  # never a session: nothing was lost
    (S.LIVE, SE.RETURN): S.LIVE,
    (S.LIVE, SE.BEGIN): S.LIVE,
    (S.LIVE, SE.END): S.ENDED,
    (S.LIVE, SE.LOSE): S.LOST,
}
# A session comes to be by one of these events, from no state.
SESSION_START: dict[SessionEvent, SessionState] = {SE.OFFER: S.OFFERED, SE.BEGIN: S.LIVE}


def next_state(table: Mapping[tuple[StrEnum, StrEnum], StrEnum], state: StrEnum,
               event: StrEnum, what: str = "", why: str = "") -> StrEnum:
    """The state ``event`` leads to from ``state``; Refused (409) if it is not allowed."""
    try:
        return table[(state, event)]
    except KeyError:
        raise Refused(f"{what or 'it'} is {state}: cannot {event}" + (f" ({why})" if why
                                                                        else ""), 409) from None


def revision_next(rid: str, state: RevisionState, event: RevisionEvent) -> RevisionState:
    """A revision's next state, refused with the operator's sentence if not allowed."""
    return next_state(REVISION_TRANSITIONS, state, event, f"revision {rid}",  # type: ignore[return-value]
                      _REVISION_WHY.get(event, ""))


def check_revisions(states: Iterable[tuple[str, RevisionState]]) -> None:
    """The invariants over all revisions: one active at most, one canary at most."""
    states = list(states)
    active = [rid for rid, s in states if s is RevisionState.ACTIVE]
    canary = [rid for rid, s in states if s is RevisionState.CANARY]
    if len(active) > 1:
        raise Refused(f"revisions {', '.join(active)} would all be active: only one can be", 409)
    if len(canary) > 1:
        raise Refused(f"revisions {', '.join(canary)} would all be canaries: at most one", 409)


def takes_new_sessions(revision: RevisionState, worker: WorkerState, healthy: bool,
                       disabled: bool, retiring: bool, rolling_in: bool = False) -> bool:
    """Whether a worker gets new sessions (stateless: new requests) now.

    Its process is ready and passes health checks, no operator disabled it, it is not
    being retired, and its revision is active or the canary — or it is the new
    revision of a stateless rolling deploy (``rolling_in``), taking over one by one.
    """
    if worker is not WorkerState.READY or not healthy or disabled or retiring:
        return False
    return revision in (RevisionState.ACTIVE, RevisionState.CANARY) or (
        rolling_in and revision is RevisionState.STARTING)


def diagram(table: Mapping[tuple[StrEnum, StrEnum], StrEnum], initial: Iterable[StrEnum] = (),
            ) -> str:
    """A Mermaid state diagram of a transition table (for docs/design.md)."""
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {s.value}" for s in initial]
    for (src, event), dst in table.items():
        lines.append(f"    {src.value} --> {dst.value}: {event.value}")
    return "\n".join(lines)
