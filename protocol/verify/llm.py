"""LLM result checks: schema and token limits, exact comparison, and the acceptance policy
of the teacher-forced check over per-position scores (computed by node.llm_check)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.verify.report import Check, fail, passed, skipped

__all__ = [
    "FINISH_REASONS",
    "GREEDY_MARGIN",
    "MAX_TIE_FRACTION",
    "PositionScores",
    "SamplingPolicy",
    "check_generation",
    "check_teacher_forced",
    "compare_exact",
    "token_allowed",
    "token_exact",
]

FINISH_REASONS = ("length", "context", "eos", "stop")
# Logits of one batched pass and of token-by-token decoding differ by float rounding
# (other kernels, other summation order; with Q8_0 weights the activations are quantized
# too). On the benchmark model (Q8_0, logits around 16) honest greedy tokens trailed the
# batched argmax by up to 0.24, at 2.3 % of positions. A claimed token within the margin
# of the best is a tie, not a deviation; but ties may not be common.
GREEDY_MARGIN = 0.5
MAX_TIE_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class SamplingPolicy:
    """The job's sampler, as llama.cpp applies it: top-k, then top-p over the softmax of
    the survivors, then temperature (0: greedy, the argmax only)."""

    temperature: float
    top_k: int
    top_p: float
    margin: float = GREEDY_MARGIN
    max_tie_fraction: float = MAX_TIE_FRACTION

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SamplingPolicy:
        return cls(float(params["temperature"]), int(params["top_k"]), float(params["top_p"]))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class PositionScores:
    """What the verifier's model says at one position of the claimed completion.

    `top` holds (token, logit) pairs in descending logit order: at least the greedy choice,
    the whole top-k set when top_k > 0, and the top-p nucleus prefix. `log_norm` is the
    log-sum-exp of the logits the top-p step normalises over (the top-k survivors, or
    the whole vocabulary when top_k is 0).
    """

    claimed: int
    claimed_logit: float
    top: tuple[tuple[int, float], ...]
    log_norm: float


def _floor(policy: SamplingPolicy, pos: PositionScores) -> float:
    """The lowest logit the sampler could still pick at this position."""
    if policy.greedy:
        return pos.top[0][1]
    floor = -math.inf
    if policy.top_k > 0:
        floor = pos.top[min(policy.top_k, len(pos.top)) - 1][1]
    if policy.top_p < 1.0:
        cumulative = 0.0
        limit = pos.top if policy.top_k <= 0 else pos.top[: policy.top_k]
        for _, logit in limit:
            cumulative += math.exp(logit - pos.log_norm)
            if cumulative >= policy.top_p:
                floor = max(floor, logit)
                break
    return floor


def token_allowed(policy: SamplingPolicy, pos: PositionScores) -> bool:
    """Could the job's sampler have produced `pos.claimed` here (up to the margin)?"""
    if not pos.top:
        return False
    return pos.claimed_logit >= _floor(policy, pos) - policy.margin


def token_exact(policy: SamplingPolicy, pos: PositionScores) -> bool:
    """Is `pos.claimed` allowed without the margin?"""
    return bool(pos.top) and pos.claimed_logit >= _floor(policy, pos)


def check_teacher_forced(
    policy: SamplingPolicy, positions: Sequence[PositionScores], *, n_claimed: int
) -> Check:
    """Accept only if every claimed token is allowed by the sampling policy."""
    name = "teacher_forced"
    if len(positions) != n_claimed:
        return fail(name, f"scored {len(positions)} of {n_claimed} claimed tokens")
    for i, pos in enumerate(positions):
        if not token_allowed(policy, pos):
            best_token, best = pos.top[0] if pos.top else (-1, math.nan)
            return fail(
                name,
                f"token {i} ({pos.claimed}, logit {pos.claimed_logit:.3f}) is not allowed; "
                f"best is {best_token} ({best:.3f})",
            )
    ties = sum(1 for pos in positions if not token_exact(policy, pos))
    allowed_ties = max(1, math.floor(policy.max_tie_fraction * len(positions)))
    if ties > allowed_ties:
        return fail(
            name,
            f"{ties} of {len(positions)} tokens are only near-ties of the best choice "
            f"(at most {allowed_ties} expected from rounding)",
        )
    kind = "argmax" if policy.greedy else f"top_k={policy.top_k} top_p={policy.top_p:g}"
    return passed(name, f"all {n_claimed} claimed tokens allowed ({kind}; {ties} near-ties)")


def check_generation(
    params: Mapping[str, Any], manifest: Mapping[str, Any], *, n_vocab: int | None = None
) -> list[Check]:
    """Schema of `output` and the token limits of the job."""
    output = manifest.get("output")
    metrics = manifest.get("metrics", {})
    if not isinstance(output, Mapping) or set(output) != {"text", "tokens", "finish_reason"}:
        return [fail("output_schema", "output must have exactly text, tokens, finish_reason")]
    tokens = output["tokens"]
    if not isinstance(output["text"], str) or not isinstance(tokens, list):
        return [fail("output_schema", "text must be a string and tokens a list")]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        return [fail("output_schema", "tokens must be non-negative integers")]
    if n_vocab is not None and any(t >= n_vocab for t in tokens):
        return [fail("output_schema", f"a token id is outside the vocabulary of {n_vocab}")]
    if output["finish_reason"] not in FINISH_REASONS:
        return [fail("output_schema", f"unknown finish_reason {output['finish_reason']!r}")]
    checks = [passed("output_schema", f"{len(tokens)} token(s), {output['finish_reason']}")]

    max_tokens, n_ctx = int(params["max_tokens"]), int(params["n_ctx"])
    prompt_tokens = metrics.get("prompt_tokens")
    finish = output["finish_reason"]
    if metrics.get("completion_tokens") != len(tokens):
        checks.append(fail("token_limits", "metrics.completion_tokens != len(tokens)"))
    elif not isinstance(prompt_tokens, int) or prompt_tokens < 1:
        checks.append(fail("token_limits", "metrics.prompt_tokens missing"))
    elif len(tokens) > max_tokens or prompt_tokens + len(tokens) > n_ctx:
        checks.append(fail("token_limits", f"{len(tokens)} tokens exceed max_tokens/n_ctx"))
    elif finish == "length" and len(tokens) != max_tokens:
        checks.append(fail("token_limits", "finish_reason 'length' before max_tokens"))
    elif finish == "context" and prompt_tokens + len(tokens) != n_ctx:
        checks.append(fail("token_limits", "finish_reason 'context' before the context is full"))
    elif finish == "stop" and not params["stop"]:
        checks.append(fail("token_limits", "finish_reason 'stop' without stop strings"))
    else:
        checks.append(passed("token_limits", f"{len(tokens)} <= {max_tokens} tokens"))
    return checks


def compare_exact(
    params: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> Check:
    """Two results of the same job on the same runtime fingerprint must be identical:
    greedy decoding is deterministic, and so is sampling with the job's seed."""
    name = "exact_match"
    if mine.get("runtime") != theirs.get("runtime"):
        return skipped(name, "runtime fingerprints differ; use the teacher-forced check")
    a, b = mine.get("output") or {}, theirs.get("output") or {}
    if a.get("tokens") == b.get("tokens") and a.get("text") == b.get("text"):
        mode = "greedy" if float(params["temperature"]) == 0.0 else f"seed {params['seed']}"
        return passed(name, f"identical output on the same runtime ({mode})")
    return fail(name, "outputs differ on the same runtime fingerprint")
