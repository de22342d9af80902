"""The lifecycle tables of core/lifecycle.py: refusals, invariants, derived eligibility.

Random event sequences (hypothesis) drive the revision, worker and session tables; the
invariants must hold after every accepted event, and a refused event must change
nothing.  docs/design.md's state diagrams must be the ones the tables generate.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from holdover.core.errors import Refused
from holdover.core.lifecycle import (
    REVISION_TRANSITIONS,
    SESSION_START,
    SESSION_TRANSITIONS,
    WORKER_TRANSITIONS,
    RevisionEvent,
    RevisionState,
    SessionEvent,
    SessionState,
    WorkerEvent,
    WorkerState,
    check_revisions,
    diagram,
    next_state,
    revision_next,
    takes_new_sessions,
)

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s, e in itertools.product(RevisionState, RevisionEvent)
    if (s, e) not in REVISION_TRANSITIONS])
def test_a_revision_event_its_state_does_not_accept_is_refused_with_409(
        state: RevisionState, event: RevisionEvent) -> None:
    with pytest.raises(Refused) as exc:
        revision_next("v7", state, event)
    assert exc.value.status == 409
    assert str(exc.value).startswith(f"revision v7 is {state.value}: cannot {event.value} (")


def test_the_sentence_names_what_would_be_allowed() -> None:
    with pytest.raises(Refused, match="only a draining revision can be retired"):
        revision_next("v1", RevisionState.ACTIVE, RevisionEvent.RETIRE)


def test_terminal_worker_states_accept_nothing() -> None:
    for state in (WorkerState.STOPPED, WorkerState.FAILED):
        for event in WorkerEvent:
            with pytest.raises(Refused):
                next_state(WORKER_TRANSITIONS, state, event, "worker w")


class Revisions:
    """The smallest owner of several revisions: applies events as the manager does."""

    def __init__(self, n: int) -> None:
        self.states = {f"v{i}": RevisionState.STARTING for i in range(n)}

    def apply(self, rid: str, event: RevisionEvent) -> bool:
        new = revision_next(rid, self.states[rid], event)
        check_revisions((r, new if r == rid else s) for r, s in self.states.items())
        self.states[rid] = new
        return True


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(RevisionEvent))),
                max_size=60))
@settings(max_examples=300)
def test_random_revision_events_keep_one_active_and_at_most_one_canary(
        events: list[tuple[int, RevisionEvent]]) -> None:
    revs = Revisions(4)
    for i, event in events:
        rid = f"v{i}"
        before = dict(revs.states)
        try:
            revs.apply(rid, event)
        except Refused as exc:
            assert exc.status == 409
            assert revs.states == before, "a refused event changes nothing"
            continue
        states = list(revs.states.values())
        assert states.count(RevisionState.ACTIVE) <= 1
        assert states.count(RevisionState.CANARY) <= 1
        assert revs.states[rid] is REVISION_TRANSITIONS[(before[rid], event)]


@given(st.lists(st.sampled_from(list(WorkerEvent)), max_size=40), st.booleans(),
       st.booleans(), st.booleans(), st.sampled_from(list(RevisionState)))
@settings(max_examples=300)
def test_random_worker_events_and_who_takes_new_sessions(
        events: list[WorkerEvent], healthy: bool, disabled: bool, retiring: bool,
        revision: RevisionState) -> None:
    state = WorkerState.STARTING
    for event in events:
        try:
            state = next_state(WORKER_TRANSITIONS, state, event, "worker w")  # type: ignore[assignment]
        except Refused:
            continue
        takes = takes_new_sessions(revision, state, healthy, disabled, retiring)
        if takes:
            # A retiring, disabled, unhealthy or not-ready worker never takes a session;
            # nor does a worker of a revision that is not active or the canary.
            assert state is WorkerState.READY and healthy and not disabled and not retiring
            assert revision in (RevisionState.ACTIVE, RevisionState.CANARY)
    if state in (WorkerState.STOPPED, WorkerState.FAILED):
        assert not takes_new_sessions(revision, state, True, False, False)


def test_a_rolling_deploys_new_workers_take_requests_while_starting() -> None:
    assert takes_new_sessions(RevisionState.STARTING, WorkerState.READY, True, False, False,
                              rolling_in=True)
    assert not takes_new_sessions(RevisionState.STARTING, WorkerState.READY, True, False,
                                  False)


@given(st.lists(st.sampled_from(list(SessionEvent)), min_size=1, max_size=20))
def test_random_session_events(events: list[SessionEvent]) -> None:
    if events[0] not in SESSION_START:
        return
    state = SESSION_START[events[0]]
    became_live = state is SessionState.LIVE
    for event in events[1:]:
        terminal = state in (SessionState.ENDED, SessionState.LOST)
        try:
            state = next_state(SESSION_TRANSITIONS, state, event, "session")  # type: ignore[assignment]
        except Refused:
            continue
        assert not terminal, "nothing brings an ended or lost session back"
        became_live |= state is SessionState.LIVE
    if state is SessionState.LOST:
        assert became_live, "only a session that was live can be lost (and counted)"


def test_design_doc_diagrams_are_generated_from_the_tables() -> None:
    text = DESIGN.read_text()
    for name, table, initial in (
            ("revision", REVISION_TRANSITIONS, [RevisionState.STARTING]),
            ("worker", WORKER_TRANSITIONS, [WorkerState.STARTING]),
            ("session", SESSION_TRANSITIONS, list(SESSION_START.values()))):
        block = f"```mermaid\n{diagram(table, initial)}\n```"
        assert block in text, f"docs/design.md: the {name} diagram is out of date; it " \
            f"must read:\n{block}"


def test_the_drain_plan_stops_only_idle_workers_not_already_stopping() -> None:
    from holdover.core.policy import workers_to_stop
    plan = workers_to_stop([("a", 0, 0), ("b", 1, 0), ("c", 0, 2), ("d", 0, 0)], ["d"])
    assert plan == ["a"], "in flight (b), sessions (c) and already stopping (d) stay"
