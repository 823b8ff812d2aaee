"""Reputation per worker and job class, computed from evidence anyone can check.

Evidence is a list of records, each derived from something signed or on chain: a
receipt signed by the client and countersigned by the worker (completed), a verdict
signed by a verifier (verification failed), escrow events (slashed, disputed), a
client's signed job event (timeout), a gossiped ad (seen). The node that gathers them
checks the signatures; this module only counts.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EVIDENCE_KINDS", "Evidence", "Reputation", "ReputationTally", "compute_reputation"]

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
    for values in runtimes.values():
        values.sort()
    return _reputation(worker, job_class, counts, runtimes, len(buckets))


def _median(ordered: list[int]) -> float:
    """statistics.median of a list already in order, without sorting it again."""
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _reputation(
    worker: str,
    job_class: str,
    counts: Mapping[str, int],
    runtimes: Mapping[str, list[int]],  # each list in order
    buckets: int,
) -> Reputation:
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
        median_runtime_ms={hw: _median(v) for hw, v in sorted(runtimes.items())},
        availability=buckets / (AVAILABILITY_WINDOW_MS // AVAILABILITY_BUCKET_MS),
        score=(done + 1) / (done + bad + 2),
    )


class ReputationTally:
    """`compute_reputation` for one worker, kept up to date one piece of evidence at a
    time: `add` is a set look-up and, for a runtime, an insert into a sorted list (a
    binary search and a move of machine words); `reputation` does not look at the history
    at all (only at the ads seen in the last availability window), where recounting the
    whole list grew with it (bench/bench_reputation.py).
    `reputation(job_class, now)` equals `compute_reputation(everything added, ...)` as long
    as `now` never goes back (the ads seen before the window are forgotten)."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._keys: set[tuple[str, str, bytes, str]] = set()
        self._counts: dict[str, dict[str, int]] = {}  # job class -> kind -> count
        self._runtimes: dict[str, dict[str, list[int]]] = {}  # job class -> hw -> sorted
        self._seen: list[int] = []  # when this worker's ads were seen

    def add(self, ev: Evidence) -> None:
        if ev.worker != self.worker:
            return
        if ev.kind == "seen":
            self._seen.append(ev.at)
            return
        key = (ev.job_class, ev.kind, ev.job_id, ev.source if not ev.job_id else "")
        if key in self._keys:
            return
        self._keys.add(key)
        counts = self._counts.setdefault(ev.job_class, dict.fromkeys(EVIDENCE_KINDS, 0))
        counts[ev.kind] += 1
        if ev.kind == "completed" and ev.runtime_ms is not None:
            by_hw = self._runtimes.setdefault(ev.job_class, {})
            bisect.insort(by_hw.setdefault(ev.hw_class or "unknown", []), ev.runtime_ms)

    def reputation(self, job_class: str, now: int) -> Reputation:
        self._seen = [at for at in self._seen if at > now - AVAILABILITY_WINDOW_MS]
        buckets = {(now - at) // AVAILABILITY_BUCKET_MS for at in self._seen if at <= now}
        counts = self._counts.get(job_class) or dict.fromkeys(EVIDENCE_KINDS, 0)
        runtimes = self._runtimes.get(job_class, {})
        return _reputation(self.worker, job_class, counts, runtimes, len(buckets))
