"""Checks of untrusted results, run like jobs: in a child process under a job's limits.

A client (or an arbiter) that verifies a worker's media result demuxes and decodes files
that worker made. Those files are as untrusted as any job input, so the probes run the
way a job does (spec/executors.md, "Checks of untrusted results"): in a child forked
from the fork server (or a fresh interpreter), in its own session, in a scratch folder,
under the job's RLIMIT_AS, a CPU-time backstop, a wall-clock limit and a lower CPU
priority. A child that runs out of memory or time, or crashes, fails the check; the
node's own process never decodes the file. The child side is node/executors/check_tasks.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.executors.base import classify_exit, kill_child, parse_report, spawn_child, watch_child
from node.executors.errors import FAILURES, ExecutorError
from node.executors.forkserver import ForkedChild, ForkServer
from node.executors.sandbox import DEFAULT_NICE, child_environment

__all__ = ["CheckLimits", "Media", "fork_server", "probe_files", "psnr", "run_check"]

log = logging.getLogger(__name__)

# A file to check: one path, or the parts of one file (an fMP4 init section + a segment).
Media = Path | Sequence[Path]

# The interpreter of a check child that is not forked (tests point it elsewhere).
# A fork server left idle is stopped by the node's housekeeping
# (WorkerRole.stop_idle_fork_server, run on every lifecycle node).
PYTHON = sys.executable


@dataclass(frozen=True)
class CheckLimits:
    """The limits of one check child: the job's own (`for_job`)."""

    memory_mb: int
    timeout_s: float
    nice: int = DEFAULT_NICE

    @property
    def cpu_s(self) -> int:
        """The CPU-time backstop, as a one-thread job's: its wall-clock budget + 10 s."""
        return int(self.timeout_s) + 10

    @classmethod
    def for_job(cls, limits: Mapping[str, int]) -> CheckLimits:
        """The limits of the job whose result is checked: its spec's `memory_mb` and
        `timeout_s` (the job class's defaults unless the client asked for others, never
        above the class's maximum). Its honest result was made within them, and a check
        reads no more than the job did."""
        return cls(memory_mb=int(limits["memory_mb"]), timeout_s=float(limits["timeout_s"]))


def fork_server() -> ForkServer | None:
    """The process's fork server (the one a worker's jobs use), or None."""
    from node.executors.registry import FORK_SERVER

    return FORK_SERVER


def run_check(check: str, params: Mapping[str, Any], limits: CheckLimits) -> dict[str, Any]:
    """Run the check task `check` (node/executors/tasks.py, CHECK_MODULES) on `params` in
    a child with `limits`; its output. A child that fails (out of memory or time,
    crashed, an error) raises ExecutorError with the code from FAILURES and a one-line
    reason, e.g. "probe exceeded its memory limit of 512 MiB"."""
    request = {
        "job_id": check,
        "job_class": check,
        "params": dict(params),
        "inputs": {},
        "threads": 1,
        "limits": {
            "timeout_s": limits.timeout_s,
            "memory_mb": limits.memory_mb,
            "cpu_s": limits.cpu_s,
            "cpus": None,
            "nice": min(19, max(0, limits.nice)),
        },
    }
    try:
        scratch = Path(tempfile.mkdtemp(prefix="c0-check-"))
    except OSError as exc:
        raise ExecutorError("internal_error", f"probe failed: no scratch folder ({exc})") from None
    try:
        report, returncode, tail, stopped, lost = _run_child(request, scratch, limits.timeout_s)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failure = classify_exit(
        stop_reason=stopped,
        lost=lost,
        report=report,
        returncode=returncode,
        stderr_tail=tail,
        timeout_s=limits.timeout_s,
    )
    if failure is not None:
        code, message = failure
        raise ExecutorError(code, _reason(code, message, limits))
    assert report is not None
    output = (report.get("done") or {}).get("output")
    if not isinstance(output, dict):
        raise ExecutorError("internal_error", "probe failed: the check child reported no output")
    return output


