"""The fork server (node/executors/forkserver.py): forked job children behave like fresh
ones, and a server that dies or is closed leaves no child behind and no job hanging.
The Executor contract itself runs on both kinds of child in test_conformance.py."""

from __future__ import annotations

import json
import os
import select
import signal
from pathlib import Path
from typing import Any

import pytest

from node.executors import MANIFEST_NAME, ExecutionRequest
from node.executors.base import SCRATCH_NAME, ChildProcessExecutor
from node.executors.forkserver import ForkedChild, ForkServer
from tests.worker.helpers import freeze


def _exits_within(pidfd: int, limit_s: float = 10.0) -> bool:
    """Wait for the process behind `pidfd` to end (a pidfd turns readable when it does)."""
    readable, _, _ = select.select([pidfd], [], [], limit_s)
    os.close(pidfd)
    return bool(readable)


def _busy_child(executor: ChildProcessExecutor, spec: Any, out: Path) -> tuple[Any, int, int]:
    """Start a long job; once its child is ready: the execution, its PID and a pidfd."""
    execution = executor.start(ExecutionRequest(spec, {}, out))
    assert execution.ready.wait(10)
    assert isinstance(execution._proc, ForkedChild)
    pid = execution._proc.pid
    return execution, pid, os.pidfd_open(pid)


@pytest.fixture
def server() -> Any:
    srv = ForkServer()
    yield srv
    srv.close()


def test_forked_child_is_its_own_group_in_its_folder_under_its_limits(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    executor = ChildProcessExecutor("noop", fork_server=server)
    spec = make_spec("noop", {"payload": "hello", "duration_ms": 300})
    out = tmp_path / "out"
    execution = executor.start(ExecutionRequest(spec, {}, out))
    proc = execution._proc
    assert isinstance(proc, ForkedChild)
    assert execution.ready.wait(10)
    assert os.getpgid(proc.pid) == proc.pid  # its own process group, killed as one
    assert os.getsid(proc.pid) == proc.pid
    assert Path(f"/proc/{proc.pid}/cwd").resolve() == out.resolve()
    # Its limits are applied in the child (the job's environment is set with putenv,
    # which /proc does not show; the conformance suite runs every job class forked).
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    address_space = next(line for line in limits.splitlines() if "address space" in line)
    assert str(spec.limits["memory_mb"] << 20) in address_space.split()
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.ok, result.manifest["error"]
    assert (out / "payload.txt").read_text() == "hello"
    assert proc.returncode == 0


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "fresh"])
@pytest.mark.parametrize("nice", [None, 0, 3, 40])
def test_a_child_runs_below_its_workers_priority(
    forked: bool, nice: int | None, make_spec: Any, tmp_path: Path
) -> None:
    """A job's child lowers its own priority by the request's `nice` (default 10; the
    kernel caps the result at 19) before it works; 0 leaves it at the worker's."""
    srv = ForkServer() if forked else None
    try:
        executor = ChildProcessExecutor("noop", fork_server=srv)
        spec = make_spec("noop", {"payload": "p", "duration_ms": 300})
        extra = {} if nice is None else {"nice": nice}
        execution = executor.start(ExecutionRequest(spec, {}, tmp_path / "out", **extra))
        assert execution.ready.wait(10)
        assert execution._proc is not None
        assert isinstance(execution._proc, ForkedChild) is forked
        expected = min(19, os.nice(0) + (10 if nice is None else nice))
        assert os.getpriority(os.PRIO_PROCESS, execution._proc.pid) == expected
        result = executor.wait(execution, timeout=30)
        assert result is not None
        assert result.ok, result.manifest["error"]
    finally:
        if srv is not None:
            srv.close()


