"""Benchmarks: run all with `python -m bench` (make bench)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CpuMeter", "idle_fraction"]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def idle_fraction(window_s: float) -> float:
    """The share of all CPUs' time spent idle over the next `window_s` seconds."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(window_s)  # a measuring window, not synchronisation
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) from /proc/PID/stat, or None if the process is gone. The
    CPU is user + system time, its own and that of the children it has waited for (a fork
    server's job children, once reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
    return int(f[1]), (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) * _TICK_S


class CpuMeter:
    """CPU time of named groups of processes between two readings: each root pid, and,
    under "<group>_children", the processes those roots started (a worker's fork server
    with its reaped job children) that are alive at either reading; one reaped between
    the readings counts, from then on, in its parent's group. Clock ticks: ~10 ms per
    process, so read it over a burst of work, not one job."""

    def __init__(self, roots: Mapping[str, list[int]]) -> None:
        self.roots = {group: list(pids) for group, pids in roots.items()}
        self._start = self._read()

    def _read(self) -> dict[tuple[str, int], float]:
        parents = {pid: group for group, pids in self.roots.items() for pid in pids}
        out: dict[tuple[str, int], float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            stat = _stat(pid)
            if stat is None:
                continue
            ppid, cpu = stat
            if pid in parents:
                out[(parents[pid], pid)] = cpu
            elif ppid in parents:
                out[(parents[ppid] + "_children", pid)] = cpu
        return out

    def read(self) -> dict[str, float]:
        """CPU seconds per group since this meter was made."""
        end = self._read()
        used: dict[str, float] = {group: 0.0 for group in self.roots}
        for key, cpu in end.items():
            used[key[0]] = used.get(key[0], 0.0) + cpu - self._start.get(key, 0.0)
        for (group, pid), cpu in self._start.items():
            if (group, pid) not in end and group.endswith("_children"):
                # Reaped meanwhile: its whole life now shows in its parent's waited-for
                # time, so the part before the first reading comes off the parent's group.
                used[group.removesuffix("_children")] -= cpu
        return used
