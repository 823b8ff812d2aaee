"""The job state machine: table rules and Hypothesis stateful properties."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocol.errors import IllegalTransition
from protocol.state import TERMINAL, TRANSITIONS, Event, JobMachine, State, mermaid_diagram


def test_illegal_transition_names_state_and_event() -> None:
    machine = JobMachine()
    with pytest.raises(IllegalTransition, match=r"'settle|release'.*'requested'"):
        machine.handle(Event.RELEASE)
    assert machine.state is State.REQUESTED


def test_every_state_is_reachable_and_nonterminal_states_can_move() -> None:
    targets = {nxt for nxt in TRANSITIONS.values()} | {State.REQUESTED}
    assert targets == set(State)
    sources = {s for s, _ in TRANSITIONS}
    assert sources == set(State) - TERMINAL


def test_diagram_is_drawn_from_the_table() -> None:
    diagram = mermaid_diagram()
    for (state, event), nxt in TRANSITIONS.items():
        assert f"{state} --> {nxt}: {event}" in diagram


class JobLifecycle(RuleBasedStateMachine):
    """Random event sequences, legal or not, against the invariants of DESIGN.md."""

    def __init__(self) -> None:
        super().__init__()
        self.max_attempts = 3
        self.machine = JobMachine(max_attempts=self.max_attempts)
        self.history: list[State] = [self.machine.state]
        self.steps = 0

    @rule(event=st.sampled_from(list(Event)))
    def any_event(self, event: Event) -> None:
        before = self.machine.state
        allowed = event in self.machine.allowed()
        try:
            self.machine.handle(event)
        except IllegalTransition:
            assert not allowed
            assert self.machine.state is before  # a refused event changes nothing
        else:
            assert allowed
            self.history.append(self.machine.state)
        self.steps += 1

    @precondition(lambda self: not self.machine.terminal)
    @rule(data=st.data())
    def legal_event(self, data: st.DataObject) -> None:
        allowed = self.machine.allowed()
        assert allowed, f"non-terminal state {self.machine.state} has no way out"
        self.machine.handle(data.draw(st.sampled_from(allowed)))
        self.history.append(self.machine.state)

    @invariant()
    def settled_only_after_verified(self) -> None:
        if State.SETTLED in self.history:
            assert State.VERIFIED in self.history[: self.history.index(State.SETTLED)]

    @invariant()
    def attempts_within_limit(self) -> None:
        assert self.machine.attempt <= self.max_attempts
        assert self.history.count(State.ASSIGNED) <= self.max_attempts

    @invariant()
    def terminal_stays_terminal(self) -> None:
        for i, state in enumerate(self.history):
            if state in TERMINAL:
                assert all(s is state for s in self.history[i:])


TestJobLifecycle = JobLifecycle.TestCase
TestJobLifecycle.settings = settings(max_examples=200, stateful_step_count=40)


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_legal_paths_always_end_within_a_bound(max_attempts: int) -> None:
    """Exhaustively, every path of legal events ends in a terminal state within a bound."""
    longest = 0
    stack: list[tuple[JobMachine, int]] = [(JobMachine(max_attempts=max_attempts), 0)]
    while stack:
        machine, depth = stack.pop()
        if machine.terminal:
            longest = max(longest, depth)
            continue
        assert depth < 100, "a path without end"
        for event in machine.allowed():
            child = JobMachine(
                machine.max_attempts, machine.state, machine.attempt, machine.verified
            )
            child.handle(event)
            stack.append((child, depth + 1))
    assert longest <= 4 + 4 * max_attempts + 2
