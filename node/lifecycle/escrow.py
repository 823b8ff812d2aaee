"""The lifecycle's view of the escrow: async calls (web3 runs in a worker thread), terms
per attempt, and terms as JSON for the job records and dispute bundles."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from node.chain.client import EscrowClient, TxResult
from protocol.settlement import Assignment, Common, EscrowTerms, terms_hash

__all__ = ["AsyncEscrow", "attempt_chain_id", "terms_from_json", "terms_to_json"]

T = TypeVar("T")


def attempt_chain_id(job_id: bytes, attempt: int) -> bytes:
    """The escrow key of one attempt: the job's digest for attempt 1, then a derived key.

    The contract refuses a job ID twice, and each attempt has its own workers and terms,
    so a retry opens its own escrow; the failed attempt's escrow is refunded at its
    deadline. Only one attempt can ever be released: nothing is paid twice.
    """
    digest = job_id[2:] if len(job_id) == 34 else job_id
    if attempt == 1:
        return digest
    return hashlib.sha256(b"c0/attempt\x00" + digest + attempt.to_bytes(4, "big")).digest()


def terms_to_json(terms: EscrowTerms) -> dict[str, Any]:
    c = terms.common
    return {
        "job_id": terms.job_id.hex(),
        "common": {
            "client": c.client,
            "arbiter": c.arbiter,
            "commit_deadline": c.commit_deadline,
            "deadline": c.deadline,
            "quorum": c.quorum,
            "verifier": c.verifier,
            "verifier_fee": c.verifier_fee,
        },
        "assignments": [
            {"worker": a.worker, "payout": a.payout, "stake_lock": a.stake_lock}
            for a in terms.assignments
        ],
    }


def terms_from_json(obj: Any) -> EscrowTerms:
    common = Common(**obj["common"])
    assignments = tuple(Assignment(**a) for a in obj["assignments"])
    return EscrowTerms(bytes.fromhex(obj["job_id"]), common, assignments)


class AsyncEscrow:
    """EscrowClient calls off the trio thread, one at a time per node (one nonce sequence)."""

    def __init__(self, client: EscrowClient, lock: trio.Lock | None = None) -> None:
        self.client = client
        self.address = client.account.address
        # Nodes sharing one in-process chain share one lock: py-evm is not thread-safe.
        self._lock = lock or trio.Lock()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def now(self) -> int:
        """The time the next block will carry: the latest block's time lags the clock when
        nothing is mined, and a dev chain may run ahead of it (time travel)."""
        latest = await self.call(self.client.chain.now)
        return max(latest, int(time.time()))

    async def open(self, batch: Sequence[EscrowTerms]) -> TxResult:
        return await self.call(self.client.open, list(batch))

    async def release(self, batch: Sequence[EscrowTerms]) -> tuple[TxResult, bytes]:
        """Sign the batch's EIP-712 receipt and submit it; return the tx and the signature."""

        def sign_and_release() -> tuple[TxResult, bytes]:
            expires = self.client.chain.now() + 600
            signature = self.client.sign_release(list(batch), expires)
            return self.client.release(list(batch), expires, signature), signature

        return await self.call(sign_and_release)

    async def status(self, chain_job_id: bytes) -> int:
        return await self.call(self.client.job_status, chain_job_id)

    async def ensure_deposit(self, amount: int) -> None:
        def top_up() -> None:
            have = self.client.balance()
            if have < amount:
                self.client.deposit(amount - have)

        await self.call(top_up)

    async def ensure_stake(self, amount: int) -> None:
        def stake() -> None:
            if amount and self.client.stake_of() < amount // 2:
                self.client.stake(amount)

        await self.call(stake)

    async def approve_stake(self, client: str, amount: int) -> None:
        await self.call(self.client.approve_stake, client, amount)

    @staticmethod
    def terms_hash(terms: EscrowTerms) -> bytes:
        return terms_hash(terms)


_HASH_MASK = (2**256 - 1) - (2**56 - 1)  # the bits of the terms hash the contract stores


async def terms_on_chain(escrow: AsyncEscrow, terms: EscrowTerms) -> bool:
    """True if an open, undisputed escrow with exactly these terms exists on chain."""

    def check() -> bool:
        contract = escrow.client.contract
        slot = int(contract.functions.jobs(terms.job_id).call())
        if slot == 0 or slot & 2:  # unknown, or disputed
            return False
        if escrow.client.job_status(terms.job_id) != 1:  # settled already
            return False
        return slot & _HASH_MASK == int.from_bytes(terms_hash(terms), "big") & _HASH_MASK

    return await escrow.call(check)
