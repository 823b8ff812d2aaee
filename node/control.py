"""The local control API: JSON lines over a unix socket in the node home (mode 0600).

A unix socket is reachable only from this machine, and its file mode limits it to the
node's owner. One request per line: {"cmd": name, "args": {...}}; one reply per line:
{"ok": true, "result": ...} or {"ok": false, "error": code, "message": text}.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from protocol.errors import C0Error, UserError

__all__ = ["ControlClient", "ControlServer", "NodeNotRunning", "control_path"]

log = logging.getLogger("c0.control")
MAX_LINE = 1 << 20
Command = Callable[[dict[str, Any]], Awaitable[Any]]


class NodeNotRunning(UserError):
    code = "node_not_running"


def control_path(home: Path, socket_name: str = "control.sock") -> Path:
    return Path(home) / socket_name


class ControlServer:
    """Serves registered commands on a unix socket until cancelled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commands: dict[str, Command] = {}

    def register(self, name: str, command: Command) -> None:
        self.commands[name] = command

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a killed node
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            async with listener:
                task_status.started()
                await trio.serve_listeners(self._serve, [listener])
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        try:
            async with stream:
                while True:
                    with trio.move_on_after(60):
                        data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    if len(buf) > MAX_LINE:
                        return
                    while b"\n" in buf:
                        line, _, rest = bytes(buf).partition(b"\n")
                        buf = bytearray(rest)
                        reply = await self._dispatch(line)
                        await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            cmd = self.commands.get(req.get("cmd")) if isinstance(req, dict) else None
            if cmd is None:
                return {"ok": False, "error": "unknown_command", "message": str(line[:64])}
            args = req.get("args") or {}
            return {"ok": True, "result": await cmd(args)}
        except C0Error as exc:
            return {"ok": False, "error": exc.code, "message": exc.message}
        except (ValueError, TypeError, KeyError) as exc:
            return {"ok": False, "error": "bad_request", "message": str(exc)}
        except Exception as exc:
            log.exception("control command failed")
            return {"ok": False, "error": "internal", "message": repr(exc)}


class ControlClient:
    """Blocking client for the CLI."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise NodeNotRunning(f"no node is running at {self.path}") from None
            sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise NodeNotRunning("the node closed the control connection")
                buf += chunk
        finally:
            sock.close()
        return _result(json.loads(buf))

    def call_many(self, cmd: str, many: list[dict[str, Any]], *, window: int = 32) -> list[Any]:
        """The same command for each of `many` argument sets, pipelined on one connection
        (at most `window` requests unanswered); results in order. The node answers a
        connection's requests in order, one event-loop turn for many: a busy node spent a
        turn per connection when each call opened its own. Raises on the first error."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        results: list[Any] = []
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise NodeNotRunning(f"no node is running at {self.path}") from None
            buf = b""
            sent = 0
            while len(results) < len(many):
                lines = []
                while sent < len(many) and sent - len(results) < window:
                    lines.append(json.dumps({"cmd": cmd, "args": many[sent]}).encode() + b"\n")
                    sent += 1
                if lines:
                    sock.sendall(b"".join(lines))
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise NodeNotRunning("the node closed the control connection")
                    buf += chunk
                while b"\n" in buf and len(results) < len(many):
                    line, _, buf = buf.partition(b"\n")
                    results.append(_result(json.loads(line)))
        finally:
            sock.close()
        return results


def _result(reply: Any) -> Any:
    if not isinstance(reply, dict) or not reply.get("ok"):
        message = reply.get("message", "error") if isinstance(reply, dict) else "bad reply"
        code = reply.get("error", "error") if isinstance(reply, dict) else "bad_reply"
        raise C0Error(message, code=code)
    return reply["result"]
