"""llm.generate on a tiny generated model, and the LLM verification checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from node.llm_check import score_completion
from node.verification import verify_result
from protocol.jobs import JobTemplate
from protocol.verify import SamplingPolicy, check_generation, check_teacher_forced

GREEDY = {"prompt": "The cat sat", "max_tokens": 24, "n_ctx": 128}


def worst_token(model: Path, params: dict[str, Any], tokens: list[int], position: int) -> int:
    """The token the model likes least at `position` (all 259 logits, one batched pass)."""
    every = {**params, "temperature": 1.0, "top_k": 259, "top_p": 1.0}
    return score_completion(model, every, tokens).positions[position].top[-1][0]


def statuses(report: Any) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_generate_reports_output_and_metrics(run_job: Any, tiny_model: Path) -> None:
    result = run_job("llm.generate", GREEDY, {"model": tiny_model})
    assert result.ok, result.manifest["error"]
    output, metrics = result.manifest["output"], result.manifest["metrics"]
    assert len(output["tokens"]) == 24
    assert output["finish_reason"] == "length"
    assert isinstance(output["text"], str)
    # Byte tokens of the SentencePiece text (spaces become U+2581), plus BOS.
    assert metrics["prompt_tokens"] == len("The▁cat▁sat".encode()) + 1
    assert metrics["completion_tokens"] == 24
    for key in ("load_ms", "ttft_ms", "total_ms", "tokens_per_s"):
        assert metrics[key] > 0
    assert result.manifest["runtime"]["llama_cpp_python"] == "0.3.36"
    assert result.manifest["artifacts"] == []


def test_greedy_and_seeded_sampling_are_reproducible(run_job: Any, tiny_model: Path) -> None:
    a = run_job("llm.generate", GREEDY, {"model": tiny_model})
    b = run_job("llm.generate", {**GREEDY, "threads": 2}, {"model": tiny_model})
    assert a.manifest["output"] == b.manifest["output"]  # greedy: same across thread counts
    sampled = {**GREEDY, "temperature": 0.9, "top_k": 20, "top_p": 0.9}
    c = run_job("llm.generate", {**sampled, "seed": 1}, {"model": tiny_model})
    d = run_job("llm.generate", {**sampled, "seed": 1}, {"model": tiny_model})
    e = run_job("llm.generate", {**sampled, "seed": 2}, {"model": tiny_model})
    assert c.manifest["output"] == d.manifest["output"]
    assert c.manifest["output"]["tokens"] != e.manifest["output"]["tokens"]
    tpl = JobTemplate.from_json({"job_class": "llm.generate", "params": {**sampled, "seed": 1}})
    report = verify_result(tpl, c.path.parent, compare=d.path.parent)
    assert statuses(report)["exact_match"] == "pass"


def test_stop_string_ends_generation(run_job: Any, tiny_model: Path) -> None:
    first = run_job("llm.generate", GREEDY, {"model": tiny_model}).manifest["output"]
    stop = next(ch for ch in first["text"][3:] if ch.isprintable() and ch != "\ufffd")
    result = run_job("llm.generate", {**GREEDY, "stop": [stop]}, {"model": tiny_model})
    output = result.manifest["output"]
    assert output["finish_reason"] == "stop"
    assert stop not in output["text"]
    assert len(output["tokens"]) < 24


def test_teacher_forced_check_accepts_honest_and_rejects_forged(
    run_job: Any, tiny_model: Path
) -> None:
    result = run_job("llm.generate", GREEDY, {"model": tiny_model})
    params = result.manifest["spec"]["params"]
    tokens = result.manifest["output"]["tokens"]
    policy = SamplingPolicy.from_params(params)
    scores = score_completion(tiny_model, params, tokens)
    assert check_teacher_forced(policy, scores.positions, n_claimed=24).status == "pass"
    assert scores.detokenized.decode("utf-8", "replace") == result.manifest["output"]["text"]
    for position in (0, 11, 23):
        forged = list(tokens)
        forged[position] = worst_token(tiny_model, params, tokens, position)
        scores = score_completion(tiny_model, params, forged)
        check = check_teacher_forced(policy, scores.positions, n_claimed=24)
        assert check.status == "fail"
        assert f"token {position} " in check.detail


def test_teacher_forced_check_for_sampling_policy(run_job: Any, tiny_model: Path) -> None:
    params = {**GREEDY, "temperature": 1.0, "top_k": 5, "top_p": 0.95, "seed": 3}
    result = run_job("llm.generate", params, {"model": tiny_model})
    tokens = result.manifest["output"]["tokens"]
    policy = SamplingPolicy.from_params(params)
    scores = score_completion(tiny_model, result.manifest["spec"]["params"], tokens)
    assert check_teacher_forced(policy, scores.positions, n_claimed=len(tokens)).status == "pass"
    # A token far outside the top-5 at some position is impossible under this policy.
    forged = list(tokens)
    forged[4] = worst_token(tiny_model, result.manifest["spec"]["params"], tokens, 4)
    scores = score_completion(tiny_model, result.manifest["spec"]["params"], forged)
    assert check_teacher_forced(policy, scores.positions, n_claimed=len(forged)).status == "fail"


def test_verify_cli_path_runs_schema_and_teacher_forced(
    run_job: Any, tiny_model: Path, tmp_path: Path
) -> None:
    result = run_job("llm.generate", GREEDY, {"model": tiny_model})
    tpl = JobTemplate.from_json({"job_class": "llm.generate", "params": GREEDY})
    report = verify_result(tpl, result.path.parent, inputs={"model": tiny_model})
    assert report.passed, report.to_json()
    assert statuses(report)["teacher_forced"] == "pass"
    # Rewrite the claimed tokens (and keep the manifest self-consistent): rejected.
    manifest = copy.deepcopy(result.manifest)
    manifest["output"]["tokens"] = [(t + 1) % 256 + 3 for t in manifest["output"]["tokens"]]
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "result.json").write_text(json.dumps(manifest))
    report = verify_result(tpl, forged, inputs={"model": tiny_model})
    assert not report.passed
    assert statuses(report)["teacher_forced"] == "fail"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda m: m["output"]["tokens"].append(5), "token_limits"),
        (lambda m: m["output"].update(finish_reason="eos"), "pass"),
        (lambda m: m["output"].update(finish_reason="weird"), "output_schema"),
        (lambda m: m["output"].pop("text"), "output_schema"),
        (lambda m: m["output"]["tokens"].__setitem__(0, -1), "output_schema"),
    ],
)
def test_generation_schema_and_limits(
    run_job: Any, tiny_model: Path, change: Any, expect: str
) -> None:
    manifest = copy.deepcopy(run_job("llm.generate", GREEDY, {"model": tiny_model}).manifest)
    change(manifest)
    checks = check_generation(manifest["spec"]["params"], manifest)
    failed = [c.name for c in checks if c.status == "fail"]
    assert failed == ([] if expect == "pass" else [expect])
