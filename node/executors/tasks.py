"""What runs inside the child: one Task per job class, loaded by name on demand."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node.executors.errors import ExecutorError
from node.executors.sandbox import OutputFolder

__all__ = ["CHECK_MODULES", "TASK_MODULES", "Task", "TaskContext", "TaskResult", "load_task"]

# Imported lazily in the child, so a noop job never loads PyAV or llama.cpp.
TASK_MODULES: Mapping[str, str] = {
    "noop": "node.executors.noop",
    "media.probe": "node.executors.media",
    "media.thumbnail": "node.executors.media",
    "media.segment": "node.executors.media",
    "media.transcode": "node.executors.transcode",
    "llm.generate": "node.executors.llm",
}

# Checks of untrusted results (node/executors/checks.py): run in a job child under a
# job's limits, loaded like a job class's task, but never offered as a job class.
CHECK_MODULES: Mapping[str, str] = {
    "check.probe": "node.executors.check_tasks",
    "check.psnr": "node.executors.check_tasks",
}


@dataclass(frozen=True)
class TaskContext:
    job_id: str
    params: Mapping[str, Any]
    inputs: Mapping[str, Path]
    folder: OutputFolder
    threads: int
    withheld_encoders: frozenset[str] = frozenset()


@dataclass
class TaskResult:
    artifacts: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    # Fingerprint facts only known after the work (e.g. the encoder banner in the
    # output); merged into the runtime map, one level deep.
    runtime: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        """The exact runtime fingerprint this job runs on (see node.executors.runtime)."""
        ...

    def run(self, ctx: TaskContext) -> TaskResult:
        """Do the work, writing only through ctx.folder; raise ExecutorError to fail."""
        ...


def load_task(job_class: str) -> Task:
    module_name = TASK_MODULES.get(job_class) or CHECK_MODULES.get(job_class)
    if module_name is None:
        raise ExecutorError("internal_error", f"no task for job class {job_class!r}")
    module = importlib.import_module(module_name)
    task: Task = module.TASKS[job_class]
    return task
