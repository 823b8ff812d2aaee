"""An in-process swarm: Nodes on the memory transport, one embedded chain, the lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.app import Node
from node.chain.backends import Chain, embedded_chain
from node.chain.client import EscrowClient
from node.config import NodeConfig
from node.lifecycle import ChainInfo, Lifecycle, LifecycleSettings
from node.net.memory import MemoryHub
from tests.net.conftest import ident


@dataclass
class Swarm:
    chain: Chain
    escrow_address: str
    nodes: list[Node]
    lifecycles: list[Lifecycle]

    @property
    def client(self) -> Lifecycle:
        return self.lifecycles[0]


def fund(chain: Chain, address: str, wei: int) -> None:
    w3 = chain.w3
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": wei})
    w3.eth.wait_for_transaction_receipt(tx)


@asynccontextmanager
async def memory_swarm(
    tmp: Path,
    workers: int,
    *,
    settings: Callable[[int], LifecycleSettings] | None = None,
    arbiter_index: int | None = None,
) -> AsyncIterator[Swarm]:
    """Node 0 is the client (executes nothing); nodes 1..workers run jobs."""
    chain = embedded_chain()
    escrow, _ = EscrowClient.deploy(chain, chain.dev_account(0))
    hub = MemoryHub()
    lock = trio.Lock()
    nodes: list[Node] = []
    lifecycles: list[Lifecycle] = []
    config = NodeConfig()
    for i in range(workers + 1):
        identity = ident(100 + i)
        fund(chain, identity.eth_address, 10**19)
        node = Node(identity, config, tmp / f"n{i}", transport=hub.transport(identity.peer_id))
        nodes.append(node)
    arbiter = nodes[arbiter_index].identity.eth_address if arbiter_index is not None else ""
    info = ChainInfo("embedded", chain.chain_id, escrow.address, arbiter)
    for i, node in enumerate(nodes):
        base = settings(i) if settings else LifecycleSettings()
        if i == 0:
            base = _replace(base, execute=False)
        client = EscrowClient(chain, escrow.address, node.identity.eth_account)  # type: ignore[arg-type]
        lifecycles.append(Lifecycle(node, base, info, escrow_client=client, chain_lock=lock))
    async with trio.open_nursery() as nursery:
        for node, lc in zip(nodes, lifecycles, strict=True):
            await nursery.start(node.run)
            await nursery.start(lc.run)
        yield Swarm(chain, escrow.address, nodes, lifecycles)
        nursery.cancel_scope.cancel()


def _replace(settings: LifecycleSettings, **changes: Any) -> LifecycleSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


async def wait_state(lc: Lifecycle, job_id: bytes, states: set[str], limit_s: float = 60) -> str:
    """Wait until the job's record reaches one of `states` (polled: it is another task's)."""
    with trio.fail_after(limit_s):
        while True:
            rec = lc.node.store.get_job(job_id)
            if rec is not None and rec.state in states:
                return rec.state
            await trio.sleep(0.05)
