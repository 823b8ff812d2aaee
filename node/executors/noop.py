"""The noop task: echoes its payload into an artifact, optionally after busy work."""

from __future__ import annotations

import time
from typing import Any

from node.executors.runtime import base_runtime
from node.executors.tasks import TaskContext, TaskResult


class NoopTask:
    def runtime(self, ctx: TaskContext) -> dict[str, Any]:
        return base_runtime(ctx.threads)

    def run(self, ctx: TaskContext) -> TaskResult:
        started = time.perf_counter()
        deadline = started + ctx.params["duration_ms"] / 1000
        spins = 0
        while time.perf_counter() < deadline:  # busy, so CPU limits and timeouts apply
            spins += 1
        ctx.folder.path("payload.txt").write_text(ctx.params["payload"], encoding="utf-8")
        elapsed = time.perf_counter() - started
        return TaskResult(["payload.txt"], {"total_ms": round(elapsed * 1000, 3)})


TASKS = {"noop": NoopTask()}
