"""Deterministic checks of media results over probe data (dicts from node.media_probe).

A probe dict has `format`, `duration_s` and `streams`; each stream has `type`, `codec`,
`profile` and, for video, `width`, `height`, `pix_fmt`, `fps`, `start_s`,
`measured_duration_s` and `keyframes_s`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from protocol.verify.hls import Playlist
from protocol.verify.report import Check, fail, passed, skipped

__all__ = [
    "DURATION_TOLERANCE",
    "check_noop",
    "check_probe",
    "check_segments",
    "check_thumbnail",
    "check_transcode",
    "expected_width",
]

# Durations may differ by a fraction of the whole or a fixed slack, whichever is larger.
DURATION_TOLERANCE = (0.01, 0.1)  # (relative, seconds)
VIDEO_CODECS = {"h264": {"h264"}, "h265": {"hevc"}, "vp9": {"vp9", "libvpx-vp9"},
                "av1": {"av1", "libdav1d", "libaom-av1"}}  # fmt: skip
# 8-bit 4:2:0 profiles only: what the encoders produce for yuv420p.
VIDEO_PROFILES = {
    "h264": {"Constrained Baseline", "Baseline", "Main", "High"},
    "h265": {"Main"},
    "vp9": {"Profile 0"},
    "av1": {"Main"},
}
AUDIO_CODECS = {"aac": {"aac"}, "opus": {"opus", "libopus"}}
SEGMENT_CONTAINER = {"h264": "mpegts", "h265": "mp4", "vp9": "mp4", "av1": "mp4"}


def expected_width(src_width: int, src_height: int, height: int) -> int:
    """The output width for a target height: aspect kept, rounded to an even number."""
    return max(2, round(src_width * height / src_height / 2) * 2)


def _tolerance(seconds: float) -> float:
    rel, fixed = DURATION_TOLERANCE
    return max(fixed, rel * seconds)


def _video(probe: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((s for s in probe["streams"] if s["type"] == "video"), None)


def _audio(probe: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((s for s in probe["streams"] if s["type"] == "audio"), None)


def _source_duration(source: Mapping[str, Any]) -> float:
    video = _video(source)
    if video is not None and video.get("measured_duration_s"):
        return float(video["measured_duration_s"])
    return float(source["duration_s"] or 0.0)


def _frame_s(video: Mapping[str, Any]) -> float:
    fps = video.get("fps") or 25.0
    return 1.0 / float(fps)


def check_transcode(
    params: Mapping[str, Any],
    playlist: Playlist,
    playlist_name: str,
    segments: Sequence[Mapping[str, Any]],
    artifact_names: Sequence[str],
    source: Mapping[str, Any] | None,
) -> list[Check]:
    """All deterministic checks of one HLS rendition. `segments` are probes of the
    playlist's segments in playlist order (fMP4 segments probed with the init prepended)."""
    checks: list[Check] = []
    codec = params["video_codec"]
    names = set(artifact_names)

    refs = playlist.references
    missing = [r for r in refs if r not in names]
    extra = sorted(names - set(refs) - {playlist_name})
    if missing:
        checks.append(fail("references", f"playlist references missing artifact(s): {missing}"))
    elif extra:
        checks.append(fail("references", f"artifact(s) not in the playlist: {extra}"))
    else:
        checks.append(passed("references", f"{len(refs)} reference(s), all present"))
    if len(segments) != len(playlist.segments):
        checks.append(fail("segments", "not every segment could be probed"))
        return checks

    want_container = SEGMENT_CONTAINER[codec]
    if (want_container == "mp4") != (playlist.init is not None):
        checks.append(fail("container", "fMP4 segments need an EXT-X-MAP init, TS none"))
    elif any(want_container not in str(p["format"]) for p in segments):
        got = sorted({str(p["format"]) for p in segments})
        checks.append(fail("container", f"segments are {got}, expected {want_container}"))
    else:
        checks.append(passed("container", f"HLS VOD, {want_container} segments"))

    videos = [_video(p) for p in segments]
    if any(v is None for v in videos):
        checks.append(fail("codec", "a segment has no video stream"))
        return checks
    vs: list[Mapping[str, Any]] = [v for v in videos if v is not None]
    bad = [v["codec"] for v in vs if v["codec"] not in VIDEO_CODECS[codec]]
    profiles = {v["profile"] for v in vs}
    if bad:
        checks.append(fail("codec", f"video codec {bad[0]!r}, expected {codec}"))
    elif not profiles <= VIDEO_PROFILES[codec] or any(v["pix_fmt"] != "yuv420p" for v in vs):
        checks.append(fail("codec", f"profile(s) {sorted(map(str, profiles))} / pix_fmt"))
    else:
        checks.append(passed("codec", f"{codec}, profile {sorted(map(str, profiles))}, yuv420p"))

    height = int(params["height"])
    sizes = {(int(v["width"]), int(v["height"])) for v in vs}
    want_w = None
    src_video = _video(source) if source is not None else None
    if src_video is not None:
        want_w = expected_width(int(src_video["width"]), int(src_video["height"]), height)
    if len(sizes) != 1:
        checks.append(fail("resolution", f"segments differ in size: {sorted(sizes)}"))
    else:
        ((w, h),) = sizes
        if h != height or w % 2 or (want_w is not None and w != want_w):
            checks.append(fail("resolution", f"{w}x{h}, expected {want_w or 'even'}x{height}"))
        else:
            checks.append(passed("resolution", f"{w}x{h}"))

    frame = _frame_s(vs[0])
    durations = [float(v.get("measured_duration_s") or 0.0) for v in vs]
    total = sum(durations)
    if abs(total - playlist.duration_s) > _tolerance(total) + frame * len(vs):
        checks.append(
            fail(
                "duration", f"segments last {total:.3f} s, playlist says {playlist.duration_s:.3f}"
            )
        )
    elif source is not None:
        want = _source_duration(source)
        if abs(total - want) > _tolerance(want) + frame:
            checks.append(fail("duration", f"{total:.3f} s, source has {want:.3f} s"))
        else:
            checks.append(passed("duration", f"{total:.3f} s vs source {want:.3f} s"))
    else:
        checks.append(passed("duration", f"{total:.3f} s (playlist agrees; no source given)"))

    audios = [_audio(p) for p in segments]
    if params["audio_codec"] == "none":
        if any(a is not None for a in audios):
            checks.append(fail("audio", "audio present though audio_codec is 'none'"))
        else:
            checks.append(passed("audio", "no audio, as asked"))
    elif any(a is None or a["codec"] not in AUDIO_CODECS[params["audio_codec"]] for a in audios):
        checks.append(fail("audio", f"a segment lacks {params['audio_codec']} audio"))
    else:
        checks.append(passed("audio", f"{params['audio_codec']} in every segment"))

    seg_s = float(params["segment_seconds"])
    key_s = float(params["keyframe_interval_s"])
    longest = seg_s + key_s + frame + 0.05
    short = [i for i, d in enumerate(durations[:-1]) if d < seg_s - frame - 0.05]
    if any(d > longest for d in durations) or short or durations[-1] <= 0:
        checks.append(fail("segments", f"segment durations {durations} vs {seg_s:g} s"))
    else:
        checks.append(passed("segments", f"{len(durations)} segment(s) of ~{seg_s:g} s"))

    checks.append(_check_keyframes(vs, key_s, frame))
    return checks


