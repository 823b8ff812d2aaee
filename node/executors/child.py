"""The job child process: `python -m node.executors.child`, request on stdin, report on stdout.

Protocol: the parent writes one JSON request and closes stdin (or the fork server hands
the request to a forked child, which calls `run_job` directly). The child applies its
limits, writes `{"ready": ...}` as the first report line, runs the job class's task in its
working directory (the output folder), then writes `{"done": ...}` or `{"failed": ...}`.
Libraries that print to stdout are redirected to stderr first, so the report stays clean.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any


class ReportPipe:
    """The report channel: each item one JSON line, written straight to the pipe's
    descriptor. No buffered text layer: in a forked child, setting one up (codec lookup,
    buffers) wrote to ~50 pages it shared with the fork server, each one a page copied."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, item: dict[str, Any]) -> None:
        data = memoryview((json.dumps(item, allow_nan=False) + "\n").encode())
        while data:
            data = data[os.write(self.fd, data) :]


def _usage(started_cpu: float) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": round(usage.ru_utime + usage.ru_stime - started_cpu, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> int:
    channel = ReportPipe(os.dup(1))
    os.dup2(2, 1)
    request = json.loads(sys.stdin.buffer.read())
    return run_job(request, channel)


def run_job(request: dict[str, Any], channel: ReportPipe) -> int:
    """Apply the limits, report ready, run the task, report the outcome; the exit code.

    Called in a fresh interpreter (`main`) or in a child forked by the fork server
    (node/executors/forkserver.py), with fd 1 already pointing at stderr."""
    sys.stdout = sys.stderr

    from node.executors.errors import ExecutorError
    from node.executors.sandbox import OutputFolder, apply_limits, near_memory_limit

    limits = request["limits"]
    apply_limits(
        memory_mb=limits["memory_mb"],
        cpu_s=limits["cpu_s"],
        cpus=limits["cpus"],
        nice=int(limits.get("nice", 0)),
    )
    channel.send({"ready": {"pid": os.getpid()}})
    cpu0 = time.process_time()

    runtime: dict[str, Any] = {}
    try:
        from node.executors.tasks import TaskContext, load_task

        task = load_task(request["job_class"])
        ctx = TaskContext(
            job_id=request["job_id"],
            params=request["params"],
            inputs={name: Path(item["path"]) for name, item in request["inputs"].items()},
            folder=OutputFolder(Path.cwd()),
            threads=int(request["threads"]),
            withheld_encoders=frozenset(request.get("withheld_encoders", ())),
        )
        runtime = task.runtime(ctx)
        result = task.run(ctx)
        for key, value in result.runtime.items():
            if isinstance(value, dict) and isinstance(runtime.get(key), dict):
                runtime[key] = {**runtime[key], **value}
            else:
                runtime[key] = value
        done = {"artifacts": result.artifacts, "metrics": result.metrics, "output": result.output}
        channel.send({"runtime": runtime, "usage": _usage(cpu0), "done": done})
        return 0
    except MemoryError as exc:
        failed = {"code": "out_of_memory", "message": f"memory limit reached: {exc!s}"[:500]}
    except ExecutorError as exc:
        failed = {"code": exc.code, "message": exc.message}
    except ImportError as exc:
        # Mapping a shared library fails under a too-small RLIMIT_AS.
        lowered = str(exc).lower()
        if "map" in lowered or "memory" in lowered:
            failed = {"code": "out_of_memory", "message": f"cannot load a library: {exc}"}
        else:
            failed = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        traceback.print_exc()
        failed = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    if failed["code"] in ("invalid_input", "internal_error") and near_memory_limit():
        failed = {"code": "out_of_memory", "message": f"near the memory limit: {failed['message']}"}
    channel.send({"runtime": runtime, "usage": _usage(cpu0), "failed": failed})
    return 3


if __name__ == "__main__":
    sys.exit(main())
