"""The worker role: bid on offers, check the escrow, run the job, commit, reveal, and
claim on chain if the client vanishes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.app import now_ms
from node.executors import ExecutionRequest, ExecutionResult, Executor
from node.executors.registry import FORK_SERVER, get_executor
from node.lifecycle.escrow import terms_from_json, terms_on_chain, terms_to_json
from node.lifecycle.faults import tamper_result
from protocol.consent import (
    TermsPolicy,
    TermsRefused,
    check_assignment,
    check_offer,
    offer_consent,
)
from protocol.envelope import SignedMessage, open_envelope
from protocol.errors import C0Error
from protocol.identity import EthBinding, verify_binding
from protocol.jobs import job_id_text
from protocol.messages import (
    Accept,
    Assignment,
    Bid,
    Decline,
    Heartbeat,
    Message,
    Offer,
    Receipt,
    ResultCommit,
    ResultReveal,
    RevealCall,
)
from protocol.results import result_digest
from protocol.settlement import (
    STATUS_DISPUTED,
    STATUS_SETTLED,
    EscrowTerms,
    SettlementError,
    commit_hash,
)

if TYPE_CHECKING:
    from node.lifecycle.service import Lifecycle

__all__ = ["WorkerRole"]

# A job that ended is forgotten this long after (a late receipt for an ended job is still
# kept as evidence until then); an offer no assignment followed, after settings.offer_keep_s.
_FORGET_AFTER_S = 300.0
_PRUNE_EVERY = 64  # offers
_BINDINGS_KEPT = 4096  # client bindings (DID, address, signature) already verified
# The fork server (~23 MB, ~40 MB once it holds PyAV) is started when the worker bids,
# so it is warm by the time the assignment comes, and stopped after this long idle.
FORK_SERVER_IDLE_S = 120.0

log = logging.getLogger("c0.worker")


# How long a worker waits for its client's receipt before it reads the escrow unasked.
_UNPROMPTED_READ_S = 10.0


def _until_last_quarter(terms: EscrowTerms, chain_now: int) -> float:
    """Seconds until the last quarter (at least 3 s) of the commit window begins: how long
    a worker waits off chain (for the reveal call, for payment) before it goes on chain."""
    left = terms.common.commit_deadline - chain_now
    return float(max(0, left - max(3, left // 4)))


class Refused(C0Error):
    """A request this worker declines on purpose; the reason goes back as an error frame."""


@dataclass
class WorkerJob:
    offer: Offer
    client_peer: str
    price: int = 0  # what this worker bid (and consented to be paid)
    assignment: Assignment | None = None
    terms: EscrowTerms | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    released: trio.Event = field(default_factory=trio.Event)
    reveal_called: trio.Event = field(default_factory=trio.Event)  # K > 1: all commits in
    counted: bool = False  # counts towards WorkerRole.running (settings.capacity)
    touched: float = field(default_factory=time.monotonic)  # offered, or ended
    ended: bool = False
    # The job's stored record as record_worker last wrote it, and whether it is ours to
    # write (not when this node is also the job's client): read once, then kept here.
    record: tuple[dict[str, Any], bool] | None = None
    offer_raw: bytes = b""  # the signed Offer, kept as evidence once assigned


# Stored worker states (service._worker_state) with a computed result not yet paid.
_RESUMABLE = frozenset({"committed", "revealed", "submitted", "resumed"})


class WorkerRole:
    """Handlers for offer, assignment and receipt; one task per accepted attempt."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.jobs: dict[tuple[bytes, int], WorkerJob] = {}
        self.running = 0
        # Bids are refused while `capacity` jobs are taken (running or queued); at most
        # max_concurrent run at once, the others wait for a slot here, heartbeating.
        self.slots = trio.Semaphore(max(1, lc.settings.max_concurrent))
        self._bindings: set[tuple[str, str, bytes]] = set()  # verified client bindings
        self._offers_of: dict[str, int] = {}  # client DID -> offers kept, not yet assigned
        self.work_root = lc.node.home / "work"
        self._offers = 0
        self._warming = False

    def _warm_fork_server(self) -> None:
        if FORK_SERVER is None or FORK_SERVER.pid is not None or self._warming:
            return
        self._warming = True
        self.lc.spawn(self._start_fork_server)

    async def _start_fork_server(self) -> None:
        assert FORK_SERVER is not None
        try:
            await trio.to_thread.run_sync(FORK_SERVER.start)
        except OSError as exc:  # the job then falls back to a fresh interpreter
            log.warning("fork server did not start: %s", exc)
        finally:
            self._warming = False

    async def stop_idle_fork_server(self) -> None:
        """Give the fork server's memory back when no job or result check has used it for a
        while."""
        if FORK_SERVER is None:
            return
        while True:
            await trio.sleep(FORK_SERVER_IDLE_S / 4)  # pacing of a housekeeping check
            await trio.to_thread.run_sync(FORK_SERVER.close_if_idle, FORK_SERVER_IDLE_S)

    def _forget_old(self) -> None:
        """Drop offers never assigned once `offer_keep_s` old, and jobs ended once
        `_FORGET_AFTER_S` old: memory held for a client's offers stays bounded."""
        now = time.monotonic()
        offer_cutoff = now - self.lc.settings.offer_keep_s
        ended_cutoff = now - _FORGET_AFTER_S
        for key, job in list(self.jobs.items()):
            if job.assignment is None and job.touched < offer_cutoff:
                self._drop_offer(key, job)
            elif job.ended and job.touched < ended_cutoff:
                del self.jobs[key]

    def _drop_offer(self, key: tuple[bytes, int], job: WorkerJob) -> None:
        del self.jobs[key]
        self._drop_offer_count(job)

    def _drop_offer_count(self, job: WorkerJob) -> None:
        """An assigned offer no longer counts against its client's waiting offers."""
        client = job.offer.spec.client
        left = self._offers_of.get(client, 1) - 1
        if left > 0:
            self._offers_of[client] = left
        else:
            self._offers_of.pop(client, None)

    def policy(self) -> TermsPolicy:
        """This worker's limits on the terms it signs (settings)."""
        s, lc = self.lc.settings, self.lc
        own_arbiter = lc.arbiter_address()
        return TermsPolicy(
            own_eth=lc.node.identity.eth_address,
            max_stake_lock=s.max_stake_lock_wei,
            arbiters=s.arbiters or ((own_arbiter,) if own_arbiter else ()),
            min_commit_window_s=s.min_commit_window_s,
        )

    def _check_binding(self, offer: Offer) -> None:
        """client_eth is the client's: its signature binds the address to the DID (the
        envelope's signature binds the DID to the address). Verified once per binding."""
        key = (offer.spec.client, offer.client_eth.lower(), offer.client_eth_sig)
        if key in self._bindings:
            return
        try:
            verify_binding(
                EthBinding(offer.spec.client, offer.client_eth, b"", offer.client_eth_sig),
                ed25519=False,
            )
        except C0Error as exc:
            raise TermsRefused("client_binding", exc.message) from None
        if len(self._bindings) >= _BINDINGS_KEPT:
            self._bindings.clear()
        self._bindings.add(key)

    # ------------------------------------------------------------ handlers
    async def on_offer(self, signed: SignedMessage, peer: str) -> Message:
        offer = signed.message
        assert isinstance(offer, Offer)
        lc, s = self.lc, self.lc.settings
        if signed.sender != offer.spec.client:
            raise Refused("the offer is not signed by the job's client", code="wrong_client")

        def decline(reason: str, detail: str = "") -> Decline:
            return Decline(job_id=offer.job_id, attempt=offer.attempt, reason=reason, detail=detail)

        if not s.execute or lc.node.light:
            return decline("not_a_worker")
        if not lc.runtimes:
            return decline("starting", "runtime fingerprint not known yet")
        if lc.escrow is None or lc.chain is None:
            return decline("no_chain", "this worker settles on no chain")
        if offer.chain_id != lc.chain.chain_id or offer.escrow.lower() != lc.chain.escrow.lower():
            return decline("wrong_chain", f"this worker settles on {lc.chain.escrow}")
        price = dict(s.prices).get(offer.spec.job_class)
        if price is None:
            return decline("unsupported_class", offer.spec.job_class)
        if price > offer.max_price:
            return decline("price", f"price {price} > max {offer.max_price}")
        if self.running >= s.capacity:
            return decline("busy")
        if offer.deadline <= now_ms():
            return decline("deadline_passed")
        key = (offer.job_id, offer.attempt)
        known = self.jobs.get(key)
        if known is not None and known.assignment is not None:
            return decline("already_assigned")
        try:  # the terms this worker would consent to: refused, the client is penalised
            check_offer(offer, self.policy(), chain_now=await lc.escrow.now())
            self._check_binding(offer)
        except TermsRefused as exc:
            lc.penalise_peer(peer, "bad_terms" if exc.hostile else "terms_declined")
            return decline(exc.code, exc.message[:300])
        client = offer.spec.client
        if known is None:
            if self._offers_of.get(client, 0) >= s.max_offers_per_client:
                self._forget_old()
            if self._offers_of.get(client, 0) >= s.max_offers_per_client:
                return decline("busy", "too many offers from this client waiting")
            self._offers_of[client] = self._offers_of.get(client, 0) + 1
        consent = b""
        if offer.stake_lock:
            consent = lc.escrow.sign_consent(offer_consent(offer, price))
        self.jobs[key] = WorkerJob(offer, peer, price=price, offer_raw=signed.raw)
        self._warm_fork_server()
        self._offers += 1
        if self._offers % _PRUNE_EVERY == 0:
            self._forget_old()
        held = [n for n, ref in offer.spec.inputs.items() if lc.node.blobs.has(ref.sha256)]
        return Bid(
            job_id=offer.job_id,
            attempt=offer.attempt,
            price=price,
            eta_ms=1000,
            eth_address=lc.node.identity.eth_address,
            runtime=lc.runtime_fingerprint(offer.spec.job_class),
            has_inputs=tuple(held),
            consent=consent,
        )

    async def on_assignment(self, signed: SignedMessage, peer: str) -> Message:
        a = signed.message
        assert isinstance(a, Assignment)
        job = self._clients_job(signed, a.job_id, a.attempt)
        if a.worker != self.lc.node.did:
            raise Refused("the assignment names another worker", code="wrong_worker")
        if self.lc.escrow is None:
            raise Refused("this worker settles on no chain", code="no_chain")
        if job.assignment is not None:
            # The same assignment again (a retry): accepted once, answered again; another
            # one for an attempt already under way is refused.
            if a.terms_hash == job.assignment.terms_hash and a.terms == job.assignment.terms:
                return Accept(job_id=a.job_id, attempt=a.attempt, terms_hash=a.terms_hash)
            raise Refused("this attempt is already assigned", code="duplicate_assignment")
        try:
            terms = terms_from_json(a.terms)
        except Exception as exc:  # a peer's data: any shape at all
            self.lc.penalise_peer(peer, "bad_terms")  # no honest client sends these
            raise Refused(f"bad terms: {type(exc).__name__}", code="bad_terms") from None
        try:
            check_assignment(terms, job.offer, job.price, self.lc.node.identity.eth_address)
        except TermsRefused as exc:
            self.lc.penalise_peer(peer, "bad_terms")
            raise Refused(exc.message, code=exc.code) from None
        if terms.job_id != a.chain_job_id or self.lc.escrow.terms_hash(terms) != a.terms_hash:
            self.lc.penalise_peer(peer, "bad_terms")
            raise Refused("terms do not match the assignment", code="bad_terms")
        # The escrow must hold the money before any work starts.
        if not await terms_on_chain(self.lc.escrow, terms):
            raise Refused("no open escrow with these terms on chain", code="not_funded")
        if job.assignment is not None:  # another assignment won the race while we read
            raise Refused("this attempt is already assigned", code="duplicate_assignment")
        self._drop_offer_count(job)
        job.assignment, job.terms = a, terms
        with self.lc.node.store.transaction():  # what a restart needs to collect: one commit
            if job.offer_raw:
                self.lc.store_own_evidence(job.offer_raw, job.offer, job.offer.spec.client)
            self.lc.store_evidence(signed)
            self.lc.record_worker(
                job, "assigned", extra={"peer": peer, "terms": terms_to_json(terms)}
            )
        self.running += 1
        job.counted = True
        self.lc.spawn(self._run, job)
        return Accept(job_id=a.job_id, attempt=a.attempt, terms_hash=a.terms_hash)

    async def on_receipt(self, signed: SignedMessage, peer: str) -> None:
        receipt = signed.message
        assert isinstance(receipt, Receipt)
        for (job_id, _attempt), job in self.jobs.items():
            if job_id == receipt.job_id and signed.sender == job.offer.spec.client:
                job.released.set()
                self.lc.store_evidence(signed)
        return None

    async def on_reveal_call(self, signed: SignedMessage, peer: str) -> None:
        call = signed.message
        assert isinstance(call, RevealCall)
        self._clients_job(signed, call.job_id, call.attempt).reveal_called.set()
        return None

    def _clients_job(self, signed: SignedMessage, job_id: bytes, attempt: int) -> WorkerJob:
        """The job of this attempt, if `signed` comes from its client (else Refused)."""
        job = self.jobs.get((job_id, attempt))
        if job is None or signed.sender != job.offer.spec.client:
            raise Refused("no offer of this client for this job and attempt", code="unknown_job")
        return job

    # ------------------------------------------------------------ execution
    async def _run(self, job: WorkerJob) -> None:
        assert job.assignment is not None
        assert job.terms is not None
        offer, lc = job.offer, self.lc
        try:
            with job.cancel:
                if lc.settings.behaviour == "copy_commit":
                    await self._copy_commit(job)
                    return
                inputs = await self._fetch_inputs(job)
                result = await self._execute(job, inputs)
                if lc.settings.behaviour == "stall" and result.ok:
                    await self._stall(job, result)
                    return
                if not result.ok:
                    lc.record_worker(job, "failed", exit_code=result.exit_code)
                    await lc.send_quietly(
                        job.client_peer,
                        Decline(
                            job_id=offer.job_id,
                            attempt=offer.attempt,
                            reason=str(result.error_code),
                            detail=str(result.manifest["error"]["message"])[:500],
                        ),
                    )
                    return
                await self._submit(job, result)
        finally:
            self._uncount(job)
            job.ended, job.touched = True, time.monotonic()

    def _uncount(self, job: WorkerJob) -> None:
        """The job no longer takes one of `capacity`: its result is delivered (committed
        with K > 1, revealed with K = 1; what is left is waiting, which costs nothing) or
        it ended."""
        if job.counted:
            job.counted = False
            self.running -= 1

    async def _fetch_inputs(self, job: WorkerJob) -> dict[str, Path]:
        paths = {}
        providers = [*job.offer.input_providers, job.client_peer]
        for name, ref in job.offer.spec.inputs.items():
            last: Exception | None = None
            for peer in providers:
                try:
                    paths[name] = await self.lc.node.blobs.fetch(peer, ref.sha256, ref.size)
                    break
                except (C0Error, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    last = exc
            else:
                raise Refused(f"input {name!r} unavailable: {last}", code="input_unavailable")
        return paths

    async def _execute(self, job: WorkerJob, inputs: dict[str, Path]) -> ExecutionResult:
        offer = job.offer
        out = self.work_root / job_id_text(offer.job_id) / str(offer.attempt)
        if out.exists():
            shutil.rmtree(out)  # a restarted attempt starts clean
        out.mkdir(parents=True)
        # The registry's executor: its children fork from this worker's fork server.
        executor = get_executor(offer.spec.job_class)
        request = ExecutionRequest(
            offer.spec,
            inputs,
            out,
            attempt=offer.attempt,
            nice=self.lc.settings.job_nice,
            sync=self.lc.node.store.full_sync,  # result.json as durable as the database
        )
        # at most max_concurrent executor children at once; a queued job keeps heartbeating
        while True:
            with trio.move_on_after(self.lc.settings.heartbeat_s):
                await self.slots.acquire()
                break
            await self._heartbeat(job, "queued")
        try:
            return await self._run_child(job, executor, request)
        finally:
            self.slots.release()

    async def _heartbeat(self, job: WorkerJob, phase: str) -> None:
        if self.lc.settings.behaviour == "stall":
            return  # the adversary of faults.py: silent once assigned
        offer = job.offer
        await self.lc.send_quietly(
            job.client_peer,
            Heartbeat(job_id=offer.job_id, attempt=offer.attempt, phase=phase, progress=0.5),
            tries=1,
            limit_s=2.0,
        )

    async def _run_child(
        self, job: WorkerJob, executor: Executor, request: ExecutionRequest
    ) -> ExecutionResult:
        # Off the event loop: starting waits for the fork server to fork (or for a fresh
        # interpreter to be spawned), which blocked every other request of this node for
        # that long. Shielded, so a cancel cannot leave a started child unwatched: it is
        # delivered at the next checkpoint, inside the try, whose finally kills the child.
        with trio.CancelScope(shield=True):
            execution = await trio.to_thread.run_sync(executor.start, request)
        self.lc.record_worker(job, "running")
        # Woken by the executor's monitor thread when the result is written, rather than
        # parking a thread of ours in `wait`: a `to_thread` round trip costs ~110 µs of
        # CPU here (bench/README.md, eleventh session), and it took one per job.
        finished = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake() -> None:
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                pass  # the node is shutting down: nobody waits any more

        execution.when_done(wake)
        try:
            while True:
                with trio.move_on_after(self.lc.settings.heartbeat_s):
                    await finished.wait()
                if finished.is_set():
                    result = execution.result
                    assert result is not None
                    return result
                await self._heartbeat(job, "run")
        finally:
            executor.cancel(execution)  # a no-op once done; kills the child if we are cancelled

    async def _submit(self, job: WorkerJob, result: ExecutionResult) -> None:
        offer, lc = job.offer, self.lc
        assert job.terms is not None
        assert lc.escrow is not None
        manifest = result.manifest
        if lc.settings.behaviour in ("wrong_output", "lazy"):
            manifest = tamper_result(result.path.parent, manifest, lc.settings.behaviour)
        for artifact in manifest["artifacts"]:
            await lc.node.blobs.put_file_async(result.path.parent / artifact["path"])
        result_hash = result_digest(manifest)
        salt = os.urandom(32)
        me = lc.node.identity.eth_address
        commitment = commit_hash(result_hash, me, salt)
        job_key = job_id_text(offer.job_id)
        lc.record_worker(
            job,
            "committed",
            artifact_hash=result_hash,
            extra={"salt": salt.hex(), "result_hash": result_hash.hex()},
        )
        commit = ResultCommit(job_id=offer.job_id, attempt=offer.attempt, commitment=commitment)
        reveal = ResultReveal(
            job_id=offer.job_id,
            attempt=offer.attempt,
            manifest=json.loads(json.dumps(manifest)),
            result_hash=result_hash,
            salt=salt,
        )
        # Keep trying the client (it may be restarting) for a quarter of the commit window;
        # after that, the chain is the only way to be paid.
        assert lc.escrow is not None
        chain_now = await lc.escrow.now()
        window = max(2.0, (job.terms.common.commit_deadline - chain_now) / 4)
        # A lone worker (redundancy 1) has no peer to copy from, nor to be copied by: its
        # reveal carries the commitment (the client derives it), one message instead of
        # two. With K > 1 a worker commits, then reveals only when the client calls for
        # it, once every worker's commit is in; a call that has not come by the commit
        # window's last quarter leaves the chain (commit there, reveal after the commit
        # deadline): no result is disclosed before every commit is in or that deadline.
        solo = job.assignment is not None and len(job.assignment.workers) == 1
        delivered = called = solo
        with trio.move_on_after(window):
            delivered = solo or await lc.send_quietly(
                job.client_peer, commit, tries=20, limit_s=5.0
            )
        if delivered and not solo:
            self._uncount(job)  # its result is in (committed): bid while the others commit
            with trio.move_on_after(_until_last_quarter(job.terms, chain_now)):
                await job.reveal_called.wait()
            called = job.reveal_called.is_set()
        if called:
            with trio.move_on_after(window):
                delivered = await lc.send_quietly(job.client_peer, reveal, tries=20, limit_s=5.0)
        outcome = "revealed" if delivered and called else "client_unreachable"
        if delivered and not called:
            outcome = "reveal_not_called"  # the client had our commit, not every other one
        lc.record_worker(job, outcome)
        self._uncount(job)  # waiting to be paid takes no capacity: bid for the next job
        log.info(
            "job %s attempt %d: %s",
            job_key,
            offer.attempt,
            outcome.replace("_", " "),
        )
        gone = outcome != "revealed"  # past the wait: straight to the chain
        await self._await_payment(job, result_hash, salt, commitment, client_gone=gone)

    # ------------------------------------------------------------ claim path
    async def _await_payment(
        self,
        job: WorkerJob,
        result_hash: bytes,
        salt: bytes,
        commitment: bytes,
        *,
        client_gone: bool,
        committed: bool = False,
        revealed: bool = False,
    ) -> None:
        """Wait for the client's release; if none comes before the commit deadline (or the
        client cannot be reached at all), commit on chain, reveal after the commit
        deadline, and claim after the deadline. `committed` / `revealed`: done on chain
        already (a job taken up again after a restart)."""
        lc = self.lc
        terms = job.terms
        assert terms is not None
        assert lc.escrow is not None
        escrow = lc.escrow
        chain_now = await escrow.now()
        wait_s = 0.0 if client_gone else _until_last_quarter(terms, chain_now)
        # The client's Receipt says when it paid; the chain is read to confirm it. Unasked,
        # it is read only in case the receipt is lost: first after _UNPROMPTED_READ_S (a
        # client gathers releases for seconds; reads before that found nothing, one or two
        # eth_calls per job), then on a backoff to 30 s. Each read is an eth_call.
        settled = False
        unprompted, recheck = _UNPROMPTED_READ_S, 0.5
        with trio.move_on_after(wait_s):
            while not settled:
                if job.released.is_set():  # told, but not yet visible on chain: poll
                    await trio.sleep(recheck)
                    recheck = min(recheck * 2, 4.0)
                else:
                    with trio.move_on_after(unprompted):
                        await job.released.wait()
                    unprompted = min(unprompted * 2, 30.0)
                settled = await escrow.status(terms) == STATUS_SETTLED
        if settled or await escrow.status(terms) == STATUS_SETTLED:
            if job.released.is_set():  # the client's receipt said it released
                lc.record_worker(job, "released")
            else:
                await self._record_closed(job)
            return
        # The client has not paid in time: secure a claim on chain.
        try:
            if not committed:
                await escrow.call(escrow.client.commit, terms, commitment)
                lc.record_worker(job, "committed_on_chain")
            if not revealed:
                await self._sleep_until_chain(terms.common.commit_deadline)
                await escrow.call(escrow.client.reveal, terms, result_hash, salt)
                lc.record_worker(job, "revealed_on_chain")
            challenge, _ = await escrow.read(escrow.client.periods)
            await self._sleep_until_chain(terms.common.deadline + challenge)
            status = await escrow.status(terms)
            if status == STATUS_SETTLED:
                await self._record_closed(job)
                return
            if status == STATUS_DISPUTED:  # the arbiter decides; nothing to claim
                lc.record_worker(job, "disputed")
                return
            await escrow.call(escrow.client.claim, terms, result_hash)
            lc.record_worker(job, "claimed")
        except SettlementError as exc:
            log.warning("claim path for %s: %s", job_id_text(job.offer.job_id), exc.message)
            lc.record_worker(job, "claim_failed", extra={"reason": exc.reason})

    # ------------------------------------------------------------ after a restart
    def resume(self) -> None:
        """Take up, after a restart, every job of this worker whose result was computed
        and committed to but not yet paid: the chain is read first (what this worker
        committed and revealed there), then it waits for the release or goes on to claim,
        as before the restart. A job whose offer or assignment is not kept cannot be."""
        lc = self.lc
        if lc.escrow is None:
            return
        for rec in lc.node.store.jobs():
            data = rec.data
            if rec.role != "worker" or rec.state not in _RESUMABLE:
                continue
            if not {"salt", "result_hash", "terms", "peer"} <= data.keys():
                continue
            offer_raw = lc.evidence_envelope("offer", rec.job_id, str(data.get("client")))
            assignment_raw = lc.evidence_envelope("assignment", rec.job_id, str(data.get("client")))
            if offer_raw is None or assignment_raw is None:
                log.warning("job %s: its offer is not kept; not taken up", job_id_text(rec.job_id))
                continue
            offer = open_envelope(offer_raw, now=None).message
            assignment = open_envelope(assignment_raw, now=None).message
            if not isinstance(offer, Offer) or not isinstance(assignment, Assignment):
                continue
            job = WorkerJob(
                offer,
                str(data["peer"]),
                price=int(data.get("price") or 0),
                assignment=assignment,
                terms=terms_from_json(data["terms"]),
            )
            job.record = (data, True)
            self.jobs[(offer.job_id, offer.attempt)] = job
            result_hash = bytes.fromhex(str(data["result_hash"]))
            salt = bytes.fromhex(str(data["salt"]))
            lc.spawn(self._resume_payment, job, result_hash, salt)

    async def _resume_payment(self, job: WorkerJob, result_hash: bytes, salt: bytes) -> None:
        lc, terms = self.lc, job.terms
        assert terms is not None
        me = lc.node.identity.eth_address
        mine = [
            e["event"]
            for e in await lc.chain_events_for(terms.job_id)
            if str(e.get("worker", "")).lower() == me.lower()
        ]
        log.info("resuming the payment of job %s", job_id_text(job.offer.job_id))
        lc.record_worker(job, "resumed", extra={"on_chain": mine})
        try:
            await self._await_payment(
                job,
                result_hash,
                salt,
                commit_hash(result_hash, me, salt),
                client_gone="committed" in mine,
                committed="committed" in mine,
                revealed="revealed" in mine,
            )
        finally:
            job.ended = True
            job.touched = time.monotonic()

    async def _record_closed(self, job: WorkerJob) -> None:
        """An escrow found settled without the client's receipt: how it closed, read from
        its events on chain (released, claimed, resolved by the arbiter with this worker
        slashed or not, lapsed, refunded), never assumed to have paid."""
        lc, terms = self.lc, job.terms
        assert terms is not None
        me = lc.node.identity.eth_address.lower()
        events = await lc.chain_events_for(terms.job_id)
        kinds = {e["event"]: e for e in events}
        for phase in ("released", "claimed", "resolved", "lapsed", "refunded"):
            if phase in kinds:
                break
        else:
            phase = "closed"
        extra: dict[str, Any] = {"tx": kinds[phase]["tx"]} if phase in kinds else {}
        if phase == "claimed":  # another worker's claim closed it (ours records "claimed")
            phase = "settled_by_claim"
            extra["result_hash"] = str(kinds["claimed"].get("result_hash", ""))
        elif phase == "resolved":
            extra["slashed"] = any(
                e["event"] == "slashed" and str(e.get("worker", "")).lower() == me for e in events
            )
            extra["to_workers"] = int(kinds[phase].get("to_workers", 0))
        lc.record_worker(job, phase, extra=extra)

    async def _copy_commit(self, job: WorkerJob) -> None:
        """The lazy adversary: do no work, copy another worker's on-chain commitment, and
        try to reveal with that worker's result. The commitment binds the committer's
        address, so the reveal cannot match: the contract refuses it."""
        lc, terms = self.lc, job.terms
        assert terms is not None
        assert lc.escrow is not None
        escrow = lc.escrow
        me = lc.node.identity.eth_address.lower()

        async def others(kind: str, field: str) -> list[bytes]:
            events = await lc.chain_events_for(terms.job_id)
            return [
                bytes.fromhex(str(e[field]).removeprefix("0x"))
                for e in events
                if e["event"] == kind and str(e.get("worker", "")).lower() != me
            ]

        copied: list[bytes] = []
        while not copied and await escrow.now() < terms.common.commit_deadline:
            copied = await others("committed", "commitment")
            await trio.sleep(0.5)  # watching the chain for a commitment to copy
        if not copied:
            lc.record_worker(job, "claim_failed", extra={"reason": "nothing to copy"})
            return
        try:
            await escrow.call(escrow.client.commit, terms, copied[0])
            lc.record_worker(job, "committed_on_chain", extra={"copied": copied[0].hex()})
            revealed: list[bytes] = []
            while not revealed and await escrow.now() < terms.common.deadline:
                revealed = await others("revealed", "result_hash")
                await trio.sleep(0.5)  # waiting for the honest reveal to copy
            await self._sleep_until_chain(terms.common.commit_deadline)
            result_hash = revealed[0] if revealed else bytes(32)
            await escrow.call(escrow.client.reveal, terms, result_hash, os.urandom(32))
            lc.record_worker(job, "revealed_on_chain")
        except SettlementError as exc:
            lc.record_worker(job, "claim_failed", extra={"reason": exc.reason})

    async def _stall(self, job: WorkerJob, result: ExecutionResult) -> None:
        """The stalled adversary (faults.py): nothing reaches the client, which abandons
        the attempt; the result goes on chain alone, revealed after the commit deadline,
        and claimed after the challenge period whether or not the escrow is disputed."""
        lc, terms = self.lc, job.terms
        assert terms is not None
        assert lc.escrow is not None
        escrow = lc.escrow
        result_hash = result_digest(result.manifest)
        salt = os.urandom(32)
        commitment = commit_hash(result_hash, lc.node.identity.eth_address, salt)
        try:
            await escrow.call(escrow.client.commit, terms, commitment)
            lc.record_worker(job, "committed_on_chain")
            await self._sleep_until_chain(terms.common.commit_deadline)
            await escrow.call(escrow.client.reveal, terms, result_hash, salt)
            lc.record_worker(job, "revealed_on_chain")
            challenge, _ = await escrow.read(escrow.client.periods)
            await self._sleep_until_chain(terms.common.deadline + challenge)
            await escrow.call(escrow.client.claim, terms, result_hash)
            lc.record_worker(job, "claimed")
        except SettlementError as exc:
            lc.record_worker(job, "claim_failed", extra={"reason": exc.reason})

    async def _sleep_until_chain(self, target: int) -> None:
        """Wait until the chain's clock passes `target` (bounded: checks once a second)."""
        assert self.lc.escrow is not None
        for _ in range(3600):
            now = await self.lc.escrow.now()
            if now > target:
                return
            await trio.sleep(min(1.0, target - now + 0.1))  # the chain clock ticks in seconds