def _run_child(
    request: dict[str, Any], scratch: Path, timeout_s: float
) -> tuple[dict[str, Any] | None, int | None, str, str | None, bool]:
    server = fork_server()
    env = child_environment(os.environ, threads=1, scratch=scratch.resolve())
    started = time.monotonic()
    try:
        proc = spawn_child(request, env=env, cwd=scratch, fork_server=server, python=PYTHON)
    except OSError as exc:
        raise ExecutorError("internal_error", f"probe failed: no child started ({exc})") from None
    stopped: list[str] = []
    lock = threading.Lock()

    def stop(reason: str) -> None:
        with lock:
            if proc.returncode is None:
                stopped.append(reason)
                kill_child(proc)

    try:
        raw, tail = watch_child(
            proc,
            json.dumps(request).encode(),
            started + timeout_s,
            on_deadline=lambda: stop("timeout"),
        )
    except Exception as exc:  # a bug here: the check fails, the node goes on
        stop("internal_error")
        raise ExecutorError("internal_error", f"probe failed: {exc!r}") from None
    except BaseException:
        stop("internal_error")
        raise
    lost = isinstance(proc, ForkedChild) and proc.lost
    return parse_report(raw), proc.returncode, tail, stopped[0] if stopped else None, lost


def _reason(code: str, message: str, limits: CheckLimits) -> str:
    """A failed check's reason: which limit the probe exceeded, and what it said."""
    detail = f" ({message})" if message else ""
    if code == "out_of_memory":
        return f"probe exceeded its memory limit of {limits.memory_mb} MiB{detail}"
    if code == "timeout":
        return f"probe exceeded its time limit of {limits.timeout_s:g} s{detail}"
    if code == "crashed":
        return f"probe crashed{detail}"
    if code in ("invalid_input", "limit_exceeded", "unsupported_parameter"):
        return message
    return f"probe failed{detail}"


def probe_files(
    items: Sequence[tuple[Media, str]], limits: CheckLimits, *, count_frames: bool = False
) -> list[dict[str, Any] | ExecutorError]:
    """`probe_media` of each (file, what) in one check child, in order: each file's facts,
    up to the first file that is not readable media, given as its ExecutorError (the list
    ends there). A child that fails as a whole (memory, time, crash) raises ExecutorError."""
    if not items:
        return []
    params = {
        "items": [
            {
                "what": what,
                "parts": [str(Path(p).resolve()) for p in _parts(media)],
                "packets": True,
                "count_frames": count_frames,
            }
            for media, what in items
        ]
    }
    output = run_check("check.probe", params, limits)
    results: list[dict[str, Any] | ExecutorError] = []
    for entry in output.get("probes", []):
        if isinstance(entry, dict) and isinstance(entry.get("probe"), dict):
            results.append(entry["probe"])
            continue
        error = entry.get("error") if isinstance(entry, dict) else None
        code = str(error.get("code")) if isinstance(error, dict) else "internal_error"
        message = str(error.get("message", "")) if isinstance(error, dict) else "bad report"
        results.append(ExecutorError(code if code in FAILURES else "internal_error", message))
        break
    return results


def psnr(a: Sequence[Media], b: Sequence[Media], limits: CheckLimits) -> list[float]:
    """`frame_psnr` of each pair of segments, concatenated, in one check child (identical
    frames: inf). A rendition that cannot be compared, or a child that fails, raises
    ExecutorError."""
    params = {
        "a": [[str(Path(p).resolve()) for p in _parts(m)] for m in a],
        "b": [[str(Path(p).resolve()) for p in _parts(m)] for m in b],
    }
    output = run_check("check.psnr", params, limits)
    return [float("inf") if v is None else float(v) for v in output.get("psnr", [])]


def _parts(media: Media) -> list[Path]:
    return [media] if isinstance(media, Path) else [Path(p) for p in media]
