"""The chain of a local testnet: anvil from the project's own install, the escrow
deployed on it, and every node's account funded — before any node starts, so each node
finds its `chain.json` at boot."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from protocol.errors import UserError

__all__ = ["FUNDING_WEI", "start", "stop"]

# The arbiter a testnet without an arbiter node names: an address whose key nobody holds,
# so a dispute there lapses after the ruling period (spec/settlement.md) and returns every
# party's own funds. Never the client itself: workers refuse such terms.
ABSENT_ARBITER = "0x00000000000000000000000000000000000c0a7b"
FUNDING_WEI = 100 * 10**18  # per node; a client deposits 1 ETH, a worker stakes 0.1
ANVIL_BALANCE_ETH = 1_000_000  # per dev account: enough to fund hundreds of nodes


def start(kind: str, directory: Path, addresses: list[str]) -> dict[str, Any] | None:
    """Start the chain; return the `chain` entry of testnet.json (None for no chain)."""
    if kind == "none":
        return None
    if kind != "anvil":
        raise UserError(f"unknown chain kind {kind!r} (none, anvil)")
    from node.chain.anvil import Anvil
    from node.chain.backends import rpc_chain
    from node.chain.client import EscrowClient

    anvil = Anvil(balance_eth=ANVIL_BALANCE_ETH)
    url = anvil.start()
    proc = anvil._proc  # the testnet outlives this process: keep the pid, not the object
    assert proc is not None
    entry: dict[str, Any] = {"kind": "anvil", "rpc_url": url, "pid": proc.pid}
    chain = None
    try:
        chain = rpc_chain(url)
        escrow, deployed = EscrowClient.deploy(chain, chain.dev_account(0))
        _fund(chain, chain.dev_account(1), addresses, FUNDING_WEI)
    except BaseException:
        stop(entry)
        raise
    finally:
        if chain is not None:
            chain.close()
    entry.update(chain_id=chain.chain_id, escrow=escrow.address, deploy_tx=deployed.tx)
    return entry


def _fund(chain: Any, funder: Any, addresses: list[str], wei: int) -> None:
    w3 = chain.w3
    nonce = int(w3.eth.get_transaction_count(funder.address))
    hashes = []
    for i, address in enumerate(addresses):
        tx = {
            "to": address,
            "value": wei,
            "gas": 21_000,
            "nonce": nonce + i,
            "chainId": chain.chain_id,
            "maxFeePerGas": 50 * 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
        hashes.append(w3.eth.send_raw_transaction(funder.sign_transaction(tx).raw_transaction))
    for tx_hash in hashes:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        if receipt["status"] != 1:
            raise UserError(f"funding transaction {tx_hash.hex()} failed")


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
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
