"""Explainable routing: filter the workers heard through gossip, then score the rest.

Pure: the client's node gathers the inputs (ads, reputation, recent timeouts) and this
module decides, returning every candidate with its score broken down and the reason it
won or lost, which is what `c0 job explain` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.jobs import JobSpec
from protocol.messages import CapabilityAd

__all__ = ["Candidate", "Ranked", "RoutingPolicy", "rank_workers"]

# Parameters that must be supported by the worker's runtime fingerprint, if it lists them.
_CODEC_PARAMS = {"video_codec": "video_codecs", "audio_codec": "audio_codecs"}


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Weights and thresholds of the score; lower scores win."""

    reputation_threshold: float = 0.3
    wei_per_byte: int = 1  # what moving one input byte to a worker is worth in price
    weight_price: float = 1.0
    weight_transfer: float = 1.0
    weight_load: float = 0.5
    weight_timeouts: float = 0.25  # per recent timeout
    weight_reputation: float = 0.5  # times (1 - reputation)
    max_recent_timeouts: int = 3  # more than this and the worker is filtered out


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the client knows about one worker when it routes a job."""

    did: str
    ad: CapabilityAd
    reputation: float = 0.5  # 0..1, see protocol.reputation; unknown workers start at 0.5
    recent_timeouts: int = 0
    expires_at: int = 0  # ms; the ad is stale after this (0: never checked)
    load: float | None = None  # a fresher estimate than the ad's (the client's own jobs)

    @property
    def current_load(self) -> float:
        return self.ad.load if self.load is None else self.load


@dataclass(frozen=True, slots=True)
class Ranked:
    """One candidate's fate: its score and breakdown, or the filter that dropped it."""

    did: str
    eligible: bool
    reason: str  # "selected", "not selected: rank N", or the filter's reason
    score: float | None = None
    price: int | None = None
    breakdown: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "did": self.did,
            "eligible": self.eligible,
            "reason": self.reason,
            "score": self.score,
            "price": self.price,
            "breakdown": dict(self.breakdown),
        }


def _filter(
    spec: JobSpec, cand: Candidate, max_price: int, now: int, policy: RoutingPolicy
) -> str | None:
    """The reason to drop this candidate, or None if it may run the job."""
    ad = cand.ad
    if cand.expires_at and cand.expires_at <= now:
        return "ad expired"
    runtime = ad.runtimes.get(spec.job_class)
    if runtime is None or spec.job_class not in ad.prices:
        return f"does not offer {spec.job_class}"
    for param, key in _CODEC_PARAMS.items():
        wanted = spec.params.get(param)
        offered = runtime.get(key)
        if wanted not in (None, "none") and isinstance(offered, list) and wanted not in offered:
            return f"runtime lacks {param}={wanted}"
    memory = ad.hardware.get("memory_mb")
    if isinstance(memory, int) and memory < spec.limits.get("memory_mb", 0):
        return f"memory {memory} MB < {spec.limits['memory_mb']} MB asked"
    if cand.current_load >= 1.0:
        return "busy (load 1.0)"
    if ad.prices[spec.job_class] > max_price:
        return f"price {ad.prices[spec.job_class]} > max {max_price}"
    if cand.reputation < policy.reputation_threshold:
        return f"reputation {cand.reputation:.2f} < {policy.reputation_threshold:.2f}"
    if cand.recent_timeouts > policy.max_recent_timeouts:
        return f"{cand.recent_timeouts} recent timeouts"
    return None


def _missing_bytes(spec: JobSpec, ad: CapabilityAd) -> int:
    held = set(ad.models) | set(ad.content)
    return sum(ref.size for ref in spec.inputs.values() if ref.sha256 not in held)


def rank_workers(
    spec: JobSpec,
    candidates: Iterable[Candidate],
    *,
    max_price: int,
    want: int,
    now: int,
    policy: RoutingPolicy = RoutingPolicy(),
    exclude: Iterable[str] = (),
) -> list[Ranked]:
    """Every candidate, best first; the first `want` eligible ones are `selected`.

    Score (lower wins) = price/max_price + transfer cost/max_price (input bytes the
    worker does not hold, at `wei_per_byte`) + load + recent timeouts + lack of
    reputation, each weighted by the policy. Ties break by DID so routing is
    deterministic. `exclude` drops workers already tried for this job.
    """
    excluded = set(exclude)
    scale = max(max_price, 1)
    scored: list[tuple[float, str, Ranked]] = []
    dropped: list[Ranked] = []
    for cand in candidates:
        if cand.did in excluded:
            dropped.append(Ranked(cand.did, False, "already tried for this job"))
            continue
        why = _filter(spec, cand, max_price, now, policy)
        if why is not None:
            dropped.append(Ranked(cand.did, False, why))
            continue
        price = cand.ad.prices[spec.job_class]
        transfer = _missing_bytes(spec, cand.ad) * policy.wei_per_byte
        breakdown = {
            "price": policy.weight_price * price / scale,
            "transfer": policy.weight_transfer * transfer / scale,
            "load": policy.weight_load * cand.current_load,
            "timeouts": policy.weight_timeouts * cand.recent_timeouts,
            "reputation": policy.weight_reputation * (1.0 - cand.reputation),
        }
        score = sum(breakdown.values())
        scored.append((score, cand.did, Ranked(cand.did, True, "", score, price, breakdown)))
    scored.sort(key=lambda item: (item[0], item[1]))
    ranked: list[Ranked] = []
    for index, (_, _, entry) in enumerate(scored):
        reason = "selected" if index < want else f"not selected: rank {index + 1}"
        ranked.append(Ranked(entry.did, True, reason, entry.score, entry.price, entry.breakdown))
    return ranked + sorted(dropped, key=lambda r: r.did)
