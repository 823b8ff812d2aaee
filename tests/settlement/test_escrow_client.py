"""The node-side settlement suite: every test runs on the embedded chain and on anvil."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import pytest

from protocol import settlement as S
from protocol.settlement import SettlementError
from tests.settlement.conftest import ETH, Parties


def job_id(tag: str) -> bytes:
    return hashlib.sha256(tag.encode() + os.urandom(8)).digest()


def test_happy_path_batched_open_and_signed_release(parties: Parties) -> None:
    p = parties
    batch = [p.terms(job_id(f"job{i}"), workers=2) for i in range(3)]
    free_before = p.client.balance()
    stake_before = [p.workers[i].stake_of() for i in range(2)]
    opened = p.client.open(batch)
    assert [e["event"] for e in opened.events] == ["opened"] * 3
    # the contract numbers a batch in ascending job ID order; `opened` keeps the caller's
    assert [e["job_id"] for e in opened.events] == sorted("0x" + t.job_id.hex() for t in batch)
    assert [t.job_id for t in opened.opened] == [t.job_id for t in batch]
    batch = list(opened.opened)
    seqs = sorted(t.located().seq for t in batch)
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert [e["seq"] for e in opened.events] == seqs
    # refs are checked: the terms of one job at another's position are not an escrow
    swapped = dataclasses.replace(batch[0], ref=batch[1].ref)
    assert p.client.job_status(swapped) == S.STATUS_UNKNOWN
    assert p.client.balance() == free_before - sum(t.escrowed for t in batch)
    assert all(p.client.job_status(t) == S.STATUS_OPEN for t in batch)
    assert [p.workers[i].stake_of() for i in range(2)] == [
        s - 3 * ETH // 1000 for s in stake_before
    ]

    expires = p.chain.now() + 3600
    receipt = p.client.sign_release(batch, expires)
    # a worker submits the client's receipt and pays for the gas
    released = p.workers[0].release(batch, expires, receipt)
    assert [e["event"] for e in released.events] == ["released"] * 3
    assert all(p.client.job_status(t) == S.STATUS_SETTLED for t in batch)
    for i in range(2):
        assert p.workers[i].balance() == sum(t.assignments[i].payout for t in batch)
        assert p.workers[i].stake_of() == stake_before[i]
    assert p.verifier.balance() == 3 * ETH // 1000

    # the same receipt again pays nothing: the node refuses before sending
    with pytest.raises(SettlementError, match="job already settled"):
        p.workers[1].release(batch, expires, receipt)
    assert p.workers[1].balance() == sum(t.assignments[1].payout for t in batch)

    before = p.chain.w3.eth.get_balance(p.workers[0].account.address)
    got = p.workers[0].balance()
    w = p.workers[0].withdraw(got)
    assert p.workers[0].balance() == 0
    gas_cost = w.gas_used * p.chain.w3.eth.get_transaction_receipt(w.tx)["effectiveGasPrice"]
    assert p.chain.w3.eth.get_balance(p.workers[0].account.address) == before + got - gas_cost


def test_claim_by_quorum_pays_matching_workers_and_slashes_the_rest(parties: Parties) -> None:
    p = parties
    terms = p.terms(job_id("claim"), workers=3, quorum=2)
    (terms,) = p.client.open([terms]).opened
    good, bad = hashlib.sha256(b"good").digest(), hashlib.sha256(b"bad").digest()
    salts = [os.urandom(32) for _ in range(3)]
    results = [good, good, bad]
    for w, r, s in zip(p.workers, results, salts, strict=True):
        ev = w.commit(terms, S.commit_hash(r, w.account.address, s)).events
        assert ev[0]["event"] == "committed"
    with pytest.raises(SettlementError, match="reveal before the commit deadline"):
        p.workers[0].reveal(terms, good, salts[0])
    p.chain.advance_time(601)
    # a worker cannot reveal someone else's commitment as its own
    with pytest.raises(SettlementError, match="reveal does not match commitment"):
        p.workers[2].reveal(terms, good, salts[0])
    for w, r, s in zip(p.workers, results, salts, strict=True):
        w.reveal(terms, r, s)
    with pytest.raises(SettlementError, match="claim before the challenge period ends"):
        p.workers[0].claim(terms, good)
    p.chain.advance_time(601)
    with pytest.raises(SettlementError, match="claim before the challenge period ends"):
        p.workers[0].claim(terms, good)
    p.chain.advance_time(S.DEV_CHALLENGE_PERIOD)
    with pytest.raises(SettlementError, match="a result reached quorum"):
        p.client.refund(terms)
    with pytest.raises(SettlementError, match="no quorum for this result"):
        p.workers[2].claim(terms, bad)
    client_before = p.client.balance()
    stakes = [w.stake_of() for w in p.workers]
    res = p.workers[0].claim(terms, good)
    kinds = sorted(e["event"] for e in res.events)
    assert kinds == ["claimed", "slashed"]
    assert p.workers[0].balance() == terms.assignments[0].payout
    assert p.workers[1].balance() == terms.assignments[1].payout
    assert p.workers[2].balance() == 0
    assert [w.stake_of() for w in p.workers] == [
        stakes[0] + ETH // 1000,
        stakes[1] + ETH // 1000,
        stakes[2],
    ]
    # the loser's payout, its slashed stake and the unused verifier fee go back to the client
    assert (
        p.client.balance()
        == client_before + terms.assignments[2].payout + ETH // 1000 + ETH // 1000
    )
    assert p.client.job_status(terms) == S.STATUS_SETTLED


def test_refund_only_after_deadline_and_only_once(parties: Parties) -> None:
    p = parties
    terms = p.terms(job_id("refund"))
    before = p.client.balance()
    (terms,) = p.client.open([terms]).opened
    with pytest.raises(SettlementError, match="refund before the challenge period ends"):
        p.client.refund(terms)
    assert p.client.balance() == before - terms.escrowed
    p.chain.advance_time(1201)
    with pytest.raises(SettlementError, match="refund before the challenge period ends"):
        p.client.refund(terms)
    p.chain.advance_time(S.DEV_CHALLENGE_PERIOD)
    res = p.outsider.refund(terms)  # anyone may trigger it; the money goes to the client
    assert res.events[0]["event"] == "refunded"
    assert p.client.balance() == before
    with pytest.raises(SettlementError, match="job already settled"):
        p.client.refund(terms)


def test_dispute_freezes_until_the_arbiter_resolves(parties: Parties) -> None:
    p = parties
    terms = p.terms(job_id("dispute"), workers=2)
    (terms,) = p.client.open([terms]).opened
    with pytest.raises(SettlementError, match="not an assigned worker"):
        p.outsider.dispute(terms)
    p.workers[1].dispute(terms)
    assert p.client.job_status(terms) == S.STATUS_DISPUTED
    expires = p.chain.now() + 3600
    receipt = p.client.sign_release([terms], expires)
    with pytest.raises(SettlementError, match="job is disputed"):
        p.client.release([terms], expires, receipt)
    p.chain.advance_time(1201)
    with pytest.raises(SettlementError, match="job is disputed"):
        p.client.refund(terms)
    with pytest.raises(SettlementError, match="only the arbiter resolves"):
        p.client.resolve(terms, [0, 0], [0, 0])
    client_before = p.client.balance()
    stakes = [w.stake_of() for w in p.workers[:2]]
    res = p.arbiter.resolve(terms, [terms.assignments[0].payout, 0], [0, ETH // 1000], ETH // 1000)
    assert sorted(e["event"] for e in res.events) == ["resolved", "slashed"]
    assert p.workers[0].balance() == terms.assignments[0].payout
    assert p.workers[1].balance() == 0
    assert [w.stake_of() for w in p.workers[:2]] == [stakes[0] + ETH // 1000, stakes[1]]
    assert p.verifier.balance() == ETH // 1000
    assert p.client.balance() == client_before + terms.assignments[1].payout + ETH // 1000


def test_events_of_a_job_can_be_read_back(parties: Parties) -> None:
    p = parties
    terms = p.terms(job_id("events"))
    start = p.chain.w3.eth.block_number
    opened = p.client.open([terms])
    (terms,) = opened.opened
    expires = p.chain.now() + 3600
    released = p.client.release([terms], expires, p.client.sign_release([terms], expires))
    jid = "0x" + terms.job_id.hex()
    mine = [e for e in p.client.job_events(from_block=start) if e["job_id"] == jid]
    assert [(e["event"], e["tx"], e["block"]) for e in mine] == [
        ("opened", opened.tx, opened.block),
        ("released", released.tx, released.block),
    ]


def test_a_lost_rpc_answer_does_not_send_a_payment_twice(parties: Parties) -> None:
    """The node forwards the transaction, then the answer is lost; the client retries."""
    p = parties
    calls: list[bytes] = []
    rpc = p.chain.rpc
    if rpc is None:  # the embedded chain: transactions go through web3
        w3 = p.chain.w3
        real_send = w3.eth.send_raw_transaction

        def lossy_send(raw: bytes) -> object:
            calls.append(bytes(raw))
            result = real_send(raw)
            if len(calls) == 1:
                raise ConnectionError("connection reset by peer")  # the chain got it
            return result

        w3.eth.send_raw_transaction = lossy_send  # type: ignore[method-assign]
        restore = lambda: setattr(w3.eth, "send_raw_transaction", real_send)  # noqa: E731
    else:  # JSON-RPC: transactions go over the lean client
        real_call = rpc.call

        def lossy_call(method: str, params: list[Any]) -> Any:
            result = real_call(method, params)
            if method == "eth_sendRawTransaction":
                calls.append(bytes.fromhex(params[0][2:]))
                if len(calls) == 1:
                    raise ConnectionResetError("connection reset by peer")  # the chain got it
            return result

        rpc.call = lossy_call  # type: ignore[method-assign]
        restore = lambda: setattr(rpc, "call", real_call)  # noqa: E731
    try:
        before = p.client.balance()
        res = p.client.deposit(12345)
    finally:
        restore()
    assert len(calls) == 1  # it looked the hash up and saw the transaction: no second send
    assert p.client.balance() == before + 12345
    # the nonce sequence is intact: the next transaction goes through
    p.client.deposit(1)
    assert p.client.balance() == before + 12346
    assert res.gas_used > 0


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 17, 64])
def test_every_job_of_a_batch_is_located_by_its_proof(parties: Parties, size: int) -> None:
    """The node's tree (protocol.settlement) and the contract's agree at every batch size,
    odd levels included; no job is found at another's place."""
    p = parties
    batch = [p.terms(job_id(f"size{size}-{i}"), payout=1, lock=0, fee=0) for i in range(size)]
    located = p.client.open(batch).opened
    assert all(p.client.job_status(t) == S.STATUS_OPEN for t in located)
    refs = [t.located() for t in located]
    assert sorted(r.index for r in refs) == list(range(size))
    assert {(r.first, r.size) for r in refs} == {(refs[0].first, size)}
    if size > 1:
        a, b = located[0], located[1]
        assert p.client.job_status(dataclasses.replace(a, ref=b.ref)) == S.STATUS_UNKNOWN
        cut = dataclasses.replace(a.located(), proof=a.located().proof[:-1])
        assert p.client.job_status(dataclasses.replace(a, ref=cut)) == S.STATUS_UNKNOWN


