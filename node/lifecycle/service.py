"""The Lifecycle: attaches the client, worker and arbiter roles to a running Node, keeps
the signed event log, the evidence behind reputation, and the settlement tasks."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.app import Node, now_ms
from node.chain.backends import rpc_chain
from node.chain.client import EscrowClient
from node.lifecycle.arbitration import Arbitration
from node.lifecycle.client import ClientRole
from node.lifecycle.escrow import AsyncEscrow, terms_from_json
from node.lifecycle.settings import ChainInfo, LifecycleSettings
from node.lifecycle.settle import OpenBatcher, RefundKeeper, ReleaseBatcher
from node.lifecycle.worker import WorkerJob, WorkerRole
from node.net.caps import KnownWorker
from protocol.envelope import SignedMessage, envelope_hash
from protocol.errors import C0Error
from protocol.messages import JobEvent, Message, Receipt
from protocol.reputation import Evidence, Reputation, ReputationTally
from protocol.settlement import EscrowTerms
from protocol.state import TERMINAL, State

__all__ = ["Lifecycle"]

log = logging.getLogger("c0.lifecycle")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    worker TEXT NOT NULL, job_class TEXT NOT NULL, kind TEXT NOT NULL,
    job_id BLOB NOT NULL, source TEXT NOT NULL, at_ms INTEGER NOT NULL,
    runtime_ms INTEGER, UNIQUE (worker, kind, job_id, source)
);
CREATE TABLE IF NOT EXISTS envelopes (
    hash BLOB PRIMARY KEY, type TEXT NOT NULL, job_id BLOB, sender TEXT NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS envelopes_job ON envelopes (job_id, type, sender);
"""


