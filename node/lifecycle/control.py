"""Control-socket commands of the lifecycle: what `c0 job …`, `c0 jobs`, `c0 reputation`
and `c0 reconcile` call on a running node."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.app import now_ms
from node.control import ControlServer
from protocol.envelope import envelope_hash
from protocol.errors import UserError
from protocol.jobs import job_id_from_text, job_id_text
from protocol.reconcile import JobRecord, reconcile
from protocol.state import TERMINAL, State

if TYPE_CHECKING:
    from node.lifecycle.service import Lifecycle

__all__ = ["job_summary", "register_job_commands"]


def _record(lc: Lifecycle, text: str) -> Any:
    rec = lc.node.store.get_job(job_id_from_text(text))
    if rec is None:
        raise UserError(f"no job {text} on this node")
    return rec


def job_summary(rec: Any) -> dict[str, Any]:
    data = rec.data
    attempt = str(data.get("attempt", 0))
    info = data.get("attempts", {}).get(attempt, {})
    out: dict[str, Any] = {
        "job_id": job_id_text(rec.job_id),
        "role": rec.role,
        "state": rec.state,
        "terminal": State(rec.state) in TERMINAL if rec.role == "client" else None,
        "attempt": data.get("attempt"),
        "job_class": data.get("spec", {}).get("job_class") or data.get("job_class"),
        "workers": [w["did"] for w in info.get("workers", [])],
        "verdicts": {d: v["passed"] for d, v in info.get("verdicts", {}).items()},
        "escrow_tx": info.get("escrow_tx"),
        "release_tx": info.get("release_tx"),
        "payouts": {w["did"]: w["price"] for w in info.get("workers", [])},
        "gas": {"open": info.get("open_gas"), "release_share": info.get("release_gas_share")},
        "updated_ms": rec.updated_ms,
        "elapsed_ms": rec.updated_ms - rec.created_ms,
    }
    if rec.role == "worker":
        out["price"] = data.get("price")
    return out


def register_job_commands(server: ControlServer, lc: Lifecycle) -> None:
    async def job_submit(args: dict[str, Any]) -> Any:
        # The same submission again is the same job (its nonce is derived): it goes on,
        # or is reported as it ended; `new` asks for a new, separately paid job.
        done = lc.client.submit_job(
            args["spec"],
            dict(args.get("inputs", {})),
            redundancy=int(args.get("redundancy", 1)),
            max_price=int(args.get("max_price", 10**16)),
            deadline_s=int(args.get("deadline_s", lc.settings.default_deadline_s)),
            new=bool(args.get("new", False)),
        )
        return {
            "job_id": done.job_id,
            "state": done.state,
            "existing": done.existing,
            "deadline_ms": done.deadline_ms,
        }

    async def job_status(args: dict[str, Any]) -> Any:
        return job_summary(_record(lc, args["job_id"]))

    async def job_events(args: dict[str, Any]) -> Any:
        rec = _record(lc, args["job_id"])
        since = int(args.get("since", 0))
        out = []
        for i, signed in enumerate(lc.node.events.events(rec.job_id)):
            if i < since:
                continue
            ev = signed.message
            out.append(
                {
                    "seq": i,
                    "hash": envelope_hash(signed.raw).hex(),
                    "job_id": job_id_text(ev.job_id),  # type: ignore[attr-defined]
                    "attempt": ev.attempt,  # type: ignore[attr-defined]
                    "state": ev.state,  # type: ignore[attr-defined]
                    "worker_did": ev.worker_did,  # type: ignore[attr-defined]
                    "artifact_hash": _hex(ev.artifact_hash),  # type: ignore[attr-defined]
                    "duration_ms": ev.duration_ms,  # type: ignore[attr-defined]
                    "exit_code": ev.exit_code,  # type: ignore[attr-defined]
                    "timestamp": ev.timestamp,  # type: ignore[attr-defined]
                    "prompt_hash": _hex(ev.prompt_hash),  # type: ignore[attr-defined]
                    "detail": ev.detail,  # type: ignore[attr-defined]
                    "signer": signed.sender,
                }
            )
        return out

    async def job_explain(args: dict[str, Any]) -> Any:
        rec = _record(lc, args["job_id"])
        return {"job_id": args["job_id"], "attempts": rec.data.get("explain", {})}

    async def job_fetch(args: dict[str, Any]) -> Any:
        rec = _record(lc, args["job_id"])
        return lc.client.fetch_result(rec.job_id, Path(args["output"]))

    async def job_dispute(args: dict[str, Any]) -> Any:
        """The job's own task disputes on chain, goes `disputed`, sends the evidence to
        the arbiter and waits for the ruling (arbitration.request_dispute); refused with
        a UserError when there is nothing this node may dispute."""
        rec = _record(lc, args["job_id"])
        reason = str(args.get("reason") or "").strip() or "disputed by the client"
        return await lc.arbitration.request_dispute(rec.job_id, reason)

    async def jobs(args: dict[str, Any]) -> Any:
        if args.get("brief"):  # id, role, state only: no record is decoded
            return [
                {"job_id": job_id_text(j), "role": role, "state": state, "updated_ms": updated}
                for j, role, state, updated in lc.node.store.job_states()
            ]
        return [job_summary(r) for r in lc.node.store.jobs()]

    async def reputation(args: dict[str, Any]) -> Any:
        did = args.get("did")
        workers = [did] if did else sorted({e.worker for e in lc.evidence()} | set(lc.node.caps))
        out = []
        for worker in workers:
            classes = sorted({e.job_class for e in lc.evidence(worker) if e.job_class})
            for job_class in classes or ["noop"]:
                out.append(lc.reputation_of(worker, job_class).to_json())
        return out

    async def reconcile_cmd(_: dict[str, Any]) -> Any:
        return await reconcile_node(lc)

    for name, fn in (
        ("job_submit", job_submit),
        ("job_status", job_status),
        ("job_events", job_events),
        ("job_explain", job_explain),
        ("job_fetch", job_fetch),
        ("job_dispute", job_dispute),
        ("jobs", jobs),
        ("reputation", reputation),
        ("reconcile", reconcile_cmd),
    ):
        server.register(name, fn)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


async def reconcile_node(lc: Lifecycle) -> dict[str, Any]:
    """This node's client jobs against the escrow's own events on chain."""
    records = []
    for rec in lc.node.store.jobs():
        if rec.role != "client":
            continue
        data = rec.data
        for number, info in sorted(data.get("attempts", {}).items()):
            current = number == str(data.get("attempt"))
            verdicts = info.get("verdicts", {}).values()
            # A failed attempt of a job that went on is refunded in the background by the
            # refund keeper (its record is not rewritten): ask the keeper too.
            refunded = bool(data.get("refunds")) or (
                bytes.fromhex(info["terms"]["job_id"]) in lc.refunds.refunded
            )
            state = rec.state if current else "refunded" if refunded else "failed"
            records.append(
                JobRecord(
                    job_id=f"{job_id_text(rec.job_id)}#{number}",
                    chain_job_id="0x" + info["terms"]["job_id"],
                    role="client",
                    state=state,
                    deadline_s=int(info["terms"]["common"]["deadline"]),
                    funded=True,
                    reveals=len(info.get("reveals", {})),
                    passed_verdicts=sum(1 for v in verdicts if v["passed"]),
                    failed_verdicts=sum(1 for v in verdicts if not v["passed"]),
                )
            )
    events = await lc.chain_events_for()
    now_s = await lc.escrow.now() if lc.escrow is not None else now_ms() // 1000
    mine = {r.chain_job_id for r in records}
    relevant = [e for e in events if str(e.get("job_id", "")).lower() in mine]
    mismatches = reconcile(records, relevant, now_s=now_s, grace_s=30)
    return {
        "jobs": len({r.job_id.split("#")[0] for r in records}),
        "attempts": len(records),
        "chain_events": len(relevant),
        "mismatches": [m.to_json() for m in mismatches],
    }
