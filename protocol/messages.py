"""Message types of the c0 protocol: frozen dataclasses that validate on construction.

Every message travels as the body of a signed envelope (see `protocol.envelope`). Field
types are enforced from the annotations; per-type rules live in `_check`. The CDDL of
each type is in spec/messages.md.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

from protocol.errors import InvalidJobSpec, InvalidMessage
from protocol.jobs import JOB_CLASSES, JobSpec

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Accept",
    "Assignment",
    "Batch",
    "Bid",
    "CapabilityAd",
    "Decline",
    "DisputeOpen",
    "Heartbeat",
    "JobEvent",
    "JobSpecMessage",
    "Message",
    "Offer",
    "Receipt",
    "ResultCommit",
    "ResultReveal",
    "RevealCall",
    "Verdict",
    "message_from_body",
]

PROTOCOL_VERSION = 1

# Job states a JobEvent may carry (the state machine's states plus per-worker phases).
_EVENT_STATES = frozenset(
    {
        "requested",
        "funded",
        "assigned",
        "running",
        "submitted",
        "verified",
        "settled",
        "disputed",
        "failed",
        "expired",
        "refunded",
        "cancelled",
        "offered",
        "bid",
        "declined",
        "accepted",
        "committed",
        "revealed",
        "verdict",
        "released",
        "claimed",
        "slashed",
        "resumed",
        # how a worker saw its escrow close without its client's receipt (worker.py)
        "settled_by_claim",
        "resolved",
        "lapsed",
        "closed",
    }
)

M = TypeVar("M", bound="Message")


def _fail(path: str, why: str) -> typing.NoReturn:
    raise InvalidMessage(f"{path}: {why}")


Coercer = typing.Callable[[Any, str], Any]


def _compile(tp: Any) -> Coercer:
    """A checker for annotation `tp`: returns the value (lists become tuples for tuple
    fields) or raises InvalidMessage naming the field path. Built once per field."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if len(options) != 1:
            raise TypeError(f"unsupported union {tp!r}")  # a bug in this module
        inner = _compile(options[0])

        def optional(value: Any, path: str) -> Any:
            return None if value is None else inner(value, path)

        return optional
    if tp is Any:
        return lambda value, path: value
    if origin is tuple:
        item = _compile(typing.get_args(tp)[0])

        def array(value: Any, path: str) -> Any:
            if not isinstance(value, list | tuple):
                _fail(path, "expected an array")
            return tuple(item(v, path) for v in value)

        return array
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        key_c = _compile(args[0]) if args else None
        val_c = _compile(args[1]) if args else None

        def mapping(value: Any, path: str) -> Any:
            if not isinstance(value, Mapping):
                _fail(path, "expected a map")
            if key_c is None or val_c is None:
                return dict(value)
            return {key_c(k, path): val_c(v, f"{path}[{k!r}]") for k, v in value.items()}

        return mapping
    if tp is bool:

        def boolean(value: Any, path: str) -> Any:
            if not isinstance(value, bool):
                _fail(path, "expected a boolean")
            return value

        return boolean
    if tp is int:

        def integer(value: Any, path: str) -> Any:
            if type(value) is not int:
                _fail(path, "expected an integer")
            return value

        return integer
    if tp is float:

        def number(value: Any, path: str) -> Any:
            if type(value) is float:
                return value
            if type(value) is not int:
                _fail(path, "expected a number")
            return float(value)

        return number
    if tp in (str, bytes):
        name = "text" if tp is str else "bytes"

        def exact(value: Any, path: str) -> Any:
            if type(value) is not tp:
                _fail(path, f"expected {name}")
            return value

        return exact
    if tp is JobSpec:

        def job_spec(value: Any, path: str) -> Any:
            if isinstance(value, JobSpec):
                return value
            try:
                return JobSpec.from_cbor(value)
            except InvalidJobSpec as exc:
                _fail(path, exc.message)

        return job_spec
    raise TypeError(f"unsupported field type {tp!r}")  # a bug in this module


def _require(cond: bool, path: str, why: str) -> None:
    if not cond:
        _fail(path, why)


def _is_did(value: str) -> bool:
    return value.startswith("did:key:z") and len(value) <= 64