class Lifecycle:
    """One per node. `await nursery.start(lifecycle.run)` after the node has started."""

    def __init__(
        self,
        node: Node,
        settings: LifecycleSettings,
        chain: ChainInfo | None,
        *,
        escrow_client: EscrowClient | None = None,
        chain_lock: trio.Lock | None = None,
    ) -> None:
        self.node = node
        self.settings = settings
        self.chain = chain
        self.escrow: AsyncEscrow | None = None
        if escrow_client is None and chain is not None:
            w3chain = rpc_chain(chain.rpc_url, chain_id=chain.chain_id)
            escrow_client = EscrowClient(w3chain, chain.escrow, node.identity.eth_account)  # type: ignore[arg-type]
        if escrow_client is not None:
            self.escrow = AsyncEscrow(escrow_client, chain_lock)
        node.store.db.executescript(_SCHEMA)
        self.client = ClientRole(self)
        self.worker = WorkerRole(self)
        self.arbitration = Arbitration(self)
        self.releases = ReleaseBatcher(self)
        self.opens = OpenBatcher(self)
        self.refunds = RefundKeeper(self)
        self.task_failures = 0  # tasks ended by an unexpected exception (see _guarded)
        self._nursery: trio.Nursery | None = None
        # Pulsed (set, then replaced) when a worker's ad arrives or a job record changes:
        # what waiting tasks synchronise on.
        self.ads_changed = trio.Event()
        self.jobs_changed = trio.Event()
        self._tallies: dict[str, ReputationTally] = {}  # worker -> its evidence, counted
        node.store._on_rollback.append(self._forget_evidence)  # the cache follows the rows
        node.on_ad.append(lambda _worker: self._pulse_ads())
        handlers: dict[str, Callable[[SignedMessage, str], Awaitable[Message | None]]] = {
            "offer": self.worker.on_offer,
            "assignment": self.worker.on_assignment,
            "receipt": self.worker.on_receipt,
            "reveal_call": self.worker.on_reveal_call,
            "heartbeat": self.client.on_heartbeat,
            "decline": self.client.on_decline,
            "result_commit": self.client.on_commit,
            "result_reveal": self.client.on_reveal,
            "dispute_open": self.arbitration.on_dispute,
        }
        for name, handler in handlers.items():
            node.on(name, handler)
        self.runtimes: dict[str, dict[str, Any]] = {}
        if self.executes:
            node.update_ad(max_concurrent=settings.capacity)  # the ad's field: jobs taken at once

    # ------------------------------------------------------------ running
    async def run_with_node(
        self,
        *services: Callable[..., Awaitable[Any]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node, this lifecycle and `services` (started with `nursery.start`) until
        cancelled. Shutdown is ordered: the lifecycle and the services stop first, then the
        node, which closes the store they write to (stopped together, a task resuming from
        a chain call could write to a closed database)."""
        node_done = trio.Event()

        async def node_until_done(*, task_status: trio.TaskStatus[None]) -> None:
            with trio.CancelScope(shield=True):  # stopped by node_done, not by our cancel
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.node.run)
                    task_status.started()
                    await node_done.wait()
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as outer:
            await outer.start(node_until_done)
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(self.run)
                    for service in services:
                        await inner.start(service)
                    task_status.started()
                    await trio.sleep_forever()  # until cancelled
            finally:
                node_done.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.escrow is not None:
                if self.executes and self.settings.stake_wei:
                    await self.escrow.ensure_stake(self.settings.stake_wei)
                    self.node.update_ad(stake=self.settings.stake_wei)
                nursery.start_soon(self.releases.run)
                nursery.start_soon(self.opens.run)
                nursery.start_soon(self.refunds.run)
            if self.executes:
                nursery.start_soon(self._advertise)
            # Jobs, and the checks of results a client or an arbiter verifies
            # (node/executors/checks.py), fork from the same server: any node stops it idle.
            nursery.start_soon(self.worker.stop_idle_fork_server)
            task_status.started()
            self._resume()
            self.arbitration.resume()  # the cases an arbiter had not finished
            self.worker.resume()  # results computed and committed to, not yet paid

    @property
    def executes(self) -> bool:
        return not self.node.light and self.settings.execute

    async def _advertise(self) -> None:
        """Offer our job classes once their exact runtime fingerprints are known."""
        from node.lifecycle.fingerprint import ad_runtimes

        classes = [c for c, _ in self.settings.prices]
        delay = 1.0
        for _ in range(20):  # bounded: a machine starting many nodes may be slow
            try:
                self.runtimes = await trio.to_thread.run_sync(ad_runtimes, classes, 300.0)
                break
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                log.warning("runtime fingerprint failed (%s); retrying", exc)
                await trio.sleep(delay)  # backoff before trying the child again
                delay = min(delay * 2, 30.0)
        else:
            log.error("no runtime fingerprint: this node offers no job classes")
            return
        self.node.update_ad(runtimes=self.runtimes, prices=dict(self.settings.prices))

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise C0Error("the lifecycle is not running", code="not_running")
        self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """One task of the lifecycle (a job's driver, a worker's run, an arbitration):
        whatever it raises ends that task alone, never the node. Expected failures are
        logged; any other exception is a bug or input no check foresaw, logged with its
        traceback and counted in `task_failures` (the test swarms assert it stays 0)."""
        try:
            await fn(*args)
        except (C0Error, trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
            log.warning("%s stopped: %s", getattr(fn, "__name__", fn), exc)
        except Exception as exc:  # not trio.Cancelled, not KeyboardInterrupt: BaseException
            self.task_failures += 1
            log.error("%s raised %s", getattr(fn, "__name__", fn), type(exc).__name__, exc_info=exc)

    def _resume(self) -> None:
        """Pick up the jobs a previous run of this node left unfinished, and the escrows of
        failed attempts still waiting for their refund (the keeper holds them in memory)."""
        for rec in self.node.store.jobs():
            if rec.role != "client":
                continue
            if State(rec.state) not in TERMINAL:
                self.spawn(self.client.drive, rec.job_id)
            current = str(rec.data.get("attempt"))
            for number, info in rec.data.get("attempts", {}).items():
                if number != current and "escrow" in info.get("terms", {}):
                    self.refunds.add(terms_from_json(info["terms"]), rec.job_id, int(number))

    # ------------------------------------------------------------ records
    def store_job(self, job_id: bytes, role: str, state: str, data: dict[str, Any]) -> None:
        self.node.store.put_job(job_id, role=role, state=str(state), data=data)
        self.jobs_changed.set()
        self.jobs_changed = trio.Event()

    def _pulse_ads(self) -> None:
        self.ads_changed.set()
        self.ads_changed = trio.Event()

    async def wait_for_ads(self, limit_s: float) -> None:
        """Until a new ad arrives or `limit_s` passes (ads also change by expiring)."""
        with trio.move_on_after(limit_s):
            await self.ads_changed.wait()

    def event(
        self,
        job_id: bytes,
        attempt: int,
        state: str,
        *,
        worker: str | None = None,
        artifact: bytes | None = None,
        duration_ms: int | None = None,
        exit_code: int | None = None,
        detail: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
    ) -> bytes:
        """Append a signed JobEvent; inference events carry the prompt's hash only.

        `record` is the job's data as the caller holds it (saves reading it back)."""
        if record is None:  # the record a client task holds, else the stored one
            record = self.client.records.get(job_id)
        if record is None:
            rec = self.node.store.get_job(job_id)
            record = rec.data if rec is not None else None
        prompt_hash = None
        if record is not None and record.get("spec", {}).get("job_class") == "llm.generate":
            import hashlib

            prompt = str(record["spec"]["params"].get("prompt", ""))
            prompt_hash = hashlib.sha256(prompt.encode()).digest()
        started = record.get("submitted_ms") if record is not None else None
        event = JobEvent(
            job_id=job_id,
            attempt=attempt,
            state=state,
            worker_did=worker,
            artifact_hash=artifact,
            duration_ms=duration_ms
            if duration_ms is not None
            else (now_ms() - int(started) if started else None),
            exit_code=exit_code,
            timestamp=now_ms(),
            prompt_hash=prompt_hash,
            prev=bytes(32),
            detail=_jsonable(detail or {}),
        )
        return self.node.events.append(event)

    def record_worker(
        self,
        job: WorkerJob,
        state: str,
        *,
        exit_code: int | None = None,
        artifact_hash: bytes | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        offer = job.offer
        key = offer.job_id
        if job.record is None:  # read once; this task is the record's only writer after
            rec = self.node.store.get_job(key)
            owns = rec is None or rec.role == "worker"  # not a job this node is client of
            job.record = (rec.data if rec is not None and owns else {}, owns)
        data, owns = job.record
        data.update(
            {
                "job_class": offer.spec.job_class,
                "attempt": offer.attempt,
                "client": offer.spec.client,
                "price": job.assignment.payouts[job.assignment.workers.index(self.node.did)]
                if job.assignment
                else None,
                "chain_job_id": job.terms.job_id.hex() if job.terms else None,
                **(extra or {}),
            }
        )
        with self.node.store.transaction():  # the state and its event: one commit
            if owns:
                self.store_job(key, "worker", state, data)
            self.event(
                key,
                offer.attempt,
                _worker_state(state),
                worker=self.node.did,
                artifact=artifact_hash,
                exit_code=exit_code,
                detail={"phase": state},
                record=data if owns else None,
            )

    def store_evidence(self, signed: SignedMessage) -> None:
        self.store_own_evidence(signed.raw, signed.message, signed.sender)

    def store_own_evidence(self, raw: bytes, msg: Message, sender: str) -> None:
        """Keep an envelope as evidence: one received (checked by `open_envelope`), or one
        this node has just sealed (no need to check its own signature again)."""
        self.node.store.db.execute(
            "INSERT OR IGNORE INTO envelopes (hash, type, job_id, sender, envelope)"
            " VALUES (?, ?, ?, ?, ?)",
            (envelope_hash(raw), msg.TYPE, getattr(msg, "job_id", None), sender, raw),
        )

    def evidence_envelope(self, type_name: str, job_id: bytes, sender: str) -> bytes | None:
        row = self.node.store.db.execute(
            "SELECT envelope FROM envelopes WHERE type=? AND job_id=? AND sender=?"
            " ORDER BY rowid DESC LIMIT 1",
            (type_name, job_id, sender),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def add_evidence(
        self,
        worker: str,
        job_class: str,
        kind: str,
        job_id: bytes,
        source: str,
        *,
        runtime_ms: int | None = None,
    ) -> None:
        at = now_ms()
        cursor = self.node.store.db.execute(
            "INSERT OR IGNORE INTO evidence (worker, job_class, kind, job_id, source, at_ms,"
            " runtime_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (worker, job_class, kind, job_id, source, at, runtime_ms),
        )
        tally = self._tallies.get(worker)
        if tally is not None and cursor.rowcount == 1:  # new, not a duplicate ignored
            hw = self._hw_class(self.node.caps.get(worker))
            tally.add(
                Evidence(worker, job_class, kind, at, job_id=job_id, runtime_ms=runtime_ms,
                         source=source, hw_class=hw)
            )  # fmt: skip

    def _forget_evidence(self) -> None:
        self._tallies.clear()

    def evidence(self, worker: str | None = None) -> list[Evidence]:
        sql = "SELECT worker, job_class, kind, job_id, source, at_ms, runtime_ms FROM evidence"
        args: tuple[Any, ...] = ()
        if worker is not None:
            sql, args = sql + " WHERE worker=?", (worker,)
        caps = self.node.caps
        classes: dict[str, str] = {}
        out = []
        for r in self.node.store.db.execute(sql, args):
            hw = classes.get(r[0])
            if hw is None:
                hw = classes[r[0]] = self._hw_class(caps.get(r[0]))
            out.append(
                Evidence(
                    r[0], r[1], r[2], r[5], job_id=bytes(r[3]), runtime_ms=r[6], source=r[4],
                    hw_class=hw,
                )
            )  # fmt: skip
        return out

    @staticmethod
    def _hw_class(worker: KnownWorker | None) -> str:
        if worker is None:
            return ""
        hw = worker.ad.hardware
        return str(hw.get("hw_class") or f"cpu-{hw.get('cpu_cores', '?')}")

    def reputation_of(self, did: str, job_class: str) -> Reputation:
        """Computed from the evidence (routing asks for every candidate of every job).

        A worker's evidence is read from the database once, then counted in a running
        tally that `add_evidence` adds to: re-reading it after every verdict cost routing
        O(history) SQL per job, and counting the whole list again O(history) in Python. A
        score from the tally takes ~5 µs at any history, so it is not cached."""
        tally = self._tallies.get(did)
        if tally is None:
            tally = self._tallies[did] = ReputationTally(did)
            for ev in self.evidence(did):
                tally.add(ev)
        return tally.reputation(job_class, now_ms())

    async def chain_events_for(self, chain_job_id: bytes | None = None) -> list[dict[str, Any]]:
        """Escrow events from the chain itself (never from our own records)."""
        escrow = self.escrow
        if escrow is None:
            return []
        events = await escrow.call(escrow.client.job_events)
        if chain_job_id is None:
            return events
        want = "0x" + chain_job_id.hex()
        return [e for e in events if str(e.get("job_id", "")).lower() == want]

    # ------------------------------------------------------------ peers
    def penalise_peer(self, peer: str, reason: str) -> None:
        """A peer sent what it should not have (spec/job-lifecycle.md, checks per party)."""
        self.node.penalise(peer, reason)

    def arbiter_address(self) -> str:
        """The arbiter this node names in its terms and accepts in others' (the setting,
        else the chain file's); "" if none is configured: a client then offers no work
        (a worker refuses terms whose arbiter is their client)."""
        if self.settings.arbiter:
            return self.settings.arbiter
        if self.chain is not None and self.chain.arbiter:
            return self.chain.arbiter
        return ""

    def peer_of_eth(self, address: str) -> str | None:
        if address.lower() == self.node.identity.eth_address.lower():
            return self.node.peer_id
        for worker in self.node.caps.values():
            if worker.ad.eth_address.lower() == address.lower():
                return worker.ad.peer_id
        return None

    def did_of_eth(self, address: str) -> str | None:
        for did, worker in self.node.caps.items():
            if worker.ad.eth_address.lower() == address.lower():
                return did
        return None

    def runtime_fingerprint(self, job_class: str) -> dict[str, Any]:
        return self.runtimes.get(job_class, {})

    async def send_quietly(
        self, peer: str, message: Message, *, tries: int = 5, limit_s: float = 10.0
    ) -> bool:
        """Deliver a message, retrying a few times with backoff; False if it never lands."""
        delay = 0.2
        for _ in range(tries):
            # A fresh envelope each time: a peer that answered "retry later" has seen the
            # last one's nonce, and would rightly call the same bytes a replay.
            envelope = self.node.seal(message, ttl_ms=300_000)
            try:
                await self.node.send(peer, envelope, timeout=limit_s)
                return True
            except (C0Error, trio.BrokenResourceError, OSError) as exc:
                log.info("delivery of %s to %s failed: %r", message.TYPE, peer[-8:], exc)
                if getattr(exc, "reason", "") in ("unknown_job", "protocol_violation"):
                    return False  # the peer understood and refused: retrying will not help
                await trio.sleep(delay)  # backoff between delivery attempts
                delay = min(delay * 2, 2.0)
        return False

    async def send_receipts(
        self, job_id: bytes, terms: EscrowTerms, info: dict[str, Any], signature: bytes
    ) -> None:
        """Tell each paid worker, with the EIP-712 signature the chain accepted: the
        receipt, signed by the client and countersigned by the worker, is evidence."""
        passed = (info.get("outcome") or {}).get("passed") or []
        verdict = info.get("verdicts", {}).get(passed[0], {}) if passed else {}
        result_hash = bytes(32)
        if "result_hash" in verdict:  # kept with the verdict by the client that verified
            result_hash = bytes.fromhex(verdict["result_hash"])
        else:  # a record from before: the worker's reveal, kept as evidence
            reveal = self.evidence_envelope("result_reveal", job_id, passed[0]) if passed else None
            if reveal is not None:
                from protocol.envelope import open_envelope

                msg = open_envelope(reveal, now=None).message
                result_hash = getattr(msg, "result_hash", result_hash)
        receipt = Receipt(
            job_id=job_id,
            result_hash=result_hash,
            workers=tuple(a.worker for a in terms.assignments),
            payouts=tuple(a.payout for a in terms.assignments),
            eip712_sig=signature,
        )
        # The receipts of one release leave their job tasks together: the negotiate
        # lane sends those to the same worker as one batch (spec/protocols.md).
        for worker in info["workers"]:
            await self.send_quietly(worker["peer"], receipt, tries=2)


def _is_plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or kind is float or value is None:
        return True
    if kind is list:
        return all(_is_plain(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    return False


def _jsonable(value: Any) -> Any:
    """`value` as JSON data: itself when it is plain JSON data already (an event's detail
    nearly always is), else its JSON round trip (tuples become lists, anything else its
    text). The round trip on every event was ~15 % of an event's CPU."""
    if _is_plain(value):
        return value
    return json.loads(json.dumps(value, default=str))


def _worker_state(phase: str) -> str:
    return {
        "assigned": "assigned",
        "running": "running",
        "failed": "failed",
        "committed": "committed",
        "revealed": "revealed",
        "client_unreachable": "submitted",
        "reveal_not_called": "submitted",
        "released": "released",
        "committed_on_chain": "committed",
        "revealed_on_chain": "revealed",
        "claimed": "claimed",
        "claim_failed": "failed",
        "disputed": "disputed",
        "resumed": "resumed",
        "resolved": "resolved",
        "settled_by_claim": "settled_by_claim",
        "lapsed": "lapsed",
        "refunded": "refunded",
        "closed": "closed",
    }.get(phase, "running")
