"""Signed envelopes: COSE_Sign1 (RFC 9052) over the deterministic CBOR of a message.

Verification runs the checks in the order of spec/envelope.md, cheapest first, and
stops at the first failure with a PeerProtocolError whose `reason` names the check.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from protocol import codec
from protocol.errors import InvalidMessage, LocalProtocolError, PeerProtocolError
from protocol.identity import Identity, public_from_did, verify_signature
from protocol.messages import MESSAGE_TYPES, PROTOCOL_VERSION, Message

__all__ = [
    "ALG_EDDSA",
    "MAX_CLOCK_SKEW_MS",
    "MAX_ENVELOPE_SIZE",
    "MAX_TTL_MS",
    "Header",
    "ReplayGuard",
    "SignedMessage",
    "envelope_hash",
    "open_envelope",
    "seal",
]

ALG_EDDSA = -8
COSE_SIGN1_TAG = 18
_HDR_ALG = 1
_HDR_KID = 4
MAX_ENVELOPE_SIZE = 256 * 1024
MAX_TTL_MS = 24 * 3600 * 1000
MAX_CLOCK_SKEW_MS = 30_000
NONCE_SIZE = 16
_PAYLOAD_KEYS = frozenset({"type", "version", "sender", "nonce", "created", "expires", "body"})
_PAYLOAD_LIMITS = codec.DecodeLimits(max_size=MAX_ENVELOPE_SIZE, allowed_tags=frozenset())
_KEEP_ENCODED = frozenset({"spec"})
_OUTER_LIMITS = codec.DecodeLimits(max_size=MAX_ENVELOPE_SIZE, max_depth=3, max_items=8)


@dataclass(frozen=True, slots=True)
class Header:
    """The envelope fields common to every message."""

    sender: str
    nonce: bytes
    created: int  # ms since the Unix epoch
    expires: int  # ms since the Unix epoch


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A message whose envelope passed every check; `raw` is the envelope as received."""

    header: Header
    message: Message
    raw: bytes

    @property
    def sender(self) -> str:
        return self.header.sender


