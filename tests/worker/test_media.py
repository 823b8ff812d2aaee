"""Behaviour of the media executors and the media verification checks on real PyAV output."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from node.executors import ChildProcessExecutor, read_manifest
from node.media_probe import frame_psnr, probe_media
from node.verification import verify_result
from protocol.jobs import JobTemplate
from protocol.verify import check_psnr

FAST = {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "preset": "ultrafast"}


def template(job_class: str, params: dict[str, Any]) -> JobTemplate:
    return JobTemplate.from_json({"job_class": job_class, "params": params})


def statuses(report: Any) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_probe_reports_streams(run_job: Any, clip: Path) -> None:
    result = run_job("media.probe", {"count_frames": True}, {"source": clip})
    assert result.ok
    facts = json.loads((result.path.parent / "probe.json").read_text())
    video, audio = facts["streams"]
    assert (video["codec"], video["width"], video["height"], video["fps"]) == ("h264", 160, 90, 25)
    assert video["keyframes_s"] == [0.0, 1.0]
    assert facts["decoded_frames"] == 50
    assert (audio["codec"], audio["sample_rate"], audio["channels"]) == ("aac", 48000, 2)
    assert result.manifest["metrics"]["frames"] == 50
    assert result.manifest["metrics"]["duration_s"] == pytest.approx(2.0, abs=0.05)
    report = verify_result(
        template("media.probe", {"count_frames": True}), result.path.parent, inputs={"source": clip}
    )
    assert report.passed, report.to_json()


@pytest.mark.parametrize(("fmt", "codec"), [("png", "png"), ("jpeg", "mjpeg")])
def test_thumbnail_size_and_format(run_job: Any, clip: Path, fmt: str, codec: str) -> None:
    params = {"at_s": 1.5, "height": 48, "format": fmt}
    result = run_job("media.thumbnail", params, {"source": clip})
    assert result.ok, result.manifest["error"]
    (artifact,) = result.manifest["artifacts"]
    image = probe_media(result.path.parent / artifact["name"], packets=False)
    (stream,) = image["streams"]
    assert (stream["codec"], stream["width"], stream["height"]) == (codec, 86, 48)
    assert verify_result(
        template("media.thumbnail", params), result.path.parent, inputs={"source": clip}
    ).passed


def test_thumbnail_past_the_end_is_invalid_input(run_job: Any, clip: Path) -> None:
    result = run_job("media.thumbnail", {"at_s": 60.0}, {"source": clip})
    assert result.error_code == "invalid_input"


def test_segment_cuts_on_keyframes_without_reencoding(run_job: Any, clip: Path) -> None:
    result = run_job("media.segment", {"segment_seconds": 1.0}, {"source": clip})
    assert result.ok, result.manifest["error"]
    out = result.path.parent
    listing = json.loads((out / "segments.json").read_text())["segments"]
    assert [s["name"] for s in listing] == ["seg_00000.mkv", "seg_00001.mkv"]
    assert [s["start_s"] for s in listing] == [0.0, 1.0]
    for name in ("seg_00000.mkv", "seg_00001.mkv"):
        facts = probe_media(out / name)
        video = facts["streams"][0]
        assert video["codec"] == "h264"
        assert video["packets"] == 25
        assert video["keyframes_s"][0] == video["start_s"]
    report = verify_result(
        template("media.segment", {"segment_seconds": 1.0}), out, inputs={"source": clip}
    )
    assert report.passed, report.to_json()


def test_transcode_h264_rendition_passes_every_check(run_job: Any, clip: Path) -> None:
    params = {"height": 72, **FAST}
    result = run_job("media.transcode", params, {"source": clip})
    assert result.ok, result.manifest["error"]
    names = [a["name"] for a in result.manifest["artifacts"]]
    assert names == ["index.m3u8", "seg_00000.ts", "seg_00001.ts"]
    metrics = result.manifest["metrics"]
    assert (metrics["frames"], metrics["width"], metrics["height"]) == (50, 128, 72)
    assert metrics["realtime_factor"] > 0
    assert "libx264" in result.manifest["runtime"]["codecs"]
    assert result.manifest["runtime"]["codecs"]["libx264"].startswith("x264 - core")
    report = verify_result(
        template("media.transcode", params), result.path.parent, inputs={"source": clip}
    )
    assert report.passed, report.to_json()
    assert {c.name for c in report.checks} >= {
        "playlist",
        "references",
        "container",
        "codec",
        "resolution",
        "duration",
        "audio",
        "segments",
        "keyframes",
        "artifact_hashes",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("video_codec", "audio_codec"), [("h265", "aac"), ("vp9", "opus"), ("av1", "opus")]
)
def test_transcode_other_codecs(
    run_job: Any, clip: Path, video_codec: str, audio_codec: str
) -> None:
    params = {"height": 64, "video_codec": video_codec, "audio_codec": audio_codec, **FAST}
    result = run_job("media.transcode", params, {"source": clip})
    assert result.ok, result.manifest["error"]
    codecs = result.manifest["runtime"]["codecs"]
    if video_codec == "h265":
        assert codecs["libx265"].startswith("x265 (build ")
    assert "init.mp4" in [a["name"] for a in result.manifest["artifacts"]]
    report = verify_result(
        template("media.transcode", params), result.path.parent, inputs={"source": clip}
    )
    assert report.passed, report.to_json()


def test_transcode_options_are_honoured(run_job: Any, clip: Path, silent_clip: Path) -> None:
    params = {
        "height": 72,
        "bitrate": 200_000,
        "audio_codec": "none",
        "keyframe_interval_s": 0.5,
        "segment_seconds": 1.0,
        "preset": "ultrafast",
    }
    result = run_job("media.transcode", params, {"source": silent_clip})
    assert result.ok, result.manifest["error"]
    out = result.path.parent
    seg = probe_media(out / "seg_00000.ts")
    assert [s["type"] for s in seg["streams"]] == ["video"]
    keys = seg["streams"][0]["keyframes_s"]
    # 12 frames at 25 fps: the largest whole GOP within 0.5 s.
    assert [round(b - a, 2) for a, b in itertools.pairwise(keys)] == [0.48, 0.48]
    report = verify_result(template("media.transcode", params), out, inputs={"source": silent_clip})
    assert report.passed, report.to_json()
    # Audio asked of a source without any: a clean failure, not a silent rendition.
    result = run_job("media.transcode", {"height": 72, **FAST}, {"source": silent_clip})
    assert result.error_code == "invalid_input"


def test_same_fingerprint_gives_identical_bytes(run_job: Any, clip: Path, tmp_path: Path) -> None:
    params = {"height": 72, **FAST}
    a = run_job("media.transcode", params, {"source": clip})
    b = run_job("media.transcode", params, {"source": clip})
    assert a.manifest["runtime"] == b.manifest["runtime"]
    assert a.manifest["artifacts"] == b.manifest["artifacts"]
    report = verify_result(
        template("media.transcode", params), a.path.parent, compare=b.path.parent
    )
    assert statuses(report)["exact_match"] == "pass"


def test_other_fingerprint_is_compared_by_psnr(run_job: Any, clip: Path, other_clip: Path) -> None:
    one = run_job("media.transcode", {"height": 72, **FAST, "threads": 1}, {"source": clip})
    two = run_job("media.transcode", {"height": 72, **FAST, "threads": 2}, {"source": clip})
    assert one.manifest["runtime"] != two.manifest["runtime"]  # thread settings differ
    report = verify_result(
        template("media.transcode", {"height": 72, **FAST, "threads": 1}),
        one.path.parent,
        compare=two.path.parent,
    )
    assert statuses(report)["psnr"] == "pass", report.to_json()
    # Another source at the same settings is far below the threshold.
    other = run_job("media.transcode", {"height": 72, **FAST, "threads": 2}, {"source": other_clip})
    values = frame_psnr(one.path.parent / "seg_00000.ts", other.path.parent / "seg_00000.ts")
    assert check_psnr(values).status == "fail"


def test_verification_rejects_tampered_and_fake_renditions(
    run_job: Any, clip: Path, tmp_path: Path
) -> None:
    params = {"height": 72, **FAST}
    result = run_job("media.transcode", params, {"source": clip})
    good = result.path.parent
    tpl = template("media.transcode", params)

    flipped = tmp_path / "flipped"
    shutil.copytree(good, flipped)
    data = bytearray((flipped / "seg_00001.ts").read_bytes())
    data[500] ^= 0xFF
    (flipped / "seg_00001.ts").write_bytes(bytes(data))
    assert statuses(verify_result(tpl, flipped))["artifact_hashes"] == "fail"

    # Files that merely exist, with a manifest whose hashes match them, never pass.
    fake = tmp_path / "fake"
    shutil.copytree(good, fake)
    manifest = read_manifest(fake)
    for artifact in manifest["artifacts"]:
        if artifact["name"].endswith(".ts"):
            (fake / artifact["name"]).write_bytes(b"\x47" + b"\x00" * 187)
            artifact["sha256"] = hashlib.sha256((fake / artifact["name"]).read_bytes()).hexdigest()
            artifact["size"] = 188
    (fake / "result.json").write_text(json.dumps(manifest))
    report = verify_result(tpl, fake)
    assert not report.passed
    assert statuses(report)["artifact_hashes"] == "pass"

    # A rendition of other parameters is not this job's result.
    assert (
        statuses(verify_result(template("media.transcode", {**params, "height": 36}), good))["job"]
        == "fail"
    )


def test_withheld_encoder_is_an_unsupported_parameter(run_job: Any, clip: Path) -> None:
    executor = ChildProcessExecutor("media.transcode", withheld_encoders=frozenset({"libx265"}))
    result = run_job(
        "media.transcode",
        {"height": 72, "video_codec": "h265", **FAST},
        {"source": clip},
        executor=executor,
    )
    assert result.error_code == "unsupported_parameter"
    assert result.exit_code == 11


def test_transcode_called_in_process_writes_only_its_folder(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The benchmark calls transcode() directly; FFmpeg must not resolve segment names
    # against the process's working folder.
    from node.executors.sandbox import OutputFolder
    from node.executors.transcode import transcode
    from protocol.jobs import validate_params

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    folder = tmp_path / "folder"
    folder.mkdir()
    params = validate_params("media.transcode", {"height": 36, **FAST})
    result = transcode(clip, OutputFolder(folder), params)
    assert sorted(result.artifacts) == sorted(p.name for p in folder.iterdir())
    assert list(elsewhere.iterdir()) == []


def test_compare_refuses_other_work(run_job: Any, clip: Path, other_clip: Path) -> None:
    params = {"height": 72, **FAST}
    mine = run_job("media.transcode", params, {"source": clip})
    theirs = run_job("media.transcode", params, {"source": other_clip})
    report = verify_result(
        template("media.transcode", params), mine.path.parent, compare=theirs.path.parent
    )
    assert statuses(report)["compare"] == "fail"
    assert not report.passed
