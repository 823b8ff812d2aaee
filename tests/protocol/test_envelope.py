"""Envelopes: sealing, every rejection reason, replay guard, and fuzzing."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.envelope import MAX_TTL_MS, ReplayGuard, SignedMessage, open_envelope, seal
from protocol.errors import LocalProtocolError, PeerProtocolError
from protocol.messages import MESSAGE_TYPES
from tests.protocol import vectors
from tests.protocol.vectors import NOW, identities, raw_envelope, sample_bid, sample_offer

ALICE, BOB = identities()[0], identities()[1]


def _valid_envelopes() -> list[bytes]:
    return [bytes.fromhex(v["cose_sign1_hex"]) for v in vectors.envelope_vectors() if v["valid"]]


def _open_or_peer_error(data: bytes, now: int = NOW) -> SignedMessage | None:
    try:
        return open_envelope(data, now=now)
    except PeerProtocolError:
        return None


def test_seal_open_round_trip_for_offer_and_bid() -> None:
    offer = sample_offer(ALICE)
    signed = open_envelope(seal(ALICE, offer, now=NOW), now=NOW)
    assert signed.message == offer
    assert signed.sender == ALICE.did
    assert signed.header.expires == NOW + 60_000
    bid = sample_bid(offer.job_id, BOB)
    assert open_envelope(seal(BOB, bid, now=NOW, tagged=True), now=NOW).message == bid


def test_not_yet_valid_and_overlong_lifetime() -> None:
    offer = sample_offer(ALICE)
    future = seal(ALICE, offer, now=NOW + 3_600_000)
    with pytest.raises(PeerProtocolError, match="not_yet_valid"):
        open_envelope(future, now=NOW)
    with pytest.raises(LocalProtocolError):
        seal(ALICE, offer, now=NOW, ttl_ms=MAX_TTL_MS + 1)


def test_replay_guard_is_bounded_and_refuses_what_it_forgot() -> None:
    guard = ReplayGuard(capacity=3)
    envelopes = [seal(ALICE, sample_offer(ALICE), now=NOW, ttl_ms=1000 + i) for i in range(5)]
    for env in envelopes:
        open_envelope(env, now=NOW, replay_guard=guard)
    assert len(guard) <= 3
    for env in envelopes:  # every one is refused: remembered, or below the floor
        with pytest.raises(PeerProtocolError, match="replayed"):
            open_envelope(env, now=NOW, replay_guard=guard)


def test_unprotected_header_and_extra_protected_fields_rejected() -> None:
    payload = codec.encode(
        {
            "type": "bid",
            "version": 1,
            "sender": BOB.did,
            "nonce": b"\x00" * 16,
            "created": NOW,
            "expires": NOW + 1000,
            "body": sample_bid(b"\x12\x20" + b"\x00" * 32, BOB).to_body(),
        }
    )
    good = codec.decode(raw_envelope(BOB, payload))
    with_unprotected = codec.encode([good[0], {4: b"x"}, good[2], good[3]])
    assert _open_or_peer_error(with_unprotected) is None
    protected = codec.encode({1: -8, 4: BOB.did.encode(), 3: 0})
    assert _open_or_peer_error(codec.encode([protected, {}, good[2], good[3]])) is None


def test_version_and_field_errors_are_peer_errors() -> None:
    offer = sample_offer(ALICE)
    body = offer.to_body()
    for mutate, reason in (
        (lambda p: p.update(version=2), "unsupported_version"),
        (lambda p: p["body"].update(attempt="one"), "invalid_message"),
        (lambda p: p["body"].pop("attempt"), "invalid_message"),
        (lambda p: p["body"].update(extra=1), "invalid_message"),
        (lambda p: p["body"].update(job_id=b"\x12\x20" + b"\x01" * 32), "invalid_message"),
        (lambda p: p["body"]["spec"].update(job_class="mine.bitcoin"), "invalid_message"),
        (lambda p: p.update(nonce=b"short"), "malformed"),
    ):
        payload = {
            "type": "offer",
            "version": 1,
            "sender": ALICE.did,
            "nonce": b"\x07" * 16,
            "created": NOW,
            "expires": NOW + 1000,
            "body": codec.decode(codec.encode(body)),
        }
        mutate(payload)
        with pytest.raises(PeerProtocolError) as info:
            open_envelope(raw_envelope(ALICE, codec.encode(payload)), now=NOW)
        assert info.value.reason == reason


@given(st.binary(max_size=2048))
def test_any_bytes_give_a_message_or_a_peer_error(data: bytes) -> None:
    _open_or_peer_error(data)


def test_every_byte_flip_and_truncation_of_valid_vectors_is_rejected() -> None:
    for env in _valid_envelopes():
        for i in range(len(env)):
            flipped = env[:i] + bytes([env[i] ^ 0xFF]) + env[i + 1 :]
            assert _open_or_peer_error(flipped) is None, f"flip at {i} accepted"
        for n in range(len(env)):
            assert _open_or_peer_error(env[:n]) is None, f"truncation to {n} accepted"


cbor_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
cbor_any = st.recursive(
    cbor_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=12,
)


@st.composite
def signed_random_bodies(draw: st.DrawFn) -> bytes:
    """Correctly signed envelopes whose bodies are random or mutated real bodies."""
    type_name = draw(st.sampled_from([*MESSAGE_TYPES, "nope"]))
    real = sample_offer(ALICE).to_body() if type_name == "offer" else {}
    body = draw(st.dictionaries(st.text(max_size=16), cbor_any, max_size=6))
    if draw(st.booleans()):
        body = {**real, **body}
    payload = {
        "type": type_name,
        "version": 1,
        "sender": ALICE.did,
        "nonce": b"\x09" * 16,
        "created": NOW,
        "expires": NOW + 1000,
        "body": body,
    }
    return raw_envelope(ALICE, codec.encode(payload))


@settings(max_examples=300)
@given(signed_random_bodies())
def test_signed_garbage_bodies_give_a_message_or_a_peer_error(data: bytes) -> None:
    _open_or_peer_error(data)


def test_message_types_round_trip_through_envelopes() -> None:
    offer = sample_offer(ALICE)
    for msg in (offer, sample_bid(offer.job_id, BOB), dataclasses.replace(offer, attempt=2)):
        assert open_envelope(seal(ALICE, msg, now=NOW), now=NOW).message == msg
