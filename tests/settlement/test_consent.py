"""Consent and the dispute deadlines: a client locks a worker's stake only on terms the
worker signed; a dispute its arbiter leaves unresolved lapses and returns every party's own
funds; a worker that never committed is never slashed (issue 18, spec/settlement.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from protocol import settlement as S
from protocol.settlement import SettlementError
from tests.settlement.conftest import ETH, Parties


def job_id(name: str) -> bytes:
    return hashlib.sha256(b"consent " + name.encode() + os.urandom(8)).digest()


def test_consent_digest_is_the_eip712_digest() -> None:
    """The word-by-word digest equals eth-account's EIP-712 encoding, and the compact
    signature recovers to the signer (the contract agrees: the stateful test opens with it)."""
    key = Account.create()
    consent = S.Consent(
        job=b"\x07" * 32,
        client=Account.create().address,
        arbiter=Account.create().address,
        quorum=2,
        workers=3,
        commit_deadline=1_700_000_000,
        deadline=1_700_000_600,
        payout=10**15,
        stake_lock=10**14,
    )
    contract = Account.create().address
    signable = encode_typed_data(full_message=consent.typed_data(31337, contract))
    expected = bytes(keccak(b"\x19" + signable.version + signable.header + signable.body))
    assert S.consent_digest(31337, contract, consent) == expected
    sig = S.sign_consent(key.key, 31337, contract, consent)
    assert len(sig) == 64
    assert S.recover_consent_signer(sig, 31337, contract, consent) == key.address
    # any other chain, contract or field recovers to someone else
    for other in (
        (31338, contract, consent),
        (31337, Account.create().address, consent),
        (31337, contract, dataclasses.replace(consent, stake_lock=10**14 + 1)),
        (31337, contract, dataclasses.replace(consent, arbiter=Account.create().address)),
    ):
        assert S.recover_consent_signer(sig, *other) != key.address
    with pytest.raises(SettlementError, match="malformed consent"):
        S.recover_consent_signer(sig[:63], 31337, contract, consent)
    high_s = sig[:32] + (S.HALF_N + 1).to_bytes(32, "big")
    with pytest.raises(SettlementError, match="malformed consent"):
        S.recover_consent_signer(high_s, 31337, contract, consent)


def test_a_stake_is_locked_only_with_the_workers_consent(parties: Parties) -> None:
    p = parties
    stake = p.workers[0].stake_of()
    terms = p.terms(job_id("locked"))
    bare = dataclasses.replace(terms, consents=())
    forged = dataclasses.replace(terms, consents=(p.workers[1].sign_consent(terms, 0),))
    # the client signs for the worker, or reuses a consent given for a smaller lock
    smaller = dataclasses.replace(
        terms,
        assignments=(dataclasses.replace(terms.assignments[0], stake_lock=1),),
    )
    reused = dataclasses.replace(terms, consents=(p.workers[0].sign_consent(smaller),))
    by_client = dataclasses.replace(
        terms,
        consents=(
            S.sign_consent(
                p.client.account.key,
                p.chain.chain_id,
                p.escrow,
                S.consent_for(terms, 0),
            ),
        ),
    )
    for bad in (bare, forged, reused, by_client):
        with pytest.raises(SettlementError, match="stake lock without the worker's consent"):
            p.client.open([bad])
    assert p.workers[0].stake_of() == stake
    # a job without a stake lock needs no consent: nothing of the worker's is at risk
    (free,) = p.client.open(
        [dataclasses.replace(p.terms(job_id("free"), lock=0), consents=())]
    ).opened
    assert p.client.job_status(free) == S.STATUS_OPEN
    (held,) = p.client.open([terms]).opened
    assert p.client.job_status(held) == S.STATUS_OPEN
    assert p.workers[0].stake_of() == stake - held.assignments[0].stake_lock


def test_an_unresolved_dispute_lapses_and_returns_everyones_funds(parties: Parties) -> None:
    p = parties
    client_before = p.client.balance()
    stakes = [w.stake_of() for w in p.workers[:2]]
    (terms,) = p.client.open([p.terms(job_id("lapse"), workers=2)]).opened
    p.chain.advance_time(1200)  # past the deadline, inside the challenge period
    p.client.dispute(terms)
    p.chain.advance_time(S.DEV_CHALLENGE_PERIOD)
    with pytest.raises(SettlementError, match="ruling period not over"):
        p.outsider.lapse(terms)
    p.chain.advance_time(S.DEV_RULING_PERIOD)
    with pytest.raises(SettlementError, match="ruling period over"):
        p.arbiter.resolve(terms, [0, 0], [t.stake_lock for t in terms.assignments])
    res = p.outsider.lapse(terms)
    assert [e["event"] for e in res.events] == ["lapsed"]
    assert p.client.balance() == client_before
    assert [w.stake_of() for w in p.workers[:2]] == stakes
    assert p.client.job_status(terms) == S.STATUS_SETTLED
    with pytest.raises(SettlementError, match="job already settled"):
        p.outsider.lapse(terms)


def test_disputes_close_with_the_challenge_period(parties: Parties) -> None:
    p = parties
    (terms,) = p.client.open([p.terms(job_id("late"))]).opened
    p.chain.advance_time(1200 + S.DEV_CHALLENGE_PERIOD)
    with pytest.raises(SettlementError, match="dispute after the challenge period"):
        p.client.dispute(terms)
    with pytest.raises(SettlementError, match="job is not disputed"):
        p.outsider.lapse(terms)
    p.client.refund(terms)


def test_a_worker_that_never_committed_is_not_slashed(parties: Parties) -> None:
    """Its consent may have been replayed into an escrow it never heard of: without its
    commitment it loses its payout, never its stake."""
    p = parties
    (terms,) = p.client.open([p.terms(job_id("absent"), workers=3, quorum=2)]).opened
    good = hashlib.sha256(b"good").digest()
    salts = [os.urandom(32) for _ in range(2)]
    for w, salt in zip(p.workers[:2], salts, strict=True):
        w.commit(terms, S.commit_hash(good, w.account.address, salt))
    p.chain.advance_time(601)
    for w, salt in zip(p.workers[:2], salts, strict=True):
        w.reveal(terms, good, salt)
    p.chain.advance_time(600 + S.DEV_CHALLENGE_PERIOD)
    stake = p.workers[2].stake_of()
    client_before = p.client.balance()
    res = p.outsider.claim(terms, good)
    assert [e["event"] for e in res.events] == ["claimed"]  # nobody slashed
    assert p.workers[2].stake_of() == stake + terms.assignments[2].stake_lock
    assert p.workers[2].balance() == 0
    assert p.client.balance() == client_before + terms.assignments[2].payout + ETH // 1000
