"""Benchmarks: run all with `python -m bench` (make bench)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CpuMeter", "host_times", "idle_fraction", "process_cpu_s"]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def host_times() -> tuple[int, int]:
    """(idle + iowait, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def idle_fraction(window_s: float) -> float:
    """The share of all CPUs' time spent idle over the next `window_s` seconds."""
    idle0, total0 = host_times()
    time.sleep(window_s)  # a measuring window, not synchronisation
    idle1, total1 = host_times()
    return (idle1 - idle0) / max(1, total1 - total0)


def _stat(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, the fields after the command name) of /proc/PID/stat; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
    return int(fields[1]), fields


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of a process and of its children it has waited for
    (a fork server's job children, once reaped); None if the process is gone."""
    stat = _stat(pid)
    if stat is None:
        return None
    f = stat[1]
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) * _TICK_S


class CpuMeter:
    """CPU time of named groups of processes between two readings: each root pid, and,
    under "<group>_children", the processes those roots started (a worker's fork server
    with its reaped job children) that are alive at either reading; one reaped between
    the readings counts, from then on, in its parent's group. Clock ticks: ~10 ms per
    process, so read it over a burst of work, not one job."""

    def __init__(self, roots: Mapping[str, list[int]]) -> None:
        self.roots = {group: list(pids) for group, pids in roots.items()}
        self._start = self._read()
        self._host_start = host_times()

    def _read(self) -> dict[tuple[str, int], float]:
        parents = {pid: group for group, pids in self.roots.items() for pid in pids}
        out: dict[tuple[str, int], float] = {}
        for pid, group in parents.items():
            cpu = process_cpu_s(pid)
            if cpu is not None:
                out[(group, pid)] = cpu
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = _stat(int(entry))
            if stat is None or stat[0] not in parents:
                continue
            cpu = process_cpu_s(int(entry))
            if cpu is not None:
                out[(parents[stat[0]] + "_children", int(entry))] = cpu
        return out

    def read(self) -> dict[str, float]:
        """CPU seconds per group since this meter was made, and the host's busy share
        (0..1 of all CPUs) over the same time under "host_busy"."""
        end = self._read()
        used: dict[str, float] = {group: 0.0 for group in self.roots}
        for key, cpu in end.items():
            used[key[0]] = used.get(key[0], 0.0) + cpu - self._start.get(key, 0.0)
        for (group, pid), cpu in self._start.items():
            if (group, pid) not in end and group.endswith("_children"):
                # Reaped meanwhile: its whole life now shows in its parent's waited-for
                # time, so the part before the first reading comes off the parent's group.
                parent = group.removesuffix("_children")
                used[parent] -= cpu
        idle0, total0 = self._host_start
        idle1, total1 = host_times()
        used["host_busy"] = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
        return used
