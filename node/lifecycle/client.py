"""The client role: route, offer, fund, assign, watch, verify, settle, retry — for the
jobs this node submits. One task per job; every step is persisted so a restart resumes."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.app import now_ms
from node.executors.manifest import MANIFEST_NAME, spec_from_json, spec_to_json
from node.lifecycle.escrow import attempt_chain_id, terms_from_json, terms_to_json
from node.lifecycle.results import materialize, template_of
from node.verification import verify_result
from protocol.consent import offer_consent
from protocol.envelope import SignedMessage, open_envelope
from protocol.errors import C0Error, InvalidJobSpec, PeerProtocolError, UserError
from protocol.jobs import (
    DERIVED_NONCE_BYTES,
    InputRef,
    JobSpec,
    JobTemplate,
    derive_nonce,
    job_id_text,
)
from protocol.messages import (
    Accept,
    Assignment,
    Bid,
    Decline,
    Heartbeat,
    Offer,
    ResultCommit,
    ResultReveal,
    RevealCall,
    Verdict,
)
from protocol.results import result_digest
from protocol.routing import Candidate, Ranked, RoutingPolicy, rank_workers
from protocol.settlement import (
    STATUS_DISPUTED,
    STATUS_OPEN,
    STATUS_SETTLED,
    STATUS_UNKNOWN,
    ChainUnavailable,
    Common,
    EscrowTerms,
    SettlementError,
    commit_hash,
    recover_consent_signer,
)
from protocol.settlement import Assignment as EscrowAssignment
from protocol.state import TERMINAL, Event, JobMachine, State

if TYPE_CHECKING:
    from node.lifecycle.service import Lifecycle

__all__ = ["ClientRole"]

log = logging.getLogger("c0.client")
_NO_WORKER_POLL_S = 1.0
# An attempt needs this long before the job's deadline: a commit window of at least a
# second must end before it (an offer whose commit deadline follows its deadline is
# invalid), so with less left the job gives up instead of starting one.
_MIN_ATTEMPT_MS = 2000
# K > 1: the reveal call goes again this often while a called worker has not revealed
# (a lost call would otherwise leave the attempt waiting for its deadline).
_RECALL_S = 5.0
# The chain unreachable (ChainUnavailable): a job reads it again after this long.
_CHAIN_RETRY_S = 2.0
# States in which the job's current attempt (`machine.attempt`) holds a live escrow.
_LIVE_STATES = frozenset(
    {State.ASSIGNED, State.RUNNING, State.SUBMITTED, State.VERIFIED, State.DISPUTED}
)
# The steps from a state to SUBMITTED (FUNDED and FAILED: of an attempt funded, not yet
# recorded as assigned), taken when the chain shows the attempt's workers delivered.
_TO_SUBMITTED: dict[State, tuple[Event, ...]] = {
    State.FUNDED: (Event.ASSIGN, Event.START, Event.SUBMIT),
    State.FAILED: (Event.RETRY, Event.START, Event.SUBMIT),
    State.ASSIGNED: (Event.START, Event.SUBMIT),
    State.RUNNING: (Event.SUBMIT,),
}
_STATUS_NAMES = {STATUS_OPEN: "open", STATUS_DISPUTED: "disputed", STATUS_SETTLED: "closed"}


@dataclass
class WorkerSlot:
    did: str
    peer: str
    eth: str
    price: int
    last_heartbeat: float = 0.0
    started: bool = False
    commitment: bytes | None = None
    reveal: SignedMessage | None = None
    failure: str | None = None


@dataclass
class Attempt:
    number: int
    slots: dict[str, WorkerSlot]  # by DID
    terms: EscrowTerms
    changed: trio.Event = field(default_factory=trio.Event)
    called_at: float | None = None  # K > 1: when the reveal call last went out (trio time)

    def committed(self) -> bool:
        return all(x.commitment is not None for x in self.slots.values())

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass(frozen=True)
class Submission:
    """What `ClientRole.submit_job` did: `existing` when the same job (the same ID: see
    `derive_nonce`) was submitted before, which then goes on (or stays where it ended)
    instead of a new, separately paid one starting; `state` is its state now."""

    job_id: str
    state: str
    existing: bool
    deadline_ms: int


class AttemptFailed(Exception):
    def __init__(self, event: Event, reason: str, culprits: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.event = event
        self.reason = reason
        self.culprits = culprits


class ClientRole:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.active: dict[tuple[bytes, int], Attempt] = {}
        self.bidding: set[bytes] = set()  # jobs between routing and their escrow's open
        self._binding: bytes | None = None  # this node's address-to-DID signature
        self.waiting: set[bytes] = set()  # of those, the ones waiting for a worker with room
        self.offered: dict[str, int] = {}  # worker DID -> offers out or won, not yet assigned
        # worker DID -> our attempts there with no result in yet (kept with `active`)
        self._held: dict[str, int] = {}
        self.records: dict[bytes, dict[str, Any]] = {}  # job id -> the record its task holds
        self.results_root = lc.node.home / "results"
        # Jobs that found no worker with room, oldest first: woken one per slot that one
        # of our attempts or offers frees (all of them when an ad arrives), or by timeout.
        self._room: deque[trio.Event] = deque()
        lc.node.on_ad.append(lambda _worker: self._wake_all())

    def unverified(self) -> int:
        """Jobs of ours on their way to a verdict: running or being funded (`active`),
        bidding or waiting for a worker with room (`bidding`); their releases may still
        join a batch."""
        return len(self.active) + len(self.bidding)

    def _free(self, count: int) -> None:
        """`count` of our slots at workers were freed: wake as many waiting jobs."""
        while count > 0 and self._room:
            waiter = self._room.popleft()
            if not waiter.is_set():
                waiter.set()
                count -= 1

    def _wake_all(self) -> None:
        while self._room:
            self._room.popleft().set()

    async def _wait_for_room(self, job_id: bytes, limit_s: float) -> None:
        """Until a worker may have room for this job (see `_room`), at most `limit_s`."""
        waiter = trio.Event()
        self._room.append(waiter)
        self.waiting.add(job_id)
        try:
            with trio.move_on_after(limit_s):
                await waiter.wait()
        finally:
            self.waiting.discard(job_id)
            waiter.set()  # timed out: `_free` skips it

    def asking(self) -> int:
        """Jobs of ours with offers out, bids not yet closed: they join the next open soon.
        (Jobs waiting for room do not: room frees when running jobs reveal, after the
        open that funds them; an open waiting for those stalled the whole burst.)"""
        return len(self.bidding - self.waiting)

    # ------------------------------------------------------------ submit
    def submit(
        self,
        template_json: Any,
        inputs: dict[str, str],
        *,
        redundancy: int,
        max_price: int,
        deadline_s: int,
        new: bool = False,
    ) -> str:
        """`submit_job`, returning the job's ID only."""
        return self.submit_job(
            template_json,
            inputs,
            redundancy=redundancy,
            max_price=max_price,
            deadline_s=deadline_s,
            new=new,
        ).job_id

    def submit_job(
        self,
        template_json: Any,
        inputs: dict[str, str],
        *,
        redundancy: int,
        max_price: int,
        deadline_s: int,
        new: bool = False,
    ) -> Submission:
        """Validate everything before any money moves; persist; start the job's task.

        The spec's nonce is derived from what defines the job (`derive_nonce`), so the
        same submission again is the same job: it is not started a second time, and
        paid at most once. A job whose record exists goes on where it stands (its task
        is started again if none runs it), or, terminal, is reported as it ended; its
        deadline stays the first submission's. `new` draws a random nonce instead: a
        new, separately paid job with the same definition."""
        lc = self.lc
        template = JobTemplate.from_json(template_json)
        if not 1 <= redundancy <= 5:
            raise InvalidJobSpec("redundancy must be 1..5")
        if max_price < 0:
            raise InvalidJobSpec("max price must not be negative")
        if deadline_s <= 0:
            raise InvalidJobSpec("the deadline has already passed")
        if lc.escrow is None or lc.chain is None:
            raise UserError("this node has no chain configured (chain.json in its home)")
        if not lc.arbiter_address():
            raise UserError(
                "no arbiter configured: set `arbiter` in settings.toml or chain.json "
                "(an address both sides trust; never this node's own)"
            )
        refs: dict[str, InputRef] = {}
        paths: dict[str, str] = {}
        for name, raw_path in inputs.items():
            path = Path(raw_path).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"input {name}: no such file: {path}")
            digest = lc.node.blobs.put_file(path)
            expected = template.inputs.get(name)
            if expected is not None and expected.sha256 != digest:
                raise InvalidJobSpec(f"input {name}: file does not match the spec's sha256")
            refs[name] = InputRef(digest, path.stat().st_size)
            paths[name] = str(lc.node.blobs.path_of(digest))
        if new:
            nonce = os.urandom(DERIVED_NONCE_BYTES)
        else:
            probe = template.bind(refs, client=lc.node.did, nonce=bytes(DERIVED_NONCE_BYTES))
            nonce = derive_nonce(probe, redundancy=redundancy, max_price=max_price)
        spec = template.bind(refs, client=lc.node.did, nonce=nonce)
        existing = lc.node.store.get_job(spec.job_id)
        if existing is not None:
            return self._resubmitted(existing)
        for name, ref in spec.inputs.items():
            if name not in paths:  # bound by hash in the spec: we must hold it
                if not lc.node.blobs.has(ref.sha256):
                    raise UserError(f"input {name}: this node does not hold {ref.sha256.hex()}")
                paths[name] = str(lc.node.blobs.path_of(ref.sha256))
        prices = [w.ad.prices.get(spec.job_class) for w in lc.node.caps.values()]
        offered = [p for p in prices if p is not None]
        if offered and min(offered) > max_price:
            raise InvalidJobSpec(
                f"max price {max_price} is under every bid price heard (lowest {min(offered)})"
            )
        job_id = spec.job_id
        deadline_ms = now_ms() + deadline_s * 1000
        data = {
            "spec": spec_to_json(spec),
            "inputs": paths,
            "redundancy": redundancy,
            "max_price": max_price,
            "deadline_ms": deadline_ms,
            "attempt": 0,
            "verified": False,
            "attempts": {},
            "explain": {},
            "tried": [],
            "submitted_ms": now_ms(),
        }
        with lc.node.store.transaction():  # the record and its first event: one commit
            lc.store_job(job_id, "client", State.REQUESTED, data)
            lc.event(job_id, 0, "requested", detail={"job_class": spec.job_class}, record=data)
        lc.spawn(self.drive, job_id)
        return Submission(spec.job_id_text, str(State.REQUESTED), False, deadline_ms)

    def _resubmitted(self, rec: Any) -> Submission:
        """The same job submitted again: nothing new starts, nothing is paid again."""
        text = job_id_text(rec.job_id)
        if rec.role != "client":
            raise UserError(f"job {text} is known here as a {rec.role}'s job, not this client's")
        if State(rec.state) not in TERMINAL and rec.job_id not in self.records:
            self.lc.spawn(self.drive, rec.job_id)  # its task ended: it reads the chain first
        log.info("job %s submitted again: %s, going on", text, rec.state)
        return Submission(text, str(rec.state), True, int(rec.data["deadline_ms"]))

    # ------------------------------------------------------------ the job task
    async def drive(self, job_id: bytes) -> None:
        """Run one job from where its record stands to a terminal state. A job with
        escrows (picked up after a restart, or again after its task ended) reads them on
        chain first (`_read_chain_first`), and again after the chain was unreachable."""
        lc = self.lc
        if job_id in self.records:
            return  # another task drives it (a resubmission met the restart's task)
        rec = lc.node.store.get_job(job_id)
        assert rec is not None
        data = rec.data
        spec = spec_from_json(data["spec"])
        machine = JobMachine(
            lc.settings.max_attempts, State(rec.state), int(data["attempt"]), data["verified"]
        )
        self.records[job_id] = data
        try:
            while True:
                try:
                    if data["attempts"] and not machine.terminal:
                        await self._read_chain_first(job_id, data, machine)
                    await self._drive(job_id, spec, data, machine)
                    return
                except ChainUnavailable as exc:
                    log.warning("job %s waits for the chain: %s", spec.job_id_text, exc.message)
                    await trio.sleep(_CHAIN_RETRY_S)
        finally:
            self.records.pop(job_id, None)

    async def _read_chain_first(
        self, job_id: bytes, data: dict[str, Any], machine: JobMachine
    ) -> None:
        """Before a picked-up job acts, its escrows as the chain has them: nothing this
        client did before it stopped, nor what the workers did meanwhile, is done twice.

        Every attempt but the live one (the one its state says runs, or funded and not yet
        recorded as assigned) goes to the refund keeper, which never refunds a closed
        escrow and disputes one where an unaccepted result reached quorum. The live
        attempt's escrow, read on chain:

        - open, funded but not recorded as assigned: its assignments go again
          (`_reassign`), never a second escrow for the same attempt;
        - open otherwise: the job goes on where it stood;
        - released (by this client, before it stopped) or claimed by its workers: the
          payout is recorded, the job settled; nothing is released or refunded again;
        - disputed, resolved or lapsed: a submitted or verified job awaits (or reads) the
          ruling; an attempt that never delivered is abandoned to the keeper;
        - refunded: the job expires and is given up (refunds of the rest, then refunded).
        """
        lc = self.lc
        if lc.escrow is None:
            return
        state = machine.state
        numbers = sorted(int(n) for n in data["attempts"])
        live: int | None = None
        if state in _LIVE_STATES:
            live = machine.attempt
        elif state in (State.FUNDED, State.FAILED) and numbers[-1] == machine.attempt + 1:
            live = machine.attempt + 1
        for number in numbers:
            if number != live:
                terms = terms_from_json(data["attempts"][str(number)]["terms"])
                lc.refunds.add(terms, job_id, number)
        info = data["attempts"].get(str(live))
        if info is None or state is State.DISPUTED:  # DISPUTED: `await_ruling` reads it
            return
        assert live is not None
        terms = terms_from_json(info["terms"])
        status = await lc.escrow.status(terms)
        unassigned = state in (State.FUNDED, State.FAILED)
        if status == STATUS_OPEN:
            if unassigned:
                await self._reassign(job_id, data, machine, live, info, terms)
            return
        if status == STATUS_UNKNOWN:
            text = job_id_text(job_id)
            log.warning("job %s: no escrow on chain holds attempt %d's terms", text, live)
            return
        events = await lc.chain_events_for(terms.job_id)
        by_kind = {e["event"]: e for e in events}
        paid = by_kind.get("released") or by_kind.get("claimed")
        if status == STATUS_SETTLED and paid is not None:
            released = paid["event"] == "released"
            steps = list(_TO_SUBMITTED.get(state, ()))
            if not machine.verified:
                steps.append(Event.QUORUM)  # paid on chain: a quorum revealed one result
            steps.append(Event.RELEASE if released else Event.CLAIM)
            if released:
                info["release_tx"] = paid["tx"]
            else:
                info["claim_tx"] = paid["tx"]
                info["claimed"] = str(paid.get("result_hash", ""))
            log.info("job %s: attempt %d was %s on chain", job_id_text(job_id), live, paid["event"])
            self._step(
                job_id, data, machine, *steps, detail={"on_chain": paid["event"], "tx": paid["tx"]}
            )
            return
        disputed = status == STATUS_DISPUTED or "disputed" in by_kind
        if disputed and Event.DISPUTE in machine.allowed():  # submitted or verified
            tx = by_kind["disputed"]["tx"] if "disputed" in by_kind else ""
            info.setdefault("dispute", {"tx": tx, "on_chain": True})
            detail = {"on_chain": "disputed", "tx": tx}
            self._step(job_id, data, machine, Event.DISPUTE, detail=detail)
            return
        refunded = by_kind.get("refunded")
        if refunded is not None and Event.DEADLINE in machine.allowed():
            # refunded at deadline + challenge period: the job's deadline passed long ago
            detail = {"on_chain": "refunded", "tx": refunded["tx"]}
            self._step(job_id, data, machine, Event.DEADLINE, detail=detail)
            return
        # Disputed (or closed) on chain before the attempt delivered: abandoned to the
        # keeper, which accounts for it (or lapses the dispute); the job retries.
        steps = [Event.ASSIGN if state is State.FUNDED else Event.RETRY] if unassigned else []
        steps.append(Event.WORKER_FAILED)
        if all(self._allowed_after(machine, steps)):
            reason = f"escrow {_STATUS_NAMES.get(status, status)} on chain"
            info["outcome"] = {"failed": reason, "culprits": []}
            self._step(job_id, data, machine, *steps, detail={"reason": reason})
        lc.refunds.add(terms, job_id, live)

    @staticmethod
    def _allowed_after(machine: JobMachine, steps: list[Event]) -> list[bool]:
        """Whether each of `steps` would be allowed, taken in order (the machine is not changed)."""
        probe = dataclasses.replace(machine)
        out = []
        for step in steps:
            ok = step in probe.allowed()
            out.append(ok)
            if ok:
                probe.handle(step)
        return out

    async def _reassign(
        self,
        job_id: bytes,
        data: dict[str, Any],
        machine: JobMachine,
        number: int,
        info: dict[str, Any],
        terms: EscrowTerms,
    ) -> None:
        """An attempt funded before a restart but not recorded as assigned: its escrow is
        open on chain and its workers may be running it. Its assignments go again (a
        worker that accepted answers the same Accept again); then the job goes on as an
        assigned one, or, refused, the attempt fails and the keeper closes its escrow."""
        slots = {
            w["did"]: WorkerSlot(
                w["did"], w["peer"], w["eth"], w["price"], last_heartbeat=trio.current_time()
            )
            for w in info["workers"]
        }
        attempt = Attempt(number, slots, terms)
        event = Event.ASSIGN if machine.state is State.FUNDED else Event.RETRY
        if event not in machine.allowed():
            self.lc.refunds.add(terms, job_id, number)
            return
        self._activate(job_id, attempt)  # what the workers send meanwhile lands here
        try:
            refused = await self._assign(job_id, number, slots, terms, info["escrow_tx"])
            self._step(
                job_id,
                data,
                machine,
                event,
                detail={"workers": list(slots), "escrow_tx": info["escrow_tx"], "again": True},
            )
            if refused:
                failure = AttemptFailed(Event.WORKER_FAILED, "; ".join(refused)[:300])
                self._fail_attempt(job_id, data, machine, attempt, failure)
        finally:
            self._deactivate(job_id, attempt)  # `_drive` rebuilds it from the record

    def _save(self, job_id: bytes, data: dict[str, Any], machine: JobMachine) -> None:
        data["attempt"] = machine.attempt
        data["verified"] = machine.verified
        self.lc.store_job(job_id, "client", machine.state, data)

    def _step(
        self,
        job_id: bytes,
        data: dict[str, Any],
        machine: JobMachine,
        event: Event,
        *then: Event,
        **event_fields: Any,
    ) -> None:
        """Take `event` (and the events `then`, in order): each transition gets its signed
        JobEvent; the record is saved once, with them, in one commit."""
        with self.lc.node.store.transaction():
            for step in (event, *then):
                machine.handle(step)
                attempt = machine.attempt + 1 if step is Event.FUND else machine.attempt
                self.lc.event(job_id, attempt, str(machine.state), record=data, **event_fields)
            self._save(job_id, data, machine)

    async def _drive(
        self, job_id: bytes, spec: JobSpec, data: dict[str, Any], machine: JobMachine
    ) -> None:
        lc = self.lc
        deadline_ms = int(data["deadline_ms"])
        while not machine.terminal:
            if lc.arbitration.requested(job_id):  # `c0 job dispute`: this task files it
                await lc.arbitration.dispute_on_request(job_id, data, machine, self)
                continue
            state = machine.state
            if state in (State.REQUESTED, State.FUNDED, State.FAILED):
                if now_ms() >= deadline_ms - _MIN_ATTEMPT_MS or (
                    state is State.FAILED and Event.RETRY not in machine.allowed()
                ):
                    await self._give_up(job_id, data, machine)
                    continue
                attempt = await self._start_attempt(job_id, spec, data, machine, deadline_ms)
                if attempt is None:
                    continue
            elif state in (State.ASSIGNED, State.RUNNING, State.SUBMITTED):
                attempt = self._resume_attempt(job_id, data, machine)
            elif state is State.VERIFIED:
                await self._settle(job_id, data, machine)
                continue
            elif state is State.EXPIRED:
                await self._give_up(job_id, data, machine)
                continue
            elif state is State.DISPUTED:
                await lc.arbitration.await_ruling(job_id, data, machine, self)
                continue
            else:  # pragma: no cover - every non-terminal state is handled above
                raise AssertionError(state)
            try:
                await self._watch(job_id, spec, data, machine, attempt, deadline_ms)
            except AttemptFailed as failure:
                log.info(
                    "attempt %d of %s failed: %s", attempt.number, spec.job_id_text, failure.reason
                )
                self._fail_attempt(job_id, data, machine, attempt, failure)
            finally:
                self._deactivate(job_id, attempt)

    # ------------------------------------------------------------ routing and funding
    def _ours_in_flight(self) -> dict[str, int]:
        """Per worker DID: this client's attempts there plus its outstanding offers."""
        inflight: dict[str, int] = dict(self.offered)
        for did, count in self._held.items():
            inflight[did] = inflight.get(did, 0) + count
        return inflight

    def _activate(self, job_id: bytes, attempt: Attempt) -> None:
        self.active[(job_id, attempt.number)] = attempt
        for slot in attempt.slots.values():
            if slot.commitment is None:  # a worker counts a job until its result is in
                self._held[slot.did] = self._held.get(slot.did, 0) + 1

    def _result_in(self, slot: WorkerSlot) -> None:
        """`slot`'s worker no longer counts the job (its commitment is in): neither do we."""
        held = self._held.get(slot.did, 0) - 1
        if held > 0:
            self._held[slot.did] = held
        else:
            self._held.pop(slot.did, None)
        self._free(1)

    def _deactivate(self, job_id: bytes, attempt: Attempt) -> None:
        if self.active.pop((job_id, attempt.number), None) is not None:
            for slot in attempt.slots.values():
                if slot.commitment is None:
                    self._result_in(slot)  # the attempt is over: its room is free too

    def candidates(self, spec: JobSpec) -> list[Candidate]:
        lc = self.lc
        # A gossiped load is seconds old; add the jobs we ourselves have there (running,
        # won and being funded, or offered right now), so a burst spreads over the swarm
        # instead of piling onto the same few workers.
        inflight = self._ours_in_flight()
        out = []
        for did, worker in lc.node.caps.items():
            if did == lc.node.did:
                continue
            ad = worker.ad
            load = None
            if inflight.get(did):
                load = min(1.0, ad.load + inflight[did] / max(1, ad.max_concurrent))
            rep = lc.reputation_of(did, spec.job_class)
            out.append(
                Candidate(
                    did=did,
                    ad=ad,
                    reputation=rep.score,
                    recent_timeouts=rep.timeouts,
                    expires_at=worker.expires_ms,
                    load=load,
                )
            )
        return out

    def _withhold_spares(self, ranked: list[Ranked], k: int) -> list[Ranked]:
        """Offers beyond K (`offer_fanout`) hedge against a slow or declining worker, but
        each holds a slot at a worker until the bids close, and costs it a signed bid.
        Spares come only from the room left once every job of ours now bidding has its K:
        a lone job gets them all; in a burst they would take the room the other jobs
        need (and doubled the bids the swarm signed and checked)."""
        lc = self.lc
        inflight = self._ours_in_flight()
        room = 0
        for r in ranked:
            worker = lc.node.caps.get(r.did)
            if r.eligible and worker is not None:
                room += max(0, worker.ad.max_concurrent - inflight.get(r.did, 0))
        bidding = max(1, len(self.bidding))  # this job is one of them
        spare = max(0, min(lc.settings.offer_fanout, room - k * bidding))
        out, picked = [], 0
        for r in ranked:
            if r.reason == "selected":
                picked += 1
                if picked > k + spare:
                    why = "not selected: spare offer withheld (our other jobs need the room)"
                    r = dataclasses.replace(r, reason=why)
            out.append(r)
        return out

    async def _start_attempt(
        self,
        job_id: bytes,
        spec: JobSpec,
        data: dict[str, Any],
        machine: JobMachine,
        deadline_ms: int,
    ) -> Attempt | None:
        self.bidding.add(job_id)  # the open batcher waits a little for jobs still bidding
        try:
            return await self._route_bid_fund_assign(job_id, spec, data, machine, deadline_ms)
        finally:
            self.bidding.discard(job_id)

    async def _route_bid_fund_assign(
        self,
        job_id: bytes,
        spec: JobSpec,
        data: dict[str, Any],
        machine: JobMachine,
        deadline_ms: int,
    ) -> Attempt | None:
        lc = self.lc
        assert lc.escrow is not None
        assert lc.chain is not None
        number = machine.attempt + 1
        k = int(data["redundancy"])
        max_price = int(data["max_price"])
        # Read before ranking: no checkpoint may fall between the ranking (each worker's
        # room, counting our offers) and `offered` counting this job's offers, or a burst
        # of jobs all rank against the same room and pile onto one worker.
        chain_now = await lc.escrow.now()
        policy = RoutingPolicy(reputation_threshold=lc.settings.reputation_threshold)
        ranked = rank_workers(
            spec,
            self.candidates(spec),
            max_price=max_price,
            want=k + lc.settings.offer_fanout,
            now=now_ms(),
            policy=policy,
            exclude=data["tried"],
        )
        ranked = self._withhold_spares(ranked, k)
        data["explain"][str(number)] = [r.to_json() for r in ranked]
        chosen = [r.did for r in ranked if r.reason == "selected"]
        if len(chosen) < k:
            self._save(job_id, data, machine)
            await self._wait_for_room(job_id, _NO_WORKER_POLL_S)  # or new workers may appear
            return None
        remaining_s = max(2, (deadline_ms - now_ms()) // 1000)
        # Deadlines on a grid of ~1/60 of the time left (5 s for the default 300 s), rounded
        # down: jobs funded close together then share their terms' common part, which the
        # escrow takes once per batch (at most MAX_GROUPS distinct ones per transaction).
        grid = max(1, remaining_s // 60)
        chain_deadline = (chain_now + remaining_s) // grid * grid
        commit_deadline = max(
            chain_now + 1, (chain_now + max(1, int(remaining_s * 0.6))) // grid * grid
        )
        escrow_deadline = max(chain_deadline, commit_deadline + 1)
        stake_lock = lc.settings.stake_lock_wei
        offer = Offer(
            job_id=job_id,
            spec=spec,
            attempt=number,
            redundancy=k,
            max_price=max_price,
            deadline=deadline_ms,
            commit_deadline=now_ms() + (commit_deadline - chain_now) * 1000,
            chain_id=lc.chain.chain_id,
            escrow=lc.chain.escrow,
            arbiter=lc.arbiter_address(),
            client_eth=lc.node.identity.eth_address,
            client_eth_sig=self._binding_sig(),
            input_providers=(lc.node.peer_id,),
            stake_lock=stake_lock,
            escrow_commit_deadline=commit_deadline,
            escrow_deadline=escrow_deadline,
        )
        envelope = lc.node.seal(offer, ttl_ms=int(lc.settings.bid_timeout_s * 1000) + 5000)
        bids: list[tuple[int, int, str, Bid, str]] = []  # (price, rank, did, bid, peer)

        async def ask(rank: int, did: str) -> None:
            known = lc.node.caps.get(did)  # one look-up (each builds the live view)
            if known is None:
                return
            peer, bound_eth = known.ad.peer_id, known.ad.eth_address
            try:
                reply = await lc.node.request(peer, envelope, timeout=lc.settings.bid_timeout_s)
            except (C0Error, trio.BrokenResourceError, OSError) as exc:
                lc.event(job_id, number, "declined", worker=did, detail={"reason": str(exc)[:200]})
                return
            if reply is None or reply.sender != did:
                return
            msg = reply.message
            if isinstance(msg, Bid) and msg.job_id == job_id and msg.attempt == number:
                problem = self._bid_problem(offer, bound_eth, msg)
                if problem:  # a bid the escrow would refuse: never opened, the worker penalised
                    lc.penalise_peer(peer, "bad_terms")
                    lc.event(job_id, number, "declined", worker=did, detail={"reason": problem})
                    return
                if msg.price <= max_price:
                    bids.append((msg.price, rank, did, msg, peer))
                    with lc.node.store.transaction():  # the event and its evidence: one commit
                        lc.event(job_id, number, "bid", worker=did, detail={"price": msg.price})
                        lc.store_evidence(reply)
            elif isinstance(msg, Decline):
                lc.event(job_id, number, "declined", worker=did, detail={"reason": msg.reason})

        # Soft close: once K bids are in, the others get `bid_grace_s` more, so one slow
        # worker does not hold the job up for the whole bid timeout.
        pending = [len(chosen)]
        enough, all_in = trio.Event(), trio.Event()

        async def ask_counted(rank: int, did: str) -> None:
            try:
                await ask(rank, did)
            finally:
                pending[0] -= 1
                if len(bids) >= k:
                    enough.set()
                if pending[0] == 0:
                    enough.set()
                    all_in.set()

        for did in chosen:
            self.offered[did] = self.offered.get(did, 0) + 1
        try:
            async with trio.open_nursery() as asks:
                for rank, did in enumerate(chosen):
                    asks.start_soon(ask_counted, rank, did)
                await enough.wait()
                with trio.move_on_after(lc.settings.bid_grace_s):
                    await all_in.wait()
                asks.cancel_scope.cancel()
        finally:
            for did in chosen:
                self.offered[did] -= 1
            self._free(len(chosen) - min(k, len(bids)))  # the winners stay busy with it
        # the K cheapest win; among equal prices, the worker with fewer of our jobs in
        # flight right now, then the better routing rank
        load_now = self._ours_in_flight()
        bids.sort(key=lambda b: (b[0], load_now.get(b[2], 0), b[1]))
        if len(bids) < k:
            self._free(len(bids))
            self._save(job_id, data, machine)
            await self._wait_for_room(job_id, _NO_WORKER_POLL_S)  # too few bids: wait for the swarm
            return None
        winners = bids[:k]
        outcome = {b[2]: f"won: bid {b[0]}" for b in winners}
        outcome.update(
            {
                b[2]: f"lost: bid {b[0]} not among the {k} lowest (ties go to the worker "
                "with fewer of this client's jobs in flight, then the better rank)"
                for b in bids[k:]
            }
        )
        for entry in data["explain"][str(number)]:
            if entry["reason"] == "selected":
                entry["outcome"] = outcome.get(entry["did"], "no bid (declined or silent)")
        terms = EscrowTerms(
            attempt_chain_id(job_id, number),
            Common(
                client=lc.node.identity.eth_address,
                arbiter=lc.arbiter_address(),
                commit_deadline=commit_deadline,
                deadline=escrow_deadline,
                quorum=k,
            ),
            tuple(EscrowAssignment(b[3].eth_address, b[0], stake_lock) for b in winners),
            consents=tuple(b[3].consent for b in winners),
        )
        won = [b[2] for b in winners]
        for did in won:  # the winners count as busy with our job while it is funded
            self.offered[did] = self.offered.get(did, 0) + 1
        try:
            tx = await lc.opens.open(terms)
        except SettlementError as exc:
            lc.event(job_id, number, "failed", detail={"reason": f"escrow: {exc.reason}"})
            self._free(len(won))
            await trio.sleep(_NO_WORKER_POLL_S)
            return None
        finally:
            self.bidding.discard(job_id)
            for did in won:
                self.offered[did] -= 1
        (terms,) = tx.opened  # now with its escrow ref: every later call names it
        slots = {
            b[2]: WorkerSlot(b[2], b[4], b[3].eth_address, b[0], last_heartbeat=trio.current_time())
            for b in winners
        }
        attempt = Attempt(number, slots, terms)
        data["attempts"][str(number)] = {
            "terms": terms_to_json(terms),
            "escrow_tx": tx.tx,
            "open_gas": tx.gas_used,
            "workers": [
                {"did": s.did, "peer": s.peer, "eth": s.eth, "price": s.price}
                for s in slots.values()
            ],
            "commits": {},
            "reveals": {},
            "verdicts": {},
            "outcome": None,
        }
        if machine.state is State.REQUESTED:
            self._step(job_id, data, machine, Event.FUND, detail={"escrow_tx": tx.tx})
        else:  # a retry: its escrow is on chain, so in the record before anything else
            self._save(job_id, data, machine)
        self._activate(job_id, attempt)
        refused = await self._assign(job_id, number, slots, terms, tx.tx)
        event = Event.ASSIGN if machine.state is State.FUNDED else Event.RETRY
        self._step(
            job_id, data, machine, event, detail={"workers": list(slots), "escrow_tx": tx.tx}
        )
        if refused:
            self._fail_attempt(
                job_id,
                data,
                machine,
                attempt,
                AttemptFailed(Event.WORKER_FAILED, "; ".join(refused)[:300]),
            )
            self._deactivate(job_id, attempt)
            return None
        return attempt

    async def _assign(
        self,
        job_id: bytes,
        number: int,
        slots: dict[str, WorkerSlot],
        terms: EscrowTerms,
        escrow_tx: str,
    ) -> list[str]:
        """Assign the attempt to its workers (each checks the escrow on chain before it
        accepts, and answers the same assignment again with the same Accept); the
        refusals, one line per worker."""
        lc = self.lc
        refused: list[str] = []

        async def assign(slot: WorkerSlot) -> None:
            msg = Assignment(
                job_id=job_id,
                attempt=number,
                worker=slot.did,
                workers=tuple(slots),
                payouts=tuple(s.price for s in slots.values()),
                terms_hash=lc.escrow.terms_hash(terms) if lc.escrow else b"",
                chain_job_id=terms.job_id,
                terms=terms_to_json(terms),
                escrow_tx=bytes.fromhex(escrow_tx.removeprefix("0x")),
            )
            try:
                reply = await lc.node.request(slot.peer, lc.node.seal(msg), timeout=15.0)
            except (C0Error, trio.BrokenResourceError, OSError) as exc:
                refused.append(f"{slot.did}: {exc}")
                return
            if reply is None or not isinstance(reply.message, Accept):
                refused.append(f"{slot.did}: no accept")
                return
            slot.last_heartbeat = trio.current_time()

        async with trio.open_nursery() as nursery:
            for slot in slots.values():
                nursery.start_soon(assign, slot)
        return refused

    def _binding_sig(self) -> bytes:
        """This node's Ethereum signature binding its address to its DID (in every Offer)."""
        if self._binding is None:
            self._binding = self.lc.node.identity.eth_binding().eth_sig
        return self._binding

    def _bid_problem(self, offer: Offer, bound_eth: str, bid: Bid) -> str:
        """Why a bid cannot be used ("" if it can): its payee must be `bound_eth`, the
        address the worker's ad binds to its DID, and with a stake lock its Consent must
        be the worker's signature over the offer's terms at its price (or `open` would
        revert for every job of the batch)."""
        lc = self.lc
        if bound_eth.lower() != bid.eth_address.lower():
            return "bid names a payee other than the worker's bound address"
        if not offer.stake_lock:
            return ""
        if len(bid.consent) != 64 or lc.escrow is None:
            return "bid carries no consent to the stake lock"
        c = lc.escrow.client
        try:
            signer = recover_consent_signer(
                bid.consent, c.chain.chain_id, c.address, offer_consent(offer, bid.price)
            )
        except SettlementError:
            return "malformed consent"
        if signer.lower() != bid.eth_address.lower():
            return "consent not signed by the bidder for these terms"
        return ""

    def _resume_attempt(self, job_id: bytes, data: dict[str, Any], machine: JobMachine) -> Attempt:
        """Rebuild the running attempt from the record after a restart."""
        number = machine.attempt
        info = data["attempts"][str(number)]
        # Heartbeats sent while we were down are lost: grant the workers a few timeouts'
        # grace before calling them dead (they may be retrying their results to us).
        now = trio.current_time() + 2 * self.lc.settings.heartbeat_timeout_s
        slots = {
            w["did"]: WorkerSlot(w["did"], w["peer"], w["eth"], w["price"], last_heartbeat=now)
            for w in info["workers"]
        }
        for did, commit in info["commits"].items():
            slots[did].commitment = bytes.fromhex(commit)
        for did, raw in info["reveals"].items():
            slots[did].reveal = open_envelope(bytes.fromhex(raw), now=None)
        attempt = Attempt(number, slots, terms_from_json(info["terms"]))
        self._activate(job_id, attempt)
        log.info("resumed attempt %s of %s", number, job_id_text(job_id))
        self.lc.event(job_id, number, "resumed", detail={"state": str(machine.state)})
        return attempt

    # ------------------------------------------------------------ watching the workers
    async def _watch(
        self,
        job_id: bytes,
        spec: JobSpec,
        data: dict[str, Any],
        machine: JobMachine,
        attempt: Attempt,
        deadline_ms: int,
    ) -> None:
        s = self.lc.settings
        while True:
            slots = list(attempt.slots.values())
            failed = [x for x in slots if x.failure]
            if failed:
                raise AttemptFailed(
                    Event.WORKER_FAILED,
                    "; ".join(f"{x.did[-8:]}: {x.failure}" for x in failed),
                    tuple(x.did for x in failed),
                )
            if all(x.reveal is not None for x in slots):
                if machine.state is State.ASSIGNED:  # running and submitted: one save
                    self._step(job_id, data, machine, Event.START, Event.SUBMIT)
                elif machine.state is State.RUNNING:
                    self._step(job_id, data, machine, Event.SUBMIT)
                await self._verify(job_id, spec, data, machine, attempt)
                return
            if machine.state is State.ASSIGNED and any(x.started for x in slots):
                self._step(job_id, data, machine, Event.START)
            now = trio.current_time()
            if (
                len(slots) > 1
                and attempt.committed()
                and (attempt.called_at is None or now - attempt.called_at >= _RECALL_S)
            ):  # called once every commit is in, and again while a reveal is missing
                attempt.called_at = now
                self.lc.spawn(self._call_reveals, job_id, attempt)
            stale = [
                x
                for x in slots
                if x.reveal is None
                and x.commitment is None
                and now - x.last_heartbeat > s.heartbeat_timeout_s
            ]
            if stale:
                event = (
                    Event.START_TIMEOUT
                    if machine.state is State.ASSIGNED
                    else (Event.HEARTBEAT_TIMEOUT)
                )
                raise AttemptFailed(
                    event,
                    f"no heartbeat from {', '.join(x.did[-8:] for x in stale)}",
                    tuple(x.did for x in stale),
                )
            if now_ms() >= deadline_ms:
                raise AttemptFailed(Event.DEADLINE, "deadline passed")
            with trio.move_on_after(0.5):
                await attempt.changed.wait()

    def _fail_attempt(
        self,
        job_id: bytes,
        data: dict[str, Any],
        machine: JobMachine,
        attempt: Attempt,
        failure: AttemptFailed,
    ) -> None:
        lc = self.lc
        info = data["attempts"].get(str(attempt.number))
        if info is not None:
            info["outcome"] = {"failed": failure.reason, "culprits": list(failure.culprits)}
        data["tried"] = sorted(set(data["tried"]) | set(failure.culprits))
        if failure.event in (Event.HEARTBEAT_TIMEOUT, Event.START_TIMEOUT):
            # Unresponsive workers lose reputation. A worker that reported a failed run
            # does not: the input may be the client's fault (wrong results are counted
            # from verdicts instead).
            for did in failure.culprits:
                lc.add_evidence(
                    did, data["spec"]["job_class"], "timeout", job_id, f"attempt:{attempt.number}"
                )
        event = failure.event
        if event not in machine.allowed():
            event = Event.WORKER_FAILED if Event.WORKER_FAILED in machine.allowed() else event
        if event in machine.allowed():
            self._step(job_id, data, machine, event, detail={"reason": failure.reason})
        lc.refunds.add(attempt.terms, job_id, attempt.number)

    # ------------------------------------------------------------ handlers (from workers)
    def _slot(self, signed: SignedMessage, job_id: bytes, attempt: int) -> WorkerSlot:
        att = self.active.get((job_id, attempt))
        if att is not None and signed.sender in att.slots:
            return att.slots[signed.sender]
        rec = self.lc.node.store.get_job(job_id)
        if rec is not None and rec.role == "client" and State(rec.state) not in TERMINAL:
            resumable = rec.state in (State.ASSIGNED, State.RUNNING, State.SUBMITTED)
            if resumable and int(rec.data.get("attempt", 0)) == attempt and att is None:
                # Restarting: the attempt is being rebuilt from the record. Ask again.
                raise C0Error("resuming this job, try again", code="retry_later")
        # A late message for an attempt we gave up, or a worker we never assigned: refused,
        # not penalised (a slow honest worker sends these too).
        raise C0Error("no such job, attempt or worker here", code="unknown_job")

    async def on_heartbeat(self, signed: SignedMessage, peer: str) -> None:
        hb = signed.message
        assert isinstance(hb, Heartbeat)
        slot = self._slot(signed, hb.job_id, hb.attempt)
        slot.last_heartbeat = trio.current_time()
        if not slot.started:
            slot.started = True
            self.active[(hb.job_id, hb.attempt)].poke()
        return None

    async def on_decline(self, signed: SignedMessage, peer: str) -> None:
        """A worker reporting that its execution failed (the decline carries the code)."""
        msg = signed.message
        assert isinstance(msg, Decline)
        slot = self._slot(signed, msg.job_id, msg.attempt)
        slot.failure = f"{msg.reason}: {msg.detail}"[:300]
        self.active[(msg.job_id, msg.attempt)].poke()
        return None

    async def on_commit(self, signed: SignedMessage, peer: str) -> None:
        msg = signed.message
        assert isinstance(msg, ResultCommit)
        slot = self._slot(signed, msg.job_id, msg.attempt)
        if slot.commitment is not None and slot.commitment != msg.commitment:
            raise PeerProtocolError("protocol_violation", "a second, different commitment")
        if slot.commitment is None:
            # The worker no longer counts this job against its capacity once its result is
            # in (job-lifecycle.md), so neither do we. (A re-sent commit frees nothing.)
            self._result_in(slot)
        slot.commitment = msg.commitment
        slot.started = True
        self._persist_submission(
            msg.job_id, msg.attempt, slot.did, {"commits": msg.commitment.hex()}
        )
        self.active[(msg.job_id, msg.attempt)].poke()
        return None

    async def on_reveal(self, signed: SignedMessage, peer: str) -> None:
        msg = signed.message
        assert isinstance(msg, ResultReveal)
        slot = self._slot(signed, msg.job_id, msg.attempt)
        attempt = self.active[(msg.job_id, msg.attempt)]
        derived = False
        if slot.commitment is None:
            if len(attempt.slots) != 1:
                raise PeerProtocolError("protocol_violation", "reveal before commit")
            # The attempt's only worker: nobody can copy its result, so its reveal stands
            # for its commit (job-lifecycle.md); the commitment is kept as if it was sent.
            slot.commitment = commit_hash(msg.result_hash, slot.eth, msg.salt)
            slot.started = True
            self._result_in(slot)  # its result is in: the worker no longer counts the job
            derived = True
        elif not attempt.committed() and not await self._commit_window_over(attempt):
            # Reveals follow once every commit is in (we call for them) or the commit
            # deadline has passed: an earlier one could only come from a worker that did
            # not wait for our call.
            raise PeerProtocolError("protocol_violation", "reveal before every commit is in")
        if commit_hash(msg.result_hash, slot.eth, msg.salt) != slot.commitment:
            job_class = self.records.get(msg.job_id, {}).get("spec", {}).get("job_class", "")
            self.lc.add_evidence(slot.did, job_class, "verify_failed", msg.job_id, "bad_reveal")
            raise PeerProtocolError("protocol_violation", "reveal does not match the commitment")
        try:
            digest = result_digest(msg.manifest)
        except C0Error:
            digest = b""
        if digest != msg.result_hash:
            raise PeerProtocolError("protocol_violation", "result hash does not match manifest")
        slot.reveal = signed
        kept = {"reveals": signed.raw.hex()}
        if derived:  # kept as if it was sent, in the same save
            assert slot.commitment is not None
            kept["commits"] = slot.commitment.hex()
        with self.lc.node.store.transaction():
            self._persist_submission(msg.job_id, msg.attempt, slot.did, kept)
            self.lc.store_evidence(signed)
        attempt.poke()
        return None

    async def _commit_window_over(self, attempt: Attempt) -> bool:
        escrow = self.lc.escrow
        return escrow is None or await escrow.now() >= attempt.terms.common.commit_deadline

    async def _call_reveals(self, job_id: bytes, attempt: Attempt) -> None:
        """Every commit of the attempt is in: ask each worker that has not revealed."""
        call = RevealCall(job_id=job_id, attempt=attempt.number)
        async with trio.open_nursery() as nursery:
            for slot in attempt.slots.values():
                if slot.reveal is None:
                    nursery.start_soon(
                        functools.partial(self.lc.send_quietly, slot.peer, call, limit_s=5.0)
                    )

    def _persist_submission(
        self, job_id: bytes, attempt: int, did: str, kept: dict[str, str]
    ) -> None:
        """Keep a worker's submissions (`kept`: kind -> value) in the job's record."""
        # Write into the record the job's task holds, so its next save keeps this too.
        data = self.records.get(job_id)
        if data is not None:
            state = self.lc.node.store.job_state(job_id)  # the state column only
        else:
            rec = self.lc.node.store.get_job(job_id)
            state, data = (rec.state, rec.data) if rec is not None else (None, None)
        if state is None or data is None:
            return
        info = data["attempts"].get(str(attempt))
        if info is not None:
            for kind, value in kept.items():
                info[kind][did] = value
            self.lc.store_job(job_id, "client", state, data)

    # ------------------------------------------------------------ verification
    async def _materialize(
        self,
        job_id: bytes,
        slot: WorkerSlot,
        check: Callable[[Path], Any] | None = None,
    ) -> tuple[Path, Any]:
        """Fetch a worker's artifacts by hash and lay them out as a result folder (then,
        in the same thread, `check` it)."""
        msg = _reveal(slot)
        folder = self.results_root / job_id_text(job_id) / str(msg.attempt) / slot.did[-16:]
        return await materialize(
            self.lc.node.blobs,
            slot.peer,
            msg.manifest,
            folder,
            check,
            sync=self.lc.node.store.full_sync,
        )

    async def _verify(
        self,
        job_id: bytes,
        spec: JobSpec,
        data: dict[str, Any],
        machine: JobMachine,
        attempt: Attempt,
    ) -> None:
        lc = self.lc
        template = template_of(spec)
        inputs = {name: Path(p) for name, p in data["inputs"].items()}
        folders: dict[str, Path | None] = {}
        reports: dict[str, dict[str, Any]] = {}

        def check(folder: Path) -> Any:
            # its own exceptions come back as a value: only fetching errors mean "could not
            # fetch" below; a failing check propagates as before
            try:
                return verify_result(template, folder, inputs=inputs)
            except Exception as exc:
                return exc

        for did, slot in attempt.slots.items():
            try:
                folders[did], report = await self._materialize(job_id, slot, check)
            except (C0Error, trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                log.info("artifacts of %s unavailable: %s", did, exc)
                folders[did] = None
                reports[did] = {
                    "passed": False,
                    "checks": [
                        {"name": "artifacts", "status": "fail", "detail": "could not fetch"}
                    ],
                }
                continue
            if isinstance(report, Exception):
                raise report
            reports[did] = report.to_json()
        dids = list(attempt.slots)
        # Agreement: equal digests agree outright; different ones must pass the class's
        # comparison (exact on equal runtimes, PSNR otherwise) or neither is trusted.
        digests = {d: _reveal(attempt.slots[d]).result_hash for d in dids}
        ok = [d for d in dids if reports[d]["passed"]]
        for i, a in enumerate(ok):
            for b in ok[i + 1 :]:
                if digests[a] == digests[b]:
                    continue
                fa, fb = folders[a], folders[b]
                assert fa is not None
                assert fb is not None
                pair = await trio.to_thread.run_sync(
                    lambda x=fa, y=fb: verify_result(template, x, inputs=inputs, compare=y)
                )
                if not pair.passed:
                    for d in (a, b):
                        reports[d] = pair.to_json()
        passing = [d for d in dids if reports[d]["passed"]]
        failing = [d for d in dids if not reports[d]["passed"]]
        info = data["attempts"][str(attempt.number)]
        with lc.node.store.transaction():  # every verdict, its event and evidence: one commit
            for did in dids:
                reveal = _reveal(attempt.slots[did])
                checks = {c["name"]: c["status"] != "fail" for c in reports[did]["checks"]}
                verdict = Verdict(
                    job_id=job_id,
                    attempt=attempt.number,
                    worker=did,
                    result_hash=reveal.result_hash,
                    passed=all(checks.values()) and did in passing,
                    checks=checks or {"result": False},
                    reason="; ".join(
                        f"{c['name']}: {c['detail']}"
                        for c in reports[did]["checks"]
                        if c["status"] == "fail"
                    )[:500]
                    or "all checks passed",
                )
                signed = lc.node.seal(verdict, ttl_ms=86_400_000)
                lc.store_own_evidence(signed, verdict, lc.node.did)
                info["verdicts"][did] = {
                    "passed": verdict.passed,
                    "reason": verdict.reason,
                    "result_hash": reveal.result_hash.hex(),
                    "envelope": signed.hex(),
                }
                lc.event(
                    job_id,
                    attempt.number,
                    "verdict",
                    worker=did,
                    artifact=reveal.result_hash,
                    detail={"passed": verdict.passed},
                )
                lc.add_evidence(
                    did,
                    spec.job_class,
                    "completed" if verdict.passed else "verify_failed",
                    job_id,
                    f"verdict:{attempt.number}",
                    runtime_ms=_runtime_ms(reveal.manifest),
                )
        if not passing:
            info["outcome"] = {"failed": "no result passed verification", "culprits": failing}
            raise AttemptFailed(Event.VERIFY_FAIL, "no result passed verification", tuple(failing))
        info["outcome"] = {"passed": passing, "failed": failing}
        data["result"] = {
            "attempt": attempt.number,
            "worker": passing[0],
            "folder": str(folders[passing[0]]),
        }
        self._step(  # the outcome and the new state: one save
            job_id, data, machine, Event.VERIFY_PASS, detail={"passed": passing, "failed": failing}
        )
        if failing:
            # Someone did the work wrong: the escrow cannot be released whole. Freeze it and
            # let the arbiter named in the terms pay the honest and slash the rest.
            await lc.arbitration.open_dispute(
                job_id, data, machine, attempt, passing, failing, self
            )

    # ------------------------------------------------------------ settlement
    async def _settle(self, job_id: bytes, data: dict[str, Any], machine: JobMachine) -> None:
        lc = self.lc
        info = data["attempts"][str(machine.attempt)]
        terms = terms_from_json(info["terms"])
        if lc.arbitration.requested(job_id):
            return  # `c0 job dispute` asked first: no release (`_drive` files the dispute)
        if (info.get("outcome") or {}).get("failed") and "dispute" not in info:
            # A result of this attempt failed verification and its dispute did not land
            # (refused, the chain down): never released; the dispute is filed again.
            await lc.arbitration.dispute_failed(job_id, data, machine, self)
            return
        released = await lc.releases.release(terms)
        if released is None:
            if lc.arbitration.requested(job_id):
                return  # taken back from the batch for `c0 job dispute`
            # Refused (logged). Closed on chain already (released before a restart, claimed
            # by the workers): record that, never release again.
            if lc.escrow is not None and await lc.escrow.status(terms) != STATUS_OPEN:
                await self._read_chain_first(job_id, data, machine)
                if machine.state is State.VERIFIED:
                    raise C0Error(
                        f"job {job_id_text(job_id)}: its escrow closed on chain unpaid",
                        code="escrow_closed",
                    )
                return
            await trio.sleep(1.0)  # the record stays verified: try again
            return
        tx, signature = released
        info["release_tx"] = tx.tx
        info["release_gas_share"] = tx.gas_used
        self._step(job_id, data, machine, Event.RELEASE, detail={"tx": tx.tx})
        await lc.send_receipts(job_id, terms, info, signature)

    async def _give_up(self, job_id: bytes, data: dict[str, Any], machine: JobMachine) -> None:
        """No attempt left or the deadline passed: refund what was funded, or cancel."""
        lc = self.lc
        if machine.state is State.REQUESTED:
            self._step(job_id, data, machine, Event.DEADLINE, detail={"reason": "no workers"})
            return
        if machine.state is State.FUNDED or machine.state in (
            State.ASSIGNED,
            State.RUNNING,
            State.SUBMITTED,
        ):
            self._step(job_id, data, machine, Event.DEADLINE)
        for number, info in data["attempts"].items():
            lc.refunds.add(terms_from_json(info["terms"]), job_id, int(number))
        await lc.refunds.wait_all(job_id, data)
        self._step(job_id, data, machine, Event.REFUND)

    # ------------------------------------------------------------ views
    def fetch_result(self, job_id: bytes, dest: Path) -> list[dict[str, Any]]:
        rec = self.lc.node.store.get_job(job_id)
        if rec is None or rec.role != "client":
            raise UserError(f"no job {job_id_text(job_id)} submitted from this node")
        result = rec.data.get("result")
        if rec.state != State.SETTLED or not result:
            raise UserError(f"job {job_id_text(job_id)} is {rec.state}, not settled")
        folder = Path(result["folder"])
        dest.mkdir(parents=True, exist_ok=True)
        from node.executors.manifest import hash_file, read_manifest

        manifest = read_manifest(folder)
        copied = []
        for artifact in manifest["artifacts"]:
            src = folder / artifact["name"]
            digest, size = hash_file(src)
            if digest != artifact["sha256"] or size != artifact["size"]:
                raise UserError(f"artifact {artifact['name']} does not match its hash")
            shutil.copyfile(src, dest / artifact["name"])
            copied.append({"name": artifact["name"], "sha256": digest, "size": size})
        shutil.copyfile(folder / MANIFEST_NAME, dest / MANIFEST_NAME)
        return copied


def _reveal(slot: WorkerSlot) -> ResultReveal:
    assert slot.reveal is not None
    assert isinstance(slot.reveal.message, ResultReveal)
    return slot.reveal.message


def _runtime_ms(manifest: dict[str, Any]) -> int | None:
    metrics = manifest.get("metrics") or {}
    value = metrics.get("total_ms") or metrics.get("wall_ms")
    if isinstance(value, int | float):
        return int(value)
    return None
