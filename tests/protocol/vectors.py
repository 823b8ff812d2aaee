"""Deterministic test vectors for spec/vectors/: identities, envelopes, state machine.

Everything here is built from fixed seeds, nonces and clocks, so regenerating gives the
same bytes; the tests write the files and check that a fresh generation matches them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from protocol import codec
from protocol.envelope import seal
from protocol.errors import IllegalTransition
from protocol.identity import Identity
from protocol.jobs import JobTemplate
from protocol.messages import Bid, Message, Offer
from protocol.state import Event, JobMachine

NOW = 1_800_000_000_000  # ms: the fixed clock of the vectors
SEEDS = [hashlib.sha256(f"c0 test identity {i}".encode()).digest() for i in range(4)]


def identities() -> list[Identity]:
    return [Identity.from_seed(seed) for seed in SEEDS]


def identity_vectors() -> list[dict[str, Any]]:
    return [
        {
            "seed_hex": ident.seed.hex(),
            "ed25519_public_hex": ident.public.hex(),
            "did": ident.did,
            "peer_id": ident.peer_id,
            "eth_private_key_hex": ident.eth_private_key.hex(),
            "eth_address": ident.eth_address,
        }
        for ident in identities()
    ]


def nonce(i: int) -> bytes:
    return hashlib.sha256(f"nonce {i}".encode()).digest()[:16]


def sample_offer(client: Identity) -> Offer:
    template = JobTemplate.from_json(
        {
            "job_class": "media.transcode",
            "params": {"height": 360, "video_codec": "h264", "crf": 23},
            "inputs": {"source": {"sha256": "ab" * 32, "size": 1_048_576}},
        }
    )
    spec = template.bind({}, client=client.did, nonce=b"\x01" * 16)
    return Offer(
        job_id=spec.job_id,
        spec=spec,
        attempt=1,
        redundancy=2,
        max_price=10**15,
        deadline=NOW + 600_000,
        commit_deadline=NOW + 300_000,
        chain_id=31337,
        escrow="0x" + "5f" * 20,
        arbiter="0x" + "a1" * 20,
        client_eth=client.eth_address,
        client_eth_sig=client.eth_binding().eth_sig,
        input_providers=(client.peer_id,),
        stake_lock=10**14,
        escrow_commit_deadline=NOW // 1000 + 300,
        escrow_deadline=NOW // 1000 + 600,
    )


def sample_bid(job_id: bytes, worker: Identity) -> Bid:
    return Bid(
        job_id=job_id,
        attempt=1,
        price=10**14,
        eta_ms=4_000,
        eth_address=worker.eth_address,
        runtime={"av": "18.1.0", "libx264": "164", "threads": 1},
        has_inputs=(),
        consent=bytes(range(64)),
    )


def _payload(
    msg: Message,
    sender: str,
    n: int,
    *,
    type_name: str | None = None,
    created: int = NOW,
    ttl: int = 60_000,
) -> dict[str, Any]:
    return {
        "type": type_name or msg.TYPE,
        "version": 1,
        "sender": sender,
        "nonce": nonce(n),
        "created": created,
        "expires": created + ttl,
        "body": msg.to_body(),
    }


def raw_envelope(
    signer: Identity, payload: bytes, *, alg: int = -8, kid: str | None = None
) -> bytes:
    """Build a COSE_Sign1 by hand from the spec (not through `seal`)."""
    protected = codec.encode({1: alg, 4: (kid or signer.did).encode()})
    to_sign = codec.encode(["Signature1", protected, b"", payload])
    return codec.encode([protected, {}, payload, signer.sign(to_sign)])


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _non_canonical(payload: dict[str, Any]) -> bytes:
    """The same map with `version` (1) encoded in a two-byte head instead of one byte."""
    good = codec.encode(payload)
    short = codec.encode("version") + b"\x01"
    longer = codec.encode("version") + b"\x18\x01"
    assert good.count(short) == 1
    return good.replace(short, longer)


def envelope_vectors() -> list[dict[str, Any]]:
    alice, bob = identities()[0], identities()[1]
    offer = sample_offer(alice)
    bid = sample_bid(offer.job_id, bob)
    good_offer = seal(alice, offer, now=NOW, nonce=nonce(1))
    good_bid_tagged = seal(bob, bid, now=NOW, nonce=nonce(2), tagged=True)
    vectors: list[dict[str, Any]] = []

    def add(
        description: str,
        data: bytes,
        signer: Identity,
        reason: str | None,
        error: str | None = None,
        now: int = NOW,
        **extra: Any,
    ) -> None:
        vectors.append(
            {
                "description": description,
                "cose_sign1_hex": data.hex(),
                "signer": signer.did,
                "now": now,
                "valid": reason is None,
                "reason": reason,
                "error": error if error is not None else reason,
                **extra,
            }
        )

    add("valid Offer, untagged COSE_Sign1", good_offer, alice, None)
    add("valid Bid, tagged COSE_Sign1 (tag 18)", good_bid_tagged, bob, None)
    add("valid Offer checked just before expiry", good_offer, alice, None, now=NOW + 59_999)

    # Signature bytes are the last 64 bytes of the envelope.
    add(
        "signature with one bit flipped",
        _flip(good_offer, len(good_offer) - 1),
        alice,
        "bad_signature",
    )
    add(
        "signature by another key under alice's kid",
        raw_envelope(bob, codec.encode(_payload(offer, alice.did, 3)), kid=alice.did),
        alice,
        "bad_signature",
    )
    payload = codec.encode(_payload(offer, alice.did, 4))
    signed = raw_envelope(alice, payload)
    tampered_payload = payload.replace(b"max_price", b"max_prica")
    add(
        "payload changed after signing (price field renamed)",
        signed.replace(payload, tampered_payload),
        alice,
        "tampered_payload",
        "bad_signature",
    )
    price = codec.encode(10**15)
    add(
        "payload price changed after signing",
        signed.replace(payload, payload.replace(price, codec.encode(10**16))),
        alice,
        "tampered_payload",
        "bad_signature",
    )
    add(
        "sender in the payload is bob, kid and signature are alice's",
        raw_envelope(alice, codec.encode(_payload(bid, bob.did, 5))),
        alice,
        "wrong_signer",
    )
    add(
        "alg is ES256 (-7) instead of EdDSA (-8)",
        raw_envelope(alice, codec.encode(_payload(offer, alice.did, 6)), alg=-7),
        alice,
        "wrong_algorithm",
    )
    add("envelope cut 10 bytes short", good_offer[:-10], alice, "truncated")
    add("envelope cut to its first byte", good_offer[:1], alice, "truncated")
    add(
        "payload signed correctly but with a non-shortest integer head",
        raw_envelope(alice, _non_canonical(_payload(offer, alice.did, 7))),
        alice,
        "non_canonical",
    )
    # The same map re-encoded with "version" moved to the front: keys out of order.
    items = sorted(_payload(offer, alice.did, 8).items(), key=lambda kv: codec.encode(kv[0]))
    items.insert(0, items.pop([k for k, _ in items].index("version")))
    unsorted = bytes([0xA0 | len(items)]) + b"".join(
        codec.encode(k) + codec.encode(v) for k, v in items
    )
    add(
        "payload signed correctly but with map keys out of order",
        raw_envelope(alice, unsorted),
        alice,
        "non_canonical",
    )
    add("valid envelope checked after its expiry", good_offer, alice, "expired", now=NOW + 60_000)
    add(
        "type 'gossip_bomb' is not a c0 message type",
        raw_envelope(alice, codec.encode(_payload(offer, alice.did, 9, type_name="gossip_bomb"))),
        alice,
        "unknown_type",
    )
    add(
        "envelope longer than the verifier's max_size", good_offer, alice, "oversized", max_size=512
    )
    add("the same envelope a second time", good_offer, alice, "replayed", seen=[good_offer.hex()])
    return vectors


def state_machine_vectors() -> list[dict[str, Any]]:
    E = Event
    scenarios: list[tuple[str, int, list[Event | str]]] = [
        ("happy path", 3, [E.FUND, E.ASSIGN, E.START, E.SUBMIT, E.VERIFY_PASS, E.RELEASE]),
        (
            "client vanished, workers claim",
            3,
            [E.FUND, E.ASSIGN, E.START, E.SUBMIT, E.QUORUM, E.CLAIM],
        ),
        (
            "worker dies, retried, settles",
            3,
            [
                E.FUND,
                E.ASSIGN,
                E.START,
                E.WORKER_FAILED,
                E.RETRY,
                E.START,
                E.SUBMIT,
                E.VERIFY_PASS,
                E.RELEASE,
            ],
        ),
        (
            "attempts exhausted then refunded",
            2,
            [
                E.FUND,
                E.ASSIGN,
                E.START_TIMEOUT,
                E.RETRY,
                E.START,
                E.HEARTBEAT_TIMEOUT,
                E.RETRY,
                E.REFUND,
            ],
        ),
        ("nobody can run it: deadline, refund", 3, [E.FUND, E.DEADLINE, E.REFUND]),
        (
            "dispute after verification, arbiter pays",
            3,
            [E.FUND, E.ASSIGN, E.START, E.SUBMIT, E.VERIFY_PASS, E.DISPUTE, E.RULING_PAY],
        ),
        (
            "dispute before verification cannot pay",
            3,
            [E.FUND, E.ASSIGN, E.START, E.SUBMIT, E.DISPUTE, E.RULING_PAY, E.RULING_REFUND],
        ),
        ("no settlement without verification", 3, [E.FUND, E.ASSIGN, E.START, E.SUBMIT, E.RELEASE]),
        ("terminal states stay terminal", 3, [E.FUND, E.DEADLINE, E.REFUND, E.FUND]),
        (
            "verification fails, retry",
            3,
            [E.FUND, E.ASSIGN, E.START, E.SUBMIT, E.VERIFY_FAIL, E.RETRY, E.START],
        ),
        ("unknown event", 3, [E.FUND, "teleport"]),
    ]
    out = []
    for name, max_attempts, events in scenarios:
        machine = JobMachine(max_attempts=max_attempts)
        steps = []
        for event in events:
            before = {"state": str(machine.state), "attempt": machine.attempt}
            try:
                nxt = machine.handle(event)
                steps.append({**before, "event": str(event), "next": str(nxt), "error": None})
            except IllegalTransition:
                steps.append(
                    {**before, "event": str(event), "next": None, "error": "illegal_transition"}
                )
        out.append({"description": name, "max_attempts": max_attempts, "steps": steps})
    return out


def render(data: Any) -> str:
    """A vector file's text: JSON, two-space indents, sorted keys."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_all() -> None:
    """Write spec/vectors/*.json from the generators (then commit them)."""
    out = Path(__file__).resolve().parents[2] / "spec" / "vectors"
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (
        ("identities.json", identity_vectors),
        ("envelopes.json", envelope_vectors),
        ("state-machine.json", state_machine_vectors),
    ):
        (out / name).write_text(render(make()))


if __name__ == "__main__":
    write_all()
