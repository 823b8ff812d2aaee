"""A fork server for job children: one pre-started interpreter that forks a child per job.

Starting a fresh `python -m node.executors.child` costs ~45 ms of wall time and ~80 ms of
CPU per job (interpreter start-up and imports), which dominates short jobs. The fork
server is started once per worker (`python -m node.executors.forkserver_process FD`, in
node/executors/forkserver_process.py), imports the child-side modules, and then, for
each job the parent sends, forks a child that becomes exactly what the fresh interpreter
would have been:

- its own session and process group (the parent kills the group, as before);
- stdin from /dev/null, the report pipe and the stderr pipe handed over by the parent
  (SCM_RIGHTS), stdout redirected to stderr;
- the job's minimal environment (`child_environment`) and its output folder as working
  directory;
- then `node.executors.child.run_job`: limits, ready line, the task, the report.

The server imports PyAV before its first media child (`PRELOAD`), but no library whose
thread pool reads the environment on load (llama.cpp, numpy), so a child still gets its
own thread settings (OMP_NUM_THREADS, …). It is
single-threaded, so forking it is safe. It reaps its children and reports each exit
status (as `Popen.returncode` would give it) back to the parent, and it exits — killing
any children left — when the parent closes the socket.

The wire format is in node/executors/forkserver_process.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import node
from node.executors.forkserver_process import recv_message as _recv
from node.executors.forkserver_process import send_message as _send

__all__ = ["ForkServer", "ForkedChild"]


# ---------------------------------------------------------------- parent side


@dataclass(eq=False)
class ForkedChild:
    """A job child forked by the server: the parts of `subprocess.Popen` the executor uses."""

    pid: int
    stdout: Any  # the report pipe, read end (a binary file object)
    stderr: Any
    stdin: None = None
    returncode: int | None = None
    lost: bool = False  # the server died while this child ran; the parent killed it
    _exited: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (negative: killed by that signal), as Popen.wait gives it."""
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"job child {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class ForkServer:
    """The parent's handle on one fork server; thread-safe, started on first use and
    started again if it dies (the jobs it had running then end as internal errors)."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._next_token = 0
        self._pending: dict[int, tuple[threading.Event, list[int]]] = {}
        self._children: dict[int, ForkedChild] = {}
        self._early_exits: dict[int, int] = {}
        self._last_used = time.monotonic()

    def spawn(self, request: dict[str, Any], *, env: dict[str, str], cwd: Path) -> ForkedChild:
        """Fork a job child running `request`; raise OSError if the server is unusable."""
        report_r, report_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            with self._lock:
                sock = self._ensure_started()
                self._last_used = time.monotonic()
                server = self._proc
                token = self._next_token
                self._next_token += 1
                done = threading.Event()
                reply: list[int] = []
                self._pending[token] = (done, reply)
                _send(
                    sock,
                    {"token": token, "request": request, "env": env, "cwd": str(cwd)},
                    [report_w, stderr_w],
                )
        except BaseException:
            for fd in (report_r, stderr_r):
                os.close(fd)
            raise
        finally:
            os.close(report_w)
            os.close(stderr_w)
        if not done.wait(30.0) or not reply or reply[0] <= 0:
            os.close(report_r)
            os.close(stderr_r)
            raise OSError("the fork server did not fork the job child")
        child = ForkedChild(reply[0], os.fdopen(report_r, "rb", 0), os.fdopen(stderr_r, "rb", 0))
        with self._lock:
            self._children[child.pid] = child
            status = self._early_exits.pop(child.pid, None)
            if status is None and self._proc is not server:
                # The server died between forking this child and now: nobody else will
                # kill it or report on it.
                self._children.pop(child.pid, None)
                self._lose(child)
        if status is not None:
            self._exit(child, status)
        return child

    def start(self) -> None:
        """Start the server now rather than at the first job (its imports take ~0.5 s of
        CPU, which would otherwise land on the first job of a burst)."""
        with self._lock:
            self._ensure_started()
            self._last_used = time.monotonic()

    def close_if_idle(self, idle_s: float) -> bool:
        """Stop the server if no child of it runs and nothing used it for `idle_s`: an idle
        worker gives its ~23 MB (~40 MB with PyAV) back. Race-free with `spawn` (both
        hold the lock), and the next job simply starts a new server."""
        with self._lock:
            running = self._proc is not None and self._proc.poll() is None
            if not running or self._children or self._pending:
                return False
            if time.monotonic() - self._last_used < idle_s:
                return False
            sock, proc = self._sock, self._proc
            self._sock = self._proc = None
        self._stop(sock, proc)
        return True

    @property
    def pid(self) -> int | None:
        """The server's process ID while it runs."""
        proc = self._proc
        return None if proc is None or proc.poll() is not None else proc.pid

    def close(self) -> None:
        """Stop the server (it kills any children still running)."""
        with self._lock:
            sock, proc = self._sock, self._proc
            self._sock = self._proc = None
        self._stop(sock, proc)

    @staticmethod
    def _stop(sock: socket.socket | None, proc: subprocess.Popen[bytes] | None) -> None:
        if sock is not None:
            # shutdown, not just close: it wakes the reply reader blocked on this socket,
            # and the server sees end of stream even while that read holds the socket.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ------------------------------------------------------------------ internals

    def _ensure_started(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
        env["PYTHONPATH"] = str(Path(node.__file__).resolve().parent.parent)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONNOUSERSITE"] = "1"
        argv = [self.python, "-P", "-X", "faulthandler", "-m", "node.executors.forkserver_process"]
        try:
            self._proc = subprocess.Popen(  # a fixed argv, never a shell
                [*argv, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(
            target=self._read_replies, args=(ours, self._proc), name="forkserver", daemon=True
        ).start()
        return ours

    def _read_replies(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        try:
            while True:
                message = _recv(sock)
                if message is None:
                    break
                item = message[0]
                if "pid" in item:
                    with self._lock:
                        waiter = self._pending.pop(int(item["token"]), None)
                    if waiter is not None:
                        waiter[1].append(int(item["pid"]))
                        waiter[0].set()
                elif "exit" in item:
                    pid, status = int(item["exit"]), int(item["status"])
                    with self._lock:
                        child = self._children.pop(pid, None)
                        if child is None:
                            self._early_exits[pid] = status
                    if child is not None:
                        self._exit(child, status)
        except (OSError, ValueError):
            pass
        # The server is gone: nobody will report on its children any more.
        proc.wait()
        with self._lock:
            if self._proc is proc:
                self._sock = self._proc = None
            pending, self._pending = self._pending, {}
            children, self._children = self._children, {}
        for done, _reply in pending.values():
            done.set()
        for child in children.values():
            self._lose(child)

    @classmethod
    def _lose(cls, child: ForkedChild) -> None:
        """Nobody will reap or report on `child` any more: kill it and say why."""
        child.lost = True
        for kill in (os.killpg, os.kill):
            try:
                kill(child.pid, signal.SIGKILL)
                break
            except OSError:
                continue
        cls._exit(child, -signal.SIGKILL)

    @staticmethod
    def _exit(child: ForkedChild, status: int) -> None:
        child.returncode = status
        child._exited.set()
