"""Bad input: the contract reverts with a clear reason; the node raises one SettlementError
with that reason and no funds move. Each case is checked against the contract directly
(bypassing the node's own checks) and through EscrowClient."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from node.chain.client import revert_reason
from protocol import settlement as S
from protocol.settlement import SettlementError
from tests.settlement.conftest import ETH, Parties


def jid() -> bytes:
    return hashlib.sha256(os.urandom(16)).digest()


def contract_reverts(p: Parties, sender: str, fn: str, *args: Any) -> str:
    """Send `fn(*args)` straight to the contract (no node-side checks); return the revert reason."""
    call = p.client.contract.get_function_by_name(fn)(*args)
    with pytest.raises(Exception) as info:
        call.transact({"from": sender})  # its gas estimate runs the call and raises
    reason = revert_reason(info.value)
    assert reason is not None, f"not a revert: {info.value!r}"
    return reason


@pytest.fixture
def unchanged(parties: Parties) -> Iterator[Parties]:
    """Fails the test if the contract's holdings or anyone's balance or stake changed."""
    p = parties
    everyone = [p.client, *p.workers, p.verifier, p.arbiter, p.outsider]
    before = (p.held(), [(c.balance(), c.stake_of()) for c in everyone])
    yield p
    assert (p.held(), [(c.balance(), c.stake_of()) for c in everyone]) == before


def opened(p: Parties, **kw: Any) -> S.EscrowTerms:
    terms = p.terms(jid(), **kw)
    (located,) = p.client.open([terms]).opened
    return located


def release_args(batch: list[S.EscrowTerms], expires: int, signature: bytes) -> tuple[Any, ...]:
    commons, jobs = S.group_terms(batch)
    return (commons, jobs, [t.located().as_abi() for t in batch], expires, signature)


def job_args(terms: S.EscrowTerms) -> tuple[Any, ...]:
    return (terms.common.as_abi(), S.job_abi(terms), terms.located().as_abi())


def test_malformed_receipt(parties: Parties) -> None:
    p = parties
    terms = opened(p)
    expires = p.chain.now() + 600
    good = p.client.sign_release([terms], expires)
    for bad in (
        good[:64],
        good[:64] + bytes([29]),
        good[:32] + (S.HALF_N + 1).to_bytes(32, "big") + good[64:],
    ):
        reason = contract_reverts(
            p, p.outsider.account.address, "release", *release_args([terms], expires, bad)
        )
        assert reason == "malformed signature"
        with pytest.raises(SettlementError, match="malformed signature"):
            p.outsider.release([terms], expires, bad)
    assert p.client.job_status(terms) == S.STATUS_OPEN


def test_wrong_signer_receipt(parties: Parties) -> None:
    p = parties
    terms = opened(p)
    expires = p.chain.now() + 600
    forged = p.workers[0].sign_release([terms], expires)  # a worker signs "the client pays me"
    reason = contract_reverts(
        p, p.workers[0].account.address, "release", *release_args([terms], expires, forged)
    )
    assert reason == "receipt not signed by the client"
    before = p.workers[0].balance()
    with pytest.raises(SettlementError, match="receipt not signed by the client"):
        p.workers[0].release([terms], expires, forged)
    assert p.workers[0].balance() == before
    assert p.client.job_status(terms) == S.STATUS_OPEN


def test_receipt_for_other_jobs_does_not_release_these(parties: Parties) -> None:
    p = parties
    a, b = opened(p), opened(p)
    expires = p.chain.now() + 600
    sig_a = p.client.sign_release([a], expires)
    # the signature recovers to some unrelated address for b's digest
    reason = contract_reverts(
        p, p.outsider.account.address, "release", *release_args([b], expires, sig_a)
    )
    assert reason in ("receipt not signed by the client", "bad signature")
    assert p.client.job_status(b) == S.STATUS_OPEN


def test_expired_receipt(unchanged: Parties) -> None:
    p = unchanged
    terms = opened(p)
    expires = p.chain.now() + 10
    sig = p.client.sign_release([terms], expires)
    p.chain.advance_time(11)
    assert (
        contract_reverts(
            p, p.outsider.account.address, "release", *release_args([terms], expires, sig)
        )
        == "receipt expired"
    )
    with pytest.raises(SettlementError, match="receipt expired"):
        p.workers[0].release([terms], expires, sig)
    p.chain.advance_time(1200 + S.DEV_CHALLENGE_PERIOD)
    p.client.refund(terms)  # the money is still there, and goes back: nothing was lost


def test_payouts_above_the_escrow(unchanged: Parties) -> None:
    p = unchanged
    # the arbiter may not hand out more than the job escrowed
    terms = opened(p, workers=2)
    p.client.dispute(terms)
    too_much = [terms.escrowed, 1]
    args = (*job_args(terms), too_much, [0, 0], 0)
    assert (
        contract_reverts(p, p.arbiter.account.address, "resolve", *args)
        == "split exceeds the escrow"
    )
    with pytest.raises(SettlementError, match="split exceeds the escrow"):
        p.arbiter.resolve(terms, too_much, [0, 0])
    slash_too_much = (
        *job_args(terms),
        [0, 0],
        [terms.assignments[0].stake_lock + 1, 0],
        0,
    )
    assert (
        contract_reverts(p, p.arbiter.account.address, "resolve", *slash_too_much)
        == "slash above the stake lock"
    )
    p.arbiter.resolve(terms, [0, 0], [0, 0])  # everything back where it was
    # and a client cannot open payouts its balance does not cover
    big = p.terms(jid(), payout=p.client.balance() + 1)
    assert (
        contract_reverts(p, p.client.account.address, "open", *S.open_args([big]))
        == "insufficient balance"
    )
    with pytest.raises(SettlementError, match="insufficient balance"):
        p.client.open([big])


def test_zero_addresses(unchanged: Parties) -> None:
    p = unchanged
    base = p.terms(jid())
    zero = S.ZERO_ADDRESS
    cases = [
        S.EscrowTerms(
            base.job_id, S.Common(**{**base.common.__dict__, "arbiter": zero}), base.assignments
        ),
        S.EscrowTerms(
            base.job_id, S.Common(**{**base.common.__dict__, "verifier": zero}), base.assignments
        ),
        S.EscrowTerms(base.job_id, base.common, (S.Assignment(zero, 1, 0),)),
    ]
    for terms in cases:
        assert (
            contract_reverts(p, p.client.account.address, "open", *S.open_args([terms]))
            == "zero address"
        )
        with pytest.raises(SettlementError, match="zero address"):
            p.client.open([terms])


def test_duplicate_job_ids(parties: Parties) -> None:
    p = parties
    held, balance = p.held(), p.client.balance()
    twice = p.terms(jid())
    assert contract_reverts(p, p.client.account.address, "open", *S.open_args([twice, twice])) == (
        "duplicate job id"
    )
    with pytest.raises(SettlementError, match="duplicate job id"):
        p.client.open([twice, twice])
    # the contract wants a batch in ascending job ID order (EscrowClient sorts it)
    low, high = sorted([p.terms(jid()), p.terms(jid())], key=lambda t: t.job_id)
    assert contract_reverts(p, p.client.account.address, "open", *S.open_args([high, low])) == (
        "job ids must ascend"
    )
    assert (p.held(), p.client.balance()) == (held, balance)
    # An ID opened again in another batch is another escrow with its own sequence number:
    # the client's receipt for the first can never release the second, and a settled
    # escrow can never be paid again.
    first = opened(p)
    (again,) = p.client.open([p.terms(first.job_id, payout=1)]).opened
    assert again.located().seq != first.located().seq
    expires = p.chain.now() + 600
    receipt = p.client.sign_release([first], expires)
    assert contract_reverts(
        p, p.outsider.account.address, "release", *release_args([again], expires, receipt)
    ) in ("receipt not signed by the client", "bad signature")
    p.outsider.release([first], expires, receipt)
    with pytest.raises(SettlementError, match="job already settled"):
        p.outsider.release([first], expires, receipt)
    assert p.client.job_status(again) == S.STATUS_OPEN


def test_reveal_that_does_not_match_the_commit(parties: Parties) -> None:
    p = parties
    terms = opened(p, workers=2, quorum=2)
    w = p.workers[0]
    result, salt = hashlib.sha256(b"r").digest(), os.urandom(32)
    commitment = S.commit_hash(result, w.account.address, salt)
    w.commit(terms, commitment)
    copier = p.workers[1]
    copier.commit(terms, commitment)  # copies the first worker's commitment off the chain
    p.chain.advance_time(601)
    other = hashlib.sha256(b"other").digest()
    args = (*job_args(terms), other, salt)
    assert (
        contract_reverts(p, w.account.address, "reveal", *args)
        == "reveal does not match commitment"
    )
    for bad_result, bad_salt in ((other, salt), (result, os.urandom(32))):
        with pytest.raises(SettlementError, match="reveal does not match commitment"):
            w.reveal(terms, bad_result, bad_salt)
    w.reveal(terms, result, salt)
    # the copier sees (result, salt) in the reveal and replays it: the hash binds the worker
    with pytest.raises(SettlementError, match="reveal does not match commitment"):
        copier.reveal(terms, result, salt)
    seq = terms.located().seq
    assert p.client.contract.functions.reveals(seq, w.account.address).call() == result


def test_terms_that_differ_from_the_escrow(parties: Parties) -> None:
    p = parties
    terms = opened(p)
    richer = S.EscrowTerms(
        terms.job_id,
        terms.common,
        (S.Assignment(terms.assignments[0].worker, ETH, 0),),
        ref=terms.ref,
    )
    expires = p.chain.now() + 600
    with pytest.raises(SettlementError, match="terms do not match the escrow"):
        p.client.release([richer], expires, p.client.sign_release([richer], expires))
