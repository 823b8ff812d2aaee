"""The chain of a local testnet: the extension point the settlement work plugs into.

`start(kind, ...)` returns the `chain` entry of testnet.json (None for no chain). With
kind "anvil" it starts anvil through node.chain.anvil, then calls
`node.chain.testnet.setup(url, nodes) -> dict` if that module exists (deploy the escrow,
fund the nodes' accounts) and merges its result into the entry.
"""

from __future__ import annotations

import importlib
import os
import signal
from pathlib import Path
from typing import Any

from protocol.errors import UserError

__all__ = ["start", "stop"]


def start(kind: str, directory: Path, nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    if kind == "none":
        return None
    if kind != "anvil":
        raise UserError(f"unknown chain kind {kind!r} (none, anvil)")
    from node.chain.anvil import Anvil

    anvil = Anvil()
    url = anvil.start()
    proc = anvil._proc  # the testnet outlives this process: keep the pid, not the object
    assert proc is not None
    entry: dict[str, Any] = {"kind": "anvil", "url": url, "pid": proc.pid, "chain_id": 31337}
    try:
        setup = importlib.import_module("node.chain.testnet").setup
    except (ModuleNotFoundError, AttributeError):
        entry["contracts"] = None  # not deployed: the settlement work adds it
    else:
        entry.update(setup(url, nodes))
    return entry


def stop(entry: dict[str, Any] | None) -> None:
    if not entry or not entry.get("pid"):
        return
    pid = int(entry["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"anvil" in cmdline:
        os.kill(pid, signal.SIGTERM)
