"""The llm.generate task: text generation with llama-cpp-python on a GGUF model."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node.executors.errors import ExecutorError
from node.executors.runtime import llm_runtime
from node.executors.tasks import TaskContext, TaskResult

__all__ = ["TASKS", "generate", "load_model", "sampling_kwargs"]

GGUF_MAGIC = b"GGUF"
# llama.cpp's "extra buffer types" repack weights for AMX / AVX-512 kernels. On machines
# whose CPUID advertises AMX while the (virtual) CPU faults on it, the first matrix
# product dies with SIGILL (seen on this project's build hosts with Q8_0 weights). Off by
# default, so every worker computes with the same portable kernels; recorded in the
# runtime fingerprint.
EXTRA_BUFFERS = False


@contextmanager
def _model_params(extra_buffers: bool) -> Iterator[None]:
    """llama-cpp-python has no argument for use_extra_bufts: adjust the defaults it
    starts from while one model loads."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params() -> Any:
        value = original()
        value.use_extra_bufts = extra_buffers
        return value

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def sampling_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The job's sampling policy as llama-cpp-python arguments: exactly top-k, then top-p,
    then temperature (temperature 0: greedy); every other sampler is neutral."""
    return {
        "temp": float(params["temperature"]),
        "top_k": int(params["top_k"]),
        "top_p": float(params["top_p"]),
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
    }


def load_model(path: Path, *, n_ctx: int, threads: int, seed: int, **kwargs: Any) -> Any:
    """Load a GGUF model; anything that is not a loadable model -> invalid_input."""
    import llama_cpp

    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ExecutorError("invalid_input", "model is not a GGUF file")
    try:
        with _model_params(EXTRA_BUFFERS):
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                seed=seed,
                verbose=False,
                **kwargs,
            )
    except (ValueError, RuntimeError) as exc:
        if "context" in str(exc):  # the model loaded; its KV cache and buffers did not fit
            raise ExecutorError(
                "out_of_memory", f"cannot allocate a context of {n_ctx} tokens: {exc}"
            ) from None
        raise ExecutorError("invalid_input", f"model does not load: {exc}") from None


def generate(llm: Any, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one generation; return (output, metrics without load_ms)."""
    started = time.perf_counter()
    prompt = llm.tokenize(params["prompt"].encode("utf-8"), add_bos=True, special=False)
    n_ctx = int(params["n_ctx"])
    if len(prompt) >= n_ctx:
        raise ExecutorError(
            "limit_exceeded", f"prompt is {len(prompt)} tokens; the context holds {n_ctx}"
        )
    budget = min(int(params["max_tokens"]), n_ctx - len(prompt))
    stops = [s.encode("utf-8") for s in params["stop"]]
    eos = llm.token_eos()
    tokens: list[int] = []
    text = b""
    finish = "length" if budget == int(params["max_tokens"]) else "context"
    first_at = last_at = started
    for token in llm.generate(prompt, **sampling_kwargs(params)):
        now = time.perf_counter()
        if not tokens:
            first_at = now
        last_at = now
        if token == eos:
            finish = "eos"
            break
        tokens.append(token)
        text += llm.detokenize([token], prev_tokens=prompt + tokens[:-1])
        hit = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if hit >= 0:
            text = text[:hit]
            finish = "stop"
            break
        if len(tokens) >= budget:
            break
    ended = time.perf_counter()
    n = len(tokens)
    decode_s = last_at - first_at
    output = {
        "text": text.decode("utf-8", errors="replace"),
        "tokens": tokens,
        "finish_reason": finish,
    }
    metrics = {
        "prompt_tokens": len(prompt),
        "completion_tokens": n,
        "ttft_ms": round((first_at - started) * 1000, 3),
        "generate_ms": round((ended - started) * 1000, 3),
        # Decode throughput: tokens after the first, over the time since the first.
        "tokens_per_s": round((n - 1) / decode_s, 3) if n > 1 and decode_s > 0 else 0.0,
    }
    return output, metrics


class GenerateTask:
    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        return {**llm_runtime(ctx.threads), "llama_extra_buffers": EXTRA_BUFFERS}

    def run(self, ctx: TaskContext) -> TaskResult:
        started = time.perf_counter()
        params = ctx.params
        llm = load_model(
            ctx.inputs["model"],
            n_ctx=int(params["n_ctx"]),
            threads=ctx.threads,
            seed=int(params["seed"]),
        )
        loaded = time.perf_counter()
        output, metrics = generate(llm, params)
        metrics["load_ms"] = round((loaded - started) * 1000, 3)
        metrics["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return TaskResult([], metrics, output)


TASKS = {"llm.generate": GenerateTask()}
