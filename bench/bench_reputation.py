"""Routing's reputation look-up as a worker's history grows: one new piece of evidence and
a fresh score (what routing asks for after every verdict about that worker), by the
running tally a node keeps (`ReputationTally`) and, as the baseline in the same run, by
counting the whole history again (`compute_reputation`, what the node did before)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from protocol.reputation import Evidence, ReputationTally, compute_reputation

RESULTS = Path(__file__).parent / "results" / "reputation.json"
WORKER = "did:key:z6Mkbench"
SIZES = (100, 1_000, 10_000)
ROUNDS = 5


def _evidence(i: int) -> Evidence:
    return Evidence(
        WORKER, "noop", "completed" if i % 10 else "timeout", i,
        job_id=b"\x12\x20" + i.to_bytes(32, "big"), runtime_ms=i % 97, hw_class="cpu-2",
    )  # fmt: skip


def _per_update_us(history: int, tallied: bool, updates: int) -> float:
    """Median over ROUNDS of the µs one update + score costs with `history` behind it."""
    times = []
    for r in range(ROUNDS):
        evidence = [_evidence(i) for i in range(history)]
        tally = ReputationTally(WORKER)
        for ev in evidence:
            tally.add(ev)
        start = time.perf_counter()
        for k in range(updates):
            ev = _evidence(history + r * updates + k)
            if tallied:
                tally.add(ev)
                tally.reputation("noop", ev.at)
            else:
                evidence.append(ev)
                compute_reputation(evidence, worker=WORKER, job_class="noop", now=ev.at)
        times.append((time.perf_counter() - start) / updates * 1e6)
    return round(statistics.median(times), 1)


def main() -> None:
    rows = []
    for history in SIZES:
        updates = max(20, 20_000 // history)
        rows.append(
            {
                "history": history,
                "tally_us": _per_update_us(history, True, updates),
                "baseline_recount_us": _per_update_us(history, False, updates),
            }
        )
    result = {"load_avg": [round(x, 2) for x in os.getloadavg()], "per_update": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
