"""Disputes: the client freezes an escrow whose workers disagree (or, with `c0 job
dispute`, that of a job of its whose results are in, before it releases it); the arbiter
named in the terms re-verifies every result itself from signed evidence and splits the
escrow.

The arbiter keeps each case in its database (`arbiter_cases`) from the moment its
evidence checks out and its escrow is found disputed on chain, before it judges, until
the case ends, and takes up every unfinished case again when it restarts
(spec/job-lifecycle.md, "The arbiter"; the split it rules: spec/settlement.md,
"Arbitration")."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from node.app import now_ms
from node.executors.manifest import spec_from_json
from node.lifecycle.escrow import attempt_chain_id, terms_from_json, terms_to_json
from node.lifecycle.results import materialize, template_of
from node.net.negotiate import RemoteRefused
from node.verification import verify_result
from protocol import codec
from protocol.consent import check_terms_shape
from protocol.envelope import SignedMessage, open_envelope
from protocol.errors import C0Error, PeerProtocolError, UserError
from protocol.jobs import JobSpec, job_id_text
from protocol.messages import Bid, DisputeOpen, ResultReveal
from protocol.settlement import (
    STATUS_DISPUTED,
    STATUS_OPEN,
    STATUS_SETTLED,
    STATUS_UNKNOWN,
    ChainUnavailable,
    EscrowTerms,
    SettlementError,
)
from protocol.state import TERMINAL, Event, JobMachine, State

if TYPE_CHECKING:
    from node.lifecycle.client import Attempt, ClientRole
    from node.lifecycle.service import Lifecycle

__all__ = ["Arbitration", "Case"]

log = logging.getLogger("c0.arbiter")
_MAX_BUNDLE = 4 << 20
# A case that keeps failing for a reason that may pass (its evidence cannot be fetched,
# the escrow is not disputed yet, `resolve` reverts while the escrow is still disputed)
# is tried this many times, with a growing pause, then recorded as failed. A DisputeOpen
# sent again for a failed case opens it again.
_MAX_TRIES = 5
_RETRY_S = 1.0
# Attempts of one job the arbiter looks for when it matches an escrow key to its job.
_MAX_ATTEMPT_NUMBER = 256
# `unreleased` evidence while another attempt of the job is still open on chain: the
# arbiter waits for that attempt to close (released, claimed, refunded...), polling this
# often, until this share of the ruling period is left.
_SUPERSEDE_POLL_S = 2.0
_RULING_MARGIN = 4
# The client side: while it waits for the ruling it sends its DisputeOpen again this
# often (the arbiter may have been down or unknown; a case it holds ignores the repeat).
_RESEND_S = 30.0
# Disputes of one client the arbiter takes up at once before their evidence checks out.
_MAX_UNRECORDED_PER_CLIENT = 8

# The statuses of a case. `open`: to be judged; `judged`: the split is decided and kept,
# `resolve` is still to be sent; the rest are final.
OPEN, JUDGED = "open", "judged"
RESOLVED = "resolved"  # this arbiter's `resolve` split the escrow
CLOSED = "closed"  # the escrow closed without it (settled by others, lapsed, too late)
REFUSED = "refused"  # the evidence is not a case this arbiter can rule on
DUPLICATE = "duplicate"  # another case of this arbiter holds the same escrow
FAILED = "failed"  # _MAX_TRIES passed without a ruling
UNFINISHED = (OPEN, JUDGED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS arbiter_cases (
    job_id BLOB NOT NULL, evidence BLOB NOT NULL, size INTEGER NOT NULL,
    client TEXT NOT NULL, peer TEXT NOT NULL, reason TEXT NOT NULL,
    chain_job_id BLOB, status TEXT NOT NULL, tries INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL DEFAULT '{}', created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, evidence)
);
CREATE INDEX IF NOT EXISTS arbiter_cases_escrow ON arbiter_cases (chain_job_id);
"""
_COLUMNS = "job_id, evidence, size, client, peer, reason, chain_job_id, status, tries, data"


@dataclass
class Case:
    """One DisputeOpen as the arbiter keeps it: `data` holds what it learnt (the terms and
    attempt once the evidence is read, the split once judged, the tx, a note)."""

    job_id: bytes
    evidence: bytes  # SHA-256 of the evidence bundle
    size: int
    client: str  # the DID that sent the DisputeOpen (the spec's client)
    peer: str  # where the evidence, inputs and artifacts are fetched from
    reason: str
    chain_job_id: bytes | None = None
    status: str = OPEN
    tries: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    recorded: bool = False  # in the database (once its escrow is found disputed)

    @property
    def key(self) -> tuple[bytes, bytes]:
        return self.job_id, self.evidence


