"""Per-peer penalties kept by the node itself: weights, exponential decay, bans.

py-libp2p's gossip scoring has a sign bug (notes, pitfall 4), so c0 scores peers here.
Scores start at 0, only penalties move them, and they decay towards 0 with a half-life.
A peer at or below the ban threshold is banned for a while. Pure logic; time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PENALTY_WEIGHTS", "PeerScore", "PenaltyTable"]

# Reason -> penalty. Forgery and garbage are severe; staleness and load are mild because
# an honest peer can produce them occasionally (clock skew, a slow link, a restart).
PENALTY_WEIGHTS: dict[str, float] = {
    "bad_signature": 50.0,
    "wrong_signer": 50.0,
    "bad_kid": 50.0,
    "bad_binding": 50.0,
    "wrong_algorithm": 50.0,
    "hash_mismatch": 50.0,
    "malformed": 40.0,
    "bad_request": 40.0,  # a request that made a handler raise what nobody raised on purpose
    "non_canonical": 40.0,
    "truncated": 20.0,
    "oversized": 40.0,
    "invalid_message": 30.0,
    "unknown_type": 20.0,
    "unsupported_version": 10.0,
    "unexpected_type": 20.0,
    "timeout": 20.0,
    "flood": 10.0,
    "expired": 10.0,
    "not_yet_valid": 10.0,
    "replayed": 10.0,
    "stale_seq": 10.0,
    "busy": 1.0,  # an honest client in a burst hits the stream limit too; floods still add up
    "protocol_violation": 30.0,
    "bad_terms": 30.0,  # hostile terms: self-arbitration, a forged payer, unsigned terms
    "terms_declined": 1.0,  # terms outside a worker's policy: honest clients meet it too
}
DEFAULT_WEIGHT = 20.0


@dataclass
class PeerScore:
    score: float = 0.0
    updated: float = 0.0
    banned_until: float = 0.0
    penalties: int = 0
    last_reason: str = ""


class PenaltyTable:
    """Scores of the peers this node has penalised; bounded by `capacity`."""

    def __init__(
        self,
        *,
        ban_threshold: float = -100.0,
        half_life_s: float = 600.0,
        ban_s: float = 900.0,
        capacity: int = 10_000,
    ) -> None:
        self.ban_threshold = ban_threshold
        self.half_life_s = half_life_s
        self.ban_s = ban_s
        self.capacity = capacity
        self._peers: dict[str, PeerScore] = {}

    def _decayed(self, entry: PeerScore, now: float) -> float:
        dt = max(0.0, now - entry.updated)
        return entry.score * 0.5 ** (dt / self.half_life_s)

    def score(self, peer: str, now: float) -> float:
        entry = self._peers.get(peer)
        return 0.0 if entry is None else self._decayed(entry, now)

    def is_banned(self, peer: str, now: float) -> bool:
        entry = self._peers.get(peer)
        return entry is not None and entry.banned_until > now

    def penalise(self, peer: str, reason: str, now: float) -> bool:
        """Apply the penalty for `reason`; return True if this newly bans the peer."""
        entry = self._peers.get(peer)
        if entry is None:
            if len(self._peers) >= self.capacity:
                self._evict(now)
            entry = self._peers[peer] = PeerScore(updated=now)
        entry.score = self._decayed(entry, now) - PENALTY_WEIGHTS.get(reason, DEFAULT_WEIGHT)
        entry.updated = now
        entry.penalties += 1
        entry.last_reason = reason
        if entry.score <= self.ban_threshold and entry.banned_until <= now:
            entry.banned_until = now + self.ban_s
            return True
        return False

    def _evict(self, now: float) -> None:
        # Forget the least-penalised peer that is not banned.
        candidates = [(self._decayed(e, now), p) for p, e in self._peers.items()]
        candidates = [c for c in candidates if not self.is_banned(c[1], now)]
        if candidates:
            del self._peers[max(candidates)[1]]
        else:
            del self._peers[next(iter(self._peers))]

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        return {
            peer: {
                "score": round(self._decayed(e, now), 3),
                "banned": e.banned_until > now,
                "penalties": e.penalties,
                "last_reason": e.last_reason,
            }
            for peer, e in self._peers.items()
        }
