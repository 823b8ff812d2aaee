"""The Executor interface and its child-process implementation (limits, timeout, manifest)."""

from __future__ import annotations

import abc
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import node
from node.executors.errors import FAILURES, ExecutorError, exit_code_for
from node.executors.forkserver import ForkedChild, ForkServer
from node.executors.manifest import MANIFEST_NAME, artifact_entry, build_manifest, write_manifest
from node.executors.sandbox import ARTIFACT_NAME, DEFAULT_NICE, child_environment
from protocol.errors import UserError
from protocol.jobs import JobSpec

__all__ = [
    "ChildProcessExecutor",
    "Execution",
    "ExecutionRequest",
    "ExecutionResult",
    "Executor",
    "classify_exit",
    "kill_child",
    "parse_report",
    "spawn_child",
    "watch_child",
]

SCRATCH_NAME = ".tmp"
_EXIT_WAIT_S = 60.0
_STDERR_TAIL = 16 * 1024
_OOM_HINTS = (
    "bad_alloc",
    "cannot allocate memory",
    "failed to allocate",
    "out of memory",
    "memory allocation",
    "insufficient memory",
    "memory exhausted",
    "mem_buffer != null",  # ggml's assertion when its context buffer cannot be allocated
)


@dataclass(frozen=True)
class ExecutionRequest:
    """One attempt of one job: the spec, where its inputs lie, where its output goes.

    `timeout_s` and `memory_mb` override the spec's limits for this run (a worker may
    grant less than the spec asks, never more than the job class maximum).
    """

    spec: JobSpec
    inputs: Mapping[str, Path]
    output_dir: Path
    attempt: int = 0
    timeout_s: float | None = None
    memory_mb: int | None = None
    cpus: tuple[int, ...] | None = None
    nice: int = DEFAULT_NICE  # the child's priority below its parent's (0..19)
    # result.json synced to disk before the result is reported. A node whose database
    # is not synced either (storage.sync = "normal") passes False: the folder then, like
    # the database, survives the node being killed, and a power loss may lose it.
    sync: bool = True


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of an execution: the manifest as written to `path`."""

    manifest: dict[str, Any]
    path: Path

    @property
    def exit_code(self) -> int:
        return int(self.manifest["exit_code"])

    @property
    def error_code(self) -> str | None:
        error = self.manifest["error"]
        return None if error is None else str(error["code"])

    @property
    def ok(self) -> bool:
        return self.manifest["error"] is None


@dataclass(eq=False)
class Execution:
    """A handle on a started job. `ready` is set when the child has applied its limits and
    is about to work; `done` when result.json is written (then the callbacks given to
    `when_done` run)."""

    request: ExecutionRequest
    started: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    ready_at: float | None = None
    result: ExecutionResult | None = None
    _proc: subprocess.Popen[bytes] | ForkedChild | None = None
    _stop_reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _when_done: list[Callable[[], object]] = field(default_factory=list)

    def when_done(self, callback: Callable[[], object]) -> None:
        """Call `callback()` once the result exists: at once if it does, else from the
        thread that finishes the execution (keep it short; it must not raise). For an
        event loop that would rather be woken than park a thread in `Executor.wait`."""
        with self._lock:
            if not self.done.is_set():
                self._when_done.append(callback)
                return
        callback()

    def _set_done(self) -> None:
        with self._lock:
            self.done.set()
            callbacks, self._when_done = self._when_done, []
        for callback in callbacks:
            callback()

    @property
    def job_id(self) -> str:
        return self.request.spec.job_id_text

    @property
    def startup_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started


class Executor(abc.ABC):
    """Runs jobs of one job class. Every implementation passes tests/worker/test_conformance.py.

    The contract:
    - `start` returns promptly (it does not wait for the work); it raises only when the
      caller misuses it (wrong job class, output folder not empty). Anything wrong with the
      job itself, its inputs included, ends as a failed result with a code from FAILURES.
    - `wait` blocks up to `timeout` seconds (None: until the end) and returns the result,
      or None if the job is still running. Once a result exists, `wait` returns the same
      one every time. The job's wall-clock limit is enforced whether or not anyone waits.
    - `cancel` stops the job (idempotent, safe from any thread, a no-op once done); the
      result then has the code `cancelled` unless the job had already finished.
    - Whatever happens, the output folder ends with a result.json that lists exactly the
      artifacts left in it, each with its SHA-256 and size, and nothing is written
      outside that folder.
    """

    job_class: str

    @abc.abstractmethod
    def start(self, request: ExecutionRequest) -> Execution: ...

    @abc.abstractmethod
    def wait(
        self, execution: Execution, timeout: float | None = None
    ) -> ExecutionResult | None: ...

    @abc.abstractmethod
    def cancel(self, execution: Execution) -> None: ...

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        """start + wait: run one job to its end."""
        execution = self.start(request)
        result = self.wait(execution)
        assert result is not None
        return result


class ChildProcessExecutor(Executor):
    """Each job in a fresh `python -m node.executors.child` process (never a shell), in its
    own process group and output folder, under RLIMIT_AS/RLIMIT_CPU, with a wall-clock
    timeout enforced by a monitor thread that kills the whole group."""

    def __init__(
        self,
        job_class: str,
        *,
        python: str = sys.executable,
        withheld_encoders: frozenset[str] = frozenset(),
        fork_server: ForkServer | None = None,
    ) -> None:
        self.job_class = job_class
        self.python = python
        # With a fork server, each job's child is forked from one pre-started interpreter
        # (node/executors/forkserver.py) instead of started fresh: the same child, ~40 ms
        # and ~80 ms of CPU sooner. Without one (or if it fails), a fresh interpreter.
        self.fork_server = fork_server
        # Encoders this worker will not offer even though PyAV has them (an operator's
        # choice, e.g. for codec licensing); jobs asking for them: unsupported_parameter.
        self.withheld_encoders = withheld_encoders

    # ------------------------------------------------------------------ interface

    def start(self, request: ExecutionRequest) -> Execution:
        spec = request.spec
        if spec.job_class != self.job_class:
            raise ValueError(f"{self.job_class} executor given a {spec.job_class} job")
        out = request.output_dir
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"output folder {out} is not an empty folder")
        out.mkdir(parents=True, exist_ok=True)
        execution = Execution(request)
        try:
            child_request = self._child_request(request)
        except ExecutorError as exc:
            self._finish(execution, failure=(exc.code, exc.message), report=None)
            return execution
        scratch = out / SCRATCH_NAME
        scratch.mkdir()
        env = child_environment(
            os.environ, threads=child_request["threads"], scratch=scratch.resolve()
        )
        execution._proc = spawn_child(
            child_request, env=env, cwd=out, fork_server=self.fork_server, python=self.python
        )
        thread = threading.Thread(
            target=self._monitor,
            args=(execution, json.dumps(child_request).encode()),
            name=f"executor-{execution.job_id[:12]}",
            daemon=True,
        )
        thread.start()
        return execution

    def wait(self, execution: Execution, timeout: float | None = None) -> ExecutionResult | None:
        if not execution.done.wait(timeout):
            return None
        return execution.result

    def cancel(self, execution: Execution) -> None:
        self._stop(execution, "cancelled")

    # ------------------------------------------------------------------ internals

    def _child_request(self, request: ExecutionRequest) -> dict[str, Any]:
        spec = request.spec
        inputs: dict[str, dict[str, Any]] = {}
        for name, ref in spec.inputs.items():
            if name not in request.inputs:
                raise ExecutorError("invalid_input", f"no file given for input {name!r}")
            path = Path(request.inputs[name]).resolve()
            if not path.is_file():
                raise ExecutorError("invalid_input", f"input {name!r} is not a readable file")
            size = path.stat().st_size
            if size != ref.size:
                raise ExecutorError(
                    "invalid_input", f"input {name!r} has {size} bytes, the spec says {ref.size}"
                )
            inputs[name] = {"path": str(path), "size": size}
        timeout_s = float(request.timeout_s or spec.limits["timeout_s"])
        memory_mb = int(request.memory_mb or spec.limits["memory_mb"])
        threads = int(spec.params.get("threads", 1))
        cpus = list(request.cpus) if request.cpus else None
        return {
            "job_id": spec.job_id_text,
            "job_class": spec.job_class,
            "params": dict(spec.params),
            "inputs": inputs,
            "threads": threads,
            "withheld_encoders": sorted(self.withheld_encoders),
            "limits": {
                "timeout_s": timeout_s,
                "memory_mb": memory_mb,
                # CPU seconds: the whole wall-clock budget on every thread, plus start-up.
                "cpu_s": int(timeout_s * max(1, threads)) + 10,
                "cpus": cpus,
                "nice": min(19, max(0, int(request.nice))),
            },
        }

    def _stop(self, execution: Execution, reason: str) -> None:
        with execution._lock:
            proc = execution._proc
            if execution.done.is_set() or proc is None or proc.returncode is not None:
                return
            if execution._stop_reason is None:
                execution._stop_reason = reason
            kill_child(proc)

    def _monitor(self, execution: Execution, request_bytes: bytes) -> None:
        proc = execution._proc
        assert proc is not None
        timeout_s = float(json.loads(request_bytes)["limits"]["timeout_s"])

        def ready() -> None:
            execution.ready_at = time.monotonic()
            execution.ready.set()

        try:
            report, tail = watch_child(
                proc,
                request_bytes,
                execution.started + timeout_s,
                on_deadline=lambda: self._stop(execution, "timeout"),
                on_ready=ready,
            )
            self._finish(
                execution,
                failure=None,
                report=parse_report(report),
                returncode=proc.returncode,
                stderr_tail=tail,
                wall_s=time.monotonic() - execution.started,
            )
        except BaseException as exc:  # the monitor must always leave a result behind
            self._stop(execution, "internal_error")
            self._finish(execution, failure=("internal_error", f"monitor: {exc!r}"), report=None)

    def _finish(
        self,
        execution: Execution,
        *,
        failure: tuple[str, str] | None,
        report: dict[str, Any] | None,
        returncode: int | None = None,
        stderr_tail: str = "",
        wall_s: float = 0.0,
    ) -> None:
        request = execution.request
        out = request.output_dir
        done = report.get("done") if report else None
        if failure is None:
            failure = self._classify(execution, report, returncode, stderr_tail)
        artifacts: list[dict[str, Any]] = []
        if failure is None and done is not None:
            try:
                artifacts = _collect_artifacts(out, done.get("artifacts", []))
            except ExecutorError as exc:
                failure = (exc.code, exc.message)
        _remove_scratch(out / SCRATCH_NAME)
        metrics: dict[str, Any] = {"wall_ms": round(wall_s * 1000, 3)}
        if execution.startup_s is not None:
            metrics["startup_ms"] = round(execution.startup_s * 1000, 3)
        runtime: dict[str, Any] = {"python": platform.python_version()}
        output = None
        if report:
            runtime = report.get("runtime") or runtime
            metrics.update(report.get("usage", {}))
        if done is not None:
            metrics.update(done.get("metrics", {}))
            output = done.get("output")
        if failure is not None:
            artifacts = []
            output = None
            _clear(out)  # a failed job leaves only its result.json
        manifest = build_manifest(
            request.spec,
            attempt=request.attempt,
            exit_code=0 if failure is None else exit_code_for(failure[0]),
            error=None if failure is None else {"code": failure[0], "message": failure[1]},
            artifacts=artifacts,
            metrics=metrics,
            runtime=runtime,
            output=output,
        )
        path = write_manifest(out, manifest, sync=request.sync)
        execution.result = ExecutionResult(manifest, path)
        execution._set_done()

    def _classify(
        self,
        execution: Execution,
        report: dict[str, Any] | None,
        returncode: int | None,
        stderr_tail: str,
    ) -> tuple[str, str] | None:
        proc = execution._proc
        return classify_exit(
            stop_reason=execution._stop_reason,
            lost=isinstance(proc, ForkedChild) and proc.lost,
            report=report,
            returncode=returncode,
            stderr_tail=stderr_tail,
            timeout_s=execution.request.timeout_s or execution.request.spec.limits["timeout_s"],
        )


# ---------------------------------------------------------------- the child, as a process
# The parts of running a child that do not depend on a job spec: the executor above uses
# them for jobs, node/executors/checks.py for probes of untrusted results.

Child = subprocess.Popen[bytes] | ForkedChild


def spawn_child(
    child_request: dict[str, Any],
    *,
    env: dict[str, str],
    cwd: Path,
    fork_server: ForkServer | None,
    python: str = sys.executable,
) -> Child:
    """Start a child that runs `run_job(child_request)` (node/executors/child.py) in `cwd`
    with exactly `env`, in its own session: forked from `fork_server` when there is one
    and it works, else a fresh interpreter (which `watch_child` hands the request to)."""
    if fork_server is not None:
        try:
            return fork_server.spawn(child_request, env=env, cwd=cwd)
        except OSError:
            pass  # the fork server is unusable: start one fresh
    env = {**env, "PYTHONPATH": str(Path(node.__file__).resolve().parent.parent)}
    argv = [python, "-P", "-X", "faulthandler", "-m", "node.executors.child"]
    return subprocess.Popen(  # a fixed argv, never a shell
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,  # its own process group, killed as one
        close_fds=True,
    )


def kill_child(proc: Child) -> None:
    """SIGKILL the child's process group (the caller makes sure it has not been reaped)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        # A forked child may not have made its own group yet: kill it alone.
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def watch_child(
    proc: Child,
    request_bytes: bytes,
    deadline: float,
    *,
    on_deadline: Callable[[], None],
    on_ready: Callable[[], None] | None = None,
) -> tuple[bytes, str]:
    """Hand a fresh interpreter its request, then read the child's report and stderr until
    both close, calling `on_deadline` (which must kill the child's group) once the
    monotonic `deadline` passes and `on_ready` at the first report line; wait for its
    exit. Returns the report bytes and the tail of stderr."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    report = bytearray()
    stderr: deque[bytes] = deque()
    stderr_size = 0
    ready = False
    if proc.stdin is not None:  # a fresh interpreter reads its request on stdin
        try:
            proc.stdin.write(request_bytes)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "report")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                on_deadline()
                remaining = 5.0  # the group is dead; drain what is left
            for key, _ in sel.select(remaining):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data == "report":
                    report += data
                    if not ready and b"\n" in report:
                        ready = True
                        if on_ready is not None:
                            on_ready()
                else:
                    stderr.append(data)
                    stderr_size += len(data)
                    while stderr_size - len(stderr[0]) > _STDERR_TAIL:
                        stderr_size -= len(stderr.popleft())
    proc.wait(_EXIT_WAIT_S)  # both pipes closed: the child has exited or is exiting
    proc.stdout.close()
    proc.stderr.close()
    return bytes(report), b"".join(stderr)[-_STDERR_TAIL:].decode("utf-8", "replace")


def classify_exit(
    *,
    stop_reason: str | None,
    lost: bool,
    report: dict[str, Any] | None,
    returncode: int | None,
    stderr_tail: str,
    timeout_s: float,
) -> tuple[str, str] | None:
    """How a child ended, as a failure (code, message) from FAILURES, or None for done.
    `stop_reason` is why the parent killed it (timeout, cancelled), `lost` whether its
    fork server died under it."""
    if lost and stop_reason is None:
        return "internal_error", "the worker's fork server died while the job ran"
    if stop_reason == "timeout":
        return "timeout", f"wall-clock limit of {timeout_s:g} s reached; job killed"
    if stop_reason == "cancelled":
        return "cancelled", "cancelled by the executor's caller"
    if report and "failed" in report:
        code = report["failed"].get("code", "internal_error")
        if code not in FAILURES:
            code = "internal_error"
        return code, str(report["failed"].get("message", ""))[:2000]
    if report and "done" in report and returncode == 0:
        return None
    lowered = stderr_tail.lower()
    if returncode == -signal.SIGXCPU:
        return "timeout", "CPU-time limit reached"
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name
        if returncode == -signal.SIGKILL or any(h in lowered for h in _OOM_HINTS):
            return "out_of_memory", f"child killed by {sig} (memory exhausted)"
        return "crashed", f"child died from {sig}: {_last_line(stderr_tail)}"
    if any(h in lowered for h in _OOM_HINTS):
        return "out_of_memory", f"child exited {returncode}: {_last_line(stderr_tail)}"
    return "internal_error", f"child exited {returncode} without a result: " + _last_line(
        stderr_tail
    )


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"


def parse_report(raw: bytes) -> dict[str, Any] | None:
    """The child's report: JSON lines; the first says ready, later ones carry the outcome."""
    merged: dict[str, Any] = {}
    for line in raw.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            merged.update(item)
    return merged or None


def _remove_scratch(scratch: Path) -> None:
    """The job's scratch folder, gone: usually empty, and one rmdir (~14 µs here) is
    less than half of what shutil.rmtree's descriptor walk costs (~34 µs)."""
    try:
        os.rmdir(scratch)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)


def _clear(out: Path) -> None:
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _collect_artifacts(out: Path, names: list[Any]) -> list[dict[str, Any]]:
    """Hash what the child declared; anything else in the folder is a violation."""
    declared: list[str] = []
    for name in names:
        if not isinstance(name, str) or not ARTIFACT_NAME.match(name) or name in declared:
            raise ExecutorError("output_violation", f"bad artifact name {name!r}")
        path = out / name
        if path.is_symlink() or not path.is_file():
            raise ExecutorError("output_violation", f"artifact {name!r} is not a regular file")
        declared.append(name)
    allowed = {*declared, MANIFEST_NAME, SCRATCH_NAME}
    stray = sorted(p.name for p in out.iterdir() if p.name not in allowed)
    if stray:
        raise ExecutorError("output_violation", f"undeclared file(s) in the output: {stray}")
    return [artifact_entry(out, name) for name in sorted(declared)]
