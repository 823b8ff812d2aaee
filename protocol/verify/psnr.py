"""Tolerance comparison of two renditions from different runtimes: decoded-frame PSNR."""

from __future__ import annotations

import math
from collections.abc import Sequence

from protocol.verify.report import Check, fail, passed

__all__ = ["PSNR_MEAN_DB", "PSNR_MIN_DB", "check_psnr", "psnr_from_mse"]

# Same parameters, different encoder builds or thread counts: renditions sit far above
# these; a different source, resolution or a starved bitrate falls below.
PSNR_MEAN_DB = 35.0
PSNR_MIN_DB = 28.0


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(peak * peak / mse)


def check_psnr(
    values: Sequence[float], *, mean_db: float = PSNR_MEAN_DB, min_db: float = PSNR_MIN_DB
) -> Check:
    """Pass when the per-frame luma PSNR averages at least `mean_db` and no frame is below
    `min_db`. The mean is over frames with finite PSNR (identical frames count as 99 dB)."""
    if not values:
        return fail("psnr", "no frames to compare")
    capped = [min(v, 99.0) for v in values]
    mean = sum(capped) / len(capped)
    low = min(capped)
    detail = f"{len(values)} frames, mean {mean:.2f} dB, min {low:.2f} dB"
    if mean < mean_db or low < min_db:
        return fail("psnr", f"{detail} (need mean >= {mean_db:g}, min >= {min_db:g})")
    return passed("psnr", detail)