class ReplayGuard:
    """Remembers (sender, nonce) until the message expires; bounded in memory.

    A message older than the guard's memory would be accepted again, so the guard
    refuses messages it could not have remembered: its `capacity` bounds memory, and
    when full it evicts the entry that expires first and raises its `floor` — messages
    expiring at or before the floor are rejected as replays.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.floor = 0
        self._seen: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, sender: str, nonce: bytes, expires: int, now: int) -> None:
        key = (sender, nonce)
        if key in self._seen or expires <= self.floor:
            raise PeerProtocolError("replayed", "nonce already seen")
        self._prune(now)
        if len(self._seen) >= self.capacity:
            evicted_key = min(self._seen, key=self._seen.__getitem__)
            self.floor = max(self.floor, self._seen.pop(evicted_key))
            if expires <= self.floor:
                raise PeerProtocolError("replayed", "older than the replay window")
        self._seen[key] = expires

    def _prune(self, now: int) -> None:
        # Entries are inserted roughly in expiry order; drop expired ones from the front.
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]
            self.floor = max(self.floor, min(expires, now))


@functools.lru_cache(maxsize=1024)  # a node seals with one DID and opens a few hundred
def _protected_header(did: str) -> bytes:
    return codec.encode({_HDR_ALG: ALG_EDDSA, _HDR_KID: did.encode("utf-8")})


_SIG1_PREFIX = codec.encode(["Signature1", b"", b"", b""])[:-3]  # array head + context


def _bstr_head(size: int) -> bytes:
    """The CBOR head of a byte string of `size` bytes (envelopes stay under 2**32)."""
    if size < 24:
        return bytes((0x40 | size,))
    if size <= 0xFF:
        return bytes((0x58, size))
    if size <= 0xFFFF:
        return b"\x59" + size.to_bytes(2, "big")
    return b"\x5a" + size.to_bytes(4, "big")


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    """codec.encode(["Signature1", protected, b"", payload]), built without a walk."""
    return b"".join(
        (
            _SIG1_PREFIX,
            _bstr_head(len(protected)),
            protected,
            b"\x40",
            _bstr_head(len(payload)),
            payload,
        )
    )


def seal(
    identity: Identity,
    message: Message,
    *,
    now: int,
    ttl_ms: int = 60_000,
    nonce: bytes | None = None,
    tagged: bool = False,
) -> bytes:
    """Sign `message` as `identity`; return the COSE_Sign1 envelope bytes."""
    if not 0 < ttl_ms <= MAX_TTL_MS:
        raise LocalProtocolError(f"ttl_ms must be in 1..{MAX_TTL_MS}")
    payload = codec.encode(
        {
            "type": message.TYPE,
            "version": PROTOCOL_VERSION,
            "sender": identity.did,
            "nonce": os.urandom(NONCE_SIZE) if nonce is None else nonce,
            "created": now,
            "expires": now + ttl_ms,
            "body": message.to_body(),
        }
    )
    protected = _protected_header(identity.did)
    signature = identity.sign(_sig_structure(protected, payload))
    structure: Any = [protected, {}, payload, signature]
    if tagged:
        structure = codec.CBORTag(COSE_SIGN1_TAG, structure)
    data = codec.encode(structure)
    if len(data) > MAX_ENVELOPE_SIZE:
        raise LocalProtocolError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return data


def envelope_hash(raw: bytes) -> bytes:
    """SHA-256 of an envelope as sent: how events and disputes cite it."""
    return hashlib.sha256(raw).digest()


def open_envelope(
    data: bytes,
    *,
    now: int | None,
    replay_guard: ReplayGuard | None = None,
    max_size: int = MAX_ENVELOPE_SIZE,
) -> SignedMessage:
    """Verify an envelope and return its message, or raise PeerProtocolError.

    Checks, in order: size, structure, algorithm, kid, signature, canonical payload,
    message type and fields, sender == kid, expiry against `now`, replay.
    `now=None` re-checks stored evidence: expiry is judged at the envelope's own
    creation time, so a signed record stays verifiable after it has expired.
    """
    # 1. size
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PeerProtocolError("malformed", "envelope is not bytes")
    raw = bytes(data)
    if len(raw) > max_size:
        raise PeerProtocolError("oversized", f"{len(raw)} bytes > {max_size}")
    # 2. structure
    outer = codec.decode(raw, _OUTER_LIMITS)
    if isinstance(outer, codec.CBORTag):
        outer = outer.value
    if not (
        isinstance(outer, list)
        and len(outer) == 4
        and isinstance(outer[0], bytes)
        and isinstance(outer[1], dict)
        and isinstance(outer[2], bytes)
        and isinstance(outer[3], bytes)
    ):
        raise PeerProtocolError("malformed", "not a COSE_Sign1 [protected, {}, payload, sig]")
    protected_raw, unprotected, payload, signature = outer
    if unprotected:
        raise PeerProtocolError("malformed", "unprotected header must be empty")
    # 3. algorithm
    protected = codec.decode(protected_raw, _OUTER_LIMITS)
    if not isinstance(protected, dict) or set(protected) != {_HDR_ALG, _HDR_KID}:
        raise PeerProtocolError("malformed", "protected header must hold alg and kid only")
    if protected[_HDR_ALG] != ALG_EDDSA:
        raise PeerProtocolError("wrong_algorithm", f"alg {protected[_HDR_ALG]!r} is not EdDSA")
    # 4. kid
    kid_raw = protected[_HDR_KID]
    if not isinstance(kid_raw, bytes):
        raise PeerProtocolError("bad_kid", "kid is not bytes")
    try:
        kid = kid_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PeerProtocolError("bad_kid", "kid is not UTF-8") from None
    public_from_did(kid)
    # 5. signature
    if not verify_signature(kid, _sig_structure(protected_raw, payload), signature):
        raise PeerProtocolError("bad_signature", "Ed25519 signature does not verify")
    # 6. canonical payload
    # `spec` maps keep their bytes, so a job spec's ID hashes what was signed.
    body_map = codec.decode(payload, _PAYLOAD_LIMITS, keep_encoded=_KEEP_ENCODED)
    if not isinstance(body_map, dict) or set(body_map) != _PAYLOAD_KEYS:
        raise PeerProtocolError("malformed", f"payload must have exactly {sorted(_PAYLOAD_KEYS)}")
    # 7. message type, version and fields
    type_name = body_map["type"]
    if type_name not in MESSAGE_TYPES:
        raise PeerProtocolError("unknown_type", f"{type_name!r}")
    if body_map["version"] != PROTOCOL_VERSION:
        raise PeerProtocolError("unsupported_version", f"{body_map['version']!r}")
    sender, nonce = body_map["sender"], body_map["nonce"]
    created, expires = body_map["created"], body_map["expires"]
    if not (
        isinstance(sender, str)
        and isinstance(nonce, bytes)
        and len(nonce) == NONCE_SIZE
        and type(created) is int
        and type(expires) is int
    ):
        raise PeerProtocolError("malformed", "bad sender, nonce, created or expires")
    try:
        message = MESSAGE_TYPES[type_name].from_body(body_map["body"])
    except InvalidMessage:
        raise
    except (TypeError, ValueError) as exc:  # a dataclass refusing the field names
        raise InvalidMessage(str(exc)) from None
    # 8. sender == kid
    if sender != kid:
        raise PeerProtocolError("wrong_signer", "payload sender is not the signing key")
    # 9. expiry
    if not created < expires <= created + MAX_TTL_MS:
        raise PeerProtocolError("expired", "lifetime is empty or longer than allowed")
    if now is None:
        now = created
    if expires <= now:
        raise PeerProtocolError("expired", f"expired at {expires}, now {now}")
    if created > now + MAX_CLOCK_SKEW_MS:
        raise PeerProtocolError("not_yet_valid", f"created {created - now} ms in the future")
    # 10. replay
    if replay_guard is not None:
        replay_guard.check_and_remember(sender, nonce, expires, now)
    return SignedMessage(Header(sender, nonce, created, expires), message, raw)
