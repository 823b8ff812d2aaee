"""The executors this worker offers: one child-process executor per job class."""

from __future__ import annotations

import os
from types import MappingProxyType

from node.executors.base import ChildProcessExecutor, Executor
from node.executors.forkserver import ForkServer
from node.executors.tasks import TASK_MODULES

__all__ = ["EXECUTORS", "FORK_SERVER", "get_executor"]

# One fork server per worker process, shared by every job class, started on the first
# job; C0_FORK_SERVER=0 starts every job's child as a fresh interpreter instead.
FORK_SERVER: ForkServer | None = None if os.environ.get("C0_FORK_SERVER") == "0" else ForkServer()

EXECUTORS: MappingProxyType[str, Executor] = MappingProxyType(
    {name: ChildProcessExecutor(name, fork_server=FORK_SERVER) for name in TASK_MODULES}
)


def get_executor(job_class: str) -> Executor:
    """The executor of a job class (KeyError if this worker has none)."""
    return EXECUTORS[job_class]
