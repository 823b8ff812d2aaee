"""Escrow logs decoded, and turned into job events `{"job_id", "event", "tx", "block", ...}`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eth_utils.abi import event_abi_to_log_topic
from hexbytes import HexBytes
from web3.contract import Contract

# contract event -> job event name; batch events expand into one job event per job ID
JOB_EVENTS = {
    "Opened": "opened",
    "Released": "released",
    "Committed": "committed",
    "Revealed": "revealed",
    "Claimed": "claimed",
    "Refunded": "refunded",
    "Disputed": "disputed",
    "Resolved": "resolved",
    "Slashed": "slashed",
}


def _hex(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_hex(v) for v in value]
    return value


def decode_logs(contract: Contract, logs: Iterable[Any]) -> list[dict[str, Any]]:
    """Every escrow log as `{"name", "tx", "block", "log_index", "args"}` (bytes as 0x-hex)."""
    by_topic = {
        HexBytes(event_abi_to_log_topic(abi)): abi["name"]
        for abi in contract.abi
        if abi["type"] == "event"
    }
    out: list[dict[str, Any]] = []
    for log in logs:
        if not log["topics"] or HexBytes(log["address"]) != HexBytes(contract.address):
            continue
        name = by_topic.get(HexBytes(log["topics"][0]))
        if name is None:
            continue
        decoded = contract.events[name]().process_log(log)
        out.append(
            {
                "name": name,
                "tx": _hex(bytes(decoded["transactionHash"])),
                "block": int(decoded["blockNumber"]),
                "log_index": int(decoded["logIndex"]),
                "args": {k: _hex(v) for k, v in decoded["args"].items()},
            }
        )
    return out


def job_events(contract: Contract, logs: Iterable[Any]) -> list[dict[str, Any]]:
    """Job events for the node's event log; account movements (deposit, stake...) are left out."""
    events: list[dict[str, Any]] = []
    for entry in decode_logs(contract, logs):
        kind = JOB_EVENTS.get(entry["name"])
        if kind is None:
            continue
        args = dict(entry["args"])
        base = {"event": kind, "tx": entry["tx"], "block": entry["block"]}
        if "job_ids" in args:  # a batch event: one job event per job, with its seq
            ids = args.pop("job_ids")
            seqs = args.pop("seqs", None) or [args["first"] + i for i in range(len(ids))]
            events.extend(
                {"job_id": job_id, "seq": seq, **base, **args}
                for job_id, seq in zip(ids, seqs, strict=True)
            )
        else:
            events.append({"job_id": args.pop("job_id"), **base, **args})
    return events
