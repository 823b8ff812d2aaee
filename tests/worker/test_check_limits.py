"""Checks of untrusted media results run like jobs: in a child, under the job's limits
(node/executors/checks.py). A file that would exhaust them, a probe that raises and a
child that dies all give a failed check; the verifying process itself never decodes."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from node.executors import checks
from node.executors.checks import CheckLimits, probe_files, run_check
from node.executors.errors import ExecutorError
from node.verification import verify_result
from protocol.jobs import JobTemplate

THUMB = {"at_s": 1.0, "height": 48, "format": "png"}
FAST = {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "preset": "ultrafast"}


def template(job_class: str, params: dict[str, Any]) -> JobTemplate:
    return JobTemplate.from_json({"job_class": job_class, "params": params})


def by_name(report: Any) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


def png_bomb(width: int, height: int) -> bytes:
    """A PNG of `width` x `height` RGBA pixels at 16 bits, all zero: ~0.5 MB that inflate
    to 8 bytes a pixel (8192 x 8192: 512 MiB). Deflate blocks of zeros cut by full
    flushes are identical, so the stream is built from one block, not by compressing
    half a gigabyte; zlib's Adler-32 of n zero bytes is (n mod 65521) << 16 | 1."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = height * (1 + width * 8)  # a filter byte and RGBA64 samples per row
    piece = 1 << 20
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(piece)) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(raw % piece)) + last.flush()
    adler = struct.pack(">I", ((raw % 65521) << 16) | 1)
    idat = b"\x78\xda" + block * (raw // piece) + tail + adler
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def forge(result_folder: Path, dest: Path, name: str, data: bytes) -> Path:
    """A copy of a result whose artifact `name` is `data`, with a manifest that agrees."""
    shutil.copytree(result_folder, dest)
    (dest / name).write_bytes(data)
    manifest = json.loads((dest / "result.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == name:
            artifact["sha256"] = hashlib.sha256(data).hexdigest()
            artifact["size"] = len(data)
    (dest / "result.json").write_text(json.dumps(manifest))
    return dest


def peak_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0); harmless where refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def test_a_decompression_bomb_fails_on_the_memory_limit_in_a_child(
    run_job: Any, clip: Path, tmp_path: Path
) -> None:
    result = run_job("media.thumbnail", THUMB, {"source": clip})
    assert result.ok, result.manifest["error"]
    tpl = template("media.thumbnail", THUMB)
    assert verify_result(tpl, result.path.parent).passed  # honest; starts the fork server
    bomb = forge(result.path.parent, tmp_path / "bomb", "thumbnail.png", png_bomb(8192, 8192))
    assert (bomb / "thumbnail.png").stat().st_size < 600_000

    reset_peak_rss()
    before = peak_rss_kib()
    report = verify_result(tpl, bomb)
    grown_kib = peak_rss_kib() - before

    assert not report.passed
    probe = by_name(report)["probe"]
    assert probe.status == "fail"
    assert "exceeded its memory limit of 512 MiB" in probe.detail  # media.thumbnail's
    # Decoded here, the picture alone would have been 512 MiB.
    assert grown_kib < 8 * 1024, f"the verifying process grew by {grown_kib} KiB"


def test_a_child_that_crashes_is_a_failed_check(
    run_job: Any, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_job("media.thumbnail", THUMB, {"source": clip})
    tpl = template("media.thumbnail", THUMB)
    crashing = tmp_path / "python"  # the "interpreter" of a check child that dies at once
    crashing.write_text("#!/bin/sh\nulimit -c 0\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(checks, "fork_server", lambda: None)
    monkeypatch.setattr(checks, "PYTHON", str(crashing))

    report = verify_result(tpl, result.path.parent)

    assert not report.passed
    probe = by_name(report)["probe"]
    assert probe.status == "fail"
    assert probe.detail.startswith("probe crashed")
    assert "SIGSEGV" in probe.detail
    # The same with a source: the source's probe fails, as the source's check.
    report = verify_result(tpl, result.path.parent, inputs={"source": clip})
    assert by_name(report)["source"].status == "fail"
    assert "probe crashed" in by_name(report)["source"].detail


def test_a_child_killed_by_the_kernel_is_out_of_memory(
    run_job: Any, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_job("media.thumbnail", THUMB, {"source": clip})
    killed = tmp_path / "python"  # as the OOM killer would end it
    killed.write_text(f"#!/bin/sh\nkill -{signal.SIGKILL.value} $$\n")
    killed.chmod(0o755)
    monkeypatch.setattr(checks, "fork_server", lambda: None)
    monkeypatch.setattr(checks, "PYTHON", str(killed))
    report = verify_result(template("media.thumbnail", THUMB), result.path.parent)
    assert "probe exceeded its memory limit of 512 MiB" in by_name(report)["probe"].detail


def test_a_probe_that_raises_in_its_child_is_a_failed_check(
    run_job: Any, clip: Path, tmp_path: Path
) -> None:
    # Another worker's rendition (other thread settings, so compared by PSNR) whose
    # manifest lists a segment that is not there: the PSNR child's decoder raises.
    params = {"height": 72, **FAST}
    one = run_job("media.transcode", {**params, "threads": 1}, {"source": clip})
    two = run_job("media.transcode", {**params, "threads": 2}, {"source": clip})
    assert one.manifest["runtime"] != two.manifest["runtime"]
    broken = tmp_path / "broken"
    shutil.copytree(two.path.parent, broken)
    (broken / "seg_00001.ts").unlink()

    report = verify_result(
        template("media.transcode", {**params, "threads": 1}), one.path.parent, compare=broken
    )

    psnr = by_name(report)["psnr"]
    assert psnr.status == "fail"
    assert "FileNotFoundError" in psnr.detail
    assert not report.passed


def test_a_probe_past_its_wall_clock_limit_is_a_failed_check(clip: Path) -> None:
    limits = CheckLimits(memory_mb=512, timeout_s=0.0)  # the deadline has passed at the start
    with pytest.raises(ExecutorError) as failed:
        probe_files([(clip, "source")], limits)
    assert failed.value.code == "timeout"
    assert failed.value.message.startswith("probe exceeded its time limit of 0 s")


def test_probes_run_in_one_child_and_stop_at_the_first_bad_file(clip: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"\x47" + bytes(187))
    limits = CheckLimits.for_job({"timeout_s": 60, "memory_mb": 512})
    first, second = probe_files([(clip, "source"), (junk, "segment 0"), (clip, "x")], limits)
    assert isinstance(first, dict)
    assert first["streams"][0]["codec"] == "h264"
    assert isinstance(second, ExecutorError)
    assert second.code == "invalid_input"
    # Parts of one file are joined in the child, not here.
    (joined,) = probe_files([([clip], "one part")], limits)
    assert isinstance(joined, dict)
    assert joined["streams"] == first["streams"]


def test_a_check_runs_under_the_jobs_limits() -> None:
    assert CheckLimits.for_job(template("media.thumbnail", THUMB).limits) == CheckLimits(
        memory_mb=512, timeout_s=60.0
    )
    spec = JobTemplate.from_json(
        {"job_class": "media.transcode", "params": {"height": 72}, "limits": {"memory_mb": 3000}}
    )
    limits = CheckLimits.for_job(spec.limits)
    assert (limits.memory_mb, limits.timeout_s, limits.cpu_s) == (3000, 600.0, 610)
    with pytest.raises(ExecutorError) as failed:
        run_check("check.nothing", {}, limits)  # an unknown check fails in its child
    assert failed.value.code == "internal_error"