class _Refused(Exception):
    """The evidence makes no case (the sender's fault): never retried."""


class _Closed(Exception):
    """The escrow is beyond this arbiter's reach (closed, or too late): never retried."""


class _Wait(Exception):
    """Not yet: taken up again shortly, not counted as a try."""


@dataclass
class DisputeRequest:
    """`c0 job dispute` asking a client job's task to dispute (the task files it)."""

    reason: str
    done: trio.Event = field(default_factory=trio.Event)
    result: dict[str, Any] | None = None
    error: str = ""


class Arbitration:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.rulings: dict[bytes, dict[str, Any]] = {}  # job id -> the last ruling sent
        self.requests: dict[bytes, DisputeRequest] = {}  # client side: `c0 job dispute`
        self._running: set[tuple[bytes, bytes]] = set()  # cases with a task now
        # Cases under way not yet recorded (their evidence unread), by sender: bounded per
        # client, so a flood of DisputeOpens citing nothing holds no more than a few tasks.
        self._unrecorded: dict[tuple[bytes, bytes], str] = {}
        lc.node.store.db.executescript(_SCHEMA)

    # ------------------------------------------------------------ client side
    def _bundle(
        self,
        job_id: bytes,
        data: dict[str, Any],
        info: dict[str, Any],
        terms: EscrowTerms,
        reveals: list[bytes],
        *,
        unreleased: bool = False,
    ) -> dict[str, Any]:
        """The evidence of one attempt: the job's spec, the terms, the workers' signed
        bids (binding each DID to its payee) and the reveals the client holds."""
        lc = self.lc
        workers = [w["did"] for w in info.get("workers", [])]
        bids = [lc.evidence_envelope("bid", job_id, did) for did in workers]
        bundle: dict[str, Any] = {
            "spec": data["spec"],
            "terms": terms_to_json(terms),
            "workers": workers,
            "bids": [b for b in bids if b is not None],
            "reveals": reveals,
            "inputs": {n: r["sha256"] for n, r in data["spec"]["inputs"].items()},
        }
        if unreleased:
            bundle["unreleased"] = True
        return bundle

    async def _send_open(
        self, job_id: bytes, terms: EscrowTerms, digest: bytes, size: int, reason: str
    ) -> bool:
        """Send the DisputeOpen to the arbiter named in the terms; False if it is unknown
        or unreachable (the client sends it again while it waits for the ruling)."""
        lc = self.lc
        arbiter_peer = lc.peer_of_eth(terms.common.arbiter)
        if arbiter_peer is None:
            log.warning("arbiter %s is not among the known nodes", terms.common.arbiter)
            return False
        msg = DisputeOpen(
            job_id=job_id, reason=reason[:1024] or "disputed", evidence=(digest,), sizes=(size,)
        )
        return await lc.send_quietly(arbiter_peer, msg)

    async def _file(
        self,
        job_id: bytes,
        data: dict[str, Any],
        machine: JobMachine,
        info: dict[str, Any],
        terms: EscrowTerms,
        bundle: dict[str, Any],
        reason: str,
        client: ClientRole,
        **kept: Any,
    ) -> tuple[str, bytes, bool]:
        """Dispute on chain (a refusal raises SettlementError and changes nothing), then
        `dispute` → `disputed` with the evidence kept in the record, then the
        DisputeOpen. Returns (the dispute tx, the bundle's digest, whether it was sent)."""
        lc = self.lc
        assert lc.escrow is not None
        raw = codec.encode(bundle)
        digest = lc.node.blobs.put_bytes(raw)
        tx = await lc.escrow.call(lc.escrow.client.dispute, terms)
        info["dispute"] = {
            "tx": tx.tx,
            "bundle": digest.hex(),
            "size": len(raw),
            "reason": reason,
            **kept,
        }
        client._step(job_id, data, machine, Event.DISPUTE, detail={"reason": reason, "tx": tx.tx})
        sent = await self._send_open(job_id, terms, digest, len(raw), reason)
        return tx.tx, digest, sent

    async def open_dispute(
        self,
        job_id: bytes,
        data: dict[str, Any],
        machine: JobMachine,
        attempt: Attempt,
        passing: list[str],
        failing: list[str],
        client: ClientRole,
    ) -> None:
        info = data["attempts"][str(attempt.number)]
        reveals = [s.reveal.raw for s in attempt.slots.values() if s.reveal]
        bundle = self._bundle(job_id, data, info, attempt.terms, reveals)
        reason = f"results of {len(failing)} worker(s) failed verification"
        try:
            await self._file(
                job_id, data, machine, info, attempt.terms, bundle, reason, client, failing=failing
            )
        except SettlementError as exc:
            log.warning("dispute refused: %s", exc.message)

    async def dispute_failed(
        self, job_id: bytes, data: dict[str, Any], machine: JobMachine, client: ClientRole
    ) -> None:
        """A verified attempt one of whose results failed, with no dispute on record (it
        was refused, or the chain was down): its escrow is never released, only disputed.
        Filed again (the job's task calls this at each step) while the escrow is open and
        the challenge window lasts; past it, the job expires and its escrows go to the
        refund keeper; closed on chain meanwhile, the chain's outcome is recorded."""
        lc = self.lc
        assert lc.escrow is not None
        info = data["attempts"][str(machine.attempt)]
        terms = terms_from_json(info["terms"])
        failing = list(info["outcome"]["failed"])
        reveals = [bytes.fromhex(r) for r in info.get("reveals", {}).values()]
        bundle = self._bundle(job_id, data, info, terms, reveals)
        reason = f"results of {len(failing)} worker(s) failed verification"
        try:
            await self._file(
                job_id, data, machine, info, terms, bundle, reason, client, failing=failing
            )
            return
        except ChainUnavailable:
            raise  # the job's task waits for the chain and comes back here
        except SettlementError as exc:
            log.warning("dispute of %s refused: %s", job_id_text(job_id), exc.message)
        status = await lc.escrow.status(terms)
        if status == STATUS_OPEN:
            challenge, _ = await lc.escrow.read(lc.escrow.client.periods)
            if await lc.escrow.now() < terms.common.deadline + challenge:
                await trio.sleep(2.0)  # pacing of the next filing, bounded by the window
                return
        else:
            await client._read_chain_first(job_id, data, machine)
            if machine.state is not State.VERIFIED:
                return
        detail = {"reason": "a failed result could not be disputed in time; never released"}
        client._step(job_id, data, machine, Event.DEADLINE, detail=detail)

    async def dispute_unreleased(self, job_id: bytes, attempt: int, terms: EscrowTerms) -> None:
        """Evidence for a dispute the refund keeper opened on an attempt this client did not
        accept (its result failed verification, or the attempt was abandoned) where a result
        reached quorum on chain anyway: the job's spec, the terms, the bids and whatever
        reveals the client holds, marked `unreleased`. The arbiter honours the mark only
        if another attempt of the job was paid on chain (spec/settlement.md, "Arbitration")
        and then pays nobody; it slashes a worker whose revealed result it finds wrong."""
        lc = self.lc
        rec = lc.node.store.get_job(job_id)
        if rec is None:
            return
        info = rec.data.get("attempts", {}).get(str(attempt), {})
        reveals = [bytes.fromhex(r) for r in info.get("reveals", {}).values()]
        bundle = self._bundle(job_id, rec.data, info, terms, reveals, unreleased=True)
        raw = codec.encode(bundle)
        digest = lc.node.blobs.put_bytes(raw)
        lc.event(job_id, attempt, "disputed", detail={"bundle": digest.hex(), "unreleased": True})
        reason = f"attempt {attempt} was not accepted, yet a result reached quorum on chain"
        await self._send_open(job_id, terms, digest, len(raw), reason)

    async def await_ruling(
        self, job_id: bytes, data: dict[str, Any], machine: JobMachine, client: ClientRole
    ) -> None:
        """Wait until the escrow is settled: by the arbiter's ruling, or, if none comes by
        the ruling deadline, by the refund keeper's `lapse` (every party's own funds back).
        The DisputeOpen goes again every _RESEND_S meanwhile; a dispute this client did
        not file (found on chain when it picked the job up) gets its evidence sent."""
        lc = self.lc
        assert lc.escrow is not None
        info = data["attempts"][str(machine.attempt)]
        terms = terms_from_json(info["terms"])
        lc.refunds.add(terms, job_id, machine.attempt)  # lapses it if the arbiter is silent
        dispute: dict[str, Any] = info.get("dispute") or {}
        resend_at = trio.current_time() + _RESEND_S
        if not dispute:  # found disputed on chain (after a restart): our evidence too
            reveals = [bytes.fromhex(r) for r in info.get("reveals", {}).values()]
            raw = codec.encode(self._bundle(job_id, data, info, terms, reveals))
            dispute = {
                "tx": None,
                "bundle": lc.node.blobs.put_bytes(raw).hex(),
                "size": len(raw),
                "reason": f"the escrow of attempt {machine.attempt} is disputed",
            }
            info["dispute"] = dispute
            client._save(job_id, data, machine)
            resend_at = trio.current_time()  # sent at once
        undisputed = 0  # reads finding no disputed escrow (the dispute never landed)
        while undisputed < 60:
            try:
                status = await lc.escrow.status(terms)
                if status == STATUS_SETTLED:
                    break
                undisputed = 0 if status == STATUS_DISPUTED else undisputed + 1
            except ChainUnavailable as exc:
                log.warning("ruling of %s: %s", job_id_text(job_id), exc.message)
            if dispute.get("size") and trio.current_time() >= resend_at:
                resend_at = trio.current_time() + _RESEND_S
                reason = str(dispute.get("reason") or "disputed")
                digest = bytes.fromhex(dispute["bundle"])
                await self._send_open(job_id, terms, digest, int(dispute["size"]), reason)
            await trio.sleep(0.5)  # the chain's clock moves in whole seconds
        events = await lc.chain_events_for(terms.job_id)
        resolved = [e for e in events if e["event"] == "resolved"]
        info["ruling"] = resolved[-1] if resolved else None
        paid = bool(resolved) and int(resolved[-1].get("to_workers", 0)) > 0
        event = Event.RULING_PAY if paid and machine.verified else Event.RULING_REFUND
        for ev in events:
            if ev["event"] == "slashed":
                worker = lc.did_of_eth(str(ev.get("worker", "")))
                if worker:
                    lc.add_evidence(
                        worker, data["spec"]["job_class"], "slashed", job_id, f"escrow:{ev['tx']}"
                    )
        client._step(job_id, data, machine, event, detail={"ruling": info["ruling"]})

    # ------------------------------------------------------------ `c0 job dispute`
    async def request_dispute(
        self, job_id: bytes, reason: str, limit_s: float = 90.0
    ) -> dict[str, Any]:
        """Dispute a job this node is the client of, from `c0 job dispute`: the job's own
        task files it (dispute on chain, `disputed`, the evidence to the arbiter) at its
        next step, so nothing else writes its record and no release follows; a release
        queued but not yet sent is taken back. Then the task waits for the ruling.
        Refused (UserError) for a job of another node, one that is not submitted or
        verified (settled, refunded, disputed, failed, still running), an escrow already
        settled or disputed on chain, or past the challenge window."""
        lc = self.lc
        text = job_id_text(job_id)
        rec = lc.node.store.get_job(job_id)
        if rec is None or rec.role != "client":
            raise UserError(
                f"job {text} was not submitted from this node: only its client disputes"
            )
        if lc.escrow is None:
            raise UserError("this node has no chain configured: nothing to dispute")
        state = State(rec.state)
        if state is State.DISPUTED:
            raise UserError(f"job {text} is disputed already")
        if state in TERMINAL:
            raise UserError(f"job {text} is {state}: nothing left to dispute")
        if state not in (State.SUBMITTED, State.VERIFIED):
            raise UserError(
                f"job {text} is {state}: only a job whose results are in (submitted or "
                "verified) is disputed; a failed attempt's escrow is refunded, or disputed "
                "by this node if a result reached quorum on chain"
            )
        info = rec.data["attempts"][str(rec.data["attempt"])]
        terms = terms_from_json(info["terms"])
        try:
            status = await lc.escrow.status(terms)
            challenge, _ = await lc.escrow.read(lc.escrow.client.periods)
            now = await lc.escrow.now()
        except ChainUnavailable as exc:
            raise UserError(f"the chain cannot be reached: {exc.detail}") from None
        if status == STATUS_SETTLED:
            raise UserError(f"job {text}: its escrow is settled on chain already")
        if status == STATUS_DISPUTED:
            raise UserError(f"job {text}: its escrow is disputed on chain already")
        if status != STATUS_OPEN:
            raise UserError(f"job {text}: no open escrow holds its terms")
        if now >= terms.common.deadline + challenge:
            raise UserError(
                f"job {text}: the challenge window closed at chain time "
                f"{terms.common.deadline + challenge}"
            )
        if job_id in self.requests:
            raise UserError(f"job {text}: a dispute is being filed already")
        request = DisputeRequest(reason)
        # No await from here to the withdrawal: the task either sees the request before it
        # queues a release (and queues none), or its queued release is taken back here.
        self.requests[job_id] = request
        lc.releases.withdraw(terms.job_id)
        if job_id not in lc.client.records:  # no task holds the job: start one
            lc.spawn(lc.client.drive, job_id)
        try:
            with trio.move_on_after(limit_s):
                while not request.done.is_set():
                    with trio.move_on_after(0.5):
                        await request.done.wait()
                    if not request.done.is_set() and job_id not in lc.client.records:
                        await trio.sleep(0.1)  # a task spawned just now has not begun
                        if job_id in lc.client.records or request.done.is_set():
                            continue
                        now_state = lc.node.store.job_state(job_id)
                        request.error = f"job {text} is {now_state}: nothing left to dispute"
                        break
        finally:
            if self.requests.get(job_id) is request:
                del self.requests[job_id]
        if request.error:
            raise UserError(request.error)
        if request.result is None:
            raise UserError(f"job {text}: its task did not take the dispute up in {limit_s} s")
        return request.result

    def requested(self, job_id: bytes) -> bool:
        """A `c0 job dispute` waits for this job's task (client.py, `_drive`, `_settle`)."""
        return job_id in self.requests

    async def dispute_on_request(
        self, job_id: bytes, data: dict[str, Any], machine: JobMachine, client: ClientRole
    ) -> None:
        """The job's task, between steps: file the dispute `request_dispute` asked for."""
        request = self.requests.pop(job_id, None)
        if request is None:
            return
        try:
            if Event.DISPUTE not in machine.allowed():
                request.error = f"job {job_id_text(job_id)} is {machine.state}: nothing to dispute"
                return
            number = machine.attempt
            info = data["attempts"][str(number)]
            terms = terms_from_json(info["terms"])
            reveals = [bytes.fromhex(r) for r in info.get("reveals", {}).values()]
            bundle = self._bundle(job_id, data, info, terms, reveals)
            tx, digest, sent = await self._file(
                job_id, data, machine, info, terms, bundle, request.reason, client, by="user"
            )
            request.result = {
                "job_id": job_id_text(job_id),
                "state": str(machine.state),
                "attempt": number,
                "tx": tx,
                "evidence": digest.hex(),
                "arbiter": terms.common.arbiter,
                "arbiter_notified": sent,
            }
        except SettlementError as exc:
            request.error = f"the escrow refused the dispute: {exc.reason}"
        finally:
            request.done.set()

    # ------------------------------------------------------------ arbiter side
    async def on_dispute(self, signed: SignedMessage, peer: str) -> None:
        msg = signed.message
        assert isinstance(msg, DisputeOpen)
        if len(msg.evidence) != 1:
            raise PeerProtocolError("protocol_violation", "one evidence bundle expected")
        if not 0 < msg.sizes[0] <= _MAX_BUNDLE:
            raise PeerProtocolError("oversized", "dispute bundle too large")
        if self.lc.settings.behaviour == "silent_arbiter":
            return None  # the adversary of faults.py: takes the dispute, never rules
        if self.lc.escrow is None:
            raise C0Error("this node settles on no chain", code="unknown_job")
        key = (msg.job_id, msg.evidence[0])
        if key in self._running:  # the same DisputeOpen again: its case is under way
            return None
        case = self.case(*key)
        if case is None:  # new: recorded once its evidence and escrow check out
            waiting = sum(1 for sender in self._unrecorded.values() if sender == signed.sender)
            if waiting >= _MAX_UNRECORDED_PER_CLIENT:
                self.lc.penalise_peer(peer, "busy")
                raise C0Error("too many disputes of this client under way", code="busy")
            case = Case(*key, msg.sizes[0], signed.sender, peer, msg.reason)
            self._unrecorded[key] = signed.sender
        elif case.status == FAILED:  # sent again: tried again
            case.status, case.tries, case.peer = OPEN, 0, peer
            self._save(case)
        elif case.status not in UNFINISHED:
            log.info("dispute on %s: case %s already", job_id_text(msg.job_id), case.status)
            return None
        self._start(case)
        return None

    def case(self, job_id: bytes, evidence: bytes) -> Case | None:
        row = self.lc.node.store.db.execute(
            f"SELECT {_COLUMNS} FROM arbiter_cases WHERE job_id=? AND evidence=?",
            (job_id, evidence),
        ).fetchone()
        return None if row is None else _case(row)

    def cases(self, job_id: bytes | None = None) -> list[Case]:
        sql = f"SELECT {_COLUMNS} FROM arbiter_cases"
        args: tuple[Any, ...] = ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        return [_case(r) for r in self.lc.node.store.db.execute(sql + " ORDER BY rowid", args)]

    def _record(self, case: Case) -> None:
        """Keep the case: from now on a restart takes it up again."""
        self.lc.node.store.db.execute(
            f"INSERT OR IGNORE INTO arbiter_cases ({_COLUMNS}, created_ms, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *case.key,
                case.size,
                case.client,
                case.peer,
                case.reason,
                case.chain_job_id,
                case.status,
                case.tries,
                json.dumps(case.data),
                now_ms(),
                now_ms(),
            ),
        )
        case.recorded = True
        self._unrecorded.pop(case.key, None)  # a disputed escrow names us: a real case
        self._save(case)

    def _save(self, case: Case) -> None:
        self.lc.node.store.db.execute(
            "UPDATE arbiter_cases SET peer=?, chain_job_id=?, status=?, tries=?, data=?,"
            " updated_ms=? WHERE job_id=? AND evidence=?",
            (
                case.peer,
                case.chain_job_id,
                case.status,
                case.tries,
                json.dumps(case.data),
                now_ms(),
                *case.key,
            ),
        )

    def resume(self) -> None:
        """Take up every unfinished case of a previous run (Lifecycle start)."""
        if self.lc.escrow is None:
            return
        for case in self.cases():
            if case.status in UNFINISHED:
                log.info("resuming the dispute on %s", job_id_text(case.job_id))
                self._start(case)

    def _start(self, case: Case) -> None:
        if case.key not in self._running:
            self._running.add(case.key)
            self.lc.spawn(self._arbitrate, case)

    async def _arbitrate(self, case: Case) -> None:
        """Take one case to its end. Once recorded, every step is kept, so a restart goes
        on from it; before (evidence not yet read, escrow not yet found disputed) its
        tries are counted in memory, and what ends it is logged only: a DisputeOpen that
        cites no case costs the arbiter no row."""
        key = case.key
        try:
            while case.status in UNFINISHED:
                pause = _RETRY_S
                try:
                    await self._advance(case)
                except _Wait as wait:
                    case.data["note"] = str(wait)
                    pause = _SUPERSEDE_POLL_S
                except _Refused as exc:
                    case.status, case.data["note"] = REFUSED, str(exc)
                except _Closed as exc:
                    case.status, case.data["note"] = CLOSED, str(exc)
                except ChainUnavailable as exc:  # not the case's fault: no try counted
                    case.data["note"] = exc.message
                except (
                    C0Error,
                    OSError,
                    trio.TooSlowError,
                    trio.BrokenResourceError,
                ) as exc:  # the evidence unreachable, a revert while still disputed...
                    case.tries += 1
                    case.data["note"] = str(exc)[:300]
                    pause = _RETRY_S * 2 ** (case.tries - 1)
                    if case.tries >= _MAX_TRIES:
                        case.status = FAILED
                if case.recorded:
                    self._save(case)
                if case.status in UNFINISHED:
                    log.info("dispute on %s: %s", job_id_text(case.job_id), case.data.get("note"))
                    await trio.sleep(pause)  # backoff before the case's next try
                elif case.status != RESOLVED:
                    log.warning(
                        "dispute on %s %s: %s",
                        job_id_text(case.job_id),
                        case.status,
                        case.data.get("note"),
                    )
        finally:
            self._running.discard(key)
            self._unrecorded.pop(key, None)

    async def _advance(self, case: Case) -> None:
        """One pass over a case: read the evidence, check the escrow on chain, judge
        (once: the split is kept), resolve. Raises what stops this pass."""
        lc = self.lc
        assert lc.escrow is not None
        bundle: dict[str, Any] | None = None
        if "terms" not in case.data:
            bundle = await self._read_bundle(case)
            spec, terms, number = self._evidence(case, bundle)
            dup = lc.node.store.db.execute(
                "SELECT 1 FROM arbiter_cases WHERE chain_job_id=? AND status IN (?, ?, ?)"
                " AND NOT (job_id=? AND evidence=?)",
                (terms.job_id, OPEN, JUDGED, RESOLVED, *case.key),
            ).fetchone()
            if dup is not None:
                case.status, case.data["note"] = DUPLICATE, "another case holds this escrow"
                return
            case.chain_job_id = terms.job_id
            case.data.update(
                terms=terms_to_json(terms),
                attempt=number,
                unreleased=bundle.get("unreleased") is True,
            )
            if case.recorded:
                self._save(case)
        terms = terms_from_json(case.data["terms"])
        status = await lc.escrow.status(terms)
        challenge, ruling = await lc.escrow.read(lc.escrow.client.periods)
        now = await lc.escrow.now()
        ruling_deadline = terms.common.deadline + challenge + ruling
        if status == STATUS_SETTLED:
            raise _Closed("the escrow is settled on chain (released, claimed, resolved or lapsed)")
        if status == STATUS_UNKNOWN:
            raise _Refused("no escrow on chain holds these terms")
        if now >= ruling_deadline:
            raise _Closed(f"the ruling period ended at chain time {ruling_deadline}")
        if status != STATUS_DISPUTED:
            raise C0Error("the escrow is not disputed (yet)", code="not_disputed")
        if not case.recorded:
            self._record(case)
        if case.status == OPEN:
            if lc.settings.arbiter_hold_s > 0:
                await trio.sleep(lc.settings.arbiter_hold_s)  # the test hook (settings.py)
            superseded = False
            if case.data["unreleased"]:
                found = await self._superseded(case.job_id, terms, int(case.data["attempt"]))
                if found == "pending" and now < ruling_deadline - ruling // _RULING_MARGIN:
                    raise _Wait("another attempt of the job is still open on chain")
                superseded = found == "paid"
            if bundle is None:
                bundle = await self._read_bundle(case)
            spec, _, _ = self._evidence(case, bundle)
            passed, revealed = await self._verify(case, spec, bundle)
            pay, slash = _split(terms, passed, revealed, case.data["unreleased"], superseded)
            case.data["split"] = {"worker_pay": pay, "slash": slash, "superseded": superseded}
            case.status = JUDGED
            self._save(case)
        split = case.data["split"]
        try:
            tx = await lc.escrow.call(
                lc.escrow.client.resolve, terms, split["worker_pay"], split["slash"], 0
            )
        except SettlementError as exc:
            if isinstance(exc, ChainUnavailable):
                raise
            if await lc.escrow.status(terms) != STATUS_DISPUTED:  # someone acted first
                raise _Closed(f"resolve refused ({exc.reason}): the escrow is closed") from None
            raise
        case.status = RESOLVED
        case.data.update(tx=tx.tx, note="resolved")
        self.rulings[case.job_id] = {"tx": tx.tx, "split": split}
        lc.event(
            case.job_id, int(case.data["attempt"]), "verdict", detail={"arbiter_ruling": split}
        )

    async def _read_bundle(self, case: Case) -> dict[str, Any]:
        """The evidence: fetched from the client (held already after the first time). A
        sender that does not have it, or serves other bytes, has no case; a transfer that
        fails may be tried again."""
        try:
            path = await self.lc.node.blobs.fetch(case.peer, case.evidence, case.size)
        except RemoteRefused as exc:
            if exc.reason != "not_found":
                raise
            raise _Refused("the sender does not serve its evidence") from None
        except PeerProtocolError as exc:
            if exc.reason not in ("hash_mismatch", "oversized", "protocol_violation"):
                raise
            raise _Refused(f"the sender served bad evidence: {exc.reason}") from None
        except ValueError as exc:
            raise _Refused(str(exc)) from None
        raw = await trio.Path(path).read_bytes()
        try:
            if len(raw) > _MAX_BUNDLE:
                raise ValueError("dispute bundle too large")
            bundle = codec.decode(raw, codec.DecodeLimits(max_size=_MAX_BUNDLE))
            if not isinstance(bundle, dict):
                raise TypeError("the bundle is not a map")
            return bundle
        except (C0Error, ValueError, TypeError, KeyError) as exc:
            raise _Refused(f"unreadable evidence: {exc}") from None

    def _evidence(self, case: Case, bundle: dict[str, Any]) -> tuple[JobSpec, EscrowTerms, int]:
        """The job, the terms and the attempt number the evidence is about, checked: the
        spec is the job's and its client's, the terms name this arbiter, and their escrow
        key is one of the job's attempts."""
        try:
            spec = spec_from_json(bundle["spec"])
            terms = terms_from_json(bundle["terms"])
            check_terms_shape(terms)  # typed from here on: hashed, compared, kept as JSON
        except (C0Error, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _Refused(f"malformed evidence: {exc}") from None
        if spec.job_id != case.job_id or spec.client != case.client:
            raise _Refused("the evidence is for another job or client")
        if terms.common.arbiter.lower() != self.lc.node.identity.eth_address.lower():
            raise _Refused("this node is not the arbiter the terms name")
        for number in range(1, _MAX_ATTEMPT_NUMBER + 1):
            if attempt_chain_id(case.job_id, number) == terms.job_id:
                return spec, terms, number
        raise _Refused("the terms are no escrow of an attempt of this job")

    async def _superseded(self, job_id: bytes, terms: EscrowTerms, attempt: int) -> str:
        """Whether another attempt of the job, in an escrow the same client opened, was
        paid on chain ("paid": released, claimed, or resolved with pay for its workers),
        may still be ("pending": open or disputed), or neither ("none")."""
        lc = self.lc
        assert lc.escrow is not None
        others = {
            "0x" + attempt_chain_id(job_id, n).hex()
            for n in range(1, _MAX_ATTEMPT_NUMBER + 1)
            if n != attempt
        }
        client = terms.common.client.lower()
        events = await lc.chain_events_for()
        seqs = {
            int(e["seq"])
            for e in events
            if e["event"] == "opened"
            and str(e.get("job_id", "")).lower() in others
            and str(e.get("client", "")).lower() == client
        }
        for e in events:
            if int(e.get("seq", -1)) not in seqs:
                continue
            if e["event"] in ("released", "claimed") or (
                e["event"] == "resolved" and int(e.get("to_workers", 0)) > 0
            ):
                return "paid"
        for seq in sorted(seqs):
            if await lc.escrow.read(lc.escrow.client.status, seq) in (
                STATUS_OPEN,
                STATUS_DISPUTED,
            ):
                return "pending"
        return "none"

    async def _verify(
        self, case: Case, spec: JobSpec, bundle: dict[str, Any]
    ) -> tuple[set[str], set[str]]:
        """Re-verify every revealed result: the payee addresses (lower case) whose result
        passes, and those whose result was revealed at all."""
        lc = self.lc
        peer = case.peer
        # Who is who: each worker's signed bid binds its DID to its payee address.
        eth_of: dict[str, str] = {}
        reveals: dict[str, ResultReveal] = {}
        try:
            for raw_bid in bundle["bids"]:
                bid = open_envelope(raw_bid, now=None)  # not bytes(): bytes(2**40) allocates
                if isinstance(bid.message, Bid) and bid.message.job_id == case.job_id:
                    eth_of[bid.sender] = bid.message.eth_address.lower()
            for raw_reveal in bundle["reveals"]:
                rv = open_envelope(raw_reveal, now=None)
                if isinstance(rv.message, ResultReveal) and rv.message.job_id == case.job_id:
                    reveals[rv.sender] = rv.message
        except (C0Error, ValueError, TypeError, KeyError) as exc:
            raise _Refused(f"malformed evidence: {exc}") from None
        work = lc.node.home / "arbitration" / job_id_text(case.job_id)
        inputs = {}
        for name, ref in spec.inputs.items():
            inputs[name] = await lc.node.blobs.fetch(peer, ref.sha256, ref.size)
        template = template_of(spec)
        passed: set[str] = set()
        for did, reveal in reveals.items():
            try:
                _, report = await materialize(
                    lc.node.blobs,
                    peer,
                    reveal.manifest,
                    work / did[-16:],
                    lambda f: verify_result(template, f, inputs=inputs),
                    sync=lc.node.store.full_sync,
                )
            except PeerProtocolError as exc:
                if exc.reason != "protocol_violation":
                    raise  # fetching failed: try the case again
                continue  # a manifest no result can have: it fails
            assert report is not None
            if report.passed and did in eth_of:
                passed.add(eth_of[did])
        revealed = {eth_of[d] for d in reveals if d in eth_of}
        return passed, revealed


def _split(
    terms: EscrowTerms, passed: set[str], revealed: set[str], unreleased: bool, superseded: bool
) -> tuple[list[int], list[int]]:
    """The ruling (spec/settlement.md, "Arbitration"): per worker, its pay and its slash."""
    pay, slash = [], []
    for a in terms.assignments:
        worker = a.worker.lower()
        good, shown = worker in passed, worker in revealed
        if unreleased and superseded:
            # Another attempt of the job was paid: only one is, so nobody here; a worker
            # whose revealed result failed is slashed.
            pay.append(0)
            slash.append(a.stake_lock if shown and not good else 0)
        elif unreleased:
            # No other attempt was paid: the mark does not stand. A result that passes is
            # paid; one that fails is slashed; a result the client never received (it
            # reached quorum on chain only) can be neither verified nor blamed.
            pay.append(a.payout if good else 0)
            slash.append(a.stake_lock if shown and not good else 0)
        else:
            # A result that passes is paid, one that fails slashed. A worker whose result
            # the evidence leaves out is neither: the client chooses what the bundle holds,
            # and a client that hid an honest reveal must not earn that worker's stake.
            pay.append(a.payout if good else 0)
            slash.append(a.stake_lock if shown and not good else 0)
    return pay, slash


def _case(row: tuple[Any, ...]) -> Case:
    return Case(
        job_id=bytes(row[0]),
        evidence=bytes(row[1]),
        size=int(row[2]),
        client=str(row[3]),
        peer=str(row[4]),
        reason=str(row[5]),
        chain_job_id=None if row[6] is None else bytes(row[6]),
        status=str(row[7]),
        tries=int(row[8]),
        data=json.loads(row[9]),
        recorded=True,
    )
