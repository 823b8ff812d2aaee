"""The child side of the sandbox: resource limits, thread pinning and the output folder guard."""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Mapping
from pathlib import Path

from node.executors.errors import ExecutorError

__all__ = [
    "ARTIFACT_NAME",
    "DEFAULT_NICE",
    "OutputFolder",
    "apply_limits",
    "child_environment",
    "near_memory_limit",
]

# Artifacts are flat files with plain names: no separators, no "..", no hidden files.
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_MIB = 1 << 20
# Variables that make OpenMP/BLAS/codec libraries start at most `threads` workers.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def child_environment(base: Mapping[str, str], *, threads: int, scratch: Path) -> dict[str, str]:
    """A minimal environment for a job's child: no inherited secrets, pinned thread pools,
    temporary files and caches under the job's own folder."""
    env = {key: base[key] for key in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT") if key in base}
    env.update({var: str(threads) for var in _THREAD_VARS})
    env.update(
        {
            "TMPDIR": str(scratch),
            "HOME": str(scratch),
            "XDG_CACHE_HOME": str(scratch),
            # glibc gives each thread its own 64 MiB arena reservation; with RLIMIT_AS that
            # would turn threads into false out-of-memory failures.
            "MALLOC_ARENA_MAX": "2",
            "SVT_LOG": "1",  # SVT-AV1: errors only
            "GGML_NO_BACKTRACE": "1",  # ggml would otherwise start gdb on an abort
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
        }
    )
    return env


# How far a job's child lowers its CPU priority below its worker's (a nice increment):
# when the host is busy, the node's own work -- negotiation, heartbeats, verification,
# payments for every job -- runs before the jobs' work, and a child still has the CPU to
# itself when nothing else wants it. bench/README.md ("Ninth session") measured it.
DEFAULT_NICE = 10


def apply_limits(
    *, memory_mb: int, cpu_s: int, cpus: list[int] | None, nice: int = DEFAULT_NICE
) -> None:
    """Limit this process: address space, CPU seconds (a backstop to the parent's wall-clock
    timeout), no core files, a lower CPU priority, and optionally the CPUs it may run on."""
    memory = memory_mb * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cpus:
        os.sched_setaffinity(0, cpus)
    if nice > 0:
        os.nice(nice)  # the kernel caps it at 19; raising priority is never asked for


def near_memory_limit(fraction: float = 0.8) -> bool:
    """Did this process's address space peak close to its RLIMIT_AS? A library that
    reports an allocation failure as a generic error is then out of memory, not fed bad
    input."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return False
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024 >= fraction * limit
    except OSError:
        pass
    return False


class OutputFolder:
    """The only place a job writes: every path handed to a library comes from `path()`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, name: str) -> Path:
        """The path of artifact `name`; raise output_violation for any other kind of name."""
        if not ARTIFACT_NAME.match(name) or ".." in name:
            raise ExecutorError("output_violation", f"artifact name {name!r} is not allowed")
        path = self.root / name
        if path.is_symlink() or path.resolve().parent != self.root:
            raise ExecutorError("output_violation", f"artifact {name!r} escapes the output folder")
        return path

    def pattern(self, template: str, count: int = 100_000) -> str:
        """Check a printf-style name pattern (e.g. 'seg_%05d.ts') by expanding its extremes."""
        for i in (0, count - 1):
            self.path(template % i)
        return template
