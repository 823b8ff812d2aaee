"""Disputes: the client freezes an escrow whose workers disagree; the arbiter named in the
terms re-verifies every result itself from signed evidence and splits the escrow."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from node.executors.manifest import spec_from_json
from node.lifecycle.escrow import terms_from_json, terms_to_json
from node.lifecycle.results import materialize, template_of
from node.verification import verify_result
from protocol import codec
from protocol.envelope import SignedMessage, open_envelope
from protocol.errors import C0Error, PeerProtocolError
from protocol.jobs import job_id_text
from protocol.messages import Bid, DisputeOpen, ResultReveal
from protocol.settlement import STATUS_SETTLED, EscrowTerms, SettlementError
from protocol.state import Event, JobMachine

if TYPE_CHECKING:
    from node.lifecycle.client import Attempt, ClientRole
    from node.lifecycle.service import Lifecycle

__all__ = ["Arbitration"]

log = logging.getLogger("c0.arbiter")
_MAX_BUNDLE = 4 << 20


class Arbitration:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.rulings: dict[bytes, dict[str, Any]] = {}

    # ------------------------------------------------------------ client side
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
        lc = self.lc
        assert lc.escrow is not None
        info = data["attempts"][str(attempt.number)]
        terms = attempt.terms
        bids = [lc.evidence_envelope("bid", job_id, did) for did in attempt.slots]
        bundle = codec.encode(
            {
                "spec": data["spec"],
                "terms": terms_to_json(terms),
                "workers": [w["did"] for w in info["workers"]],
                "bids": [b for b in bids if b is not None],
                "reveals": [s.reveal.raw for s in attempt.slots.values() if s.reveal],
                "inputs": {n: r["sha256"] for n, r in data["spec"]["inputs"].items()},
            }
        )
        digest = lc.node.blobs.put_bytes(bundle)
        reason = f"results of {len(failing)} worker(s) failed verification"
        try:
            tx = await lc.escrow.call(lc.escrow.client.dispute, terms)
        except SettlementError as exc:
            log.warning("dispute refused: %s", exc.message)
            return
        info["dispute"] = {"tx": tx.tx, "bundle": digest.hex(), "failing": failing}
        client._step(job_id, data, machine, Event.DISPUTE, detail={"reason": reason, "tx": tx.tx})
        arbiter_peer = lc.peer_of_eth(terms.common.arbiter)
        if arbiter_peer is None:
            log.warning("arbiter %s is not among the known nodes", terms.common.arbiter)
            return
        msg = DisputeOpen(job_id=job_id, reason=reason, evidence=(digest,), sizes=(len(bundle),))
        await lc.send_quietly(arbiter_peer, msg)

    async def dispute_unreleased(self, job_id: bytes, attempt: int, terms: EscrowTerms) -> None:
        """Evidence for a dispute the refund keeper opened on an attempt this client did not
        accept (its result failed verification, or the attempt was abandoned) where a result
        reached quorum on chain anyway: the job's spec, the terms, the bids and whatever
        reveals the client holds, marked `unreleased`. The arbiter pays nobody for such an
        attempt (only one attempt of a job is ever paid) and slashes a worker whose
        revealed result it finds wrong."""
        lc = self.lc
        rec = lc.node.store.get_job(job_id)
        if rec is None:
            return
        info = rec.data.get("attempts", {}).get(str(attempt), {})
        bids = [lc.evidence_envelope("bid", job_id, w["did"]) for w in info.get("workers", [])]
        bundle = codec.encode(
            {
                "spec": rec.data["spec"],
                "terms": terms_to_json(terms),
                "workers": [w["did"] for w in info.get("workers", [])],
                "bids": [b for b in bids if b is not None],
                "reveals": [bytes.fromhex(r) for r in info.get("reveals", {}).values()],
                "inputs": {n: r["sha256"] for n, r in rec.data["spec"]["inputs"].items()},
                "unreleased": True,
            }
        )
        digest = lc.node.blobs.put_bytes(bundle)
        lc.event(job_id, attempt, "disputed", detail={"bundle": digest.hex(), "unreleased": True})
        arbiter_peer = lc.peer_of_eth(terms.common.arbiter)
        if arbiter_peer is None:
            log.warning("arbiter %s is not among the known nodes", terms.common.arbiter)
            return
        reason = f"attempt {attempt} was not accepted, yet a result reached quorum on chain"
        msg = DisputeOpen(job_id=job_id, reason=reason, evidence=(digest,), sizes=(len(bundle),))
        await lc.send_quietly(arbiter_peer, msg)

    async def await_ruling(
        self, job_id: bytes, data: dict[str, Any], machine: JobMachine, client: ClientRole
    ) -> None:
        """Wait (bounded by the escrow deadline plus a margin) until the arbiter rules."""
        lc = self.lc
        assert lc.escrow is not None
        info = data["attempts"][str(machine.attempt)]
        terms = terms_from_json(info["terms"])
        for _ in range(3600):
            if await lc.escrow.status(terms) == STATUS_SETTLED:
                break
            await trio.sleep(0.5)
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

    # ------------------------------------------------------------ arbiter side
    async def on_dispute(self, signed: SignedMessage, peer: str) -> None:
        msg = signed.message
        assert isinstance(msg, DisputeOpen)
        if len(msg.evidence) != 1:
            raise PeerProtocolError("protocol_violation", "one evidence bundle expected")
        self.lc.spawn(self._arbitrate, msg, signed.sender, peer)
        return None

    async def _arbitrate(self, msg: DisputeOpen, client_did: str, peer: str) -> None:
        lc = self.lc
        try:
            ruling = await self._judge(msg, client_did, peer)
        except (
            C0Error,
            ValueError,
            KeyError,
            TypeError,
            OSError,
            trio.TooSlowError,
            trio.BrokenResourceError,
        ) as exc:
            log.warning("dispute on %s not judged: %s", job_id_text(msg.job_id), exc)
            return
        self.rulings[msg.job_id] = ruling
        lc.event(msg.job_id, 0, "verdict", detail={"arbiter_ruling": ruling["split"]})

    async def _judge(self, msg: DisputeOpen, client_did: str, peer: str) -> dict[str, Any]:
        lc = self.lc
        assert lc.escrow is not None
        digest, size = msg.evidence[0], msg.sizes[0]
        if size > _MAX_BUNDLE:
            raise PeerProtocolError("oversized", "dispute bundle too large")
        path = await lc.node.blobs.fetch(peer, digest, size)
        raw = await trio.Path(path).read_bytes()
        if len(raw) > _MAX_BUNDLE:
            raise PeerProtocolError("oversized", "dispute bundle too large")
        bundle = codec.decode(raw, codec.DecodeLimits(max_size=_MAX_BUNDLE))
        spec = spec_from_json(bundle["spec"])
        if spec.job_id != msg.job_id or spec.client != client_did:
            raise PeerProtocolError("protocol_violation", "bundle is for another job or client")
        terms = terms_from_json(bundle["terms"])
        if terms.common.arbiter.lower() != lc.node.identity.eth_address.lower():
            raise PeerProtocolError("protocol_violation", "this node is not the arbiter named")
        # Who is who: each worker's signed bid binds its DID to its payee address.
        eth_of: dict[str, str] = {}
        for raw_bid in bundle["bids"]:
            bid = open_envelope(bytes(raw_bid), now=None)
            if isinstance(bid.message, Bid) and bid.message.job_id == msg.job_id:
                eth_of[bid.sender] = bid.message.eth_address.lower()
        reveals: dict[str, ResultReveal] = {}
        for raw_reveal in bundle["reveals"]:
            rv = open_envelope(bytes(raw_reveal), now=None)
            if isinstance(rv.message, ResultReveal) and rv.message.job_id == msg.job_id:
                reveals[rv.sender] = rv.message
        work = lc.node.home / "arbitration" / job_id_text(msg.job_id)
        inputs = {}
        for name, ref in spec.inputs.items():
            inputs[name] = await lc.node.blobs.fetch(peer, ref.sha256, ref.size)
        template = template_of(spec)
        passed_eth: set[str] = set()
        for did, reveal in reveals.items():
            _, report = await materialize(
                lc.node.blobs,
                peer,
                reveal.manifest,
                work / did[-16:],
                lambda f: verify_result(template, f, inputs=inputs),
                sync=lc.node.store.full_sync,
            )
            assert report is not None
            if report.passed and did in eth_of:
                passed_eth.add(eth_of[did])
        worker_pay = [a.payout if a.worker.lower() in passed_eth else 0 for a in terms.assignments]
        slash = [0 if a.worker.lower() in passed_eth else a.stake_lock for a in terms.assignments]
        if bundle.get("unreleased") is True:
            # An attempt its client did not accept: nobody is paid (another attempt may
            # have been), and only a worker whose revealed result failed is slashed.
            revealed_eth = {eth_of[d] for d in reveals if d in eth_of}
            worker_pay = [0] * len(terms.assignments)
            slash = [
                a.stake_lock
                if a.worker.lower() in revealed_eth and a.worker.lower() not in passed_eth
                else 0
                for a in terms.assignments
            ]
        tx = await lc.escrow.call(lc.escrow.client.resolve, terms, worker_pay, slash, 0)
        return {"tx": tx.tx, "split": {"worker_pay": worker_pay, "slash": slash}}
