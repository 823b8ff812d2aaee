"""The media.probe, media.thumbnail and media.segment tasks (PyAV, in the child)."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from typing import Any

from node.executors.errors import ExecutorError
from node.executors.runtime import media_runtime
from node.executors.tasks import TaskContext, TaskResult

__all__ = ["TASKS"]


def even(value: float) -> int:
    """The nearest even integer >= 2 (4:2:0 chroma needs even sides)."""
    return max(2, round(value / 2) * 2)


def scaled_width(width: int, height: int, target_height: int) -> int:
    from node.media_probe import check_video_size

    out = even(width * target_height / height)
    check_video_size(out, target_height, "requested output")
    return out


def media_metrics(duration_s: float, frames: int, elapsed_s: float) -> dict[str, Any]:
    return {
        "duration_s": round(duration_s, 6),
        "frames": frames,
        "realtime_factor": round(duration_s / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        "work_ms": round(elapsed_s * 1000, 3),
    }


class ProbeTask:
    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        return media_runtime(ctx.threads)

    def run(self, ctx: TaskContext) -> TaskResult:
        from node.media_probe import probe_media

        started = time.perf_counter()
        facts = probe_media(ctx.inputs["source"], count_frames=ctx.params["count_frames"])
        ctx.folder.path("probe.json").write_text(
            json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        video = next((s for s in facts["streams"] if s["type"] == "video"), None)
        frames = facts.get("decoded_frames", video["packets"] if video else 0)
        duration = facts["duration_s"] or max(
            (s.get("measured_duration_s") or 0.0 for s in facts["streams"]), default=0.0
        )
        metrics = media_metrics(duration, frames, time.perf_counter() - started)
        return TaskResult(["probe.json"], metrics)


class ThumbnailTask:
    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        codec = "png" if ctx.params["format"] == "png" else "mjpeg"
        return media_runtime(ctx.threads, (codec,))

    def run(self, ctx: TaskContext) -> TaskResult:
        import av

        from node.media_probe import check_video_size, open_media

        started = time.perf_counter()
        at_s = float(ctx.params["at_s"])
        height = int(ctx.params["height"])
        with open_media(ctx.inputs["source"]) as container:
            if not container.streams.video:
                raise ExecutorError("invalid_input", "source has no video stream")
            stream = container.streams.video[0]
            check_video_size(stream.codec_context.width, stream.codec_context.height)
            stream.thread_count = ctx.threads
            if at_s > 0 and stream.time_base is not None:
                container.seek(int(at_s / stream.time_base), stream=stream, backward=True)
            chosen, decoded = None, 0
            for frame in container.decode(stream):
                decoded += 1
                chosen = frame
                if frame.time is None or frame.time + 1e-6 >= at_s:
                    break
            if chosen is None:
                raise ExecutorError("invalid_input", "no picture could be decoded from source")
            if chosen.time is not None and chosen.time + 1.0 < at_s:
                raise ExecutorError("invalid_input", f"source ends before at_s={at_s:g}")
            width = scaled_width(chosen.width, chosen.height, height)
            if ctx.params["format"] == "png":
                name, codec, pix_fmt = "thumbnail.png", "png", "rgb24"
            else:
                name, codec, pix_fmt = "thumbnail.jpg", "mjpeg", "yuvj420p"
            image = chosen.reformat(width=width, height=height, format=pix_fmt)
            encoder = av.CodecContext.create(codec, "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, pix_fmt
            encoder.time_base = Fraction(1, 25)
            if codec == "mjpeg":
                encoder.options = {"qscale": "3"}
            image.pts = 0
            data = b"".join(bytes(p) for p in encoder.encode(image))
            data += b"".join(bytes(p) for p in encoder.encode(None))
            check_video_size(width, height, "thumbnail")
        ctx.folder.path(name).write_bytes(data)
        metrics = media_metrics(float(chosen.time or 0.0), decoded, time.perf_counter() - started)
        metrics.update(width=width, height=height)
        return TaskResult([name], metrics)


class SegmentTask:
    """Copies packets (no re-encoding) into Matroska files, cutting at the first keyframe
    of the reference stream (the first video stream, else audio) at or after each
    `segment_seconds` boundary. Timestamps keep their source values."""

    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        return media_runtime(ctx.threads)

    def run(self, ctx: TaskContext) -> TaskResult:
        import av

        from node.media_probe import open_media, probe_media

        started = time.perf_counter()
        seconds = float(ctx.params["segment_seconds"])
        probe_media(ctx.inputs["source"], packets=False)  # size limits before any copying
        pattern = ctx.folder.pattern("seg_%05d.mkv")
        segments: list[dict[str, Any]] = []
        frames = 0
        with open_media(ctx.inputs["source"]) as source:
            streams = [s for s in source.streams if s.type in ("video", "audio")]
            reference = next((s for s in streams if s.type == "video"), streams[0])
            out: Any = None
            mapping: dict[int, Any] = {}
            seg_start = 0.0
            seg_end = 0.0
            try:
                for packet in source.demux(streams):
                    if packet.dts is None or packet.size == 0:
                        continue
                    ts = packet.pts if packet.pts is not None else packet.dts
                    t = float(ts * packet.time_base)
                    is_ref = packet.stream.index == reference.index
                    if (
                        is_ref
                        and packet.is_keyframe
                        and (out is None or t - seg_start >= seconds - 1e-3)
                    ):
                        if out is not None:
                            out.close()
                            segments[-1]["duration_s"] = round(t - seg_start, 6)
                        name = pattern % len(segments)
                        out = av.open(str(ctx.folder.path(name)), "w", format="matroska")
                        mapping = {s.index: out.add_stream_from_template(s) for s in streams}
                        seg_start = t
                        segments.append({"name": name, "start_s": round(t, 6)})
                    if out is None:
                        continue  # before the first keyframe: not decodable on its own
                    if is_ref:
                        frames += 1
                        seg_end = max(seg_end, t + float((packet.duration or 0) * packet.time_base))
                    packet.stream = mapping[packet.stream.index]
                    out.mux(packet)
            finally:
                if out is not None:
                    out.close()
        if not segments:
            raise ExecutorError("invalid_input", "source has no keyframe to start a segment at")
        segments[-1]["duration_s"] = round(max(0.0, seg_end - seg_start), 6)
        ctx.folder.path("segments.json").write_text(
            json.dumps({"segments": segments}, indent=2) + "\n", encoding="utf-8"
        )
        total = sum(s["duration_s"] for s in segments)
        metrics = media_metrics(total, frames, time.perf_counter() - started)
        metrics["segments"] = len(segments)
        return TaskResult([s["name"] for s in segments] + ["segments.json"], metrics)


TASKS = {
    "media.probe": ProbeTask(),
    "media.thumbnail": ThumbnailTask(),
    "media.segment": SegmentTask(),
}
