"""Reconciliation: match a node's job records, submissions and verdicts against the
escrow events on chain, and list every mismatch. Pure; `c0 reconcile` feeds it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobRecord", "Mismatch", "reconcile"]

_PAYOUT_EVENTS = ("released", "claimed")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What this node believes about one job it took part in."""

    job_id: str  # printable job ID
    chain_job_id: str  # 0x + 32-byte digest, as the escrow names it
    role: str  # "client" or "worker"
    state: str  # the state machine's state
    deadline_s: int  # escrow deadline (chain time, seconds); 0 if never funded
    funded: bool
    reveals: int = 0  # result reveals received (client) or sent (worker)
    passed_verdicts: int = 0
    failed_verdicts: int = 0
    paid_workers: Sequence[str] = field(default_factory=tuple)  # eth addresses paid


@dataclass(frozen=True, slots=True)
class Mismatch:
    job_id: str
    kind: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"job_id": self.job_id, "kind": self.kind, "detail": self.detail}


def _chain_view(events: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    view: dict[str, Counter[str]] = {}
    for ev in events:
        job = str(ev.get("job_id", "")).lower()
        view.setdefault(job, Counter())[str(ev.get("event", ""))] += 1
    return view


def reconcile(
    records: Iterable[JobRecord],
    chain_events: Iterable[Mapping[str, Any]],
    *,
    now_s: int,
    grace_s: int = 0,
) -> list[Mismatch]:
    """Every disagreement between local records and the chain, one Mismatch each.

    Checks: settled here but not paid on chain; paid on chain but not settled here; paid
    twice; refunded here but not on chain (and the reverse); funded here but never opened
    on chain; escrow open past its deadline; settled without a passing verdict or a
    reveal; a worker paid whose result failed verification.
    """
    view = _chain_view(chain_events)
    out: list[Mismatch] = []
    for rec in records:
        chain = view.get(rec.chain_job_id.lower(), Counter())
        paid = sum(chain[e] for e in _PAYOUT_EVENTS) + chain["resolved"]
        terminal_on_chain = paid + chain["refunded"]

        def add(kind: str, detail: str, rec: JobRecord = rec) -> None:
            out.append(Mismatch(rec.job_id, kind, detail))

        if rec.funded and not chain["opened"]:
            add("funded_not_on_chain", "recorded as funded but no Opened event")
        if rec.state == "settled" and paid == 0:
            add("settled_not_paid", "settled here but not released or claimed on chain")
        if paid and rec.state not in ("settled", "refunded"):
            add("paid_not_settled", f"paid on chain but {rec.state} here")
        if paid > 1:
            add("paid_twice", f"{paid} payout events on chain")
        if rec.state == "refunded" and rec.funded and not (chain["refunded"] or chain["resolved"]):
            add("refunded_not_on_chain", "refunded here but no Refunded event")
        # a failed attempt's escrow is meant to go back to the client
        if chain["refunded"] and rec.state not in ("refunded", "failed"):
            add("refunded_on_chain_only", f"refunded on chain but {rec.state} here")
        if (
            chain["opened"]
            and not terminal_on_chain
            and not chain["disputed"]
            and rec.deadline_s
            and now_s > rec.deadline_s + grace_s
        ):
            add("escrow_open_past_deadline", f"deadline {rec.deadline_s}, now {now_s}")
        if rec.state == "settled" and rec.role == "client":
            if rec.reveals == 0:
                add("settled_without_result", "no result reveal recorded")
            if rec.passed_verdicts == 0 and not chain["claimed"]:
                add("settled_without_verdict", "no passing verdict recorded")
        if rec.failed_verdicts and rec.passed_verdicts == 0 and chain["released"]:
            add("paid_failed_result", "released although every verdict failed")
    return out
