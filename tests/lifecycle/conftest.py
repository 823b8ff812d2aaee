"""An in-process swarm: Nodes on the memory transport, one embedded chain, the lifecycle."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.app import Node
from node.chain.backends import Chain, embedded_chain
from node.chain.client import EscrowClient
from node.config import NodeConfig
from node.lifecycle import ChainInfo, Lifecycle, LifecycleSettings
from node.net.memory import MemoryHub
from node.store import JobRecord
from protocol.identity import Identity
from protocol.jobs import job_id_from_text
from protocol.settlement import DEV_CHALLENGE_PERIOD, DEV_RULING_PERIOD, EscrowTerms
from testnet.chain import ABSENT_ARBITER
from testnet.invariants import check_money, terms_of_records
from tests.net.conftest import ident

Settings = Callable[[int], LifecycleSettings]


@dataclass
class Swarm:
    tmp: Path
    chain: Chain
    escrow_address: str
    info: ChainInfo
    hub: MemoryHub
    lock: trio.Lock
    nursery: trio.Nursery
    settings: Settings
    identities: list[Identity]
    lifecycles: list[Lifecycle | None] = field(default_factory=list)
    scopes: list[tuple[trio.CancelScope, trio.Event] | None] = field(default_factory=list)
    # escrows a test opened itself, outside any client's records: job id -> terms
    extra_terms: dict[bytes, list[EscrowTerms]] = field(default_factory=dict)

    @property
    def client(self) -> Lifecycle:
        lc = self.lifecycles[0]
        assert lc is not None
        return lc

    def lc(self, i: int) -> Lifecycle:
        lc = self.lifecycles[i]
        assert lc is not None
        return lc

    def balance(self, i: int) -> int:
        return self.client_escrow().balance(self.identities[i].eth_address)

    def stake(self, i: int) -> int:
        return self.client_escrow().stake_of(self.identities[i].eth_address)

    def client_escrow(self) -> EscrowClient:
        return EscrowClient(self.chain, self.escrow_address, self.identities[0].eth_account)  # type: ignore[arg-type]

    async def start(self, i: int) -> Lifecycle:
        identity = self.identities[i]
        node = Node(
            identity,
            NodeConfig(),
            self.tmp / f"n{i}",
            transport=self.hub.transport(identity.peer_id),
        )
        base = self.settings(i)
        if i == 0:
            base = dataclasses.replace(base, execute=False)
        client = EscrowClient(self.chain, self.escrow_address, identity.eth_account)  # type: ignore[arg-type]
        lc = Lifecycle(node, base, self.info, escrow_client=client, chain_lock=self.lock)
        stopped = trio.Event()
        scope = await self.nursery.start(_run, node, lc, stopped)
        self.lifecycles[i], self.scopes[i] = lc, (scope, stopped)
        return lc

    async def check_money(self) -> None:
        """The money invariants (testnet/invariants.py), read from the chain at the end of
        every test on this swarm, over the escrows the running clients recorded."""
        from node.store import DB_FILE, Store

        records = []
        for i in range(len(self.identities)):
            store = Store(self.tmp / f"n{i}" / DB_FILE)  # a killed node's records too
            try:
                records += store.jobs()
            finally:
                store.close()
        accounts = [i.eth_address for i in self.identities]
        async with self.lock:
            jobs = {**terms_of_records(records), **self.extra_terms}
            problems = check_money(self.client_escrow(), accounts, jobs)
        assert not problems, problems
        failed = [lc.task_failures for lc in self.lifecycles if lc is not None]
        assert not any(failed), f"lifecycle tasks ended by unexpected exceptions: {failed}"

    async def kill(self, i: int) -> None:
        """Stop node `i` at once, as a crash would, and wait until it is gone."""
        entry = self.scopes[i]
        assert entry is not None
        entry[0].cancel()
        await entry[1].wait()
        self.scopes[i] = None


async def _run(
    node: Node,
    lc: Lifecycle,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(lc.run_with_node)
                task_status.started(scope)
    finally:
        stopped.set()


async def _produce_blocks(chain: Chain, lock: trio.Lock) -> None:
    """Mine a block every half second stamped with the wall clock, as a live chain would:
    py-evm only moves its clock when a block is mined, and deadlines are chain time.
    Under the lock the nodes' escrow calls hold: py-evm is not thread-safe, and this ran
    on the trio thread while a worker's transaction could be running in its own. The
    likely cause of a vanished-client failure (2 of 11 runs, one logged: the worker's
    reveal refused, "Invalid transaction nonce: Expected 4, but got 3")."""
    import time

    tester = chain._tester
    while True:
        await trio.sleep(0.5)  # pacing of block production, not synchronisation
        async with lock:
            # The clock read under the lock: a transaction mined while this waited for it
            # leaves a pending block stamped later than a clock read before, and eth-tester
            # refuses to travel back to it ("Space time continuum distortion").
            target = int(time.time())
            if target > chain.now():  # each block is at least 1 s after its parent: never
                tester.time_travel(target)  # mine ahead of the clock, or deadlines shrink


def fund(chain: Chain, address: str, wei: int) -> None:
    w3 = chain.w3
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": wei})
    w3.eth.wait_for_transaction_receipt(tx)


@asynccontextmanager
async def memory_swarm(
    tmp: Path,
    workers: int,
    *,
    settings: Settings | None = None,
    arbiter_index: int | None = None,
    challenge_period: int = DEV_CHALLENGE_PERIOD,
    ruling_period: int = DEV_RULING_PERIOD,
) -> AsyncIterator[Swarm]:
    """Node 0 is the client (executes nothing); nodes 1..workers run jobs. The escrow is
    deployed with the given periods (seconds; a local testnet's by default)."""
    chain = embedded_chain()
    escrow, _ = EscrowClient.deploy(
        chain,
        chain.dev_account(0),
        challenge_period=challenge_period,
        ruling_period=ruling_period,
    )
    identities = [ident(100 + i) for i in range(workers + 1)]
    for identity in identities:
        fund(chain, identity.eth_address, 10**19)
    arbiter = identities[arbiter_index].eth_address if arbiter_index is not None else ABSENT_ARBITER
    info = ChainInfo("embedded", chain.chain_id, escrow.address, arbiter)
    chain_lock = trio.Lock()  # every node's escrow calls and the block producer share it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_produce_blocks, chain, chain_lock)
        swarm = Swarm(
            tmp,
            chain,
            escrow.address,
            info,
            MemoryHub(),
            chain_lock,
            nursery,
            settings or (lambda i: LifecycleSettings()),
            identities,
            [None] * len(identities),
            [None] * len(identities),
        )
        for i in range(len(identities)):
            await swarm.start(i)
        yield swarm
        await swarm.check_money()
        nursery.cancel_scope.cancel()


async def wait_record(
    lc: Lifecycle, job_id: bytes, states: set[str], limit_s: float = 60
) -> JobRecord:
    """Wait until the job's record on `lc`'s node reaches one of `states`; every record
    write goes through `Lifecycle.store_job`, which sets `jobs_changed`."""
    with trio.fail_after(limit_s):
        while True:
            changed = lc.jobs_changed
            rec = lc.node.store.get_job(job_id)
            if rec is not None and rec.state in states:
                return rec
            await changed.wait()


async def wait_state(lc: Lifecycle, job_id: bytes, states: set[str], limit_s: float = 60) -> str:
    """Wait until the job's record reaches one of `states`; return that state."""
    return (await wait_record(lc, job_id, states, limit_s)).state


def submit_noop(
    lc: Lifecycle, params: dict[str, Any], *, redundancy: int, deadline_s: int = 120
) -> bytes:
    """Submit a noop job from `lc` (max price 10**15 wei); its job ID."""
    text = lc.client.submit(
        {"job_class": "noop", "params": params},
        {},
        redundancy=redundancy,
        max_price=10**15,
        deadline_s=deadline_s,
    )
    return job_id_from_text(text)


def offering(lc: Lifecycle) -> int:
    """Workers whose ads offer at least one job class (prices follow the fingerprint)."""
    return sum(1 for worker in lc.node.caps.values() if worker.ad.prices)