def _is_eth(value: str) -> bool:
    if len(value) != 42 or not value.startswith("0x"):
        return False
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        return False
    return True


def _is_job_id(value: bytes) -> bool:
    return len(value) == 34 and value.startswith(b"\x12\x20")


class Message:
    """Base of all message bodies. Subclasses are frozen dataclasses with a TYPE."""

    TYPE: ClassVar[str]

    def __post_init__(self) -> None:
        for name, path, coerce in _field_coercers(type(self)):
            value = getattr(self, name)
            coerced = coerce(value, path)
            if coerced is not value:
                object.__setattr__(self, name, coerced)
        self._check()

    def _check(self) -> None:
        """Per-type rules beyond field types; raise InvalidMessage."""

    def to_body(self) -> dict[str, Any]:
        return {name: _to_wire(getattr(self, name)) for name in _field_names(type(self))}

    @classmethod
    def from_body(cls: type[M], body: Any) -> M:
        if not isinstance(body, Mapping):
            _fail(cls.TYPE, "body must be a map")
        names = _field_set(cls)
        unknown = set(body) - names
        if unknown:
            _fail(cls.TYPE, f"unknown field(s) {sorted(map(str, unknown))}")
        missing = names - set(body)
        if missing:
            _fail(cls.TYPE, f"missing field(s) {sorted(missing)}")
        return cls(**body)


def _to_wire(value: Any) -> Any:
    if isinstance(value, JobSpec):
        return value.to_cbor()
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


_NAMES: dict[type, tuple[str, ...]] = {}
_NAME_SETS: dict[type, frozenset[str]] = {}


