"""The lifecycle's view of the escrow: async calls (web3 runs in a worker thread), terms
per attempt, and terms as JSON for the job records and dispute bundles."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from web3.exceptions import (
    BadResponseFormat,
    ProviderConnectionError,
    TimeExhausted,
    TooManyRequests,
    Web3RPCError,
)

from node.chain.client import EscrowClient, TxResult
from node.chain.rpc import RpcError
from protocol.consent import attempt_chain_id
from protocol.settlement import (
    STATUS_OPEN,
    Assignment,
    ChainUnavailable,
    Common,
    Consent,
    EscrowRef,
    EscrowTerms,
    sign_consent,
    terms_hash,
)

__all__ = ["AsyncEscrow", "attempt_chain_id", "terms_from_json", "terms_to_json"]

T = TypeVar("T")
NOW_TTL_S = 1.0

# What asking the chain raises when the chain, not the call, is the trouble: the socket
# (OSError: refused, reset, timed out; `requests` errors are OSErrors too), HTTP, the
# JSON-RPC layer (node/chain/rpc.py) and web3's transport errors. AsyncEscrow raises
# these as ChainUnavailable: typed, local, never a peer's fault. A contract's refusal
# stays a SettlementError; web3's ContractLogicError and value errors (bugs) pass as is.
CHAIN_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    http.client.HTTPException,
    RpcError,
    Web3RPCError,
    TimeExhausted,
    ProviderConnectionError,
    BadResponseFormat,
    TooManyRequests,
)


def _unavailable(exc: Exception) -> ChainUnavailable:
    return ChainUnavailable(f"{type(exc).__name__}: {exc}"[:300])


def terms_to_json(terms: EscrowTerms) -> dict[str, Any]:
    """Terms as JSON, with the escrow's ref (sequence number, Merkle proof) once opened."""
    c = terms.common
    ref = terms.ref
    located = (
        {}
        if ref is None
        else {
            "escrow": {
                "first": ref.first,
                "size": ref.size,
                "index": ref.index,
                "proof": [p.hex() for p in ref.proof],
            }
        }
    )
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
        **located,
    }


def terms_from_json(obj: Any) -> EscrowTerms:
    common = Common(**obj["common"])
    assignments = tuple(Assignment(**a) for a in obj["assignments"])
    ref = None
    if "escrow" in obj:
        e = obj["escrow"]
        proof = tuple(bytes.fromhex(p) for p in e["proof"])
        ref = EscrowRef(int(e["first"]), int(e["size"]), int(e["index"]), proof)
    return EscrowTerms(bytes.fromhex(obj["job_id"]), common, assignments, ref)


_MAX_STATUS_BATCH = 64


@dataclass
class _StatusRead:
    terms: EscrowTerms
    done: trio.Event = field(default_factory=trio.Event)
    status: int = 0
    error: Exception | None = None


