"""Settlement on an EVM chain: the escrow client, its two chain backends and a dev-chain runner."""

from node.chain.anvil import Anvil, find_anvil
from node.chain.backends import DEV_MNEMONIC, Chain, embedded_chain, rpc_chain
from node.chain.client import EscrowClient, TxResult
from node.chain.events import decode_logs, job_events

__all__ = [
    "DEV_MNEMONIC",
    "Anvil",
    "Chain",
    "EscrowClient",
    "TxResult",
    "decode_logs",
    "embedded_chain",
    "find_anvil",
    "job_events",
    "rpc_chain",
]
