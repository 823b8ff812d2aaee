"""Check results and the report that gathers them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Check", "Report", "fail", "passed", "skipped"]

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    """One named verification check and why it passed, failed or was skipped."""

    name: str
    status: Status
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def passed(name: str, detail: str = "") -> Check:
    return Check(name, "pass", detail)


def fail(name: str, detail: str) -> Check:
    return Check(name, "fail", detail)


def skipped(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


@dataclass(frozen=True)
class Report:
    """All checks run on one result. It passes only if nothing failed and at least one
    substantive check passed: an empty or all-skipped report never passes."""

    checks: tuple[Check, ...]

    @classmethod
    def of(cls, checks: Iterable[Check]) -> Report:
        return cls(tuple(checks))

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def passed(self) -> bool:
        return not self.failures and any(c.status == "pass" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_json() for c in self.checks]}
