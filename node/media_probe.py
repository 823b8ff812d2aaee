"""File probing with PyAV: stream facts for media.probe and for verifying media results.

Nothing here trusts a file: sizes are checked before anything is decoded, every FFmpeg
error becomes ExecutorError("invalid_input"), and playlists are never handed to FFmpeg
(their references are resolved by the caller against the declared artifacts).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from node.executors.errors import ExecutorError

__all__ = ["MAX_SIDE", "check_video_size", "frame_psnr", "open_media", "probe_media"]

# The largest source side any media job class accepts (8K UHD is 7680 wide).
MAX_SIDE = 8192
# Things FFmpeg raises for bad input; its MemoryError is left to mean out of memory.
_BAD_INPUT = (av.error.FFmpegError, ValueError, EOFError, UnicodeDecodeError, IndexError)


@contextmanager
def open_media(source: Path | bytes, what: str = "source") -> Iterator[Any]:
    """Open a media file (or bytes) for reading; bad data -> invalid_input."""
    if isinstance(source, Path) and source.stat().st_size == 0:
        raise ExecutorError("invalid_input", f"{what} is an empty file")
    if isinstance(source, bytes) and not source:
        raise ExecutorError("invalid_input", f"{what} is empty")
    target: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        container = av.open(target, "r", timeout=None)
    except av.error.MemoryError:
        raise
    except _BAD_INPUT as exc:
        raise ExecutorError("invalid_input", f"{what} is not readable media: {exc}") from None
    try:
        yield container
    except av.error.MemoryError:
        raise
    except _BAD_INPUT as exc:
        raise ExecutorError("invalid_input", f"{what} is damaged: {exc}") from None
    finally:
        container.close()


def check_video_size(width: int, height: int, what: str = "source") -> None:
    if width <= 0 or height <= 0:
        raise ExecutorError("invalid_input", f"{what} has no usable picture size")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ExecutorError(
            "limit_exceeded",
            f"{what} is {width}x{height}; media jobs accept at most {MAX_SIDE} per side",
        )


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return round(float(value * time_base), 6)


def _stream_facts(stream: Any) -> dict[str, Any]:
    ctx = stream.codec_context
    facts: dict[str, Any] = {
        "index": stream.index,
        "type": stream.type,
        "codec": ctx.name if ctx is not None else None,
        "profile": ctx.profile if ctx is not None else None,
        "bit_rate": ctx.bit_rate if ctx is not None and ctx.bit_rate else None,
        "duration_s": _seconds(stream.duration, stream.time_base),
    }
    if stream.type == "video":
        check_video_size(ctx.width, ctx.height)
        rate = stream.average_rate or stream.guessed_rate
        facts.update(
            width=ctx.width,
            height=ctx.height,
            pix_fmt=ctx.pix_fmt,
            fps=round(float(rate), 6) if rate else None,
        )
    elif stream.type == "audio":
        facts.update(sample_rate=ctx.sample_rate, channels=ctx.channels)
    return facts


def probe_media(
    source: Path | bytes, *, packets: bool = True, count_frames: bool = False, what: str = "source"
) -> dict[str, Any]:
    """Container and stream facts. With `packets`, also demux (no decoding) to measure
    durations, packet counts and keyframe times; with `count_frames`, decode the first
    video stream to count frames exactly."""
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    with open_media(source, what) as container:
        streams = [_stream_facts(s) for s in container.streams if s.type in ("video", "audio")]
        if not streams:
            raise ExecutorError("invalid_input", f"{what} has no audio or video stream")
        result: dict[str, Any] = {
            "format": container.format.name,
            "size": size,
            "duration_s": _seconds(container.duration, Fraction(1, av.time_base)),
            "bit_rate": container.bit_rate or None,
            "streams": streams,
        }
        if packets:
            _measure_packets(container, result)
        if count_frames:
            video = container.streams.video
            if video:
                container.seek(0)
                frames = sum(1 for _ in container.decode(video[0]))
                result["decoded_frames"] = frames
    return result


def _measure_packets(container: Any, result: dict[str, Any]) -> None:
    by_index = {s["index"]: s for s in result["streams"]}
    spans: dict[int, list[float]] = {}
    keyframes: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    selected = [s for s in container.streams if s.index in by_index]
    for packet in container.demux(selected):
        if packet.size == 0:
            continue
        index = packet.stream.index
        counts[index] = counts.get(index, 0) + 1
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            continue
        start = float(ts * packet.time_base)
        end = start + float((packet.duration or 0) * packet.time_base)
        span = spans.setdefault(index, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        if packet.is_keyframe:
            keyframes.setdefault(index, []).append(round(start, 6))
    for index, facts in by_index.items():
        facts["packets"] = counts.get(index, 0)
        if index in spans:
            facts["start_s"] = round(spans[index][0], 6)
            facts["measured_duration_s"] = round(spans[index][1] - spans[index][0], 6)
        if facts["type"] == "video":
            facts["keyframes_s"] = sorted(keyframes.get(index, []))


def _gray_frames(source: Path | bytes, what: str) -> Iterator[Any]:
    with open_media(source, what) as container:
        if not container.streams.video:
            raise ExecutorError("invalid_input", f"{what} has no video stream")
        stream = container.streams.video[0]
        check_video_size(stream.codec_context.width, stream.codec_context.height, what)
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="gray")


def frame_psnr(a: Path | bytes, b: Path | bytes) -> list[float]:
    """Per-frame luma PSNR (dB) between two renditions of the same content, frame by frame
    in decode order. Identical frames give float('inf'); a different frame count or size
    raises ExecutorError("invalid_input")."""
    import numpy as np  # here, not at the top: probing jobs should not pay for numpy

    values: list[float] = []
    frames_b = _gray_frames(b, "second rendition")
    for left in _gray_frames(a, "first rendition"):
        right = next(frames_b, None)
        if right is None:
            raise ExecutorError("invalid_input", "renditions differ in frame count")
        if left.shape != right.shape:
            raise ExecutorError("invalid_input", f"frame sizes differ: {left.shape} {right.shape}")
        mse = float(np.mean((left.astype(np.float64) - right.astype(np.float64)) ** 2))
        values.append(float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse)))
    if next(frames_b, None) is not None:
        raise ExecutorError("invalid_input", "renditions differ in frame count")
    return values
