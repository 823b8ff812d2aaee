"""Runs anvil (the dev chain from npm @foundry-rs/anvil) on loopback for tests and testnets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from protocol.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_ANVIL = REPO_ROOT / ".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
LISTENING = re.compile(rb"Listening on ([0-9.]+):(\d+)")
HARDFORK = "prague"  # the EVM version escrow.vy is compiled for, and eth-tester's


def find_anvil() -> Path:
    """`$C0_ANVIL`, else the copy `make tools` installs, else `anvil` on PATH."""
    env = os.environ.get("C0_ANVIL")
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UserError(f"C0_ANVIL={env} is not an executable file")
        return path
    if TOOLS_ANVIL.is_file():
        return TOOLS_ANVIL
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise UserError("anvil not found: run `make tools` (installs it into .tools/) or set C0_ANVIL")


class Anvil:
    """One anvil process on 127.0.0.1 with an OS-chosen port; a context manager.

    `start()` returns once the process has printed its address and answers JSON-RPC.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        chain_id: int = 31337,
        accounts: int = 10,
        balance_eth: int = 10_000,
        block_time: float | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary or find_anvil()
        self.chain_id = chain_id
        self.accounts = accounts
        self.balance_eth = balance_eth
        self.block_time = block_time
        self.startup_timeout = startup_timeout
        self.url: str | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    def start(self) -> str:
        args = [
            str(self.binary),
            "--host", "127.0.0.1",
            "--port", "0",
            "--chain-id", str(self.chain_id),
            "--accounts", str(self.accounts),
            "--balance", str(self.balance_eth),
            "--hardfork", HARDFORK,
        ]  # fmt: skip
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        self._log = tempfile.NamedTemporaryFile(prefix="c0-anvil-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        poll = 0.01
        while self.url is None:
            match = LISTENING.search(Path(self._log.name).read_bytes())
            if match:
                self.port = int(match.group(2))
                self.url = f"http://127.0.0.1:{self.port}"
                break
            self._check_alive(deadline)
            time.sleep(poll)
            poll = min(poll * 2, 0.2)
        self._wait_rpc(deadline)
        return self.url

    def _check_alive(self, deadline: float) -> None:
        assert self._proc is not None
        assert self._log is not None
        if self._proc.poll() is not None:
            out = Path(self._log.name).read_text(errors="replace")[-2000:]
            raise UserError(f"anvil exited with code {self._proc.returncode}: {out}")
        if time.monotonic() > deadline:
            self.stop()
            raise UserError(f"anvil did not start within {self.startup_timeout} s")

    def _wait_rpc(self, deadline: float) -> None:
        import json
        import urllib.request

        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        poll = 0.01
        while True:
            try:
                req = urllib.request.Request(
                    str(self.url), data=body.encode(), headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if int(json.loads(resp.read())["result"], 16) == self.chain_id:
                        return
            except OSError:
                pass
            self._check_alive(deadline)
            time.sleep(poll)
            poll = min(poll * 2, 0.2)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Anvil:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
