"""Hostile and broken inputs: each fails cleanly with its documented code, the calling
process is unharmed, and nothing is written outside the job's output folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from node.executors import FAILURES, MANIFEST_NAME
from protocol.errors import InvalidJobSpec
from protocol.jobs import JobTemplate
from testnet.testdata import make_clip
from tests.worker.helpers import listing


def y4m(path: Path, width: int, height: int) -> Path:
    """A YUV4MPEG2 header claiming any size, followed by a scrap of one frame."""
    header = f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + b"FRAME\n" + bytes(4096))
    return path


def assert_clean_failure(result: Any, code: str, out_parent: Path, before: set[str]) -> None:
    assert result.error_code == code, result.manifest["error"]
    assert result.exit_code == FAILURES[code].exit_code
    assert result.manifest["artifacts"] == []
    assert [p.name for p in result.path.parent.iterdir()] == [MANIFEST_NAME]
    new = listing(out_parent) - before
    folder = result.path.parent.name
    assert new == {folder, f"{folder}/{MANIFEST_NAME}"}


def bad_media(kind: str, clip: Path, tmp: Path) -> Path:
    path = tmp / f"{kind}.bin"
    if kind == "truncated":  # the first third: the MP4 index (moov, at the end) is gone
        path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "not_media":
        path.write_bytes(b"#!/bin/sh\necho this is not a video\n" * 50)
    elif kind == "header_100000x100000":
        y4m(path, 100_000, 100_000)
    return path


MEDIA_CLASSES = {
    "media.probe": {},
    "media.thumbnail": {"height": 36},
    "media.segment": {},
    "media.transcode": {"height": 36, "segment_seconds": 1.0, "keyframe_interval_s": 1.0},
}


@pytest.mark.parametrize("job_class", sorted(MEDIA_CLASSES))
@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "not_media", "header_100000x100000"])
def test_bad_media_is_invalid_input(
    run_job: Any, clip: Path, tmp_path: Path, job_class: str, kind: str
) -> None:
    source = bad_media(kind, clip, tmp_path)
    before = listing(tmp_path)
    result = run_job(job_class, MEDIA_CLASSES[job_class], {"source": source})
    assert_clean_failure(result, "invalid_input", tmp_path, before)
    assert os.getpid() > 0  # still here: the child died, not us


@pytest.mark.parametrize("job_class", sorted(MEDIA_CLASSES))
def test_huge_picture_size_is_a_limit(run_job: Any, tmp_path: Path, job_class: str) -> None:
    # FFmpeg accepts 12000x12000 (it refuses 100000x100000 itself); the job classes stop
    # at 8192 per side before decoding a single picture.
    source = y4m(tmp_path / "huge.y4m", 12_000, 12_000)
    before = listing(tmp_path)
    result = run_job(job_class, MEDIA_CLASSES[job_class], {"source": source})
    assert_clean_failure(result, "limit_exceeded", tmp_path, before)


def test_output_resolution_over_the_limit(run_job: Any, tmp_path: Path) -> None:
    # A 20:1 strip scaled to 2160 lines would be 43200 wide.
    strip = make_clip(tmp_path / "strip.mp4", 0.4, 320, 16, 25, audio=False)
    before = listing(tmp_path)
    result = run_job("media.thumbnail", {"height": 2160}, {"source": strip})
    assert_clean_failure(result, "limit_exceeded", tmp_path, before)


def test_requested_resolution_over_the_class_limit_is_rejected_as_a_spec() -> None:
    with pytest.raises(InvalidJobSpec, match="height"):
        JobTemplate.from_json({"job_class": "media.transcode", "params": {"height": 4320}})


def test_unknown_codec_is_rejected_as_a_spec() -> None:
    with pytest.raises(InvalidJobSpec, match="video_codec"):
        JobTemplate.from_json(
            {"job_class": "media.transcode", "params": {"height": 360, "video_codec": "theora"}}
        )


def test_gguf_that_is_not_a_model(run_job: Any, tmp_path: Path) -> None:
    import gguf

    empty = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(empty), "llama")
    writer.add_name("metadata only")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(2000))
    text = tmp_path / "text.gguf"
    text.write_text("not a model at all\n" * 20)
    for model in (empty, junk, text):
        before = listing(tmp_path)
        result = run_job("llm.generate", {"prompt": "hi"}, {"model": model})
        assert_clean_failure(result, "invalid_input", tmp_path, before)


def test_prompt_longer_than_the_context(run_job: Any, tiny_model: Path, tmp_path: Path) -> None:
    before = listing(tmp_path)
    result = run_job("llm.generate", {"prompt": "x" * 300, "n_ctx": 64}, {"model": tiny_model})
    assert_clean_failure(result, "limit_exceeded", tmp_path, before)
    assert "prompt is 301 tokens" in result.manifest["error"]["message"]


def test_memory_limit_is_out_of_memory(run_job: Any, tiny_model: Path, tmp_path: Path) -> None:
    # A 131072-token KV cache does not fit in 400 MiB of address space.
    before = listing(tmp_path)
    result = run_job(
        "llm.generate", {"prompt": "hi", "n_ctx": 131_072}, {"model": tiny_model}, memory_mb=400
    )
    assert_clean_failure(result, "out_of_memory", tmp_path, before)


def test_executor_keeps_working_after_failures(run_job: Any, clip: Path, tmp_path: Path) -> None:
    bad = run_job("media.probe", {}, {"source": bad_media("not_media", clip, tmp_path)})
    assert bad.error_code == "invalid_input"
    assert run_job("media.probe", {}, {"source": clip}).ok