def test_a_crashing_child_is_reported_like_a_fresh_one(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    executor = ChildProcessExecutor("noop", fork_server=server)
    spec = make_spec("noop", {"duration_ms": 10_000})
    execution, pid, pidfd = _busy_child(executor, spec, tmp_path / "out")
    os.kill(pid, signal.SIGSEGV)
    assert _exits_within(pidfd, 5.0)  # well before its 10 s of work would end
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.error_code == "crashed"
    assert "SIGSEGV" in result.manifest["error"]["message"]


def test_server_death_kills_its_children_and_fails_their_jobs(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    executor = ChildProcessExecutor("noop", fork_server=server)
    spec = make_spec("noop", {"duration_ms": 60_000})
    execution, _, pidfd = _busy_child(executor, spec, tmp_path / "a")
    server_pid = server.pid
    assert server_pid is not None
    os.kill(server_pid, signal.SIGKILL)
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.error_code == "internal_error"
    assert "fork server died" in result.manifest["error"]["message"]
    assert _exits_within(pidfd)  # the parent killed the orphan
    assert [p.name for p in (tmp_path / "a").iterdir()] == [MANIFEST_NAME]
    # The next job starts a new server and runs.
    again = executor.run(ExecutionRequest(make_spec("noop", {"payload": "x"}), {}, tmp_path / "b"))
    assert again.ok, again.manifest["error"]
    assert server.pid not in (None, server_pid)


def test_closing_the_server_kills_running_children(make_spec: Any, tmp_path: Path) -> None:
    srv = ForkServer()
    executor = ChildProcessExecutor("noop", fork_server=srv)
    spec = make_spec("noop", {"duration_ms": 60_000})
    execution, _, pidfd = _busy_child(executor, spec, tmp_path / "out")
    srv.close()
    assert _exits_within(pidfd)
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert not result.ok


def test_an_unusable_server_falls_back_to_a_fresh_interpreter(
    make_spec: Any, tmp_path: Path
) -> None:
    broken = ForkServer(python=str(tmp_path / "no-such-python"))
    executor = ChildProcessExecutor("noop", fork_server=broken)
    execution = executor.start(
        ExecutionRequest(make_spec("noop", {"payload": "y"}), {}, tmp_path / "o")
    )
    assert not isinstance(execution._proc, ForkedChild)
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.ok, result.manifest["error"]
    manifest = json.loads((tmp_path / "o" / MANIFEST_NAME).read_text())
    assert manifest["error"] is None


def test_many_jobs_at_once_each_get_their_own_child(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    executor = ChildProcessExecutor("noop", fork_server=server)
    executions = [
        executor.start(
            ExecutionRequest(make_spec("noop", {"payload": f"job {i}"}), {}, tmp_path / f"o{i}")
        )
        for i in range(12)
    ]
    pids = set()
    for i, execution in enumerate(executions):
        result = executor.wait(execution, timeout=60)
        assert result is not None
        assert result.ok, result.manifest["error"]
        assert (tmp_path / f"o{i}" / "payload.txt").read_text() == f"job {i}"
        assert execution._proc is not None
        pids.add(execution._proc.pid)
    assert len(pids) == 12


def test_a_started_server_is_the_one_jobs_use(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    assert server.pid is None  # not started until asked
    server.start()
    pid = server.pid
    assert pid is not None
    server.start()  # idempotent while it runs
    assert server.pid == pid
    executor = ChildProcessExecutor("noop", fork_server=server)
    result = executor.run(ExecutionRequest(make_spec("noop", {"payload": "x"}), {}, tmp_path / "o"))
    assert result.ok
    assert server.pid == pid


def test_an_idle_server_is_stopped_and_the_next_job_starts_another(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    executor = ChildProcessExecutor("noop", fork_server=server)
    assert not server.close_if_idle(0.0)  # not running: nothing to stop
    long_spec = make_spec("noop", {"duration_ms": 60_000})
    execution, _, pidfd = _busy_child(executor, long_spec, tmp_path / "busy")
    first = server.pid
    assert first is not None
    assert not server.close_if_idle(0.0)  # a child of it runs
    executor.cancel(execution)
    assert _exits_within(pidfd)
    assert executor.wait(execution, timeout=30) is not None
    assert execution._proc.wait(10) is not None  # the server has reported the exit
    assert not server.close_if_idle(3600.0)  # used too recently
    server_pidfd = os.pidfd_open(first)
    assert server.close_if_idle(0.0)
    assert _exits_within(server_pidfd)
    assert server.pid is None
    result = executor.run(ExecutionRequest(make_spec("noop", {"payload": "x"}), {}, tmp_path / "o"))
    assert result.ok
    assert server.pid not in (None, first)


def _maps_pyav(pid: int) -> bool:
    return "libavcodec" in Path(f"/proc/{pid}/maps").read_text()


def test_pyav_is_loaded_into_the_server_only_for_media_jobs(
    server: ForkServer, make_spec: Any, clip: Path, tmp_path: Path
) -> None:
    """Light jobs fork a light server (PyAV's mappings made every fork dearer); the first
    media job loads PyAV into the server, and later media children inherit it."""
    noop = ChildProcessExecutor("noop", fork_server=server)
    assert noop.run(ExecutionRequest(make_spec("noop", {"payload": "x"}), {}, tmp_path / "a")).ok
    assert server.pid is not None
    assert not _maps_pyav(server.pid)
    probe = ChildProcessExecutor("media.probe", fork_server=server)
    spec = make_spec("media.probe", {}, {"source": clip})
    for i in range(2):
        result = probe.run(ExecutionRequest(spec, {"source": clip}, tmp_path / f"p{i}"))
        assert result.ok, result.manifest.get("error")
    assert _maps_pyav(server.pid)
    assert noop.run(ExecutionRequest(make_spec("noop", {"payload": "y"}), {}, tmp_path / "b")).ok


_CHILD_IMPORTS = """
import json, os, sys
from node.executors import forkserver_process as forkserver
forkserver.preload_common()
forkserver.warm_up()
before = set(sys.modules)
heavy = sorted(m for m in before if m.split(".")[0] in ("eth_account", "py_ecc", "web3"))
item = json.loads(sys.stdin.read())
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    code = 70
    try:
        report_r, report_w = os.pipe()
        err_r, err_w = os.pipe()
        code = forkserver._run_child(item, report_w, err_w)
        os.write(w, json.dumps(sorted(set(sys.modules) - before)).encode())
    finally:
        os._exit(code)
os.close(w)
imported = json.loads(os.read(r, 65536) or b"null")
_, status = os.waitpid(pid, 0)
print(json.dumps({"heavy": heavy, "imported": imported, "status": status}))
"""


def test_a_noop_child_imports_nothing_the_server_did_not_preload(
    make_spec: Any, tmp_path: Path
) -> None:
    """Every module a forked child imports costs its CPU once per job (tempfile was ~8
    ms of a noop child's ~14): the server preloads all a noop child needs, and leaves out
    the Ethereum libraries no child uses (they doubled what each fork copies)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    executor = ChildProcessExecutor("noop")
    spec = make_spec("noop", {"payload": "x"})
    request = executor._child_request(ExecutionRequest(spec, {}, out))
    item = {"request": request, "env": {}, "cwd": str(out)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_IMPORTS],
        input=json.dumps(item),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["status"] == 0
    assert (out / "payload.txt").exists()  # the job really ran in the child
    assert report["imported"] == []
    assert report["heavy"] == []


def test_the_server_loads_nothing_that_runs_in_every_child(server: ForkServer) -> None:
    """A module the server loads is mapped in every fork, and `threading` and `random`
    each register a handler that runs in every child (a child that only exits copied 64
    pages without them, 205 with them): the running server has none of them, nor the
    protocol package (a noop child needs none of it)."""
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "from node.executors import forkserver_process as f\n"
        "f.preload_common(); f._settle_environment(); f.warm_up()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout))
    assert "node.executors.child" in loaded  # it did preload the child's modules
    for name in ("threading", "random", "subprocess", "tempfile", "protocol", "nacl"):
        assert name not in loaded, name
    # and the real server, started by the handle, runs that module, not the handle's
    server.start()
    assert server.pid is not None
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert b"node.executors.forkserver_process" in cmdline


_ENV_PROBE = """
import json, os, sys
from node.executors import forkserver_process as f
f._settle_environment()
os.environ["LEFT_OVER"] = "from the server"
f._set_environment(json.loads(sys.argv[1]))
print(json.dumps(dict(os.environ)), flush=True)
os.execv("/usr/bin/env", ["env"])  # what a library or a grandchild would see
"""


def test_a_child_gets_exactly_the_jobs_environment(tmp_path: Path) -> None:
    """The server changes only what differs from its own environment, but the result
    is the job's environment, no more and no less, in os.environ and in the C one."""
    import subprocess
    import sys

    from node.executors.sandbox import child_environment

    env = child_environment({"PATH": "/usr/bin"}, threads=3, scratch=tmp_path)
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _ENV_PROBE, json.dumps(env)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, *rest = proc.stdout.splitlines()
    assert json.loads(first) == env
    assert dict(line.split("=", 1) for line in rest) == env


def test_when_done_calls_back_once_whenever_it_is_registered(
    server: ForkServer, make_spec: Any, tmp_path: Path
) -> None:
    """A callback registered while the job runs is called once, by the thread that
    writes the result, after `done` is set; one registered afterwards is called at once."""
    import threading

    executor = ChildProcessExecutor("noop", fork_server=server)
    spec = make_spec("noop", {"payload": "x", "duration_ms": 300})
    execution = executor.start(ExecutionRequest(spec, {}, tmp_path / "out"))
    calls: list[tuple[bool, bool]] = []
    called = threading.Event()

    def early() -> None:
        calls.append(
            (execution.done.is_set(), threading.current_thread() is threading.main_thread())
        )
        called.set()

    freeze(execution)  # it cannot finish while we register
    execution.when_done(early)
    assert not execution.done.is_set()
    os.kill(execution._proc.pid, signal.SIGCONT)
    assert called.wait(30)
    result = executor.wait(execution, timeout=30)
    assert result is not None
    assert result.ok
    late: list[bool] = []
    execution.when_done(lambda: late.append(execution.done.is_set()))
    assert calls == [(True, False)]  # once, after done, from the executor's thread
    assert late == [True]  # at once, on the caller's thread


@pytest.mark.parametrize("sync", [True, False])
def test_result_json_is_synced_only_when_asked(
    server: ForkServer, make_spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    """A node whose database is not synced to disk (storage.sync = "normal") does not
    sync its result folders either: a disk sync cost ~0.45 ms of CPU per result here."""
    import node.executors.manifest as manifest_module

    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(manifest_module.os, "fsync", counting_fsync)
    executor = ChildProcessExecutor("noop", fork_server=server)
    out = tmp_path / "out"
    result = executor.run(ExecutionRequest(make_spec("noop", {"payload": "x"}), {}, out, sync=sync))
    assert result.ok, result.manifest["error"]
    assert json.loads((out / MANIFEST_NAME).read_text()) == result.manifest
    assert not (out / SCRATCH_NAME).exists()  # the scratch folder is gone either way
    assert len(synced) == (1 if sync else 0)
