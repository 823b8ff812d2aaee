"""Benchmarks: run all with `python -m bench` (make bench)."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["idle_fraction"]


def idle_fraction(window_s: float) -> float:
    """The share of all CPUs' time spent idle over the next `window_s` seconds."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(window_s)  # a measuring window, not synchronisation
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)
