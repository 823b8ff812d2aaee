"""Identity: did:key, PeerID (checked against py-libp2p), and the Ethereum binding."""

from __future__ import annotations

import dataclasses

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from protocol.errors import PeerProtocolError
from protocol.identity import (
    Identity,
    did_from_public,
    public_from_did,
    verify_binding,
    verify_signature,
)
from tests.protocol.vectors import SEEDS


@pytest.mark.parametrize("seed", SEEDS)
def test_peer_id_matches_py_libp2p(seed: bytes) -> None:
    ident = Identity.from_seed(seed)
    key_pair = create_new_key_pair(seed)
    assert ident.public == key_pair.public_key.to_bytes()
    assert ident.peer_id == ID.from_pubkey(key_pair.public_key).to_base58()


def test_did_key_round_trip_and_known_prefix() -> None:
    ident = Identity.from_seed(SEEDS[0])
    assert ident.did.startswith("did:key:z6Mk")  # every Ed25519 did:key starts so
    assert public_from_did(ident.did) == ident.public
    assert did_from_public(ident.public) == ident.did


@pytest.mark.parametrize(
    "bad",
    [
        "did:key:",
        "did:web:example.com",
        "did:key:z0OIl",  # not base58
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1 key
        "did:key:z" + "1" * 60,
    ],
)
def test_bad_did_key_rejected(bad: str) -> None:
    with pytest.raises(PeerProtocolError) as info:
        public_from_did(bad)
    assert info.value.reason == "bad_kid"


def test_signature_verifies_only_for_its_message_and_key() -> None:
    a, b = Identity.from_seed(SEEDS[0]), Identity.from_seed(SEEDS[1])
    sig = a.sign(b"hello")
    assert verify_signature(a.did, b"hello", sig)
    assert not verify_signature(a.did, b"hellO", sig)
    assert not verify_signature(b.did, b"hello", sig)
    assert not verify_signature(a.did, b"hello", sig[:-1])


def test_eth_binding_two_way() -> None:
    a, b = Identity.from_seed(SEEDS[0]), Identity.from_seed(SEEDS[1])
    binding = a.eth_binding()
    verify_binding(binding)
    # Claim b's address with a's signatures: both halves must fail.
    for forged in (
        dataclasses.replace(binding, eth_address=b.eth_address),
        dataclasses.replace(binding, eth_sig=b.eth_binding().eth_sig),
        dataclasses.replace(binding, ed25519_sig=b.eth_binding().ed25519_sig),
        dataclasses.replace(binding, did=b.did),
        dataclasses.replace(binding, eth_sig=b"\x00" * 65),
        dataclasses.replace(binding, eth_address="0x1234"),
    ):
        with pytest.raises(PeerProtocolError) as info:
            verify_binding(forged)
        assert info.value.reason == "bad_binding"


def test_eth_key_derived_from_seed_unless_given() -> None:
    assert Identity.from_seed(SEEDS[0]).eth_address == Identity.from_seed(SEEDS[0]).eth_address
    own = Identity.from_seed(SEEDS[0], eth_private_key=b"\x11" * 32)
    assert own.eth_address != Identity.from_seed(SEEDS[0]).eth_address
    verify_binding(own.eth_binding())
