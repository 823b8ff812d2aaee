"""Routing scores, reputation from evidence, and reconciliation."""

from __future__ import annotations

import dataclasses
import statistics

from hypothesis import given
from hypothesis import strategies as st

from protocol.jobs import InputRef, JobSpec
from protocol.reconcile import JobRecord, reconcile
from protocol.reputation import (
    AVAILABILITY_WINDOW_MS,
    EVIDENCE_KINDS,
    Evidence,
    ReputationTally,
    compute_reputation,
)
from protocol.routing import Candidate, rank_workers
from tests.protocol.test_messages import samples
from tests.protocol.vectors import identities

IDS = identities()
CLIENT = IDS[0].did
AD = next(m for m in samples() if m.TYPE == "cap_ad")
SRC = InputRef(b"\x01" * 32, 10_000_000)
SPEC = JobSpec("media.transcode", {"height": 360}, {"source": SRC}, CLIENT, b"n" * 16)


def cand(did: str, **ad_changes: object) -> Candidate:
    return Candidate(did=did, ad=dataclasses.replace(AD, **ad_changes))  # type: ignore[arg-type]


def test_filters_name_their_reason_and_scores_break_down() -> None:
    price = {"noop": 1, "media.transcode": 100}
    candidates = [
        cand("did:key:zA", prices=price, load=0.0),
        cand("did:key:zB", prices=price, load=0.9),
        cand("did:key:zC", prices={"noop": 1}, runtimes={"noop": {}}),
        cand("did:key:zD", prices={**price, "media.transcode": 10**9}),
        cand("did:key:zE", prices=price, load=1.0),
        Candidate("did:key:zF", dataclasses.replace(AD, prices=price), reputation=0.1),
        cand("did:key:zG", prices=price, content=(SRC.sha256,), load=0.0),
    ]
    ranked = rank_workers(SPEC, candidates, max_price=10**7, want=2, now=0)
    by_did = {r.did: r for r in ranked}
    assert [r.did for r in ranked if r.reason == "selected"] == ["did:key:zG", "did:key:zA"]
    assert by_did["did:key:zG"].breakdown["transfer"] == 0.0  # holds the input
    assert by_did["did:key:zA"].breakdown["transfer"] > 0.0
    assert by_did["did:key:zB"].reason == "not selected: rank 3"
    assert "does not offer" in by_did["did:key:zC"].reason
    assert "price" in by_did["did:key:zD"].reason
    assert "busy" in by_did["did:key:zE"].reason
    assert "reputation" in by_did["did:key:zF"].reason
    ranked = rank_workers(SPEC, candidates, max_price=10**7, want=2, now=0, exclude=["did:key:zG"])
    assert ranked[0].did == "did:key:zA"


def test_codec_support_is_checked_against_the_runtime() -> None:
    runtime = {"media.transcode": {"video_codecs": ["h264"]}, "noop": {}}
    vp9 = JobSpec(
        "media.transcode", {"height": 360, "video_codec": "vp9"}, {"source": SRC}, CLIENT, b"n" * 16
    )
    ranked = rank_workers(
        vp9, [cand("did:key:zA", runtimes=runtime)], max_price=10**18, want=1, now=0
    )
    assert ranked[0].reason == "runtime lacks video_codec=vp9"


def test_reputation_counts_evidence_once_and_penalises_wrong_results() -> None:
    w = IDS[1].did
    good = [
        Evidence(
            w, "noop", "completed", 1, job_id=bytes([i]) * 34, runtime_ms=100 + i, hw_class="cpu-2"
        )
        for i in range(4)
    ]
    rep = compute_reputation(good + good, worker=w, job_class="noop", now=10)
    assert rep.completed == 4
    assert rep.score == 5 / 6
    assert rep.median_runtime_ms == {"cpu-2": 101.5}
    bad = compute_reputation(
        [*good, Evidence(w, "noop", "verify_failed", 2, job_id=b"x" * 34)],
        worker=w,
        job_class="noop",
        now=10,
    )
    assert bad.score < rep.score
    assert bad.verification_failure_rate == 0.2
    unknown = compute_reputation([], worker=w, job_class="noop", now=10)
    assert unknown.score == 0.5


@given(
    st.lists(st.sampled_from(["completed", "verify_failed", "timeout", "disputed"]), max_size=30)
)
def test_reputation_score_bounded(kinds: list[str]) -> None:
    ev = [Evidence("w", "noop", k, 1, job_id=i.to_bytes(34, "big")) for i, k in enumerate(kinds)]
    score = compute_reputation(ev, worker="w", job_class="noop", now=5).score
    assert 0.0 < score < 1.0


