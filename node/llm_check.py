"""The teacher-forced check: score a claimed completion in one batched llama.cpp pass.

The verifier evaluates prompt + claimed tokens as a single batch, with logits at every
position that predicts a claimed token, then hands per-position scores to
protocol.verify.llm, which decides whether each claimed token is one the job's sampling
policy could have produced.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.executors.errors import ExecutorError
from node.executors.llm import load_model
from protocol.verify.llm import PositionScores, SamplingPolicy

__all__ = ["TeacherForcedScores", "score_completion"]


@dataclass(frozen=True)
class TeacherForcedScores:
    positions: tuple[PositionScores, ...]
    prompt_tokens: int
    n_vocab: int
    detokenized: bytes  # the claimed tokens as text bytes, to compare with output.text
    load_ms: float
    eval_ms: float


def _position(row: np.ndarray, claimed: int, policy: SamplingPolicy) -> PositionScores:
    if policy.greedy:
        best = int(np.argmax(row))
        top = ((best, float(row[best])),)
        log_norm = float(row[best])
    else:
        k = policy.top_k if 0 < policy.top_k < row.size else row.size
        order = np.argsort(-row, kind="stable")[:k]
        kept = row[order].astype(np.float64)
        log_norm = float(np.logaddexp.reduce(kept))
        if policy.top_p < 1.0 and policy.top_k <= 0:
            # Only the nucleus prefix is needed to place the top-p cut.
            cum = np.cumsum(np.exp(kept - log_norm))
            kept_n = int(np.searchsorted(cum, policy.top_p)) + 1
            order, kept = order[:kept_n], kept[:kept_n]
        top = tuple((int(t), float(v)) for t, v in zip(order, kept, strict=True))
    return PositionScores(claimed, float(row[claimed]), top, log_norm)


def _decode_once(llm: Any, tokens: Sequence[int], first: int, n_vocab: int) -> list[np.ndarray]:
    """One llama_decode of `tokens`, asking for logits only at positions >= `first`
    (prompt positions need none); the logits rows of those positions, copied."""
    import llama_cpp

    n = len(tokens)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= first
        batch.n_tokens = n
        status = llama_cpp.llama_decode(llm._ctx.ctx, batch)
        if status != 0:
            raise ExecutorError("out_of_memory", f"llama_decode failed with status {status}")
        rows = []
        for i in range(first, n):
            pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
            rows.append(np.ctypeslib.as_array(pointer, shape=(n_vocab,)).copy())
        return rows
    finally:
        llama_cpp.llama_batch_free(batch)


def score_completion(
    model: Path,
    params: Mapping[str, Any],
    tokens: Sequence[int],
    *,
    threads: int | None = None,
    include_eos: bool = False,
) -> TeacherForcedScores:
    """Scores of each claimed token given the prompt and the tokens before it, from one
    batched evaluation (one llama_decode, n_batch = n_ubatch = the whole sequence, logits
    only where a claimed token is scored). With `include_eos`, one more position scores
    the end-of-sequence token after the last claimed one."""
    started = time.perf_counter()
    policy = SamplingPolicy.from_params(params)
    n_threads = threads or int(params["threads"])
    probe = load_model(model, n_ctx=64, threads=n_threads, seed=0, vocab_only=True)
    prompt = probe.tokenize(params["prompt"].encode("utf-8"), add_bos=True, special=False)
    n_vocab = probe.n_vocab()
    eos = probe.token_eos()
    del probe
    claimed = [int(t) for t in tokens] + ([eos] if include_eos else [])
    if any(not 0 <= t < n_vocab for t in claimed):
        raise ExecutorError("invalid_input", "a claimed token is outside the vocabulary")
    sequence = prompt + claimed
    n_ctx = max(64, -(-len(sequence) // 64) * 64)
    if len(sequence) > int(params["n_ctx"]):
        raise ExecutorError("limit_exceeded", "prompt and completion exceed the job's n_ctx")
    llm = load_model(model, n_ctx=n_ctx, threads=n_threads, seed=0, n_batch=n_ctx, n_ubatch=n_ctx)
    loaded = time.perf_counter()
    first = len(prompt) - 1  # the logits after this position score claimed[0]
    evaluated_tokens = sequence[:-1] if claimed else sequence
    rows = _decode_once(llm, evaluated_tokens, first, n_vocab)
    evaluated = time.perf_counter()
    positions = tuple(_position(row, tok, policy) for row, tok in zip(rows, claimed, strict=True))
    text = llm.detokenize(list(tokens), prev_tokens=prompt)
    return TeacherForcedScores(
        positions=positions,
        prompt_tokens=len(prompt),
        n_vocab=n_vocab,
        detokenized=text,
        load_ms=round((loaded - started) * 1000, 3),
        eval_ms=round((evaluated - loaded) * 1000, 3),
    )
