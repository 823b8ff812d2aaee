"""The job state machine: one table, no I/O. Timeouts arrive as events.

`TRANSITIONS[(state, event)]` is the next state. Two events carry guards, written next
to the table: `retry` is allowed only while attempts remain, and `settle` only once the
job has passed verification. spec/job-lifecycle.md is generated from this table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocol.errors import IllegalTransition

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "TERMINAL",
    "TRANSITIONS",
    "Event",
    "JobMachine",
    "State",
    "mermaid_diagram",
]

DEFAULT_MAX_ATTEMPTS = 3


class State(enum.StrEnum):
    REQUESTED = "requested"
    FUNDED = "funded"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUBMITTED = "submitted"
    VERIFIED = "verified"
    SETTLED = "settled"
    DISPUTED = "disputed"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"


class Event(enum.StrEnum):
    FUND = "fund"  # the escrow is open on chain
    CANCEL = "cancel"  # the client withdraws a job nobody funded
    ASSIGN = "assign"  # workers accepted the assignment
    START = "start"  # the first worker reports running
    SUBMIT = "submit"  # results committed and revealed
    VERIFY_PASS = "verify_pass"  # checks and agreement passed
    VERIFY_FAIL = "verify_fail"  # no result passed verification
    QUORUM = "quorum"  # on-chain quorum of matching reveals (client absent)
    RELEASE = "release"  # client's signed receipt released the escrow
    CLAIM = "claim"  # workers claimed on chain after quorum
    DISPUTE = "dispute"  # client or worker froze the escrow
    RULING_PAY = "ruling_pay"  # arbiter: the work stands, pay out
    RULING_REFUND = "ruling_refund"  # arbiter: return the escrow to the client
    WORKER_FAILED = "worker_failed"  # a worker reported failure or died
    START_TIMEOUT = "start_timeout"  # assigned, nobody started in time
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"  # running, heartbeats stopped
    DEADLINE = "deadline"  # the job's deadline passed
    RETRY = "retry"  # a new attempt of the same job ID
    REFUND = "refund"  # escrow returned to the client


S, E = State, Event

TRANSITIONS: Mapping[tuple[State, Event], State] = MappingProxyType(
    {
        (S.REQUESTED, E.FUND): S.FUNDED,
        (S.REQUESTED, E.CANCEL): S.CANCELLED,
        (S.REQUESTED, E.DEADLINE): S.CANCELLED,
        (S.FUNDED, E.ASSIGN): S.ASSIGNED,
        (S.FUNDED, E.DEADLINE): S.EXPIRED,
        (S.ASSIGNED, E.START): S.RUNNING,
        (S.ASSIGNED, E.WORKER_FAILED): S.FAILED,
        (S.ASSIGNED, E.START_TIMEOUT): S.FAILED,
        (S.ASSIGNED, E.DEADLINE): S.EXPIRED,
        (S.RUNNING, E.SUBMIT): S.SUBMITTED,
        (S.RUNNING, E.WORKER_FAILED): S.FAILED,
        (S.RUNNING, E.HEARTBEAT_TIMEOUT): S.FAILED,
        (S.RUNNING, E.DEADLINE): S.EXPIRED,
        (S.SUBMITTED, E.VERIFY_PASS): S.VERIFIED,
        (S.SUBMITTED, E.QUORUM): S.VERIFIED,
        (S.SUBMITTED, E.VERIFY_FAIL): S.FAILED,
        (S.SUBMITTED, E.DISPUTE): S.DISPUTED,
        (S.SUBMITTED, E.DEADLINE): S.EXPIRED,
        (S.VERIFIED, E.RELEASE): S.SETTLED,
        (S.VERIFIED, E.CLAIM): S.SETTLED,
        (S.VERIFIED, E.DISPUTE): S.DISPUTED,
        (S.VERIFIED, E.DEADLINE): S.EXPIRED,
        (S.DISPUTED, E.RULING_PAY): S.SETTLED,
        (S.DISPUTED, E.RULING_REFUND): S.REFUNDED,
        (S.FAILED, E.RETRY): S.ASSIGNED,
        (S.FAILED, E.REFUND): S.REFUNDED,
        (S.EXPIRED, E.REFUND): S.REFUNDED,
    }
)

TERMINAL: frozenset[State] = frozenset({S.SETTLED, S.REFUNDED, S.CANCELLED})


@dataclass(slots=True)
class JobMachine:
    """One job's lifecycle. `attempt` counts assignments; retries are new attempts."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    state: State = State.REQUESTED
    attempt: int = 0
    verified: bool = False  # passed verification (or quorum) at some point

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def allowed(self) -> list[Event]:
        """Events the machine accepts now (guards included)."""
        return [e for e in Event if self._next(e) is not None]

    def _next(self, event: Event) -> State | None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            return None
        if event is Event.RETRY and self.attempt >= self.max_attempts:
            return None
        if event is Event.RULING_PAY and not self.verified:
            # A dispute raised before verification cannot pay out: nobody has shown the
            # work is right. The arbiter then refunds, or the job is verified first.
            return None
        return nxt

    def handle(self, event: Event | str) -> State:
        """Apply `event`; return the new state or raise IllegalTransition."""
        try:
            ev = Event(event)
        except ValueError:
            raise IllegalTransition(str(self.state), str(event), "unknown event") from None
        nxt = self._next(ev)
        if nxt is None:
            detail = ""
            if (self.state, ev) in TRANSITIONS:
                detail = (
                    f"attempt limit {self.max_attempts} reached"
                    if ev is Event.RETRY
                    else "the job was never verified"
                )
            elif self.terminal:
                detail = "the job is in a terminal state"
            raise IllegalTransition(str(self.state), str(ev), detail)
        if ev in (Event.ASSIGN, Event.RETRY):
            self.attempt += 1
        if ev in (Event.VERIFY_PASS, Event.QUORUM):
            self.verified = True
        self.state = nxt
        return nxt


def transitions_by_state() -> Iterator[tuple[State, list[tuple[Event, State]]]]:
    for state in State:
        yield state, [(e, n) for (s, e), n in TRANSITIONS.items() if s is state]


def mermaid_diagram() -> str:
    """The state diagram, drawn from TRANSITIONS (used for spec/job-lifecycle.md)."""
    lines = ["stateDiagram-v2", "    [*] --> requested"]
    for (state, event), nxt in TRANSITIONS.items():
        lines.append(f"    {state} --> {nxt}: {event}")
    for state in sorted(TERMINAL):
        lines.append(f"    {state} --> [*]")
    return "\n".join(lines)
