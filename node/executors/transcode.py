"""The media.transcode task: one source into one HLS rendition (playlist plus segments)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from node.executors.errors import ExecutorError
from node.executors.media import media_metrics, scaled_width
from node.executors.runtime import banner_in, encoder_version, media_runtime
from node.executors.sandbox import OutputFolder
from node.executors.tasks import TaskContext, TaskResult

__all__ = ["ENCODERS", "PLAYLIST", "TASKS", "transcode"]

PLAYLIST = "index.m3u8"
# video_codec -> (FFmpeg encoder, HLS segment type, default CRF)
ENCODERS: Mapping[str, tuple[str, str, int]] = {
    "h264": ("libx264", "mpegts", 23),
    "h265": ("libx265", "fmp4", 28),
    "vp9": ("libvpx-vp9", "fmp4", 33),
    "av1": ("libsvtav1", "fmp4", 35),
}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus"}
_VP9_CPU_USED = {"ultrafast": 8, "superfast": 8, "veryfast": 7, "faster": 5, "fast": 4,
                 "medium": 3, "slow": 2, "slower": 1, "veryslow": 0}  # fmt: skip
_SVT_PRESET = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8,
               "medium": 6, "slow": 4, "slower": 3, "veryslow": 2}  # fmt: skip


def _video_options(codec: str, params: Mapping[str, Any], gop: int, threads: int) -> dict[str, str]:
    preset = params["preset"]
    crf = params.get("crf")
    if crf is None and params.get("bitrate") is None:
        crf = ENCODERS[codec][2]
    opts: dict[str, str] = {}
    if crf is not None:
        opts["crf"] = str(crf)
    if codec == "h264":
        opts["preset"] = preset
        opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    elif codec == "h265":
        opts["preset"] = preset
        opts["x265-params"] = (
            f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:log-level=error"
            f":pools={threads}:frame-threads={min(threads, 4)}"
        )
    elif codec == "vp9":
        opts["deadline"] = (
            "realtime" if preset in ("ultrafast", "superfast", "veryfast") else "good"
        )
        opts["cpu-used"] = str(_VP9_CPU_USED[preset])
        opts["keyint_min"] = str(gop)
    else:
        opts["preset"] = str(_SVT_PRESET[preset])
        opts["svtav1-params"] = f"keyint={gop}:scd=0:irefresh-type=2:lp={threads}"
    return opts


def check_runtime(params: Mapping[str, Any], withheld: frozenset[str] = frozenset()) -> None:
    """unsupported_parameter if this PyAV build lacks (or the operator withholds) the
    requested encoders."""
    import av

    wanted = [ENCODERS[params["video_codec"]][0]]
    if params["audio_codec"] != "none":
        wanted.append(AUDIO_ENCODERS[params["audio_codec"]])
    for name in wanted:
        if name in withheld:
            raise ExecutorError("unsupported_parameter", f"this worker does not offer {name}")
        try:
            av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            raise ExecutorError(
                "unsupported_parameter", f"this runtime has no {name} encoder"
            ) from None


def transcode(
    source: Path,
    folder: OutputFolder,
    params: Mapping[str, Any],
    withheld: frozenset[str] = frozenset(),
) -> TaskResult:
    """Decode `source`, scale to params['height'], encode and mux an HLS VOD rendition into
    `folder`. The benchmark calls this same function directly to measure executor cost."""
    import av
    from av.video.reformatter import VideoReformatter

    from node.media_probe import check_video_size, open_media

    started = time.perf_counter()
    check_runtime(params, withheld)
    codec = params["video_codec"]
    encoder, segment_type, _ = ENCODERS[codec]
    threads = int(params["threads"])
    height = int(params["height"])
    ext = "ts" if segment_type == "mpegts" else "m4s"
    hls = {
        "hls_time": f"{params['segment_seconds']:g}",
        "hls_playlist_type": "vod",
        "hls_list_size": "0",
        "hls_segment_type": segment_type,
        # Absolute: FFmpeg resolves a relative name against the process's working folder,
        # not the playlist's. The playlist itself lists base names.
        "hls_segment_filename": str(folder.root / folder.pattern(f"seg_%05d.{ext}")),
    }
    if segment_type == "fmp4":
        hls["hls_fmp4_init_filename"] = folder.path("init.mp4").name
    frames = 0
    with open_media(source) as src:
        if not src.streams.video:
            raise ExecutorError("invalid_input", "source has no video stream")
        vin = src.streams.video[0]
        check_video_size(vin.codec_context.width, vin.codec_context.height)
        ain = src.streams.audio[0] if src.streams.audio else None
        if params["audio_codec"] != "none" and ain is None:
            raise ExecutorError(
                "invalid_input", "source has no audio stream; ask for audio_codec 'none'"
            )
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        rate = Fraction(rate).limit_denominator(1001)
        # Keyframes at most keyframe_interval_s apart: round the frame count down.
        gop = max(1, math.floor(float(rate) * params["keyframe_interval_s"] + 1e-6))
        width = scaled_width(vin.codec_context.width, vin.codec_context.height, height)
        vin.thread_count = threads
        out = av.open(str(folder.path(PLAYLIST)), "w", format="hls", options=hls)
        try:
            vout = out.add_stream(encoder, rate=rate)
            vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
            vout.thread_count = threads
            vout.codec_context.gop_size = gop
            if params.get("bitrate") is not None:
                vout.codec_context.bit_rate = int(params["bitrate"])
            elif codec == "vp9":
                vout.codec_context.bit_rate = 0  # constant quality mode
            vout.options = _video_options(codec, params, gop, threads)
            aout = None
            streams = [vin]
            if ain is not None and params["audio_codec"] != "none":
                audio_rate = 48_000 if params["audio_codec"] == "opus" else ain.rate or 48_000
                aout = out.add_stream(AUDIO_ENCODERS[params["audio_codec"]], rate=audio_rate)
                aout.layout = "stereo" if (ain.codec_context.channels or 2) >= 2 else "mono"
                aout.bit_rate = int(params["audio_bitrate"])
                streams.append(ain)
            scaler = VideoReformatter()
            for packet in src.demux(streams):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        picture = scaler.reformat(
                            frame, width=width, height=height, format="yuv420p"
                        )
                        picture.pts = frames
                        picture.time_base = 1 / rate
                        frames += 1
                        out.mux(vout.encode(picture))
                    elif aout is not None:
                        frame.pts = None  # the encoder numbers samples itself
                        out.mux(aout.encode(frame))
            out.mux(vout.encode(None))
            if aout is not None:
                out.mux(aout.encode(None))
        finally:
            out.close()
    if frames == 0:
        raise ExecutorError("invalid_input", "no video frame could be decoded from source")
    segments = sorted(p.name for p in folder.root.glob(f"seg_*.{ext}"))
    artifacts = [PLAYLIST, *segments] + (["init.mp4"] if segment_type == "fmp4" else [])
    duration = float(frames / rate)
    metrics = media_metrics(duration, frames, time.perf_counter() - started)
    metrics.update(width=width, height=height, segments=len(segments), audio=aout is not None)
    # x264/x265 write their exact version into the stream: read it from our own output.
    # (In fMP4 the x265 SEI sits in the init section's hvcC; in TS, in the first segment.)
    banner = None
    for name in (*artifacts[len(segments) + 1 :], segments[0]):
        with folder.path(name).open("rb") as fh:
            banner = banner or banner_in(fh.read(1 << 16), encoder)
    fingerprint = {"codecs": {encoder: encoder_version(encoder, banner)}} if banner else {}
    return TaskResult(artifacts, metrics, runtime=fingerprint)


class TranscodeTask:
    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        params = ctx.params
        encoders = [ENCODERS[params["video_codec"]][0]]
        if params["audio_codec"] != "none":
            encoders.append(AUDIO_ENCODERS[params["audio_codec"]])
        try:
            return media_runtime(ctx.threads, tuple(encoders), probe_banners=False)
        except Exception:  # a missing encoder is reported by run() with its own code
            return media_runtime(ctx.threads, probe_banners=False)

    def run(self, ctx: TaskContext) -> TaskResult:
        return transcode(ctx.inputs["source"], ctx.folder, ctx.params, ctx.withheld_encoders)


TASKS = {"media.transcode": TranscodeTask()}
