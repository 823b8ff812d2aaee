"""The fork server process: `python -m node.executors.forkserver_process FD`.

The parent's handle, and what a forked child becomes, are in node/executors/forkserver.py.
This module is what runs in the server, and it imports as little as it can: every
module loaded here is memory each fork maps, and some (`threading`, `random`) register
handlers that run in every child. tests/worker/test_forkserver.py checks what it loads.

Wire format on the Unix stream socket, both ways: a 4-byte big-endian length, then that
many bytes of JSON. A job request carries exactly two file descriptors with its first
byte: [report pipe write end, stderr pipe write end].
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main", "preload_common", "recv_message", "send_message", "warm_up"]

_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 4 << 20


def send_message(sock: socket.socket, item: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(item).encode()
    frame = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], fds)
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, size: int, first: bytes = b"") -> bytes | None:
    buf = bytearray(first)
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_message(
    sock: socket.socket, with_fds: bool = False
) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the descriptors that came with it; None at end of stream."""
    fds: list[int] = []
    first = b""
    if with_fds:
        first, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, 4)
        if not first:
            return None
    head = _recv_exact(sock, _HEADER.size, first)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > _MAX_MESSAGE:
        raise ValueError(f"fork server message of {size} bytes")
    body = _recv_exact(sock, size)
    if body is None:
        return None
    item = json.loads(body)
    if not isinstance(item, dict):
        raise ValueError("fork server message is not an object")
    return item, fds


def _set_environment(env: dict[str, str]) -> None:
    """Make os.environ exactly `env`, changing only what differs from the server's (which
    `_settle_environment` brought close to every job's): each change runs Python code
    and C calls that write to pages the child shares with the server."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _run_child(item: dict[str, Any], report_w: int, stderr_w: int) -> int:
    """In the forked child: become the job's process, then run it."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stderr_w, 1)
    os.dup2(stderr_w, 2)
    for fd in (devnull, stderr_w):
        if fd > 2:
            os.close(fd)
    os.chdir(item["cwd"])
    _set_environment({str(k): str(v) for k, v in item["env"].items()})
    tempfile = sys.modules.get("tempfile")  # imported here only if a preload needed it
    if tempfile is not None:
        tempfile.tempdir = None  # type: ignore[attr-defined]  # TMPDIR is the job's own now
    from node.executors.child import ReportPipe, run_job

    return run_job(item["request"], ReportPipe(report_w))


def _serve(sock: socket.socket) -> None:
    children: set[int] = set()
    preloaded: set[str] = set()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wake the loop; reaped below

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            send_message(sock, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})

    try:
        while True:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 4096)
                reap()
            if sock.fileno() not in ready:
                continue
            message = recv_message(sock, with_fds=True)
            if message is None:
                break
            item, fds = message
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                send_message(sock, {"token": item.get("token"), "pid": 0})
                continue
            report_w, stderr_w = fds
            request = item.get("request")
            if isinstance(request, dict):
                _preload(str(request.get("job_class", "")), preloaded)
            pid = os.fork()
            if pid == 0:  # the job child: never returns into this loop
                code = 70
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    sock.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    code = _run_child(item, report_w, stderr_w)
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            os.close(report_w)
            os.close(stderr_w)
            children.add(pid)
            send_message(sock, {"token": item["token"], "pid": pid})
            reap()
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


# Job classes whose task module the server imports (once, then freezes its heap again)
# before it forks the first child of that class. Never llama.cpp or numpy: their
# OpenMP/BLAS runtimes read OMP_NUM_THREADS once, when loaded, so llm children import it.
PRELOAD: dict[str, tuple[str, ...]] = {
    "media.probe": ("av", "node.executors.media"),
    "media.thumbnail": ("av", "node.executors.media"),
    "media.segment": ("av", "node.executors.media"),
    "media.transcode": ("av", "node.executors.media", "node.executors.transcode"),
    # checks of untrusted media results (node/executors/checks.py); numpy stays out
    "check.probe": ("av", "node.executors.check_tasks"),
    "check.psnr": ("av", "node.executors.check_tasks"),
}