def test_calldata_is_what_web3_encodes(parties: Parties) -> None:
    """EscrowClient encodes calls with eth_abi directly; every call it makes must give the
    bytes web3's contract layer gives for the same arguments."""
    p = parties
    opened = p.client.open([p.terms(job_id(f"enc{i}"), workers=2) for i in range(3)])
    batch = list(opened.opened)
    commons, jobs, consents = S.open_args(batch)
    refs = [t.located().as_abi() for t in batch]
    one = (batch[0].common.as_abi(), S.job_abi(batch[0]), batch[0].located().as_abi())
    calls: list[tuple[str, tuple[object, ...]]] = [
        ("open", (commons, jobs, consents)),
        ("release", (commons, jobs, refs, 2**40, b"\x01" * 65)),
        ("job_status", one),
        ("commit", (*one, b"\x02" * 32)),
        ("reveal", (*one, b"\x03" * 32, b"\x04" * 32)),
        ("claim", (*one, b"\x05" * 32)),
        ("refund", one),
        ("dispute", one),
        ("lapse", one),
        ("withdraw", (7,)),
    ]
    for name, args in calls:
        expected = p.client.contract.get_function_by_name(name)(*args)._encode_transaction_data()
        assert p.client.encode_call(name, *args) == expected, name
    # job_status encodes its arguments word by word (the hot path): the same bytes
    selector = p.client.encode_call("job_status", *one)[:10]
    assert selector + S.job_args_encoding(batch[0]).hex() == p.client.encode_call(
        "job_status", *one
    )
    assert all(p.client.job_status(t) == S.STATUS_OPEN for t in batch)