def _field_names(cls: type[Message]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return names


def _field_set(cls: type[Message]) -> frozenset[str]:
    names = _NAME_SETS.get(cls)
    if names is None:
        names = _NAME_SETS[cls] = frozenset(_field_names(cls))
    return names


_COERCERS: dict[type, list[tuple[str, str, Coercer]]] = {}


def _field_coercers(cls: type[Message]) -> list[tuple[str, str, Coercer]]:
    coercers = _COERCERS.get(cls)
    if coercers is None:
        hints = typing.get_type_hints(cls)
        coercers = [
            (f.name, f"{cls.TYPE}.{f.name}", _compile(hints[f.name]))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        ]
        _COERCERS[cls] = coercers
    return coercers


# ---------------------------------------------------------------- discovery


@dataclass(frozen=True)
class CapabilityAd(Message):
    """What a full node offers; gossiped on /c0/caps/1, replaced by a higher `seq`."""

    TYPE: ClassVar[str] = "cap_ad"
    peer_id: str
    listen_addrs: tuple[str, ...]
    eth_address: str
    eth_binding_ed25519_sig: bytes
    eth_binding_eth_sig: bytes
    seq: int
    ttl_s: int
    hardware: dict[str, Any]  # cpu_cores, memory_mb, gpu, hw_class
    runtimes: dict[str, dict[str, Any]]  # job class -> exact runtime fingerprint
    prices: dict[str, int]  # job class -> price per job in wei
    models: tuple[bytes, ...]  # SHA-256 of models held locally
    content: tuple[bytes, ...]  # SHA-256 of other blobs held locally
    load: float  # 0.0 idle .. 1.0 every slot busy
    max_concurrent: int
    stake: int  # wei staked in the escrow contract

    def _check(self) -> None:
        _require(self.peer_id.startswith("12D3KooW"), "cap_ad.peer_id", "not an Ed25519 PeerID")
        _require(_is_eth(self.eth_address), "cap_ad.eth_address", "not an address")
        _require(len(self.listen_addrs) <= 16, "cap_ad.listen_addrs", "too many")
        # stored (node/store.py) as an SQLite INTEGER: a signed 64-bit number
        _require(0 <= self.seq < 2**63, "cap_ad.seq", "must be 0..2**63-1")
        _require(1 <= self.ttl_s <= 3600, "cap_ad.ttl_s", "must be 1..3600")
        for name in list(self.runtimes) + list(self.prices):
            _require(name in JOB_CLASSES, "cap_ad", f"unknown job class {name!r}")
        _require(set(self.prices) <= set(self.runtimes), "cap_ad.prices", "class not offered")
        _require(all(p >= 0 for p in self.prices.values()), "cap_ad.prices", "negative price")
        _require(len(self.models) + len(self.content) <= 1024, "cap_ad", "too many hashes")
        _require(all(len(h) == 32 for h in self.models + self.content), "cap_ad", "bad hash")
        _require(0.0 <= self.load <= 1.0, "cap_ad.load", "must be 0..1")
        _require(1 <= self.max_concurrent <= 1024, "cap_ad.max_concurrent", "must be 1..1024")
        _require(self.stake >= 0, "cap_ad.stake", "negative")


@dataclass(frozen=True)
class JobSpecMessage(Message):
    """A client's signed job spec (the evidence of what was asked)."""

    TYPE: ClassVar[str] = "job_spec"
    spec: JobSpec

    def to_body(self) -> dict[str, Any]:
        return {"spec": self.spec.to_cbor()}


# ---------------------------------------------------------------- negotiation


@dataclass(frozen=True)
class Offer(Message):
    """Client -> worker: would you run this job, and at what price?"""

    TYPE: ClassVar[str] = "offer"
    job_id: bytes
    spec: JobSpec
    attempt: int
    redundancy: int
    max_price: int
    deadline: int  # ms since the Unix epoch: settle or refund after this
    commit_deadline: int  # ms: result commits must be on chain (or sent) before this
    chain_id: int
    escrow: str  # contract address
    arbiter: str  # Ethereum address named in the terms
    client_eth: str  # the client's Ethereum address (the payer; stake locks go to it)
    # the client's Ethereum signature binding `client_eth` to its DID (identity.md): the
    # envelope binds the DID to the address, this binds the address to the DID
    client_eth_sig: bytes
    input_providers: tuple[str, ...]  # PeerIDs that hold the inputs
    # the escrow terms the client will open, which a worker's consent signs: the stake it
    # locks per worker (wei) and both deadlines on the chain's clock (unix s)
    stake_lock: int
    escrow_commit_deadline: int
    escrow_deadline: int

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "offer.job_id", "not a SHA-256 multihash")
        _require(self.job_id == self.spec.job_id, "offer.job_id", "does not hash the spec")
        _require(1 <= self.attempt <= 16, "offer.attempt", "must be 1..16")
        _require(1 <= self.redundancy <= 16, "offer.redundancy", "must be 1..16")
        _require(self.max_price >= 0, "offer.max_price", "negative")
        _require(self.commit_deadline <= self.deadline, "offer", "commit after deadline")
        _require(
            _is_eth(self.escrow) and _is_eth(self.arbiter) and _is_eth(self.client_eth),
            "offer",
            "bad address",
        )
        _require(len(self.input_providers) <= 16, "offer.input_providers", "too many")
        _require(len(self.client_eth_sig) == 65, "offer.client_eth_sig", "not 65 bytes")
        _require(self.stake_lock >= 0, "offer.stake_lock", "negative")
        _require(
            0 < self.escrow_commit_deadline < self.escrow_deadline < 2**40,
            "offer.escrow_deadline",
            "must follow escrow_commit_deadline",
        )


@dataclass(frozen=True)
class Bid(Message):
    """Worker -> client: a signed price for one attempt of one job."""

    TYPE: ClassVar[str] = "bid"
    job_id: bytes
    attempt: int
    price: int
    eta_ms: int
    eth_address: str
    runtime: dict[str, Any]  # the runtime fingerprint the worker will use
    has_inputs: tuple[str, ...]  # input names already held
    # the worker's EIP-712 Consent to the offer's terms at this price (settlement.md): a
    # 64-byte compact signature, or empty when the offer locks no stake
    consent: bytes

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "bid.job_id", "not a SHA-256 multihash")
        _require(self.price >= 0 and self.eta_ms >= 0, "bid", "negative price or eta")
        _require(_is_eth(self.eth_address), "bid.eth_address", "not an address")
        _require(len(self.consent) in (0, 64), "bid.consent", "not 0 or 64 bytes")


