"""Capability gossip: validation rules for /c0/caps/1 and the book of known workers.

`CapsBook.validate` is the sans-IO rule set of spec/protocols.md (§ Capability gossip):
bytes and the peer they came from in, a verdict out. It runs as the GossipSub topic
validator, before a message is forwarded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from protocol.envelope import SignedMessage, open_envelope
from protocol.errors import PeerProtocolError
from protocol.identity import EthBinding, peer_id_from_public, public_from_did, verify_binding
from protocol.messages import CapabilityAd

__all__ = ["CAPS_TOPIC", "Action", "CapsBook", "KnownWorker", "Verdict"]

CAPS_TOPIC = "/c0/caps/1"


class Action(enum.Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"  # drop, do not forward; the forwarder is not at fault
    REJECT = "reject"  # drop, do not forward; penalise the forwarder


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str = ""
    detail: str = ""
    signed: SignedMessage | None = None


@dataclass
class KnownWorker:
    """The latest verified ad of one worker, with the envelope it came in."""

    did: str
    ad: CapabilityAd
    raw: bytes
    received_ms: int
    expires_ms: int

    def to_json(self) -> dict[str, Any]:
        ad = self.ad
        return {
            "did": self.did,
            "peer_id": ad.peer_id,
            "eth_address": ad.eth_address,
            "listen_addrs": list(ad.listen_addrs),
            "seq": ad.seq,
            "expires_ms": self.expires_ms,
            "received_ms": self.received_ms,
            "ad": {
                "hardware": ad.hardware,
                "runtimes": ad.runtimes,
                "prices": {k: str(v) for k, v in ad.prices.items()},
                "models": [h.hex() for h in ad.models],
                "content": [h.hex() for h in ad.content],
                "load": ad.load,
                "max_concurrent": ad.max_concurrent,
                "stake": str(ad.stake),
                "ttl_s": ad.ttl_s,
            },
        }


@dataclass
class _Bucket:
    tokens: float
    updated_ms: int


@dataclass
class CapsBook:
    """Known workers by DID, with the per-sender state the validation rules need."""

    max_ad_size: int = 16384
    rate_per_s: float = 1.0
    burst: int = 5
    capacity: int = 10_000
    workers: dict[str, KnownWorker] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _bindings: set[tuple[str, str, bytes, bytes]] = field(default_factory=set)

    def validate(self, data: bytes, origin_peer: str, now_ms: int) -> Verdict:
        """Check one gossiped ad from `origin_peer` (the pubsub `from` field)."""
        # [REJECT] size
        if len(data) > self.max_ad_size:
            return Verdict(Action.REJECT, "oversized", f"{len(data)} > {self.max_ad_size}")
        # [REJECT] rate: a sender may not publish faster than its token bucket allows
        if not self._take_token(origin_peer, now_ms):
            return Verdict(Action.REJECT, "flood", "sender exceeds the ad rate limit")
        # [REJECT] envelope: structure, signature, type, fields, expiry
        try:
            signed = open_envelope(data, now=now_ms, max_size=self.max_ad_size)
        except PeerProtocolError as exc:
            return Verdict(Action.REJECT, exc.reason, exc.detail)
        ad = signed.message
        if not isinstance(ad, CapabilityAd):
            return Verdict(Action.REJECT, "unexpected_type", f"{type(ad).TYPE} on the caps topic")
        # [REJECT] the signer, the ad's peer id and the gossip origin are one key
        signer_peer = peer_id_from_public(public_from_did(signed.sender))
        if ad.peer_id != signer_peer or origin_peer != signer_peer:
            return Verdict(Action.REJECT, "wrong_signer", "ad, signer and origin differ")
        # [REJECT] the Ethereum binding holds (checked once per distinct binding)
        key = (signed.sender, ad.eth_address, ad.eth_binding_ed25519_sig, ad.eth_binding_eth_sig)
        if key not in self._bindings:
            try:
                verify_binding(EthBinding(*key))
            except PeerProtocolError as exc:
                return Verdict(Action.REJECT, exc.reason, exc.detail)
            if len(self._bindings) >= self.capacity:
                self._bindings.clear()
            self._bindings.add(key)
        # [IGNORE] sequence numbers only go up per sender
        last = self._seq.get(signed.sender)
        if last is not None and ad.seq <= last:
            return Verdict(Action.IGNORE, "stale_seq", f"seq {ad.seq} <= {last}")
        return Verdict(Action.ACCEPT, signed=signed)

    def _take_token(self, peer: str, now_ms: int) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self.capacity:
                self._buckets.clear()
            bucket = self._buckets[peer] = _Bucket(float(self.burst), now_ms)
        elapsed = max(0, now_ms - bucket.updated_ms) / 1000
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
        bucket.updated_ms = now_ms
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def accept(self, signed: SignedMessage, now_ms: int) -> KnownWorker:
        """Record an ad that passed `validate` (or our own)."""
        ad = signed.message
        assert isinstance(ad, CapabilityAd)
        self._seq[signed.sender] = ad.seq
        expires = min(signed.header.expires, now_ms + ad.ttl_s * 1000)
        worker = KnownWorker(signed.sender, ad, signed.raw, now_ms, expires)
        if signed.sender not in self.workers and len(self.workers) >= self.capacity:
            self.expire(now_ms)
            if len(self.workers) >= self.capacity:
                oldest = min(self.workers.values(), key=lambda w: w.expires_ms)
                del self.workers[oldest.did]
        self.workers[signed.sender] = worker
        return worker

    def restore(self, worker: KnownWorker) -> None:
        """Load a worker from the database at start (its ad was verified when received)."""
        self.workers[worker.did] = worker
        self._seq[worker.did] = max(self._seq.get(worker.did, -1), worker.ad.seq)

    def expire(self, now_ms: int) -> list[str]:
        """Forget ads whose TTL has passed; return the DIDs dropped."""
        gone = [did for did, w in self.workers.items() if w.expires_ms <= now_ms]
        for did in gone:
            del self.workers[did]
        return gone

    def live(self, now_ms: int) -> dict[str, KnownWorker]:
        return {did: w for did, w in self.workers.items() if w.expires_ms > now_ms}

    def by_peer(self, peer_id: str) -> KnownWorker | None:
        for worker in self.workers.values():
            if worker.ad.peer_id == peer_id:
                return worker
        return None
