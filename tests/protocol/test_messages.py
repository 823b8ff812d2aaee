"""Every message type: constructs, round-trips through CBOR, and refuses bad fields."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocol import codec
from protocol.errors import InvalidMessage
from protocol.messages import (
    MESSAGE_TYPES,
    Accept,
    Assignment,
    Batch,
    CapabilityAd,
    Decline,
    DisputeOpen,
    Heartbeat,
    JobEvent,
    JobSpecMessage,
    Message,
    Receipt,
    ResultCommit,
    ResultReveal,
    RevealCall,
    Verdict,
    message_from_body,
)
from tests.protocol.vectors import identities, sample_bid, sample_offer

ALICE, BOB = identities()[0], identities()[1]
OFFER = sample_offer(ALICE)
JOB = OFFER.job_id
H = b"\x42" * 32


def samples() -> list[Message]:
    binding = BOB.eth_binding()
    return [
        CapabilityAd(
            peer_id=BOB.peer_id,
            listen_addrs=("/ip4/127.0.0.1/tcp/4001",),
            eth_address=BOB.eth_address,
            eth_binding_ed25519_sig=binding.ed25519_sig,
            eth_binding_eth_sig=binding.eth_sig,
            seq=7,
            ttl_s=60,
            hardware={"cpu_cores": 2, "memory_mb": 24_000, "gpu": None, "hw_class": "cpu-2"},
            runtimes={"noop": {"python": "3.11.7"}, "media.transcode": {"av": "18.1.0"}},
            prices={"noop": 1, "media.transcode": 10**14},
            models=(H,),
            content=(),
            load=0.25,
            max_concurrent=2,
            stake=10**18,
        ),
        JobSpecMessage(spec=OFFER.spec),
        OFFER,
        sample_bid(JOB, BOB),
        Decline(job_id=JOB, attempt=1, reason="busy", detail="all slots taken"),
        Assignment(
            job_id=JOB,
            attempt=1,
            worker=BOB.did,
            workers=(BOB.did, ALICE.did),
            payouts=(5, 5),
            terms_hash=H,
            chain_job_id=H,
            terms={"job_id": H.hex()},
            escrow_tx=b"",
        ),
        Accept(job_id=JOB, attempt=1, terms_hash=H),
        Heartbeat(job_id=JOB, attempt=1, phase="encode", progress=0.5),
        ResultCommit(job_id=JOB, attempt=1, commitment=H),
        RevealCall(job_id=JOB, attempt=1),
        ResultReveal(
            job_id=JOB,
            attempt=1,
            manifest={"exit_code": 0, "artifacts": []},
            result_hash=H,
            salt=H,
        ),
        Verdict(
            job_id=JOB,
            attempt=1,
            worker=BOB.did,
            result_hash=H,
            passed=False,
            checks={"codec": True, "duration": False},
            reason="duration 3.1 s, asked 4 s",
        ),
        Receipt(
            job_id=JOB,
            result_hash=H,
            workers=(BOB.eth_address,),
            payouts=(10,),
            eip712_sig=b"\x01" * 65,
        ),
        Batch(items=(b"\x84" * 10, b"\xa1" * 5)),
        DisputeOpen(job_id=JOB, reason="output is black frames", evidence=(H,), sizes=(10,)),
        JobEvent(
            job_id=JOB,
            attempt=1,
            state="running",
            worker_did=BOB.did,
            artifact_hash=None,
            duration_ms=None,
            exit_code=None,
            timestamp=1,
            prompt_hash=H,
            prev=b"\x00" * 32,
            detail={},
        ),
    ]


def test_every_type_has_a_sample() -> None:
    assert {m.TYPE for m in samples()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", samples(), ids=lambda m: m.TYPE)
def test_round_trip_through_canonical_cbor(msg: Message) -> None:
    wire = codec.decode(codec.encode(msg.to_body()))
    assert message_from_body(msg.TYPE, wire) == msg


BAD: list[tuple[type[Message], dict[str, Any]]] = [
    (Decline, {"reason": ""}),
    (Heartbeat, {"progress": 1.5}),
    (Assignment, {"worker": "did:key:zSomeoneElse"}),
    (Assignment, {"payouts": (1,)}),
    (Assignment, {"workers": (BOB.did, BOB.did), "payouts": (1, 1)}),
    (Verdict, {"passed": True}),  # a failed check cannot make a passing verdict
    (Receipt, {"eip712_sig": b"\x01"}),
    (Receipt, {"workers": ("0xnothex",)}),
    (Batch, {"items": ()}),
    (Batch, {"items": (b"",)}),
    (Batch, {"items": (b"\x84",) * 65}),
    (JobEvent, {"state": "teleported"}),
    (JobEvent, {"detail": {"prompt": "secret"}}),
    (ResultCommit, {"commitment": b"short"}),
    (CapabilityAd, {"prices": {"mine.bitcoin": 1}}),
    (CapabilityAd, {"load": 2.0}),
    (CapabilityAd, {"seq": "1"}),
    (Heartbeat, {"attempt": True}),
]


@pytest.mark.parametrize(("cls", "change"), BAD, ids=lambda x: getattr(x, "TYPE", str(x)))
def test_invalid_fields_refused(cls: type[Message], change: dict[str, Any]) -> None:
    base = next(m for m in samples() if type(m) is cls)
    with pytest.raises(InvalidMessage):
        dataclasses.replace(base, **change)


def test_offer_must_hash_its_spec() -> None:
    with pytest.raises(InvalidMessage, match="does not hash"):
        dataclasses.replace(OFFER, job_id=b"\x12\x20" + b"\x00" * 32)


def test_unknown_type_and_unknown_fields() -> None:
    with pytest.raises(InvalidMessage):
        message_from_body("gossip_bomb", {})
    body = samples()[4].to_body()
    with pytest.raises(InvalidMessage, match="unknown field"):
        message_from_body("decline", {**body, "x": 1})
    body.pop("detail")
    with pytest.raises(InvalidMessage, match="missing field"):
        message_from_body("decline", body)