def test_batches_never_hold_more_commons_than_the_escrow_takes(parties: Parties) -> None:
    """Jobs funded at different times carry different deadlines, so a release of many
    jobs can span more distinct commons than the contract accepts (MAX_GROUPS); the
    batcher splits by commons, oldest first, and every batch it forms goes through."""
    from node.lifecycle.settle import _Pending, _take

    p = parties
    n = S.MAX_GROUPS + 3
    terms = [p.terms(job_id(f"g{i}"), commit_in=600 + i, deadline_in=1200 + i) for i in range(n)]
    assert len({t.common for t in terms}) == n
    with pytest.raises(SettlementError):
        S.group_terms(terms)  # one batch of all of them is refused before it is sent
    queue = [_Pending(t) for t in terms]
    opened: list[S.EscrowTerms] = []
    while queue:
        batch, queue = _take(queue, 50)
        assert 0 < len({q.terms.common for q in batch}) <= S.MAX_GROUPS
        opened.extend(p.client.open([q.terms for q in batch]).opened)
    assert [t.job_id for t in opened] == [t.job_id for t in terms]  # order kept
    pending = [_Pending(t) for t in opened]
    first, rest = _take(pending, 50)
    assert [q.terms for q in first] == opened[: S.MAX_GROUPS]
    assert [q.terms for q in rest] == opened[S.MAX_GROUPS :]
    for batch in (first, rest):
        chunk = [q.terms for q in batch]
        expires = p.chain.now() + 600
        p.client.release(chunk, expires, p.client.sign_release(chunk, expires))
    assert all(p.client.job_status(t) == S.STATUS_SETTLED for t in opened)
    limited, left = _take([_Pending(t) for t in opened[:3]], 2)
    assert (len(limited), len(left)) == (2, 1)
