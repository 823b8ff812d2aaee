"""Signed envelopes: COSE_Sign1 (RFC 9052) over the deterministic CBOR of a message.

Verification runs the checks in the order of spec/envelope.md, cheapest first, and
stops at the first failure with a PeerProtocolError whose `reason` names the check.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
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


# Order keys: (created, lifetime) packed in one int, so that one comparison orders two
# messages of a sender by `created`, then by `expires`. A lifetime is < 2**27 ms (37 h).
_LIFE_BITS = 27
_LIFE_MASK = (1 << _LIFE_BITS) - 1


def _expiry(key: int) -> int:
    return (key >> _LIFE_BITS) + (key & _LIFE_MASK)


_NEVER = 1 << 62  # ms: later than any `expires`


class _Sender:
    """One sender's memory: nonces (oldest first) with their order keys, and a floor."""

    __slots__ = ("due", "floor", "horizon", "seen")

    def __init__(self, expires: int) -> None:
        self.seen: OrderedDict[bytes, int] = OrderedDict()  # nonce -> order key
        self.floor = -1  # order key: this sender's messages at or below it are refused
        self.horizon = expires  # the latest `expires` ever remembered: nothing after it
        self.due = _NEVER  # when the oldest nonce remembered expires (_NEVER: none yet)

    def refresh_due(self) -> None:
        seen = self.seen
        self.due = _expiry(next(iter(seen.values()))) if seen else _NEVER


class ReplayGuard:
    """Remembers (sender, nonce) until the message expires; bounded in memory, per sender.

    The rule is spec/envelope.md, § Replay guard. When the guard must forget a message
    before it expires, it forgets one of that *sender's* oldest and raises the sender's
    floor (an order key: `created`, then `expires`) over it: the sender's messages at or
    below its floor are refused as replays. An honest sender's later messages are above
    its floor, and no other sender's are judged by it, so nothing one sender (or many)
    sends can get another's fresh message refused.

    Bounds: `capacity` nonces in all; `per_sender` nonces per sender (one that sends more
    forgets its own oldest); `max_senders` senders. Past `capacity`, the senders holding
    the most nonces forget their oldest, down to a common level (each keeps at least its
    newest (capacity - capacity // 8) // max_senders). Past `max_senders`, senders whose
    messages have all expired are dropped, then those whose messages expire soonest are
    forgotten whole (`forgotten` counts them): until they expire, their messages would be
    accepted again, which on /c0/negotiate only they themselves could do (the signer must
    be the stream's peer). `floor` refuses what expires at or before a nonce already
    dropped as expired (never later than `now`), in case the caller's clock steps back.
    """

    def __init__(
        self,
        capacity: int = 100_000,
        *,
        per_sender: int | None = None,
        max_senders: int = 1_000,
    ) -> None:
        if capacity < 1 or max_senders < 1 or (per_sender is not None and per_sender < 1):
            raise ValueError("capacity, per_sender and max_senders must be at least 1")
        self.capacity = capacity
        self.per_sender = max(1, capacity // 4) if per_sender is None else per_sender
        self.max_senders = max_senders
        self.floor = 0  # `expires` at or below it: refused (pruned as expired already)
        self.forgotten = 0  # senders forgotten whole while their messages were unexpired
        self._size = 0
        self._senders: dict[str, _Sender] = {}

    def __len__(self) -> int:
        """Nonces remembered, all senders together (at most `capacity`)."""
        return self._size

    @property
    def senders(self) -> int:
        """Senders tracked (at most `max_senders`)."""
        return len(self._senders)

    def check_and_remember(
        self, sender: str, nonce: bytes, expires: int, now: int, *, created: int
    ) -> None:
        """Refuse (PeerProtocolError `replayed`) a message seen before; else remember it."""
        if expires <= self.floor:
            raise PeerProtocolError("replayed", "older than the replay window")
        if not created < expires <= created + MAX_TTL_MS:
            raise PeerProtocolError("expired", "lifetime is empty or longer than allowed")
        key = (created << _LIFE_BITS) + (expires - created)
        entry = self._senders.get(sender)
        if entry is None:
            if len(self._senders) >= self.max_senders:
                self._trim_senders(now)
            entry = self._senders[sender] = _Sender(expires)
        else:
            seen = entry.seen
            if nonce in seen or key <= entry.floor:
                raise PeerProtocolError("replayed", "nonce already seen")
            if entry.due <= now:
                self._prune_oldest(entry, now)
            if len(seen) >= self.per_sender:
                self._forget_oldest(entry, len(seen) - self.per_sender + 1)
            if expires > entry.horizon:
                entry.horizon = expires
        if self._size >= self.capacity:
            self._trim(now, sender)
        entry.seen[nonce] = key
        self._size += 1
        if entry.due == _NEVER:  # it held none: this one is the oldest
            entry.due = expires

    def _prune_oldest(self, entry: _Sender, now: int) -> None:
        """Drop a sender's expired nonces from the oldest on (usually one)."""
        seen = entry.seen
        while seen:
            expired = _expiry(next(iter(seen.values())))
            if expired > now:
                entry.due = expired
                return
            seen.popitem(last=False)
            self._size -= 1
            if expired > self.floor:
                self.floor = expired
        entry.due = _NEVER

    def _forget_oldest(self, entry: _Sender, count: int) -> None:
        """Forget a sender's `count` oldest nonces; its floor rises to cover them."""
        seen, floor = entry.seen, entry.floor
        for _ in range(count):
            key = seen.popitem(last=False)[1]
            if key > floor:
                floor = key
        entry.floor = floor
        entry.refresh_due()
        self._size -= count

    def _drop(self, sender: str, now: int) -> None:
        entry = self._senders.pop(sender)
        self._size -= len(entry.seen)
        self.floor = max(self.floor, min(entry.horizon, now))

    def _trim(self, now: int, keep: str) -> None:
        """Make room below `capacity` (with some slack, so this runs rarely)."""
        for sender, entry in list(self._senders.items()):
            if entry.horizon <= now and sender != keep:
                self._drop(sender, now)  # everything it sent has expired
                continue
            expired = [n for n, k in entry.seen.items() if _expiry(k) <= now]
            for nonce in expired:
                self.floor = max(self.floor, _expiry(entry.seen.pop(nonce)))
            self._size -= len(expired)
            entry.refresh_due()
        target = self.capacity - max(1, self.capacity // 8)
        if self._size <= target:
            return
        # The largest memories shrink first, to a common level: the most any sender keeps.
        sizes = sorted(len(e.seen) for e in self._senders.values())
        level, below, count = 0, 0, len(sizes)
        for i, size in enumerate(sizes):
            if below + size * (count - i) > target:
                level = (target - below) // (count - i)
                break
            below += size
        else:  # unreachable: the sum of the sizes is above the target
            return
        for entry in self._senders.values():
            if len(entry.seen) > level:
                self._forget_oldest(entry, len(entry.seen) - level)

    def _trim_senders(self, now: int) -> None:
        """Make room below `max_senders` (with some slack) for a new sender."""
        for sender in [s for s, e in self._senders.items() if e.horizon <= now]:
            self._drop(sender, now)
        excess = len(self._senders) - (self.max_senders - max(1, self.max_senders // 8))
        if excess > 0:
            soonest = heapq.nsmallest(excess, self._senders, key=lambda s: self._senders[s].horizon)
            for sender in soonest:
                self._drop(sender, now)
            self.forgotten += len(soonest)


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
        replay_guard.check_and_remember(sender, nonce, expires, now, created=created)
    return SignedMessage(Header(sender, nonce, created, expires), message, raw)