class AsyncEscrow:
    """EscrowClient calls off the trio thread, one at a time per node (one nonce sequence)."""

    def __init__(self, client: EscrowClient, lock: trio.Lock | None = None) -> None:
        self.client = client
        self.address = client.account.address
        # Nodes sharing one in-process chain share one lock: py-evm is not thread-safe.
        self._lock = lock or trio.Lock()
        # Reads over JSON-RPC need no lock (EscrowClient guards its own nonce); a few at a
        # time, so a burst of jobs does not queue its status checks behind transactions.
        self._readers = trio.CapacityLimiter(4)
        self._latest: tuple[float, int] = (-1e9, 0)  # (when read, latest block time)
        self._free_floor: int | None = None  # the free balance, as far as this node knows
        self._status_queue: list[_StatusRead] = []
        self._status_reading = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread, one at a time. The chain's own failures (see
        CHAIN_FAILURES) come out as ChainUnavailable; SettlementError and the rest as is."""
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(fn, *args)
            except CHAIN_FAILURES as exc:
                raise _unavailable(exc) from exc

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A call that sends nothing: concurrent on JSON-RPC, serialised on py-evm."""
        if self.client.chain.kind == "embedded":
            return await self.call(fn, *args)
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._readers)
        except CHAIN_FAILURES as exc:
            raise _unavailable(exc) from exc

    async def now(self) -> int:
        """The time the next block will carry: the latest block's time lags the clock when
        nothing is mined, and a dev chain may run ahead of it (time travel). The block's
        time is read at most once a second."""
        read_at, latest = self._latest
        if time.monotonic() - read_at >= NOW_TTL_S:
            latest = await self.read(self.client.chain.now)
            self._latest = (time.monotonic(), latest)
        return max(latest, int(time.time()))

    async def open(self, batch: Sequence[EscrowTerms]) -> TxResult:
        """Open a batch; `result.opened` holds the terms with their escrow refs."""
        return await self.call(self.client.open, list(batch))

    async def release(self, batch: Sequence[EscrowTerms]) -> tuple[TxResult, bytes]:
        """Sign the batch's EIP-712 receipt and submit it; return the tx and the signature."""

        def sign_and_release() -> tuple[TxResult, bytes]:
            expires = self.client.chain.now() + 600
            signature = self.client.sign_release(list(batch), expires)
            return self.client.release(list(batch), expires, signature), signature

        return await self.call(sign_and_release)

    async def status(self, terms: EscrowTerms) -> int:
        """STATUS_* of the escrow holding `terms` (STATUS_UNKNOWN if none holds them).

        Over JSON-RPC, the reads asked for while one is on its way go together in one
        batch (one thread hop, one HTTP round trip): a worker handed a batch of
        assignments, or the receipts of one release, checks them all at once."""
        if self.client.chain.kind == "embedded":
            return await self.read(self.client.job_status, terms)
        waiting = _StatusRead(terms)
        self._status_queue.append(waiting)
        if not self._status_reading:
            self._status_reading = True
            try:
                # Shielded: the others in the batch wait on this task's read, whatever
                # becomes of its own caller (each read is bounded by the RPC timeout).
                with trio.CancelScope(shield=True):
                    await trio.lowlevel.checkpoint()  # let the callers of this turn join
                    while self._status_queue:
                        batch = self._status_queue[:_MAX_STATUS_BATCH]
                        del self._status_queue[:_MAX_STATUS_BATCH]
                        await self._read_statuses(batch)
            finally:
                self._status_reading = False
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.status

    async def _read_statuses(self, batch: list[_StatusRead]) -> None:
        try:
            statuses = await self.read(self.client.job_statuses, [w.terms for w in batch])
            for w, status in zip(batch, statuses, strict=True):
                w.status = status
        except Exception as exc:  # each caller gets the failure of the read it was in
            for w in batch:
                w.error = exc
        finally:
            for w in batch:
                w.done.set()

    async def ensure_deposit(self, needed: int, top_up_to: int = 0) -> None:
        """Make the free balance cover `needed`; when it must deposit, it tops up to
        `top_up_to` at once, so most opens need no deposit at all. The balance is read
        only when the node's own count says it may be short (`note_opened` lowers it)."""
        if self._free_floor is not None and self._free_floor >= needed:
            return

        def top_up() -> int:
            have = self.client.balance()
            if have < needed:
                target = max(needed, top_up_to)
                self.client.deposit(target - have)
                return target
            return have

        self._free_floor = await self.call(top_up)

    def note_opened(self, escrowed: int, ok: bool) -> None:
        """An open took `escrowed` from the free balance (or failed: read it again)."""
        if self._free_floor is not None:
            self._free_floor = self._free_floor - escrowed if ok else None

    async def ensure_stake(self, amount: int) -> None:
        def stake() -> None:
            if amount and self.client.stake_of() < amount // 2:
                self.client.stake(amount)

        await self.call(stake)

    def sign_consent(self, consent: Consent) -> bytes:
        """This node's signed Consent (a worker's, in its bid): ~0.3 ms, on the caller's
        thread."""
        c = self.client
        return sign_consent(c.account.key, c.chain.chain_id, c.address, consent)

    @staticmethod
    def terms_hash(terms: EscrowTerms) -> bytes:
        return terms_hash(terms)


async def terms_on_chain(escrow: AsyncEscrow, terms: EscrowTerms) -> bool:
    """True if an open, undisputed escrow with exactly these terms exists on chain where
    `terms.ref` says (the contract checks the Merkle proof against the batch's commitment)."""
    return terms.ref is not None and await escrow.status(terms) == STATUS_OPEN
