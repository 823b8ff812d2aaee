"""The error taxonomy of c0: who is at fault decides the exception type."""

from __future__ import annotations


class C0Error(Exception):
    """Base of every error c0 raises on purpose; `code` is stable and machine-readable."""

    code: str = "error"
    exit_code: int = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class PeerProtocolError(C0Error):
    """A remote peer sent something invalid: bytes, a signature, a message, a stale nonce.

    `reason` is one of the codes listed in spec/envelope.md; the peer is to be penalised,
    never trusted.
    """

    code = "peer_protocol_error"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason, code=reason)
        self.reason = reason
        self.detail = detail


class LocalProtocolError(C0Error):
    """We tried to do something the protocol forbids (a bug or a bad call on our side)."""

    code = "local_protocol_error"


class InvalidMessage(PeerProtocolError):
    """A message whose fields do not satisfy its schema."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_message", detail)


class InvalidJobSpec(C0Error):
    """A job spec or job parameters that the job class registry rejects."""

    code = "invalid_job_spec"
    exit_code = 2


class IllegalTransition(LocalProtocolError):
    """A job state machine event that is not allowed in the current state."""

    code = "illegal_transition"

    def __init__(self, state: str, event: str, detail: str = "") -> None:
        msg = f"event {event!r} is not allowed in state {state!r}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
        self.state = state
        self.event = event


class UserError(C0Error):
    """Bad input from the person at the keyboard (a missing file, a bad flag)."""

    code = "user_error"
    exit_code = 2
