"""Job executors: sandboxed child processes running PyAV and llama.cpp work for job classes."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are resolved on first use: the job child imports node.executors.* submodules and
# must not load the parent-side machinery (and the protocol package) it never needs.
_EXPORTS = {
    "ChildProcessExecutor": "node.executors.base",
    "Execution": "node.executors.base",
    "ExecutionRequest": "node.executors.base",
    "ExecutionResult": "node.executors.base",
    "Executor": "node.executors.base",
    "FAILURES": "node.executors.errors",
    "ExecutorError": "node.executors.errors",
    "Failure": "node.executors.errors",
    "exit_code_for": "node.executors.errors",
    "MANIFEST_NAME": "node.executors.manifest",
    "read_manifest": "node.executors.manifest",
    "write_manifest": "node.executors.manifest",
    "EXECUTORS": "node.executors.registry",
    "get_executor": "node.executors.registry",
}

__all__ = [
    "EXECUTORS",
    "FAILURES",
    "MANIFEST_NAME",
    "ChildProcessExecutor",
    "Execution",
    "ExecutionRequest",
    "ExecutionResult",
    "Executor",
    "ExecutorError",
    "Failure",
    "exit_code_for",
    "get_executor",
    "read_manifest",
    "write_manifest",
]

if TYPE_CHECKING:
    from node.executors.base import (
        ChildProcessExecutor,
        Execution,
        ExecutionRequest,
        ExecutionResult,
        Executor,
    )
    from node.executors.errors import FAILURES, ExecutorError, Failure, exit_code_for
    from node.executors.manifest import MANIFEST_NAME, read_manifest, write_manifest
    from node.executors.registry import EXECUTORS, get_executor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'node.executors' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