@dataclass(frozen=True)
class Decline(Message):
    """Worker -> client: will not run this attempt, and why (a code from spec)."""

    TYPE: ClassVar[str] = "decline"
    job_id: bytes
    attempt: int
    reason: str
    detail: str

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "decline.job_id", "not a SHA-256 multihash")
        _require(0 < len(self.reason) <= 64, "decline.reason", "must be 1..64 chars")
        _require(len(self.detail) <= 512, "decline.detail", "longer than 512")


@dataclass(frozen=True)
class Assignment(Message):
    """Client -> worker: the job is yours (with K-1 others), funded under `terms_hash`."""

    TYPE: ClassVar[str] = "assignment"
    job_id: bytes
    attempt: int
    worker: str  # DID of the worker assigned
    workers: tuple[str, ...]  # DIDs of all K workers of this attempt, in slot order
    payouts: tuple[int, ...]  # wei per worker, in slot order
    terms_hash: bytes  # keccak of the escrow terms (spec/settlement.md)
    chain_job_id: bytes  # the escrow key of this attempt
    terms: dict[str, Any]  # the full escrow terms, so the worker can check and claim
    escrow_tx: bytes  # transaction that opened the escrow (empty if not on chain yet)

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "assignment.job_id", "not a SHA-256 multihash")
        _require(self.worker in self.workers, "assignment.worker", "not among workers")
        _require(len(self.workers) == len(self.payouts), "assignment", "workers != payouts")
        _require(len(set(self.workers)) == len(self.workers), "assignment", "duplicate worker")
        _require(all(p >= 0 for p in self.payouts), "assignment.payouts", "negative")
        _require(len(self.terms_hash) == 32, "assignment.terms_hash", "not 32 bytes")
        _require(len(self.chain_job_id) == 32, "assignment.chain_job_id", "not 32 bytes")


@dataclass(frozen=True)
class Accept(Message):
    """Worker -> client: I checked the escrow and start now."""

    TYPE: ClassVar[str] = "accept"
    job_id: bytes
    attempt: int
    terms_hash: bytes

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "accept.job_id", "not a SHA-256 multihash")
        _require(len(self.terms_hash) == 32, "accept.terms_hash", "not 32 bytes")


@dataclass(frozen=True)
class Heartbeat(Message):
    """Worker -> client while running: alive, and how far along."""

    TYPE: ClassVar[str] = "heartbeat"
    job_id: bytes
    attempt: int
    phase: str
    progress: float

    def _check(self) -> None:
        _require(0.0 <= self.progress <= 1.0, "heartbeat.progress", "must be 0..1")
        _require(len(self.phase) <= 32, "heartbeat.phase", "longer than 32")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ResultCommit(Message):
    """Worker: commitment = keccak(result_hash, worker address, salt); no result yet."""

    TYPE: ClassVar[str] = "result_commit"
    job_id: bytes
    attempt: int
    commitment: bytes

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "result_commit.job_id", "not a SHA-256 multihash")
        _require(len(self.commitment) == 32, "result_commit.commitment", "not 32 bytes")


@dataclass(frozen=True)
class ResultReveal(Message):
    """Worker: the result manifest (result.json), its hash and the commit salt."""

    TYPE: ClassVar[str] = "result_reveal"
    job_id: bytes
    attempt: int
    manifest: dict[str, Any]
    result_hash: bytes  # protocol.results.result_digest(manifest)
    salt: bytes

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "result_reveal.job_id", "not a SHA-256 multihash")
        _require(len(self.result_hash) == 32, "result_reveal.result_hash", "not 32 bytes")
        _require(len(self.salt) == 32, "result_reveal.salt", "not 32 bytes")


@dataclass(frozen=True)
class RevealCall(Message):
    """Client -> each worker of an attempt with K > 1: every commit is in, reveal now."""

    TYPE: ClassVar[str] = "reveal_call"
    job_id: bytes
    attempt: int

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "reveal_call.job_id", "not a SHA-256 multihash")


@dataclass(frozen=True)
class Verdict(Message):
    """Verifier (the client or a peer): did a worker's result pass, and which checks."""

    TYPE: ClassVar[str] = "verdict"
    job_id: bytes
    attempt: int
    worker: str
    result_hash: bytes
    passed: bool
    checks: dict[str, bool]
    reason: str

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "verdict.job_id", "not a SHA-256 multihash")
        _require(_is_did(self.worker), "verdict.worker", "not a did:key")
        _require(self.passed == all(self.checks.values()), "verdict", "passed != all checks")


