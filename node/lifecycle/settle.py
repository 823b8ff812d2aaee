"""Settlement tasks of a client node: batched releases and refunds at the deadline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from node.chain.client import TxResult
from protocol.settlement import (
    MAX_GROUPS,
    STATUS_DISPUTED,
    STATUS_OPEN,
    ChainUnavailable,
    EscrowTerms,
    SettlementError,
)

if TYPE_CHECKING:
    from node.lifecycle.service import Lifecycle

__all__ = ["RefundKeeper", "ReleaseBatcher"]

log = logging.getLogger("c0.settle")


@dataclass
class _Pending:
    terms: EscrowTerms
    done: trio.Event = field(default_factory=trio.Event)
    tx: TxResult | None = None
    signature: bytes = b""
    error: str = ""


async def _gather(
    batcher: ReleaseBatcher | OpenBatcher,
    limit: int,
    max_wait_s: float,
    more_coming: Callable[[], bool],
) -> None:
    """Hold a batch open while more jobs are on their way to it: until it is full, nothing
    more is coming, or `max_wait_s` has passed (a lone job never waits here)."""
    with trio.move_on_after(max_wait_s):
        while len(batcher.queue) < limit and more_coming():
            await batcher._wake.wait()
            batcher._wake = trio.Event()


def _take(queue: list[_Pending], limit: int) -> tuple[list[_Pending], list[_Pending]]:
    """The next batch, oldest first: at most `limit` jobs and at most MAX_GROUPS distinct
    commons (the escrow refuses more); the rest stays queued in order."""
    batch: list[_Pending] = []
    rest: list[_Pending] = []
    commons: set[Any] = set()
    for pending in queue:
        common = pending.terms.common
        if len(batch) < limit and (common in commons or len(commons) < MAX_GROUPS):
            commons.add(common)
            batch.append(pending)
        else:
            rest.append(pending)
    return batch, rest


class ReleaseBatcher:
    """Collects verified jobs for a short interval and releases them in one transaction."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.queue: list[_Pending] = []
        self._wake = trio.Event()
        self.batches: list[dict[str, Any]] = []  # for the demo's gas summary

    async def release(self, terms: EscrowTerms) -> tuple[TxResult, bytes] | None:
        """Queue one job; return (its share of the batch tx, the batch signature)."""
        pending = _Pending(terms)
        self.queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        return None if pending.tx is None else (pending.tx, pending.signature)

    def withdraw(self, chain_job_id: bytes) -> bool:
        """Take a queued job back before its batch is sent (`c0 job dispute`): its
        `release` returns None. False if it is not queued (not asked for, or on its way)."""
        for pending in self.queue:
            if pending.terms.job_id == chain_job_id:
                self.queue.remove(pending)
                pending.done.set()
                return True
        return False

    async def run(self) -> None:
        s = self.lc.settings
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(s.release_interval_s)  # pacing: let more verdicts join the batch
            while self.queue:
                # while other attempts are still running, their verdicts may join too
                await _gather(self, s.release_batch, s.release_max_wait_s, self._more_coming)
                batch, self.queue = _take(self.queue, s.release_batch)
                await self._release(batch)

    def _more_coming(self) -> bool:
        return self.lc.client.unverified() > 0

    async def _release(self, batch: list[_Pending]) -> None:
        escrow = self.lc.escrow
        assert escrow is not None
        try:
            tx, signature = await escrow.release([p.terms for p in batch])
        except SettlementError as exc:
            log.warning("release of %d job(s) refused: %s", len(batch), exc.message)
            for pending in batch:
                pending.done.set()
            return
        share = TxResult(tx.tx, tx.block, tx.gas_used // len(batch), tx.events)
        self.batches.append({"tx": tx.tx, "jobs": len(batch), "gas": tx.gas_used})
        for pending in batch:
            pending.tx, pending.signature = share, signature
            pending.done.set()


class OpenBatcher:
    """Funds the escrows of jobs assigned close together in one `open` transaction.

    If the contract refuses a batch (one job's terms are bad), each job is opened on its
    own, so one bad job costs the others nothing but a retry.
    """

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.queue: list[_Pending] = []
        self._wake = trio.Event()
        self.batches: list[dict[str, Any]] = []

    async def open(self, terms: EscrowTerms) -> TxResult:
        """Queue one job; return its share of the batch tx (`opened` = its located terms)."""
        pending = _Pending(terms)
        self.queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        if pending.tx is None:
            raise SettlementError(pending.error or "open refused")
        return pending.tx

    async def run(self) -> None:
        s = self.lc.settings
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(s.open_interval_s)  # pacing (0 by default: natural batching)
            while self.queue:
                # while other jobs are still collecting bids, they may join this open
                await _gather(self, s.release_batch, s.open_max_wait_s, self._more_coming)
                batch, self.queue = _take(self.queue, s.release_batch)
                await self._open(batch)

    def _more_coming(self) -> bool:
        # jobs with offers out, less those already queued here (still in `bidding`)
        return self.lc.client.asking() > len(self.queue)

    async def _open(self, batch: list[_Pending]) -> None:
        escrow = self.lc.escrow
        assert escrow is not None
        try:
            await escrow.ensure_deposit(
                sum(p.terms.escrowed for p in batch), top_up_to=self.lc.settings.deposit_wei
            )
        except SettlementError as exc:  # e.g. the client's account cannot pay: fail these jobs
            log.warning("deposit for %d job(s) refused: %s", len(batch), exc.message)
            for pending in batch:
                pending.error = exc.reason
                pending.done.set()
            return
        escrowed = sum(p.terms.escrowed for p in batch)
        try:
            tx = await escrow.open([p.terms for p in batch])
        except SettlementError as exc:
            escrow.note_opened(escrowed, ok=False)
            if len(batch) == 1:
                batch[0].error = exc.reason
                batch[0].done.set()
                return
            for pending in batch:  # find the bad one(s) by opening each alone
                await self._open([pending])
            return
        escrow.note_opened(escrowed, ok=True)
        self.batches.append({"tx": tx.tx, "jobs": len(batch), "gas": tx.gas_used})
        for pending, located in zip(batch, tx.opened, strict=True):
            # each job gets its share of the gas and its own escrow ref
            pending.tx = TxResult(
                tx.tx, tx.block, tx.gas_used // len(batch), tx.events, opened=(located,)
            )
            pending.done.set()


class RefundKeeper:
    """Escrows of attempts this client did not release (failed, abandoned, given up), each
    closed so that no money stays locked and only an accepted result is ever paid:

    - once the reveal window is over (the deadline), an escrow where a result reached
      quorum on chain is disputed: the client did not accept that result, and a claim
      would pay it (a wrong result at redundancy 1, or a stalled attempt revealed late);
      the arbiter named in the terms then rules on the evidence;
    - otherwise it is refunded once the challenge period after the deadline is over;
    - a dispute the arbiter leaves past the ruling deadline is lapsed (own funds back).
    """

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.pending: dict[bytes, EscrowTerms] = {}
        self.context: dict[bytes, tuple[bytes, int]] = {}  # chain id -> (job id, attempt)
        self.refunded: dict[bytes, str] = {}  # chain job id -> tx (refund or lapse)
        self.disputed: dict[bytes, str] = {}  # chain job id -> dispute tx
        # escrows read after their deadline with no result at quorum: reveals are over,
        # so the count cannot change (read once, not every second until the refund)
        self.no_quorum: set[bytes] = set()
        self.closed: set[bytes] = set()
        self._changed = trio.Event()

    def add(self, terms: EscrowTerms, job_id: bytes | None = None, attempt: int = 0) -> None:
        if terms.job_id not in self.refunded and terms.job_id not in self.closed:
            self.pending[terms.job_id] = terms
            if job_id is not None:
                self.context[terms.job_id] = (job_id, attempt)

    async def wait_all(self, job_id: bytes, data: dict[str, Any]) -> None:
        ids = {bytes.fromhex(info["terms"]["job_id"]) for info in data["attempts"].values()}
        while ids - set(self.refunded) - self.closed:
            await self._changed.wait()
        data["refunds"] = {i.hex(): self.refunded.get(i) for i in ids}

    def _done(self, chain_id: bytes) -> None:
        self.pending.pop(chain_id, None)
        self.no_quorum.discard(chain_id)
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        escrow = self.lc.escrow
        assert escrow is not None
        periods: tuple[int, int] | None = None
        while True:
            try:  # the chain down: every escrow waits (pending) for the next round
                if periods is None:
                    periods = await escrow.read(escrow.client.periods)
                if self.pending:
                    now = await escrow.now()
                    for chain_id, terms in list(self.pending.items()):
                        await self._step(chain_id, terms, now, *periods)
            except ChainUnavailable as exc:
                log.warning("refunds wait: %s", exc.message)
            await trio.sleep(1.0)  # the chain's clock moves in whole seconds

    async def _step(
        self, chain_id: bytes, terms: EscrowTerms, now: int, challenge: int, ruling: int
    ) -> None:
        escrow = self.lc.escrow
        assert escrow is not None
        deadline = terms.common.deadline
        status = await escrow.status(terms)
        if status not in (STATUS_OPEN, STATUS_DISPUTED):
            self.closed.add(chain_id)  # released, claimed, refunded, resolved or lapsed
            self._done(chain_id)
            return
        try:
            if status == STATUS_DISPUTED:
                if now >= deadline + challenge + ruling:  # the arbiter did not rule in time
                    tx = await escrow.call(escrow.client.lapse, terms)
                    self.refunded[chain_id] = tx.tx
                    self._done(chain_id)
                return
            if now < deadline:
                return  # workers may still reveal
            if chain_id not in self.disputed and chain_id not in self.no_quorum:
                # The latest block's time first: once it is past the deadline no later
                # block can hold a reveal, so a count read after it is final.
                final = await escrow.read(escrow.client.chain.now) >= deadline
                votes = await escrow.read(escrow.client.top_votes, terms.located().seq)
                if votes < terms.common.quorum:
                    if final:
                        self.no_quorum.add(chain_id)
                else:
                    tx = await escrow.call(escrow.client.dispute, terms)
                    self.disputed[chain_id] = tx.tx
                    log.warning(
                        "escrow %s: an unaccepted result reached quorum; disputed",
                        chain_id.hex()[:12],
                    )
                    context = self.context.get(chain_id)
                    if context is not None:
                        await self.lc.arbitration.dispute_unreleased(*context, terms)
                    return
            if now >= deadline + challenge:
                tx = await escrow.call(escrow.client.refund, terms)
                self.refunded[chain_id] = tx.tx
                self._done(chain_id)
        except SettlementError as exc:
            log.warning("escrow %s: %s", chain_id.hex()[:12], exc.message)
            if exc.reason in ("job already settled",):
                self.closed.add(chain_id)
                self._done(chain_id)
