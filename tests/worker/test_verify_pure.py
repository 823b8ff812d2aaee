"""The pure checks of protocol.verify on hand-made data."""

from __future__ import annotations

import math

import pytest

from protocol.verify import (
    PlaylistError,
    PositionScores,
    Report,
    SamplingPolicy,
    check_psnr,
    check_teacher_forced,
    expected_width,
    fail,
    parse_playlist,
    passed,
    psnr_from_mse,
    skipped,
    token_allowed,
)

PLAYLIST = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-MAP:URI="init.mp4"
#EXTINF:2.000000,
seg_00000.m4s
#EXTINF:1.500000,
seg_00001.m4s
#EXT-X-ENDLIST
"""


def test_playlist_is_parsed() -> None:
    playlist = parse_playlist(PLAYLIST)
    assert playlist.references == ("init.mp4", "seg_00000.m4s", "seg_00001.m4s")
    assert playlist.duration_s == pytest.approx(3.5)
    assert playlist.target_duration == 2


@pytest.mark.parametrize(
    "bad",
    [
        PLAYLIST.replace("seg_00001.m4s", "../../etc/passwd"),
        PLAYLIST.replace("seg_00001.m4s", "/etc/passwd"),
        PLAYLIST.replace("seg_00001.m4s", "http://example.com/x.ts"),
        PLAYLIST.replace('URI="init.mp4"', 'URI="file:///etc/shadow"'),
        PLAYLIST.replace("#EXT-X-ENDLIST\n", ""),
        PLAYLIST.replace("#EXT-X-PLAYLIST-TYPE:VOD\n", ""),
        PLAYLIST.replace("#EXTM3U\n", ""),
        PLAYLIST.replace("#EXTINF:1.500000,\n", ""),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-ENDLIST\n",
    ],
)
def test_playlist_rejects_escapes_and_incomplete_lists(bad: str) -> None:
    with pytest.raises(PlaylistError):
        parse_playlist(bad)


def test_a_report_passes_only_with_a_substantive_pass() -> None:
    assert not Report.of([]).passed
    assert not Report.of([skipped("a", "no source")]).passed
    assert not Report.of([passed("a"), fail("b", "no")]).passed
    assert Report.of([passed("a"), skipped("b", "n/a")]).passed


def test_psnr_threshold() -> None:
    assert psnr_from_mse(0.0) == math.inf
    assert psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert check_psnr([math.inf, 45.0, 41.0]).status == "pass"
    assert check_psnr([45.0, 45.0, 20.0]).status == "fail"  # one bad frame
    assert check_psnr([33.0, 33.0]).status == "fail"  # mean too low
    assert check_psnr([]).status == "fail"


def test_expected_width_keeps_aspect_and_parity() -> None:
    assert expected_width(1920, 1080, 360) == 640
    assert expected_width(160, 90, 72) == 128
    assert expected_width(160, 90, 36) == 64
    assert expected_width(720, 576, 480) % 2 == 0


def pos(claimed: int, logits: dict[int, float]) -> PositionScores:
    ordered = tuple(sorted(logits.items(), key=lambda kv: -kv[1]))
    norm = math.log(sum(math.exp(v) for v in logits.values()))
    return PositionScores(claimed, logits[claimed], ordered, norm)


LOGITS = {0: 5.0, 1: 4.0, 2: 3.0, 3: 0.0, 4: -2.0}


def test_greedy_accepts_only_the_argmax_up_to_float_noise() -> None:
    greedy = SamplingPolicy(0.0, 40, 1.0)
    assert token_allowed(greedy, pos(0, LOGITS))
    assert not token_allowed(greedy, pos(1, LOGITS))
    assert token_allowed(greedy, pos(1, {**LOGITS, 1: 4.8}))  # a tie within the margin


def test_near_ties_are_allowed_but_not_many() -> None:
    greedy = SamplingPolicy(0.0, 40, 1.0)
    exact = [pos(0, LOGITS)] * 18
    tie = pos(1, {**LOGITS, 1: 4.8})
    assert check_teacher_forced(greedy, [*exact, tie, tie], n_claimed=20).status == "pass"
    three = [*exact[:17], tie, tie, tie]
    assert check_teacher_forced(greedy, three, n_claimed=20).status == "fail"
    assert check_teacher_forced(greedy, exact, n_claimed=19).status == "fail"  # count


def test_top_k_and_top_p_sets() -> None:
    assert token_allowed(SamplingPolicy(0.8, 2, 1.0), pos(1, LOGITS))
    assert not token_allowed(SamplingPolicy(0.8, 2, 1.0), pos(2, LOGITS))
    # p(0) = 0.66, p(0)+p(1) = 0.90: top_p 0.5 keeps only token 0; 0.8 keeps 0 and 1.
    assert not token_allowed(SamplingPolicy(1.0, 0, 0.5), pos(1, LOGITS))
    assert token_allowed(SamplingPolicy(1.0, 0, 0.8), pos(1, LOGITS))
    assert not token_allowed(SamplingPolicy(1.0, 0, 0.8), pos(2, LOGITS))
    # No restriction: any token is possible.
    assert token_allowed(SamplingPolicy(1.0, 0, 1.0), pos(4, LOGITS))
