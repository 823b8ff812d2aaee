"""Escrow logs decoded, and turned into job events `{"job_id", "event", "tx", "block", ...}`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
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
    "Lapsed": "lapsed",
}


def _hex(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_hex(v) for v in value]
    return value


def _bytes(value: Any) -> bytes:
    """A log field as bytes: web3 gives HexBytes, a raw JSON-RPC log 0x-hex text."""
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


@dataclass(frozen=True)
class _EventAbi:
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type) of each topic after the first
    data: tuple[tuple[str, str], ...]  # (name, type) of each field in the data
    order: tuple[str, ...]  # every field, in the ABI's order


_TABLES: dict[int, tuple[Any, dict[bytes, _EventAbi]]] = {}  # id(abi) -> (abi, table)


def _events_by_topic(abi: Any) -> dict[bytes, _EventAbi]:
    cached = _TABLES.get(id(abi))
    if cached is not None and cached[0] is abi:
        return cached[1]
    out = {}
    for entry in abi:
        if entry["type"] != "event":
            continue
        inputs = entry["inputs"]
        out[bytes(event_abi_to_log_topic(entry))] = _EventAbi(
            entry["name"],
            tuple((i["name"], i["type"]) for i in inputs if i["indexed"]),
            tuple((i["name"], i["type"]) for i in inputs if not i["indexed"]),
            tuple(i["name"] for i in inputs),
        )
    _TABLES[id(abi)] = (abi, out)
    return out


def _value(abi_type: str, value: Any) -> Any:
    """eth_abi's decoded value as web3's process_log gives it: addresses checksummed."""
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type.endswith("]"):
        return [_value(abi_type[: abi_type.rindex("[")], v) for v in value]
    return value


def decode_logs(contract: Contract, logs: Iterable[Any]) -> list[dict[str, Any]]:
    """Every escrow log as `{"name", "tx", "block", "log_index", "args"}` (bytes as 0x-hex).

    Logs as web3 returns them or raw from JSON-RPC. Decoded here from the ABI with
    eth_abi: web3's `process_log` took ~3 ms of CPU a log, and a client decodes the logs of
    every batch it opens and releases (tests/settlement/test_events.py checks both agree).
    The escrow indexes only static types (address, bytes32), so every topic decodes."""
    by_topic = _events_by_topic(contract.abi)
    ours = _bytes(contract.address)
    out: list[dict[str, Any]] = []
    for log in logs:
        topics = [_bytes(t) for t in log["topics"]]
        if not topics or _bytes(log["address"]) != ours:
            continue
        event = by_topic.get(topics[0])
        if event is None or len(topics) != 1 + len(event.indexed):
            continue
        args: dict[str, Any] = {}
        for (name, abi_type), topic in zip(event.indexed, topics[1:], strict=True):
            args[name] = _value(abi_type, abi_decode([abi_type], topic)[0])
        values = abi_decode([t for _, t in event.data], _bytes(log["data"]))
        for (name, abi_type), value in zip(event.data, values, strict=True):
            args[name] = _value(abi_type, value)
        out.append(
            {
                "name": event.name,
                "tx": _hex(_bytes(log["transactionHash"])),
                "block": _int(log["blockNumber"]),
                "log_index": _int(log["logIndex"]),
                "args": {k: _hex(args[k]) for k in event.order},
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
