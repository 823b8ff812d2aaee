"""Verification checks of job results: pure functions over manifests and probe data."""

from protocol.verify.hls import Playlist, PlaylistError, parse_playlist
from protocol.verify.llm import (
    GREEDY_MARGIN,
    PositionScores,
    SamplingPolicy,
    check_generation,
    check_teacher_forced,
    compare_exact,
    token_allowed,
)
from protocol.verify.manifest import check_artifact_hashes, check_manifest_schema
from protocol.verify.media import (
    check_noop,
    check_probe,
    check_segments,
    check_thumbnail,
    check_transcode,
    expected_width,
)
from protocol.verify.psnr import PSNR_MEAN_DB, PSNR_MIN_DB, check_psnr, psnr_from_mse
from protocol.verify.report import Check, Report, fail, passed, skipped

__all__ = [
    "GREEDY_MARGIN",
    "PSNR_MEAN_DB",
    "PSNR_MIN_DB",
    "Check",
    "Playlist",
    "PlaylistError",
    "PositionScores",
    "Report",
    "SamplingPolicy",
    "check_artifact_hashes",
    "check_generation",
    "check_manifest_schema",
    "check_noop",
    "check_probe",
    "check_psnr",
    "check_segments",
    "check_teacher_forced",
    "check_thumbnail",
    "check_transcode",
    "compare_exact",
    "expected_width",
    "fail",
    "parse_playlist",
    "passed",
    "psnr_from_mse",
    "skipped",
    "token_allowed",
]
