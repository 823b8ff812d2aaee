"""Fixtures for the worker runtime tests: media and models made locally, job helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from node.executors import EXECUTORS, ExecutionRequest, ExecutionResult, Executor
from protocol.identity import Identity
from protocol.jobs import JobSpec, JobTemplate
from testnet.testdata import make_clip, make_tiny_gguf
from tests.worker.helpers import input_ref


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir: Path) -> Path:
    """160x90, 2 s, 25 fps H.264 + AAC, a keyframe every second."""
    return make_clip(media_dir / "clip.mp4", 2.0, 160, 90, 25)


@pytest.fixture(scope="session")
def silent_clip(media_dir: Path) -> Path:
    return make_clip(media_dir / "silent.mp4", 2.0, 160, 90, 25, audio=False)


@pytest.fixture(scope="session")
def other_clip(media_dir: Path) -> Path:
    """Same shape as `clip`, other pictures."""
    return make_clip(media_dir / "other.mp4", 2.0, 160, 90, 25, offset=20)


@pytest.fixture(scope="session")
def tiny_model(media_dir: Path) -> Path:
    return make_tiny_gguf(media_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def client_did() -> str:
    return str(Identity.from_seed(b"\x07" * 32).did)


JobMaker = Callable[..., JobSpec]


@pytest.fixture
def make_spec(client_did: str) -> JobMaker:
    def make(
        job_class: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Path] | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> JobSpec:
        template = JobTemplate.from_json(
            {"job_class": job_class, "params": dict(params or {}), "limits": dict(limits or {})}
        )
        refs = {name: input_ref(path) for name, path in (inputs or {}).items()}
        return template.bind(refs, client=client_did, nonce=os.urandom(16))

    return make


Runner = Callable[..., ExecutionResult]


@pytest.fixture
def run_job(make_spec: JobMaker, tmp_path: Path) -> Runner:
    """Run a job to its end in tmp_path/out (or `out`); return the result."""
    counter = iter(range(1000))

    def run(
        job_class: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Path] | None = None,
        *,
        executor: Executor | None = None,
        out: Path | None = None,
        **request: Any,
    ) -> ExecutionResult:
        spec = make_spec(job_class, params, inputs)
        folder = out or tmp_path / f"out{next(counter)}"
        runner = executor or EXECUTORS[job_class]
        return runner.run(ExecutionRequest(spec, dict(inputs or {}), folder, **request))

    return run
