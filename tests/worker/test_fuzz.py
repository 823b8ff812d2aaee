"""Bounded fuzzing: mutated media files into media.probe and media.transcode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.executors import MANIFEST_NAME
from tests.worker.helpers import listing

# What a mutated file may legitimately end in. Never internal_error (an executor bug),
# never output_violation; crashed would be a decoder crash contained by the sandbox and
# is reported, but the suite treats it as a finding.
ALLOWED = {None, "invalid_input", "limit_exceeded", "timeout"}

mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "zero", "cut", "insert"]),
        st.floats(min_value=0.0, max_value=1.0),
        st.integers(min_value=1, max_value=255),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, ops: list[tuple[str, float, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, value in ops:
        if not buf:
            break
        i = min(len(buf) - 1, int(where * len(buf)))
        if op == "flip":
            buf[i] ^= value
        elif op == "zero":
            buf[i : i + value] = bytes(min(value, len(buf) - i))
        elif op == "cut":
            del buf[i:]
        else:
            buf[i:i] = bytes([value]) * value
    return bytes(buf)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("job_class", "params"),
    [
        ("media.probe", {"count_frames": True}),
        ("media.transcode", {"height": 36, "segment_seconds": 1.0, "keyframe_interval_s": 1.0}),
    ],
)
def test_mutated_media(
    run_job: Any, clip: Path, tmp_path: Path, job_class: str, params: dict[str, Any]
) -> None:
    original = clip.read_bytes()
    counter = iter(range(10_000))

    @settings(
        max_examples=12,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(ops=mutations)
    def check(ops: list[tuple[str, float, int]]) -> None:
        n = next(counter)
        source = tmp_path / f"m{n}.mp4"
        source.write_bytes(mutate(original, ops))
        before = listing(tmp_path)
        out = tmp_path / f"out{n}"
        result = run_job(job_class, params, {"source": source}, out=out, timeout_s=60)
        assert result.error_code in ALLOWED, result.manifest["error"]
        names = {a["name"] for a in result.manifest["artifacts"]} | {MANIFEST_NAME}
        assert {p.name for p in out.iterdir()} == names
        assert listing(tmp_path) - before == {out.name, *(f"{out.name}/{x}" for x in names)}

    check()
