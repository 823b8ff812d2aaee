"""The Executor contract (node/executors/base.py), checked on every registered executor."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from node.executors import EXECUTORS, FAILURES, MANIFEST_NAME, ExecutionRequest
from node.executors.base import ChildProcessExecutor, Executor
from protocol import codec
from protocol.errors import UserError
from protocol.jobs import JOB_CLASSES
from tests.worker.helpers import freeze, listing

# A small valid job of every class: (params, {input name: fixture name}).
VALID_JOBS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "noop": ({"payload": "conformance"}, {}),
    "media.probe": ({}, {"source": "clip"}),
    "media.thumbnail": ({"height": 36}, {"source": "clip"}),
    "media.segment": ({"segment_seconds": 1.0}, {"source": "clip"}),
    "media.transcode": (
        {"height": 36, "segment_seconds": 1.0, "keyframe_interval_s": 1.0, "preset": "ultrafast"},
        {"source": "clip"},
    ),
    "llm.generate": ({"prompt": "abc", "max_tokens": 8}, {"model": "tiny_model"}),
}


def test_every_job_class_has_an_executor_and_a_case() -> None:
    assert set(EXECUTORS) == set(JOB_CLASSES) == set(VALID_JOBS)


FRESH: Mapping[str, Executor] = {name: ChildProcessExecutor(name) for name in EXECUTORS}


@pytest.fixture(params=["forked", "fresh"])
def executors(request: pytest.FixtureRequest) -> Mapping[str, Executor]:
    """Every test on both ways of starting a job's child: forked from the worker's fork
    server (the default, EXECUTORS) and a fresh interpreter per job."""
    return EXECUTORS if request.param == "forked" else FRESH


@pytest.fixture(params=sorted(VALID_JOBS))
def job(request: pytest.FixtureRequest, make_spec: Any) -> tuple[Any, dict[str, Path]]:
    params, input_fixtures = VALID_JOBS[request.param]
    inputs = {name: request.getfixturevalue(fx) for name, fx in input_fixtures.items()}
    return make_spec(request.param, params, inputs), inputs


def test_run_writes_a_complete_manifest(
    job: Any, tmp_path: Path, executors: Mapping[str, Executor]
) -> None:
    spec, inputs = job
    before = listing(tmp_path)
    out = tmp_path / "out"
    result = executors[spec.job_class].run(ExecutionRequest(spec, inputs, out))
    manifest = result.manifest
    assert result.ok, manifest["error"]
    assert manifest["exit_code"] == 0
    assert manifest["job_id"] == spec.job_id_text
    assert manifest["job_class"] == spec.job_class
    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest
    # The folder holds exactly the declared artifacts and result.json, nothing else.
    names = [a["name"] for a in manifest["artifacts"]]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, MANIFEST_NAME])
    for artifact in manifest["artifacts"]:
        data = (out / artifact["path"]).read_bytes()
        assert artifact["size"] == len(data)
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["runtime"]["python"]
    assert manifest["runtime"]["threads"]["requested"] == spec.params.get("threads", 1)
    assert manifest["metrics"]["startup_ms"] > 0
    assert manifest["metrics"]["wall_ms"] >= manifest["metrics"]["startup_ms"]
    codec.encode(manifest)  # CBOR-able as the body of a ResultReveal
    assert listing(tmp_path) - before == {"out", *(f"out/{n}" for n in [*names, MANIFEST_NAME])}


def test_wait_returns_the_same_result_every_time(
    job: Any, tmp_path: Path, executors: Mapping[str, Executor]
) -> None:
    spec, inputs = job
    executor = executors[spec.job_class]
    execution = executor.start(ExecutionRequest(spec, inputs, tmp_path / "out"))
    first = executor.wait(execution)
    assert first is not None
    assert executor.wait(execution, timeout=0) is first
    executor.cancel(execution)  # a no-op once done
    assert executor.wait(execution) is first
    assert first.ok


def test_cancel_stops_the_job(job: Any, tmp_path: Path, executors: Mapping[str, Executor]) -> None:
    spec, inputs = job
    executor = executors[spec.job_class]
    out = tmp_path / "out"
    execution = executor.start(ExecutionRequest(spec, inputs, out))
    freeze(execution)  # so the job cannot finish before the cancel lands
    executor.cancel(execution)
    executor.cancel(execution)  # idempotent
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.error_code == "cancelled"
    assert result.exit_code == FAILURES["cancelled"].exit_code
    assert [p.name for p in out.iterdir()] == [MANIFEST_NAME]


def test_wall_clock_timeout_kills_the_child(
    job: Any, tmp_path: Path, executors: Mapping[str, Executor], make_spec: Any
) -> None:
    spec, inputs = job
    if spec.job_class == "noop":  # a forked noop child can finish inside 10 ms: keep it busy
        spec = make_spec("noop", {"payload": "x", "duration_ms": 5000})
    out = tmp_path / "out"
    started = time.monotonic()
    executor = executors[spec.job_class]
    execution = executor.start(ExecutionRequest(spec, inputs, out, timeout_s=0.01))
    freeze(execution)  # a forked thumbnail can finish inside 10 ms on a fast host (CI did)
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.error_code == "timeout"
    assert result.manifest["artifacts"] == []
    assert time.monotonic() - started < 10
    assert [p.name for p in out.iterdir()] == [MANIFEST_NAME]


def test_missing_or_resized_input_fails_without_a_child(
    job: Any, tmp_path: Path, executors: Mapping[str, Executor]
) -> None:
    spec, inputs = job
    if not inputs:
        pytest.skip("this job class has no inputs")
    name = next(iter(inputs))
    short = tmp_path / "short"
    short.write_bytes(inputs[name].read_bytes()[:-1])
    for i, files in enumerate(({}, {name: short})):
        result = executors[spec.job_class].run(ExecutionRequest(spec, files, tmp_path / f"o{i}"))
        assert result.error_code == "invalid_input"
        assert result.exit_code == FAILURES["invalid_input"].exit_code
        assert "startup_ms" not in result.manifest["metrics"]


def test_misuse_raises(job: Any, tmp_path: Path, executors: Mapping[str, Executor]) -> None:
    spec, inputs = job
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    with pytest.raises(UserError, match="not an empty folder"):
        executors[spec.job_class].start(ExecutionRequest(spec, inputs, busy))
    other = next(name for name in EXECUTORS if name != spec.job_class)
    with pytest.raises(ValueError, match="executor given a"):
        executors[other].start(ExecutionRequest(spec, inputs, tmp_path / "x"))
    assert not (tmp_path / "x").exists()