def test_reconcile_finds_each_kind_of_mismatch() -> None:
    def rec(n: int, state: str, **kw: object) -> JobRecord:
        base = {
            "job_id": f"job{n}",
            "chain_job_id": f"0x{n:064x}",
            "role": "client",
            "state": state,
            "deadline_s": 100,
            "funded": True,
            "reveals": 2,
            "passed_verdicts": 2,
        }
        return JobRecord(**{**base, **kw})  # type: ignore[arg-type]

    def ev(n: int, event: str) -> dict[str, object]:
        return {"job_id": f"0x{n:064x}", "event": event}

    records = [
        rec(1, "settled"),  # clean
        rec(2, "settled"),  # not paid on chain
        rec(3, "running"),  # paid on chain, not settled here
        rec(4, "settled"),  # paid twice
        rec(5, "running"),  # open past deadline
        rec(6, "settled", passed_verdicts=0, reveals=0),  # no evidence of verification
        rec(7, "refunded"),  # refunded here only
        rec(8, "settled"),  # refunded on chain only
        rec(9, "failed"),  # a failed attempt, refunded: as it should be
        rec(10, "failed"),  # a failed attempt, paid: not as it should be
    ]
    events = [
        ev(1, "opened"),
        ev(1, "released"),
        ev(2, "opened"),
        ev(3, "opened"),
        ev(3, "claimed"),
        ev(4, "opened"),
        ev(4, "released"),
        ev(4, "claimed"),
        ev(5, "opened"),
        ev(6, "opened"),
        ev(6, "released"),
        ev(7, "opened"),
        ev(8, "opened"),
        ev(8, "refunded"),
        ev(9, "opened"),
        ev(9, "refunded"),
        ev(10, "opened"),
        ev(10, "released"),
    ]
    found = {(m.job_id, m.kind) for m in reconcile(records, events, now_s=200)}
    assert found == {
        ("job2", "settled_not_paid"),
        ("job2", "escrow_open_past_deadline"),
        ("job3", "paid_not_settled"),
        ("job4", "paid_twice"),
        ("job5", "escrow_open_past_deadline"),
        ("job6", "settled_without_result"),
        ("job6", "settled_without_verdict"),
        ("job7", "refunded_not_on_chain"),
        ("job7", "escrow_open_past_deadline"),
        ("job8", "settled_not_paid"),
        ("job8", "refunded_on_chain_only"),
        ("job10", "paid_not_settled"),
    }
    assert reconcile(records[:1], events, now_s=200) == []


_EVIDENCE = st.builds(
    Evidence,
    worker=st.sampled_from(["did:key:a", "did:key:b"]),
    job_class=st.sampled_from(["noop", "media.probe"]),
    kind=st.sampled_from(sorted(EVIDENCE_KINDS)),
    at=st.integers(0, 3 * AVAILABILITY_WINDOW_MS),
    job_id=st.sampled_from([b"", b"\x01" * 34, b"\x02" * 34, b"\x03" * 34]),
    runtime_ms=st.none() | st.integers(0, 10_000),
    hw_class=st.sampled_from(["", "cpu-2", "gpu"]),
    source=st.sampled_from(["", "receipt:1", "verdict:2", "escrow:3"]),
)


@given(
    st.lists(
        st.tuples(st.lists(_EVIDENCE, max_size=8), st.integers(0, AVAILABILITY_WINDOW_MS)),
        max_size=12,
    )
)
def test_a_running_tally_equals_counting_all_the_evidence_again(
    steps: list[tuple[list[Evidence], int]],
) -> None:
    """The node keeps one ReputationTally per worker and adds evidence as it arrives;
    after any additions, at any later time, it says what compute_reputation says of
    everything added so far."""
    tally = ReputationTally("did:key:a")
    added: list[Evidence] = []
    now = 0
    for batch, step in steps:
        for ev in batch:
            tally.add(ev)
            added.append(ev)
        now += step
        for job_class in ("noop", "media.probe"):
            expected = compute_reputation(added, worker="did:key:a", job_class=job_class, now=now)
            assert tally.reputation(job_class, now) == expected


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=30))
def test_median_runtime_is_the_statistics_median(runtimes: list[int]) -> None:
    evidence = [
        Evidence("did:key:a", "noop", "completed", 1, job_id=bytes([i]) * 34, runtime_ms=r,
                 hw_class="cpu-2")
        for i, r in enumerate(runtimes)
    ]  # fmt: skip
    rep = compute_reputation(evidence, worker="did:key:a", job_class="noop", now=2)
    assert rep.median_runtime_ms == {"cpu-2": statistics.median(runtimes)}
    tally = ReputationTally("did:key:a")
    for ev in evidence:
        tally.add(ev)
    assert tally.reputation("noop", 2).median_runtime_ms == {"cpu-2": statistics.median(runtimes)}
