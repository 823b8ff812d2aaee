"""The executors this worker offers: one child-process executor per job class."""

from __future__ import annotations

from types import MappingProxyType

from node.executors.base import ChildProcessExecutor, Executor
from node.executors.tasks import TASK_MODULES

__all__ = ["EXECUTORS", "get_executor"]

EXECUTORS: MappingProxyType[str, Executor] = MappingProxyType(
    {name: ChildProcessExecutor(name) for name in TASK_MODULES}
)


def get_executor(job_class: str) -> Executor:
    """The executor of a job class (KeyError if this worker has none)."""
    return EXECUTORS[job_class]