def _check_keyframes(videos: Sequence[Mapping[str, Any]], interval: float, frame: float) -> Check:
    slack = frame + 1e-3
    for i, v in enumerate(videos):
        keys = [float(k) for k in v.get("keyframes_s", [])]
        start = float(v.get("start_s", 0.0))
        end = start + float(v.get("measured_duration_s") or 0.0)
        if not keys or abs(keys[0] - start) > slack:
            return fail("keyframes", f"segment {i} does not start with a keyframe")
        gaps = [b - a for a, b in zip(keys, [*keys[1:], end], strict=True)]
        if max(gaps) > interval + slack:
            return fail("keyframes", f"segment {i}: a {max(gaps):.3f} s gap between keyframes")
    return passed("keyframes", f"every segment starts with one; gaps <= {interval:g} s")


def check_probe(reported: Mapping[str, Any], source: Mapping[str, Any] | None) -> list[Check]:
    """media.probe: the reported facts have the schema and, given our own probe of the
    source, agree with it."""
    try:
        streams = list(reported["streams"])
        ok = (
            isinstance(reported["format"], str)
            and streams
            and all(
                s["type"] in ("video", "audio") and isinstance(s["codec"], str) for s in streams
            )
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        return [fail("probe_schema", "probe.json lacks format/streams")]
    checks = [passed("probe_schema", f"{len(streams)} stream(s)")]
    if source is None:
        return [*checks, skipped("probe_matches_source", "no source given")]
    keys = ("type", "codec", "width", "height", "sample_rate", "channels")
    mine = [tuple(s.get(k) for k in keys) for s in source["streams"]]
    theirs = [tuple(s.get(k) for k in keys) for s in streams]
    d_src, d_rep = source.get("duration_s") or 0.0, reported.get("duration_s") or 0.0
    if mine != theirs or reported["format"] != source["format"]:
        checks.append(fail("probe_matches_source", f"streams {theirs} != {mine}"))
    elif abs(float(d_src) - float(d_rep)) > _tolerance(float(d_src)):
        checks.append(fail("probe_matches_source", f"duration {d_rep} != {d_src}"))
    else:
        checks.append(passed("probe_matches_source", "format, streams and duration agree"))
    return checks


def check_thumbnail(
    params: Mapping[str, Any], image: Mapping[str, Any], source: Mapping[str, Any] | None
) -> list[Check]:
    video = _video(image)
    want = "png" if params["format"] == "png" else "mjpeg"
    if video is None or video["codec"] != want:
        return [fail("image", f"not a {want} image")]
    checks = [passed("image", want)]
    height = int(params["height"])
    w, h = int(video["width"]), int(video["height"])
    src = _video(source) if source is not None else None
    want_w = expected_width(int(src["width"]), int(src["height"]), height) if src else None
    if h != height or (want_w is not None and w != want_w):
        checks.append(fail("resolution", f"{w}x{h}, expected {want_w or '?'}x{height}"))
    else:
        checks.append(passed("resolution", f"{w}x{h}"))
    return checks


def check_segments(
    params: Mapping[str, Any],
    listing: Mapping[str, Any],
    segments: Sequence[Mapping[str, Any]],
    artifact_names: Sequence[str],
    source: Mapping[str, Any] | None,
) -> list[Check]:
    """media.segment: segments.json lists exactly the segment artifacts; each segment
    starts on a keyframe, is at least segment_seconds long (but the last), keeps the
    source codec, and together they cover the source."""
    try:
        entries = list(listing["segments"])
        names = [str(e["name"]) for e in entries]
    except (KeyError, TypeError):
        return [fail("listing", "segments.json lacks a segments list")]
    if sorted(names) != sorted(n for n in artifact_names if n != "segments.json"):
        return [fail("listing", "segments.json does not list exactly the segment artifacts")]
    if len(segments) != len(names) or not names:
        return [fail("listing", "not every segment could be probed")]
    checks = [passed("listing", f"{len(names)} segment(s)")]
    seg_s = float(params["segment_seconds"])
    videos = [_video(p) or _audio(p) for p in segments]
    if any(v is None for v in videos):
        return [*checks, fail("codec", "a segment has no stream")]
    vs = [v for v in videos if v is not None]
    if source is not None:
        ref = _video(source) or _audio(source)
        if ref is None or any(v["codec"] != ref["codec"] for v in vs):
            checks.append(fail("codec", "segments do not keep the source codec"))
        else:
            checks.append(passed("codec", f"{ref['codec']} copied"))
    durations = [float(v.get("measured_duration_s") or 0.0) for v in vs]
    frame = _frame_s(vs[0])
    if any(d < seg_s - frame - 0.05 for d in durations[:-1]):
        checks.append(fail("segments", f"a segment is shorter than {seg_s:g} s: {durations}"))
    else:
        checks.append(passed("segments", f"durations {durations}"))
    if any(v["type"] == "video" and not v.get("keyframes_s") for v in vs) or any(
        v["type"] == "video" and abs(float(v["keyframes_s"][0]) - float(v["start_s"])) > frame
        for v in vs
    ):
        checks.append(fail("keyframes", "a segment does not start with a keyframe"))
    else:
        checks.append(passed("keyframes", "every segment starts with a keyframe"))
    if source is not None:
        total, want = sum(durations), _source_duration(source)
        if abs(total - want) > _tolerance(want) + frame:
            checks.append(fail("duration", f"segments cover {total:.3f} s of {want:.3f} s"))
        else:
            checks.append(passed("duration", f"{total:.3f} s of {want:.3f} s"))
    return checks


def check_noop(params: Mapping[str, Any], artifacts: Sequence[Mapping[str, Any]]) -> Check:
    """noop: exactly payload.txt, holding the payload (its hash is known in advance)."""
    want = hashlib.sha256(str(params["payload"]).encode("utf-8")).hexdigest()
    names = [a["name"] for a in artifacts]
    if names != ["payload.txt"] or artifacts[0]["sha256"] != want:
        return fail("payload", "payload.txt is missing or does not hold the payload")
    return passed("payload", "payload echoed")
