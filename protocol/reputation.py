"""Reputation per worker and job class, computed from evidence anyone can check.

Evidence is a list of records, each derived from something signed or on chain: a
receipt signed by the client and countersigned by the worker (completed), a verdict
signed by a verifier (verification failed), escrow events (slashed, disputed), a
client's signed job event (timeout), a gossiped ad (seen). The node that gathers them
checks the signatures; this module only counts.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EVIDENCE_KINDS", "Evidence", "Reputation", "compute_reputation"]

EvidenceKind = Literal["completed", "verify_failed", "timeout", "disputed", "slashed", "seen"]
EVIDENCE_KINDS: frozenset[str] = frozenset(
    {"completed", "verify_failed", "timeout", "disputed", "slashed", "seen"}
)
AVAILABILITY_WINDOW_MS = 3_600_000
AVAILABILITY_BUCKET_MS = 300_000


@dataclass(frozen=True, slots=True)
class Evidence:
    worker: str  # DID
    job_class: str
    kind: str  # one of EVIDENCE_KINDS
    at: int  # ms
    job_id: bytes = b""
    runtime_ms: int | None = None  # for "completed"
    hw_class: str = ""
    source: str = ""  # what proves it: "receipt:<hash>", "verdict:<hash>", "escrow:<tx>"

    def __post_init__(self) -> None:
        if self.kind not in EVIDENCE_KINDS:
            raise ValueError(f"unknown evidence kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Reputation:
    worker: str
    job_class: str
    completed: int
    verify_failed: int
    timeouts: int
    disputes: int
    slashed: int
    completion_rate: float
    verification_failure_rate: float
    median_runtime_ms: dict[str, float] = field(default_factory=dict)  # by hardware class
    availability: float = 0.0  # share of recent 5-minute buckets with an ad seen
    score: float = 0.5

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "job_class": self.job_class,
            "completed": self.completed,
            "verify_failed": self.verify_failed,
            "timeouts": self.timeouts,
            "disputes": self.disputes,
            "slashed": self.slashed,
            "completion_rate": round(self.completion_rate, 4),
            "verification_failure_rate": round(self.verification_failure_rate, 4),
            "median_runtime_ms": self.median_runtime_ms,
            "availability": round(self.availability, 4),
            "score": round(self.score, 4),
        }


def compute_reputation(
    evidence: Iterable[Evidence], *, worker: str, job_class: str, now: int
) -> Reputation:
    """Counts and rates for one worker and job class; `score` in 0..1 (0.5 when unknown).

    score = (completed + 1) / (completed + 2 × (failed + slashed) + timeouts + disputes + 2):
    a Laplace-smoothed success rate in which a wrong result weighs twice a timeout.
    The same job counts once per kind, so replaying evidence cannot inflate it.
    """
    seen: set[tuple[str, bytes, str]] = set()
    counts = dict.fromkeys(EVIDENCE_KINDS, 0)
    runtimes: dict[str, list[int]] = {}
    buckets: set[int] = set()
    for ev in evidence:
        if ev.worker != worker:
            continue
        if ev.kind == "seen":
            if now - AVAILABILITY_WINDOW_MS < ev.at <= now:
                buckets.add((now - ev.at) // AVAILABILITY_BUCKET_MS)
            continue
        if ev.job_class != job_class:
            continue
        key = (ev.kind, ev.job_id, ev.source if not ev.job_id else "")
        if key in seen:
            continue
        seen.add(key)
        counts[ev.kind] += 1
        if ev.kind == "completed" and ev.runtime_ms is not None:
            runtimes.setdefault(ev.hw_class or "unknown", []).append(ev.runtime_ms)
    done, failed = counts["completed"], counts["verify_failed"]
    attempts = done + failed + counts["timeout"]
    bad = 2 * (failed + counts["slashed"]) + counts["timeout"] + counts["disputed"]
    return Reputation(
        worker=worker,
        job_class=job_class,
        completed=done,
        verify_failed=failed,
        timeouts=counts["timeout"],
        disputes=counts["disputed"],
        slashed=counts["slashed"],
        completion_rate=done / attempts if attempts else 0.0,
        verification_failure_rate=failed / (done + failed) if done + failed else 0.0,
        median_runtime_ms={hw: statistics.median(v) for hw, v in sorted(runtimes.items())},
        availability=len(buckets) / (AVAILABILITY_WINDOW_MS // AVAILABILITY_BUCKET_MS),
        score=(done + 1) / (done + bad + 2),
    )
