"""What a check child runs: PyAV probes of untrusted media, for node/executors/checks.py.

A check child is a job child (node/executors/child.py: limits, ready line, report) whose
"job class" is a check, not a class any worker offers: `check.probe` demuxes files for
their stream facts, `check.psnr` decodes two renditions frame by frame. Both read only
the files named in their parameters; a file given as several parts (an fMP4 init section
and a segment) is joined here, inside the child's memory limit.

FFmpeg does not always report a failed allocation: while it probes a stream it decodes a
picture, and when `get_buffer()` cannot allocate one (a PNG that declares 8192x8192 at
16 bits is 512 MiB of pixels) it logs the error and goes on with the stream facts. The
child therefore captures FFmpeg's error log while it probes and makes such an error an
`out_of_memory` failure: the file cannot be checked within the limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from node.executors.errors import ExecutorError
from node.executors.tasks import TaskContext, TaskResult
from node.media_probe import frame_psnr, probe_media

__all__ = ["TASKS"]

T = TypeVar("T")

# FFmpeg's words for an allocation that failed (lower case).
_ALLOCATION_FAILED = (
    "get_buffer() failed",
    "cannot allocate memory",
    "out of memory",
    "failed to allocate",
)


def _media(parts: Sequence[str]) -> Path | bytes:
    """One file, or the parts of one joined (init section + segment)."""
    if len(parts) == 1:
        return Path(parts[0])
    return b"".join(Path(part).read_bytes() for part in parts)


@contextmanager
def _ffmpeg_errors() -> Iterator[list[Any]]:
    import av.logging

    av.logging.set_level(av.logging.ERROR)
    with av.logging.Capture(local=False) as logs:
        yield logs


def _within_memory(what: str, work: Callable[[], T]) -> T:
    """`work()`, or out_of_memory if FFmpeg failed to allocate on the way (even if it
    carried on, or then reported the file as damaged)."""
    error: ExecutorError | None = None
    result: T | None = None
    with _ffmpeg_errors() as logs:
        try:
            result = work()
        except ExecutorError as exc:
            error = exc
    for entry in logs:
        message = str(entry[2] if isinstance(entry, tuple) else entry).strip()
        if any(hint in message.lower() for hint in _ALLOCATION_FAILED):
            raise ExecutorError(
                "out_of_memory", f"{what}: FFmpeg could not allocate memory ({message})"
            )
    if error is not None:
        raise error
    assert result is not None
    return result


class ProbeCheck:
    """`check.probe`: params {"items": [{"what", "parts", "packets", "count_frames"}]}.
    Output {"probes": [...]}: each item's facts ({"probe": {...}}), in order, up to the
    first that fails ({"error": {"code", "message"}}), which ends the list. Running out
    of memory fails the whole check (the child's limits are the check's)."""

    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        return {}

    def run(self, ctx: TaskContext) -> TaskResult:
        results: list[dict[str, Any]] = []
        for item in ctx.params["items"]:
            what = str(item["what"])

            def probe(item: dict[str, Any] = item, what: str = what) -> dict[str, Any]:
                return probe_media(
                    _media(item["parts"]),
                    packets=bool(item.get("packets", True)),
                    count_frames=bool(item.get("count_frames", False)),
                    what=what,
                )

            try:
                facts = _within_memory(what, probe)
            except ExecutorError as exc:
                if exc.code == "out_of_memory":
                    raise
                results.append({"error": {"code": exc.code, "message": exc.message}})
                break
            results.append({"probe": facts})
        return TaskResult(artifacts=[], output={"probes": results})


class PsnrCheck:
    """`check.psnr`: params {"a": [parts, ...], "b": [parts, ...]}, segment by segment.
    Output {"psnr": [dB per frame, null for identical frames]} (JSON has no infinity)."""

    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        return {}

    def run(self, ctx: TaskContext) -> TaskResult:
        values: list[float] = []
        for a, b in zip(ctx.params["a"], ctx.params["b"], strict=True):

            def compare(a: list[str] = a, b: list[str] = b) -> list[float]:
                return frame_psnr(_media(a), _media(b))

            values += _within_memory("psnr", compare)
        encoded = [None if math.isinf(v) else v for v in values]
        return TaskResult(artifacts=[], output={"psnr": encoded})


TASKS = {"check.probe": ProbeCheck(), "check.psnr": PsnrCheck()}
