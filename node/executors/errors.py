"""Executor failure codes (the table in spec/executors.md) and the exception carrying one."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["FAILURES", "ExecutorError", "Failure", "exit_code_for"]


@dataclass(frozen=True, slots=True)
class Failure:
    """One documented way a job can fail: a stable code, a process exit code, a meaning."""

    code: str
    exit_code: int
    meaning: str


# Exit codes 10-29 are reserved for job failures, so they never collide with the CLI's
# own 1 (error) and 2 (usage / invalid job spec).
_TABLE = (
    Failure(
        "invalid_input",
        10,
        "an input is not what the job class reads (corrupt, truncated, "
        "empty, wrong kind of file, size differs from the spec)",
    ),
    Failure(
        "unsupported_parameter",
        11,
        "the spec is valid but this runtime cannot honour a "
        "parameter (codec not built in, no audio stream to encode, ...)",
    ),
    Failure(
        "limit_exceeded",
        12,
        "an input exceeds a limit of the job class (source resolution, "
        "prompt longer than the context window, ...)",
    ),
    Failure(
        "timeout",
        13,
        "the wall-clock limit (or the CPU-time backstop) ran out; the child "
        "process group was killed",
    ),
    Failure(
        "out_of_memory",
        14,
        "the job hit its memory limit (RLIMIT_AS) or was killed by the kernel's OOM killer",
    ),
    Failure("cancelled", 15, "the executor was asked to cancel the job"),
    Failure("crashed", 16, "the child process died from a signal (e.g. SIGSEGV) without a report"),
    Failure(
        "output_violation",
        17,
        "the job tried to write outside its output folder or produced "
        "an artifact that is not a regular file inside it",
    ),
    Failure("internal_error", 19, "a bug in the executor; the message has the details"),
)

FAILURES = MappingProxyType({f.code: f for f in _TABLE})


def exit_code_for(code: str) -> int:
    """The process exit code of a failure code (internal_error's for unknown codes)."""
    return FAILURES.get(code, FAILURES["internal_error"]).exit_code


class ExecutorError(Exception):
    """A job failed with one of the codes in FAILURES; `code` and `exit_code` say which.

    Deliberately not a protocol.C0Error: the job child imports this module and must not
    pay for importing the `protocol` package (its start-up budget is 150 ms).
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in FAILURES:
            raise ValueError(f"undocumented executor failure code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = FAILURES[code].exit_code
