"""The escrow's logs decoded by node.chain.events agree with web3's own decoder, for every
event the contract emits, on logs as web3 returns them and as raw JSON-RPC gives them."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from eth_utils.abi import event_abi_to_log_topic
from hexbytes import HexBytes

from node.chain.events import _hex, decode_logs, job_events
from protocol import settlement as S
from tests.settlement.conftest import ETH, Parties


def _job(tag: str) -> bytes:
    return hashlib.sha256(tag.encode() + os.urandom(8)).digest()


def web3_decoded(contract: Any, logs: list[Any]) -> list[dict[str, Any]]:
    """The reference: web3's `process_log` on each escrow log."""
    by_topic = {
        HexBytes(event_abi_to_log_topic(abi)): abi["name"]
        for abi in contract.abi
        if abi["type"] == "event"
    }
    out = []
    for log in logs:
        name = by_topic[HexBytes(log["topics"][0])]
        d = contract.events[name]().process_log(log)
        out.append(
            {
                "name": name,
                "tx": _hex(bytes(d["transactionHash"])),
                "block": int(d["blockNumber"]),
                "log_index": int(d["logIndex"]),
                "args": {k: _hex(v) for k, v in d["args"].items()},
            }
        )
    return out


def every_event(p: Parties) -> int:
    """Drive the escrow through every event it has; the first block of the run."""
    start = int(p.chain.w3.eth.block_number) + 1
    w = p.workers
    w[0].unstake(1)  # Unstaked (deposit and stake came with the fixture)
    p.client.withdraw(1)  # Withdraw
    paid, disputed, claimed, refunded, lapsed = p.client.open(
        [
            p.terms(_job("release")),
            p.terms(_job("dispute"), workers=2),
            p.terms(_job("claim"), workers=3, quorum=2, commit_in=100, deadline_in=200),
            p.terms(_job("refund"), commit_in=100, deadline_in=200),
            p.terms(_job("lapse"), commit_in=100, deadline_in=200),
        ]
    ).opened
    expires = p.chain.now() + 3600
    p.client.release([paid], expires, p.client.sign_release([paid], expires))  # Released
    w[1].dispute(disputed)
    p.client.dispute(lapsed)  # Disputed; its arbiter never rules
    p.arbiter.resolve(
        disputed, [disputed.assignments[0].payout, 0], [0, ETH // 1000], ETH // 1000
    )  # Disputed, Resolved, Slashed
    good, bad = hashlib.sha256(b"good").digest(), hashlib.sha256(b"bad").digest()
    salts = [os.urandom(32) for _ in w]
    results = [good, good, bad]
    for worker, r, s in zip(w, results, salts, strict=True):
        worker.commit(claimed, S.commit_hash(r, worker.account.address, s))  # Committed
    p.chain.advance_time(101)
    for worker, r, s in zip(w, results, salts, strict=True):
        worker.reveal(claimed, r, s)  # Revealed
    p.chain.advance_time(101 + S.DEV_CHALLENGE_PERIOD)
    w[0].claim(claimed, good)  # Claimed, Slashed
    p.client.refund(refunded)  # Refunded
    p.chain.advance_time(S.DEV_RULING_PERIOD)
    p.outsider.lapse(lapsed)  # Lapsed
    return start


def test_lean_decoding_matches_web3_for_every_event(parties: Parties) -> None:
    p = parties
    start = every_event(p)
    contract = p.client.contract
    logs = p.chain.w3.eth.get_logs({"address": contract.address, "fromBlock": start})
    reference = web3_decoded(contract, logs)
    names = {e["name"] for e in reference}
    emitted = {a["name"] for a in contract.abi if a["type"] == "event"} - {
        "Deposit",
        "Staked",
    }
    assert emitted <= names  # the run covered every event (those two: in the fixture)
    assert decode_logs(contract, logs) == reference
    if p.chain.rpc is not None:  # the same logs, raw from JSON-RPC (hex text, not HexBytes)
        query = {"address": contract.address, "fromBlock": hex(start)}
        raw = p.chain.rpc.call("eth_getLogs", [query])
        assert isinstance(raw[0]["topics"][0], str)
        assert decode_logs(contract, raw) == reference
        assert job_events(contract, raw) == job_events(contract, logs)


def test_logs_of_other_contracts_and_unknown_topics_are_skipped(parties: Parties) -> None:
    p = parties
    contract = p.client.contract
    start = int(p.chain.w3.eth.block_number) + 1
    p.client.deposit(5)
    query = {"address": contract.address, "fromBlock": start}
    logs = [dict(x) for x in p.chain.w3.eth.get_logs(query)]  # type: ignore[arg-type]
    assert [e["name"] for e in decode_logs(contract, logs)] == ["Deposit"]
    other = {**logs[0], "address": "0x" + "11" * 20}
    unknown = {**logs[0], "topics": [HexBytes(b"\x01" * 32), *logs[0]["topics"][1:]]}
    assert decode_logs(contract, [other, unknown]) == []