def _preload(job_class: str, loaded: set[str]) -> None:
    """Import what children of `job_class` need, here, once (PyAV: ~80 ms a media child
    would otherwise spend importing it). Lazily: PyAV's mappings (the server's RSS 23 ->
    40 MB; 39 -> 63 MB when this was measured) made every fork of the server dearer
    (fork + exit of a noop child 0.7 -> 2.8 ms), so a worker that runs only light jobs
    never pays for it. FFmpeg takes its thread counts per codec context, not from the
    environment, and starts no thread on import."""
    missing = [m for m in PRELOAD.get(job_class, ()) if m not in loaded]
    if not missing:
        return
    loaded.update(missing)  # tried once: a worker without PyAV still runs other classes
    try:
        for module in missing:
            importlib.import_module(module)
    except ImportError:
        pass  # the child's own import then reports it as the job's error
    gc.freeze()


def preload_common() -> None:
    """Import what every job child needs, once, in the server: an import in a forked
    child costs its CPU for every job (tempfile was ~8 ms of a noop child; no noop child
    needs it). tests/worker/test_forkserver.py checks a noop child imports nothing. Never
    the protocol package (the parent writes the manifest): no child uses it, and its
    Ethereum half (eth-account, py_ecc) doubled the server's RSS (22 -> 45 MB), which
    every fork copies. Nor `threading` or `random`: each registers a handler that runs
    in every forked child (64 -> 205 pages copied by a child that only exits)."""
    import platform

    import node.executors.child
    import node.executors.errors
    import node.executors.noop
    import node.executors.runtime
    import node.executors.sandbox
    import node.executors.tasks  # noqa: F401

    platform.uname()  # cached: every child's runtime fingerprint reads it


def _settle_environment() -> None:
    """Give the server a typical job's environment (one thread, scratch at /), so that a
    child changes only its own folders and thread count. Nothing here reads it again:
    PYTHONPATH went into sys.path at start-up, and the server loads no thread pool."""
    from node.executors.sandbox import child_environment

    _set_environment(child_environment(os.environ, threads=1, scratch=Path("/")))


def warm_up(rounds: int = 16) -> None:
    """Run the common part of a job child's path here, before any fork, writing only to
    /dev/null. CPython 3.11 rewrites a function's bytecode in place while it specialises
    it (and counts calls until then), so a child running code the server never ran
    writes to, and so copies, each page that code is on; fresh caches (platform's,
    pathlib's) are copies too."""
    from node.executors.child import ReportPipe, _usage
    from node.executors.sandbox import OutputFolder
    from node.executors.tasks import TaskContext, load_task

    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        pipe = ReportPipe(fd)
        for _ in range(rounds):
            pipe.send({"ready": {"pid": os.getpid()}})
            task = load_task("noop")
            folder = OutputFolder(Path(os.devnull).parent)
            ctx = TaskContext(
                job_id="0" * 64,
                params={"payload": "", "duration_ms": 0},
                inputs={},
                folder=folder,
                threads=1,
                withheld_encoders=frozenset(),
            )
            runtime = task.runtime(ctx)
            folder.path("payload.txt")
            Path(os.devnull).write_text("", encoding="utf-8")
            done = {"artifacts": ["payload.txt"], "metrics": {"total_ms": 0.0}, "output": None}
            pipe.send({"runtime": runtime, "usage": _usage(0.0), "done": done})
            _set_environment(dict(os.environ))
            # and what the child does between the fork and `_run_child`
            a, b = socket.socketpair()
            a.close()
            b.close()
            signal.signal(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))
            sys.stderr.flush()
    finally:
        os.close(fd)


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    preload_common()
    _settle_environment()
    warm_up()
    # The heap frozen: a child's collector then never walks, and so never copies, the
    # pages it inherited (a noop child: 11 ms of CPU with the task modules imported in
    # the child; ~3.3 ms now, bench/README.md, eleventh session).
    gc.freeze()
    try:
        _serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
