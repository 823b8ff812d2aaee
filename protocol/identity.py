"""Node identity: one Ed25519 key names the peer (PeerID), the DID and the signer.

An Ethereum account is bound to the DID by a two-way signature: the Ed25519 key signs
the address, and the Ethereum key signs the DID (EIP-191). Either half alone proves
nothing; `verify_binding` checks both.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from protocol.errors import PeerProtocolError

__all__ = [
    "EthBinding",
    "Identity",
    "did_from_public",
    "peer_id_from_public",
    "public_from_did",
    "verify_binding",
    "verify_signature",
]

_ED25519_MULTICODEC = b"\xed\x01"
_DID_PREFIX = "did:key:z"
# libp2p PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_PROTOBUF_ED25519 = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH = b"\x00\x24"  # identity hash function, 36-byte digest
_ETH_KEY_DOMAIN = b"c0/eth-key/v1"
_BINDING_ED_DOMAIN = b"c0/eth-binding/v1\x00"
_BINDING_ETH_PREFIX = "c0 binds this Ethereum account to "


def did_from_public(public: bytes) -> str:
    """did:key for an Ed25519 public key (multicodec 0xed01, base58btc, 'z' prefix)."""
    if len(public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return _DID_PREFIX + base58.b58encode(_ED25519_MULTICODEC + public).decode("ascii")


@lru_cache(maxsize=4096)
def public_from_did(did: str) -> bytes:
    """The Ed25519 public key named by a did:key, or PeerProtocolError('bad_kid')."""
    if not isinstance(did, str) or not did.startswith(_DID_PREFIX) or len(did) > 64:
        raise PeerProtocolError("bad_kid", "not an Ed25519 did:key")
    return _public_from_did(did)


# Every envelope a node opens names its signer's DID, and every request checks the
# signer's PeerID: the same few hundred keys, each a base58 round trip, so both are
# cached (a failed parse raises, and lru_cache keeps no exception).
@lru_cache(maxsize=4096)
def _public_from_did(did: str) -> bytes:
    try:
        raw = base58.b58decode(did[len(_DID_PREFIX) :])
    except ValueError:
        raise PeerProtocolError("bad_kid", "did:key is not base58btc") from None
    if len(raw) != 34 or not raw.startswith(_ED25519_MULTICODEC):
        raise PeerProtocolError("bad_kid", "did:key is not an Ed25519 key")
    if did_from_public(raw[2:]) != did:  # leading-zero and alphabet variants
        raise PeerProtocolError("bad_kid", "did:key is not in canonical form")
    return raw[2:]


def peer_id_from_public(public: bytes) -> str:
    """The libp2p PeerID (identity multihash of the protobuf public key), base58btc."""
    if len(public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return _peer_id(bytes(public))


@lru_cache(maxsize=4096)
def _peer_id(public: bytes) -> str:
    return base58.b58encode(_IDENTITY_MULTIHASH + _PROTOBUF_ED25519 + public).decode("ascii")


@lru_cache(maxsize=4096)
def _verify_key(public: bytes) -> VerifyKey:
    return VerifyKey(public)


def verify_signature(did: str, message: bytes, signature: bytes) -> bool:
    """True if `signature` is `did`'s Ed25519 signature over `message`."""
    if len(signature) != 64:
        return False
    try:
        _verify_key(public_from_did(did)).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def _binding_text(did: str) -> str:
    return _BINDING_ETH_PREFIX + did


@dataclass(frozen=True, slots=True)
class EthBinding:
    """Proof that `did` and `eth_address` belong to the same operator."""

    did: str
    eth_address: str  # EIP-55 checksummed
    ed25519_sig: bytes  # over _BINDING_ED_DOMAIN + the 20 address bytes
    eth_sig: bytes  # EIP-191 personal_sign over "c0 binds this Ethereum account to <did>"

    def to_cbor(self) -> dict[str, object]:
        return {
            "did": self.did,
            "eth_address": self.eth_address,
            "ed25519_sig": self.ed25519_sig,
            "eth_sig": self.eth_sig,
        }


def verify_binding(binding: EthBinding, *, ed25519: bool = True) -> None:
    """Raise PeerProtocolError('bad_binding') unless both signatures hold. With
    `ed25519=False` only the Ethereum half is checked: for a message whose own Ed25519
    envelope already names the address (an Offer's `client_eth`)."""
    try:
        address = bytes.fromhex(binding.eth_address.removeprefix("0x"))
    except (ValueError, AttributeError):
        raise PeerProtocolError("bad_binding", "address is not hex") from None
    if len(address) != 20:
        raise PeerProtocolError("bad_binding", "address is not 20 bytes")
    if ed25519 and not verify_signature(
        binding.did, _BINDING_ED_DOMAIN + address, binding.ed25519_sig
    ):
        raise PeerProtocolError("bad_binding", "Ed25519 signature over the address fails")
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        signable = encode_defunct(text=_binding_text(binding.did))
        recovered = Account.recover_message(signable, signature=binding.eth_sig)
    except Exception:  # eth-keys raises several types for malformed signatures
        raise PeerProtocolError("bad_binding", "Ethereum signature is malformed") from None
    if recovered.lower() != binding.eth_address.lower():
        raise PeerProtocolError("bad_binding", "Ethereum signature is by another account")


class Identity:
    """A node's keys. Holds secrets: never log or serialise it except to the key files."""

    __slots__ = ("_eth", "_signing", "did", "eth_address", "peer_id", "public")

    def __init__(self, seed: bytes, eth_private_key: bytes | None = None) -> None:
        if len(seed) != 32:
            raise ValueError("an identity seed is 32 bytes")
        self._signing = SigningKey(seed)
        self.public: bytes = bytes(self._signing.verify_key)
        self.did: str = did_from_public(self.public)
        self.peer_id: str = peer_id_from_public(self.public)
        # By default the Ethereum key is derived from the seed, so one secret backs up
        # both; an operator may bring an existing account instead.
        if eth_private_key is None:
            eth_private_key = hashlib.sha256(_ETH_KEY_DOMAIN + seed).digest()
        from eth_account import Account

        self._eth = Account.from_key(eth_private_key)
        self.eth_address: str = self._eth.address

    @classmethod
    def from_seed(cls, seed: bytes, eth_private_key: bytes | None = None) -> Identity:
        return cls(seed, eth_private_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(32))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    @property
    def eth_private_key(self) -> bytes:
        return bytes(self._eth.key)

    @property
    def eth_account(self) -> object:
        """The eth-account LocalAccount (for transactions and EIP-712 receipts)."""
        return self._eth

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing.sign(message).signature)

    def eth_binding(self) -> EthBinding:
        address = bytes.fromhex(self.eth_address[2:])
        ed_sig = self.sign(_BINDING_ED_DOMAIN + address)
        from eth_account.messages import encode_defunct

        signed = self._eth.sign_message(encode_defunct(text=_binding_text(self.did)))
        return EthBinding(self.did, self.eth_address, ed_sig, bytes(signed.signature))

    def __repr__(self) -> str:
        return f"Identity({self.did})"
