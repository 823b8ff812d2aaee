"""EIP-712 receipts: the Python digest equals the contract's, and a receipt signed for
another chain id or another contract address is refused."""

from __future__ import annotations

import hashlib

import pytest
from eth_account import Account

from node.chain import EscrowClient
from protocol import settlement as S
from protocol.settlement import SettlementError
from tests.settlement.conftest import Parties


def test_digest_matches_the_contract(parties: Parties) -> None:
    p = parties
    ids = [i * 7919 + 3 for i in range(5)]  # escrow sequence numbers
    for n in (1, 5):
        onchain = p.client.contract.functions.release_digest(ids[:n], 1234).call()
        assert bytes(onchain) == S.release_digest(p.chain.chain_id, p.escrow, ids[:n], 1234)
    sig = S.sign_release(p.chain.dev_keys[0], p.chain.chain_id, p.escrow, ids, 99)
    assert (
        S.recover_release_signer(sig, p.chain.chain_id, p.escrow, ids, 99)
        == p.client.account.address
    )


@pytest.mark.parametrize("where", ["other chain", "other contract"])
def test_receipt_for_another_domain_is_rejected(parties: Parties, where: str) -> None:
    p = parties
    terms = p.terms(hashlib.sha256(where.encode() + p.escrow.encode()).digest())
    (terms,) = p.client.open([terms]).opened
    expires = p.chain.now() + 600
    if where == "other chain":
        chain_id, contract = p.chain.chain_id + 1, p.escrow
    else:
        other, _ = EscrowClient.deploy(p.chain, p.outsider.account)
        chain_id, contract = p.chain.chain_id, other.address
    sig = S.sign_release(p.client.account.key, chain_id, contract, [terms.located().seq], expires)
    # the node refuses it: it recovers to some other address here
    with pytest.raises(SettlementError, match="receipt not signed by the client"):
        p.workers[0].release([terms], expires, sig)
    # and the contract refuses it too
    commons, jobs = S.group_terms([terms])
    fn = p.client.contract.functions.release(
        commons, jobs, [terms.located().as_abi()], expires, sig
    )
    with pytest.raises(Exception, match=r"receipt not signed by the client|bad signature"):
        fn.transact({"from": p.workers[0].account.address})
    assert p.client.job_status(terms) == S.STATUS_OPEN
    assert p.workers[0].balance() == 0


def test_commit_hash_matches_the_contract_rule() -> None:
    worker = Account.create().address
    result, salt = b"\x01" * 32, b"\x02" * 32
    assert S.commit_hash(result, worker, salt) != S.commit_hash(
        result, Account.create().address, salt
    )
    assert len(S.commit_hash(result, worker, salt)) == 32