@dataclass(frozen=True)
class Receipt(Message):
    """Client: pays these workers for this result; `eip712_sig` is what the chain checks."""

    TYPE: ClassVar[str] = "receipt"
    job_id: bytes
    result_hash: bytes
    workers: tuple[str, ...]  # Ethereum addresses paid
    payouts: tuple[int, ...]
    eip712_sig: bytes

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "receipt.job_id", "not a SHA-256 multihash")
        _require(len(self.workers) == len(self.payouts), "receipt", "workers != payouts")
        _require(all(_is_eth(w) for w in self.workers), "receipt.workers", "bad address")
        _require(all(p >= 0 for p in self.payouts), "receipt.payouts", "negative")
        _require(len(self.eip712_sig) == 65, "receipt.eip712_sig", "not 65 bytes")


MAX_BATCH_ITEMS = 64


@dataclass(frozen=True)
class Batch(Message):
    """Several requests to one peer in one round trip, or their replies, in order. A
    request item is an envelope signed by the batch's sender; a reply item is the
    replier's envelope, or the CBOR of a control map (`{"ok": true}`, `{"error": ...}`)."""

    TYPE: ClassVar[str] = "batch"
    items: tuple[bytes, ...]

    def _check(self) -> None:
        _require(
            0 < len(self.items) <= MAX_BATCH_ITEMS,
            "batch.items",
            f"must hold 1..{MAX_BATCH_ITEMS} items",
        )
        _require(all(len(item) > 0 for item in self.items), "batch.items", "an empty item")


@dataclass(frozen=True)
class DisputeOpen(Message):
    """Client or worker: freeze this job for the arbiter; evidence = envelope hashes."""

    TYPE: ClassVar[str] = "dispute_open"
    job_id: bytes
    reason: str
    evidence: tuple[bytes, ...]  # SHA-256 of evidence blobs the arbiter fetches
    sizes: tuple[int, ...]  # their sizes in bytes, in the same order

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "dispute_open.job_id", "not a SHA-256 multihash")
        _require(0 < len(self.reason) <= 1024, "dispute_open.reason", "must be 1..1024 chars")
        _require(len(self.evidence) <= 64, "dispute_open.evidence", "more than 64 items")
        _require(len(self.sizes) == len(self.evidence), "dispute_open.sizes", "one per item")
        _require(all(len(h) == 32 for h in self.evidence), "dispute_open.evidence", "bad hash")


@dataclass(frozen=True)
class JobEvent(Message):
    """One transition in a node's append-only, hash-chained job log."""

    TYPE: ClassVar[str] = "job_event"
    job_id: bytes
    attempt: int
    state: str
    worker_did: str | None
    artifact_hash: bytes | None
    duration_ms: int | None
    exit_code: int | None
    timestamp: int  # ms since the Unix epoch
    prompt_hash: bytes | None  # inference events carry this, never the prompt
    prev: bytes  # SHA-256 of the previous event envelope in this log (32 zero bytes first)
    detail: dict[str, Any]

    def _check(self) -> None:
        _require(_is_job_id(self.job_id), "job_event.job_id", "not a SHA-256 multihash")
        _require(self.state in _EVENT_STATES, "job_event.state", f"unknown {self.state!r}")
        _require(len(self.prev) == 32, "job_event.prev", "not 32 bytes")
        _require("prompt" not in self.detail, "job_event.detail", "never carries a prompt")


MESSAGE_TYPES: Mapping[str, type[Message]] = types.MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            CapabilityAd,
            JobSpecMessage,
            Offer,
            Bid,
            Decline,
            Assignment,
            Accept,
            Heartbeat,
            ResultCommit,
            ResultReveal,
            RevealCall,
            Verdict,
            Receipt,
            Batch,
            DisputeOpen,
            JobEvent,
        )
    }
)


def message_from_body(type_name: str, body: Any) -> Message:
    """Build the message of `type_name` from a decoded body, or raise InvalidMessage."""
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise InvalidMessage(f"unknown message type {type_name!r}")
    return cls.from_body(body)
