"""No peer can stop or blind a node (issue 18, item 7).

Every message type, with every field mutated (wrong type, missing, huge, nested), signed
validly by the peer that sends it (a hostile peer signs what it likes), goes to every
role of a running swarm: the worker (from a hostile client that has a pending offer
there), the client (signed by the worker of a live job) and the arbiter (from a hostile
peer that serves the dispute bundles it cites, themselves mutated). Then a few mutations
of the envelope, the frame and the batch. Each ends in a typed refusal (penalised when it
is the peer's fault) or, for a mutation that still makes a valid message, in the
handler's ordinary answer; never in `bad_request` (an exception nobody raised on purpose,
caught by the boundary of node/net/negotiate.py), never in a lifecycle task failing (the
swarm fixture asserts `task_failures == 0`). Afterwards an honest job still settles and
the money invariants hold (the fixture checks them).

The mutations are generated from the message definitions (protocol/messages.py): the
cases are counted in `test_the_matrix_covers_every_type_and_field`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.app import Node, now_ms
from node.config import NodeConfig
from node.lifecycle import Lifecycle, LifecycleSettings
from node.lifecycle.escrow import terms_to_json
from node.net.blobs import BLOB_PROTOCOL
from node.net.framing import FrameReader, decode_control, encode_frame, is_control
from node.net.negotiate import NEGOTIATE_PROTOCOL
from node.net.penalties import PENALTY_WEIGHTS
from node.net.streams import ByteStream
from protocol import codec
from protocol.consent import attempt_chain_id
from protocol.envelope import _protected_header, _sig_structure, open_envelope
from protocol.identity import Identity
from protocol.jobs import JobSpec, JobTemplate
from protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Accept,
    Assignment,
    Batch,
    Bid,
    CapabilityAd,
    Decline,
    DisputeOpen,
    Heartbeat,
    JobEvent,
    JobSpecMessage,
    Message,
    Offer,
    Receipt,
    ResultCommit,
    ResultReveal,
    RevealCall,
    Verdict,
)
from protocol.settlement import Assignment as EscrowAssignment
from protocol.settlement import Common, EscrowTerms
from tests.lifecycle.conftest import Swarm, memory_swarm, offering, submit_noop, wait_state
from tests.net.conftest import ident, wait_for

# ---------------------------------------------------------------- mutations

_MB = 1 << 20


def _deep_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _deep_map(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"a": value}
    return value


# Values put in place of a field, by kind. Each kind is tried on every field; one that
# happens to have the field's own type makes a message that may still be valid.
WRONG: dict[str, Any] = {
    "int": 7,
    "negative": -1,
    "zero": 0,
    "text": "x",
    "empty_text": "",
    "bytes": b"\x00",
    "empty_bytes": b"",
    "list": [1, "a"],
    "empty_list": [],
    "map": {"k": 1},
    "int_keys": {1: 2},
    "null": None,
    "bool": True,
    "float": 1.5,
    "tag": codec.CBORTag(18, b"x"),
}
HUGE: dict[str, Any] = {
    "text_200k": "x" * 200_000,
    "bytes_200k": b"\xff" * 200_000,
    "text_1M": "x" * _MB,  # past the frame limit: refused before the signature
    "uint64_max": 2**64 - 1,
    "nint64_min": -(2**64),
    "bignum_2_256": codec.CBORTag(2, (2**256).to_bytes(33, "big")),
    "list_10k": [0] * 10_000,
    "list_4k_text": ["abcdefgh"] * 4000,
    "map_10k": {f"k{i}": i for i in range(10_000)},
}
NESTED: dict[str, Any] = {
    "list_depth_12": _deep_list(12),
    "list_depth_300": _deep_list(300),
    "map_depth_12": _deep_map(12),
    "map_depth_300": _deep_map(300),
    "mixed": {"a": [{"b": [b"", None, 1.5, {"c": []}]}]},
}
MUTANTS: dict[str, Any] = {
    **{f"wrong:{k}": v for k, v in WRONG.items()},
    **{f"huge:{k}": v for k, v in HUGE.items()},
    **{f"nested:{k}": v for k, v in NESTED.items()},
}
# Inside maps that are themselves fields (a spec, terms, a manifest): a smaller set.
SUB_MUTANTS: dict[str, Any] = {
    k: MUTANTS[k]
    for k in (
        "wrong:int",
        "wrong:negative",
        "wrong:text",
        "wrong:bytes",
        "wrong:list",
        "wrong:map",
        "wrong:null",
        "wrong:float",
        "huge:text_200k",
        "huge:uint64_max",
        "huge:list_4k_text",
        "nested:map_depth_12",
    )
}
_MISSING = object()


def mutations(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, mutated body) for every field of a message body: missing, each mutant,
    and one level down into the maps (and lists of maps) a field holds; plus an unknown
    field and a body that is not a map."""
    for name, value in body.items():
        yield f"{name}:missing", {k: v for k, v in body.items() if k != name}
        for kind, mutant in MUTANTS.items():
            yield f"{name}:{kind}", {**body, name: mutant}
        for path, sub in _inner(value, depth=2):
            yield f"{name}{path}", {**body, name: sub}
    yield "extra_field", {**body, "zz_extra": 1}
    yield "body:list", [body]  # type: ignore[misc]
    yield "body:null", None  # type: ignore[misc]


def _inner(value: Any, depth: int) -> Iterator[tuple[str, Any]]:
    """Mutations inside a map or a list of maps: (path, mutated value)."""
    if depth == 0:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            rest = {k: v for k, v in value.items() if k != key}
            yield f".{key}:missing", rest
            for kind, mutant in SUB_MUTANTS.items():
                yield f".{key}:{kind}", {**value, key: mutant}
            for path, sub in _inner(item, depth - 1):
                yield f".{key}{path}", {**value, key: sub}
        yield ".zz_extra", {**value, "zz_extra": 1}
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for path, sub in _inner(value[0], depth):
            yield f"[0]{path}", [sub, *value[1:]]


def seal_body(
    identity: Identity,
    type_name: Any,
    body: Any,
    *,
    created: Any = None,
    expires: Any = None,
    nonce: Any = None,
    version: Any = PROTOCOL_VERSION,
    sender: Any = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A validly signed envelope around any payload at all (what a hostile peer can send)."""
    now = now_ms()
    payload_map = {
        "type": type_name,
        "version": version,
        "sender": identity.did if sender is None else sender,
        "nonce": os.urandom(16) if nonce is None else nonce,
        "created": now if created is None else created,
        # long enough for every case of a run to arrive unexpired (they are sealed first)
        "expires": now + 1_200_000 if expires is None else expires,
        "body": body,
        **(extra or {}),
    }
    payload = codec.encode(payload_map)
    protected = _protected_header(identity.did)
    signature = identity.sign(_sig_structure(protected, payload))
    return codec.encode([protected, {}, payload, signature])


# ---------------------------------------------------------------- sending raw bytes


@dataclass
class Reply:
    kind: str  # "error" (a refusal frame), "ok", "message" (a signed reply), "closed"
    reason: str = ""
    message: Message | None = None
    control: dict[str, Any] | None = None


async def ask_raw(stream: ByteStream, frame: bytes) -> Reply:
    """Write one frame on a fresh stream; read the one reply frame."""
    try:
        await stream.write(frame)
        reader = FrameReader(stream, max_size=4 * _MB, read_timeout=30.0)
        payload = await reader.read_frame(first_timeout=30.0)
    except trio.BrokenResourceError:
        return Reply("closed")
    finally:
        await stream.close()
    if payload is None:
        return Reply("closed")
    if is_control(payload):
        ctl = decode_control(payload)
        if "error" in ctl:
            return Reply("error", str(ctl["error"]), control=ctl)
        return Reply("ok", control=ctl)
    return Reply("message", message=open_envelope(payload, now=None).message)


OpenStream = Callable[[str, str], Awaitable[ByteStream]]


@dataclass
class Case:
    role: str  # the receiving role
    type_name: str
    label: str
    frame: bytes  # what goes on the wire
    valid: bool  # the mutated body still makes a valid message of its type
    # what the sender signs and sends from: a function opening a stream to the target
    sender: str = ""


@dataclass
class Outcome:
    seen: Counter[str] = field(default_factory=Counter)
    unforeseen: list[str] = field(default_factory=list)  # bad_request / internal_error
    unpenalised: list[str] = field(default_factory=list)  # a peer fault with no penalty
    silent: list[str] = field(default_factory=list)  # an invalid message answered "ok"

    def problems(self) -> list[str]:
        return self.unforeseen + self.unpenalised + self.silent


def is_valid(type_name: str, body: Any) -> bool:
    """Whether `body`, as it would arrive (CBOR round trip), makes a valid message."""
    from protocol.errors import C0Error

    try:
        decoded = codec.decode(
            codec.encode(body),
            codec.DecodeLimits(max_size=4 * _MB),
            keep_encoded=frozenset({"spec"}),
        )
        MESSAGE_TYPES[type_name].from_body(decoded)
    except (C0Error, TypeError, ValueError):
        return False
    return True


def penalties_of(node: Node, peer: str) -> int:
    entry = node.penalties._peers.get(peer)
    return 0 if entry is None else entry.penalties


async def run_cases(
    cases: list[Case],
    victim: Node,
    open_stream: Callable[[str], Awaitable[ByteStream]],
    outcome: Outcome,
    sender_peer: str,
    *,
    parallel: int = 1,
) -> None:
    """Send each case on its own stream to `victim`; check the answer and the penalty.

    One at a time, each case's penalty is checked on its own. With `parallel` > 1 (over
    libp2p, where a stream costs round trips) that many go at once, and the penalties
    are checked together: at least one per answer that names a peer's fault."""
    if parallel == 1:
        for case in cases:
            before = penalties_of(victim, sender_peer)
            reply = await ask_raw(await open_stream(victim.peer_id), case.frame)
            _judge(case, reply, outcome, penalised=penalties_of(victim, sender_peer) > before)
        return
    before = penalties_of(victim, sender_peer)
    owed = 0
    limit = trio.Semaphore(parallel)

    async def one(case: Case) -> None:
        nonlocal owed
        async with limit:
            reply = await ask_raw(await open_stream(victim.peer_id), case.frame)
        if reply.kind == "error" and reply.reason in PENALTY_WEIGHTS:
            owed += 1
        _judge(case, reply, outcome, penalised=True)

    async with trio.open_nursery() as nursery:
        for case in cases:
            nursery.start_soon(one, case)
    paid = penalties_of(victim, sender_peer) - before
    if paid < owed:
        outcome.unpenalised.append(f"{len(cases)} cases: {owed} peer faults, {paid} penalties")


def _judge(case: Case, reply: Reply, outcome: Outcome, *, penalised: bool) -> None:
    what = f"{case.role}/{case.type_name}/{case.label}: {reply.kind} {reply.reason}"
    outcome.seen[f"{case.role}:{reply.kind}:{reply.reason}"] += 1
    if reply.reason in ("bad_request", "internal_error"):
        outcome.unforeseen.append(what)
    elif reply.kind == "error" and reply.reason in PENALTY_WEIGHTS and not penalised:
        outcome.unpenalised.append(what)
    elif not case.valid and reply.kind in ("ok", "message") and not penalised:
        outcome.silent.append(what)


# ---------------------------------------------------------------- base messages


def spec_for(client: Identity, **params: Any) -> JobSpec:
    template = JobTemplate.from_json({"job_class": "noop", "params": params})
    return template.bind({}, client=client.did, nonce=os.urandom(16))


def offer_for(
    lc: Lifecycle, client: Identity, spec: JobSpec, chain_now: int, attempt: int
) -> Offer:
    assert lc.chain is not None
    return Offer(
        job_id=spec.job_id,
        spec=spec,
        attempt=attempt,
        redundancy=1,
        max_price=10**15,
        deadline=now_ms() + 120_000,
        commit_deadline=now_ms() + 60_000,
        chain_id=lc.chain.chain_id,
        escrow=lc.chain.escrow,
        arbiter=lc.arbiter_address(),
        client_eth=client.eth_address,
        client_eth_sig=client.eth_binding().eth_sig,
        input_providers=(),
        stake_lock=lc.settings.stake_lock_wei,
        escrow_commit_deadline=chain_now + 60,
        escrow_deadline=chain_now + 120,
    )


def base_messages(
    *,
    job_id: bytes,
    attempt: int,
    spec: JobSpec,
    offer: Offer,
    sender: Identity,
    worker: Identity,
    terms: dict[str, Any],
    ad: CapabilityAd,
    evidence: bytes,
    size: int,
) -> dict[str, Message]:
    """One valid message of every type, about one job (`job_id`, `attempt`)."""
    payouts = [int(a["payout"]) for a in terms["assignments"]]
    inner = seal_body(sender, "heartbeat", Heartbeat(job_id, attempt, "run", 0.5).to_body())
    messages: list[Message] = [
        ad,
        JobSpecMessage(spec=spec),
        offer,
        Bid(job_id, attempt, 10**12, 1000, worker.eth_address, {"python": "3"}, (), b""),
        Decline(job_id=job_id, attempt=attempt, reason="busy", detail="later"),
        Assignment(
            job_id=job_id,
            attempt=attempt,
            worker=worker.did,
            workers=(worker.did,),
            payouts=tuple(payouts),
            terms_hash=bytes(32),
            chain_job_id=bytes.fromhex(terms["job_id"]),
            terms=terms,
            escrow_tx=b"",
        ),
        Accept(job_id=job_id, attempt=attempt, terms_hash=bytes(32)),
        Heartbeat(job_id=job_id, attempt=attempt, phase="run", progress=0.5),
        ResultCommit(job_id=job_id, attempt=attempt, commitment=bytes(32)),
        ResultReveal(
            job_id=job_id,
            attempt=attempt,
            manifest={"artifacts": [{"name": "out.bin", "sha256": "ab" * 32, "size": 3}]},
            result_hash=bytes(32),
            salt=bytes(32),
        ),
        RevealCall(job_id=job_id, attempt=attempt),
        Verdict(job_id, attempt, worker.did, bytes(32), True, {"exit": True}, ""),
        Receipt(job_id, bytes(32), (worker.eth_address,), (10**12,), bytes(65)),
        Batch(items=(inner,)),
        DisputeOpen(job_id=job_id, reason="wrong", evidence=(evidence,), sizes=(size,)),
        JobEvent(
            job_id,
            attempt,
            "running",
            worker.did,
            None,
            5,
            None,
            now_ms(),
            None,
            bytes(32),
            {"phase": "run"},
        ),
    ]
    out = {m.TYPE: m for m in messages}
    assert set(out) == set(MESSAGE_TYPES)  # a new message type must get a base here
    return out


def cases_for(role: str, sender: Identity, bases: dict[str, Message]) -> list[Case]:
    """Every type, every field mutation, signed by `sender`, for `role`."""
    cases = []
    for type_name, message in bases.items():
        for label, body in mutations(message.to_body()):
            frame = encode_frame(seal_body(sender, type_name, body))
            cases.append(Case(role, type_name, label, frame, is_valid(type_name, body)))
    return cases


def envelope_cases(role: str, sender: Identity, other: Identity, base: Message) -> list[Case]:
    """Mutations of the envelope, the frame and the batch around a valid `base`."""
    body = base.to_body()
    good = seal_body(sender, base.TYPE, body)
    outer = codec.decode(good)
    protected, _, payload, signature = outer
    now = now_ms()
    raw: dict[str, bytes] = {
        "frame:empty": b"",
        "frame:garbage": b"\x01\x02\x03",
        "frame:control_map": codec.encode({"ok": True}),
        "frame:text": codec.encode("hello"),
        "frame:deep_array": b"\x81" * 100_000 + b"\x00",
        "cose:three_items": codec.encode([protected, {}, payload]),
        "cose:unprotected_header": codec.encode([protected, {1: -8}, payload, signature]),
        "cose:protected_not_map": codec.encode([codec.encode([1]), {}, payload, signature]),
        "cose:wrong_alg": codec.encode(
            [codec.encode({1: -7, 4: sender.did.encode()}), {}, payload, signature]
        ),
        "cose:kid_not_did": codec.encode(
            [codec.encode({1: -8, 4: b"did:key:nope"}), {}, payload, signature]
        ),
        "cose:kid_not_utf8": codec.encode(
            [codec.encode({1: -8, 4: b"\xff\xfe"}), {}, payload, signature]
        ),
        "cose:bad_signature": codec.encode([protected, {}, payload, bytes(64)]),
        "cose:short_signature": codec.encode([protected, {}, payload, b"x"]),
        "cose:payload_not_cbor": _signed_payload(sender, b"\xff\x00"),
        "cose:payload_list": _signed_payload(sender, codec.encode([1, 2])),
        "cose:tagged_bignum_body": _signed_payload(
            sender,
            codec.encode(
                {
                    "type": base.TYPE,
                    "version": 1,
                    "sender": sender.did,
                    "nonce": os.urandom(16),
                    "created": now,
                    "expires": now + 60_000,
                    "body": codec.CBORTag(2, b"\x01" * 40),
                }
            ),
        ),
        "payload:unknown_type": seal_body(sender, "nonsense", body),
        "payload:type_int": seal_body(sender, 7, body),
        "payload:version_2": seal_body(sender, base.TYPE, body, version=2),
        "payload:version_text": seal_body(sender, base.TYPE, body, version="1"),
        "payload:sender_other": seal_body(sender, base.TYPE, body, sender=other.did),
        "payload:sender_int": seal_body(sender, base.TYPE, body, sender=5),
        "payload:nonce_short": seal_body(sender, base.TYPE, body, nonce=b"x"),
        "payload:nonce_text": seal_body(sender, base.TYPE, body, nonce="x" * 16),
        "payload:created_text": seal_body(sender, base.TYPE, body, created="now"),
        "payload:created_float": seal_body(sender, base.TYPE, body, created=1.5),
        "payload:created_huge": seal_body(sender, base.TYPE, body, created=2**64 - 1),
        "payload:expires_huge": seal_body(sender, base.TYPE, body, expires=2**64 - 1),
        "payload:expires_negative": seal_body(sender, base.TYPE, body, expires=-(2**64)),
        "payload:expired": seal_body(
            sender, base.TYPE, body, created=now - 120_000, expires=now - 60_000
        ),
        "payload:future": seal_body(
            sender, base.TYPE, body, created=now + 3_600_000, expires=now + 3_660_000
        ),
        "payload:ttl_too_long": seal_body(
            sender, base.TYPE, body, created=now, expires=now + 48 * 3_600_000
        ),
        "payload:extra_key": seal_body(sender, base.TYPE, body, extra={"zz": 1}),
        "signer:another_peer": seal_body(other, base.TYPE, body),
        "batch:empty": seal_body(sender, "batch", {"items": []}),
        "batch:garbage_items": seal_body(sender, "batch", {"items": [b"\x01", b"\xff"]}),
        "batch:control_item": seal_body(sender, "batch", {"items": [codec.encode({"ok": 1})]}),
        "batch:nested": seal_body(
            sender, "batch", {"items": [seal_body(sender, "batch", {"items": [good]})]}
        ),
        "batch:other_signer": seal_body(
            sender, "batch", {"items": [seal_body(other, base.TYPE, body)]}
        ),
        "batch:65_items": seal_body(sender, "batch", {"items": [good] * 65}),
        "batch:mutated_items": seal_body(
            sender,
            "batch",
            {
                "items": [
                    seal_body(sender, base.TYPE, {**body, "job_id": 5}),
                    seal_body(sender, base.TYPE, None),
                    seal_body(sender, base.TYPE, body),
                    seal_body(sender, base.TYPE, body),  # a replay inside the batch
                ]
            },
        ),
    }
    cases = [Case(role, base.TYPE, label, encode_frame(data), False) for label, data in raw.items()]
    cases.append(Case(role, base.TYPE, "frame:oversized_header", b"\xff\xff\xff\xff\x0f", False))
    cases.append(Case(role, base.TYPE, "frame:non_minimal_varint", b"\x80\x00", False))
    cases.append(Case(role, base.TYPE, "frame:truncated", encode_frame(good)[:-10], False))
    cases.append(Case(role, base.TYPE, "replay", encode_frame(good), True))
    cases.append(Case(role, base.TYPE, "replay:again", encode_frame(good), False))
    return cases


def _signed_payload(sender: Identity, payload: bytes) -> bytes:
    protected = _protected_header(sender.did)
    return codec.encode([protected, {}, payload, sender.sign(_sig_structure(protected, payload))])


def blob_cases() -> list[bytes]:
    """Requests on /c0/blob/1.0.0: control maps of every wrong shape."""
    maps: list[Any] = [
        {},
        {"get": b"\x00" * 32},
        {"get": "ab" * 32, "offset": 0},
        {"get": b"\x00" * 32, "offset": -1},
        {"get": b"\x00" * 32, "offset": 2**64 - 1},
        {"get": b"\x00" * 31, "offset": 0},
        {"get": [1], "offset": {"a": 1}},
        {"get": b"\x00" * 32, "offset": 1.5},
        {"get": b"\x00" * 32, "offset": True},
        {"get": b"\x00" * 32, "offset": 0, "extra": _deep_map(12)},
        {"get": b"\x00" * 32, "offset": 0, "big": "x" * 200_000},
    ]
    frames = [encode_frame(codec.encode(m)) for m in maps]
    frames += [encode_frame(b""), encode_frame(b"\x80"), b"\xff\xff\xff\xff\x0f"]
    return frames


# ---------------------------------------------------------------- the test


def settings(i: int) -> LifecycleSettings:
    if i == 3:
        return LifecycleSettings(execute=False)  # the arbiter runs no jobs
    return LifecycleSettings()


@dataclass
class Hostile:
    """A bare node (no lifecycle) with its own identity: a hostile client to the worker
    and a disputing party to the arbiter (it serves the bundles its disputes cite)."""

    node: Node
    identity: Identity


async def start_hostile(swarm: Swarm, seed: int) -> Hostile:
    identity = ident(seed)
    node = Node(
        identity,
        NodeConfig(),
        swarm.tmp / f"hostile{seed}",
        transport=swarm.hub.transport(identity.peer_id),
    )
    await swarm.nursery.start(node.run)
    return Hostile(node, identity)


def no_bans(*lifecycles: Lifecycle) -> None:
    """Penalties are still counted (and checked), but nobody is banned: every mutation
    must reach the node, not the ban (tests/net covers bans)."""
    for lc in lifecycles:
        lc.node.penalties.ban_threshold = float("-inf")


def bundles(
    spec: JobSpec, arbiter: Identity, client: Identity, terms: dict[str, Any]
) -> list[tuple[str, bytes]]:
    """Dispute bundles (the evidence a DisputeOpen cites): a plausible one, then each
    field mutated, as the arbiter fetches them from the disputing peer."""
    from protocol.jobs import InputRef

    spec_json = {
        "job_class": spec.job_class,
        "params": dict(spec.params),
        "inputs": {n: InputRef.to_json(r) for n, r in spec.inputs.items()},
        "client": client.did,
        "nonce": spec.nonce.hex(),
        "limits": dict(spec.limits),
    }
    base = {
        "spec": spec_json,
        "terms": {**terms, "common": {**terms["common"], "arbiter": arbiter.eth_address}},
        "workers": [],
        "bids": [seal_body(client, "heartbeat", {"x": 1})],
        "reveals": [seal_body(client, "heartbeat", {"x": 1})],
        "inputs": {},
    }
    out: list[tuple[str, bytes]] = [("bundle:plausible", codec.encode(base))]
    for label, body in mutations(base):
        if label.startswith("body:"):
            continue
        try:
            out.append((f"bundle.{label}", codec.encode(body)))
        except Exception:  # a mutant our own encoder refuses (a list 300 deep in a map)
            continue
    out += [
        ("bundle:not_cbor", b"\xff\x00"),
        ("bundle:list", codec.encode([base])),
        ("bundle:text", codec.encode("x")),
        ("bundle:bids_int_10G", codec.encode({**base, "bids": [10**10]})),
        ("bundle:bids_int_huge", codec.encode({**base, "bids": [2**63]})),
        ("bundle:reveals_int", codec.encode({**base, "reveals": [2**40]})),
        ("bundle:unreleased_text", codec.encode({**base, "unreleased": "yes"})),
    ]
    return out


async def test_no_field_of_any_message_stops_a_node(tmp_path: Path) -> None:
    async with memory_swarm(tmp_path, workers=3, settings=settings, arbiter_index=3) as swarm:
        client, worker, arbiter = swarm.client, swarm.lc(1), swarm.lc(3)
        await wait_for(lambda: offering(client) == 2, 60)
        hostile = await start_hostile(swarm, 77)
        other = ident(78)
        no_bans(client, worker, arbiter)
        assert client.escrow is not None
        chain_now = await client.escrow.now()
        outcome = Outcome()
        started = trio.current_time()

        # --- the worker, from a hostile client with a pending offer (a valid bid back)
        h_spec = spec_for(hostile.identity, payload="hostile")
        h_offer = offer_for(worker, hostile.identity, h_spec, chain_now, attempt=1)
        first = await ask_raw(
            await hostile.node.transport.open_stream(worker.node.peer_id, NEGOTIATE_PROTOCOL),
            encode_frame(hostile.node.seal(h_offer)),
        )
        assert first.kind == "message", first
        assert isinstance(first.message, Bid), first
        bid = first.message
        w_ident = swarm.identities[1]
        h_terms = EscrowTerms(
            attempt_chain_id(h_spec.job_id, 1),
            Common(
                client=hostile.identity.eth_address,
                arbiter=worker.arbiter_address(),
                commit_deadline=h_offer.escrow_commit_deadline,
                deadline=h_offer.escrow_deadline,
            ),
            (EscrowAssignment(w_ident.eth_address, bid.price, h_offer.stake_lock),),
        )
        ad_raw = worker.node.build_ad()
        ad = open_envelope(ad_raw, now=None).message
        assert isinstance(ad, CapabilityAd)
        bundle_list = bundles(h_spec, swarm.identities[3], hostile.identity, terms_to_json(h_terms))
        digest = hostile.node.blobs.put_bytes(bundle_list[0][1])

        def bases(
            job_id: bytes, attempt: int, signer: Identity, offer: Offer
        ) -> dict[str, Message]:
            return base_messages(
                job_id=job_id,
                attempt=attempt,
                spec=h_spec,
                offer=offer,
                sender=signer,
                worker=w_ident,
                terms=terms_to_json(h_terms),
                ad=ad,
                evidence=digest,
                size=len(bundle_list[0][1]),
            )

        h_bases = bases(h_spec.job_id, 1, hostile.identity, h_offer)

        async def from_hostile(peer: str) -> ByteStream:
            return await hostile.node.transport.open_stream(peer, NEGOTIATE_PROTOCOL)

        worker_cases = cases_for("worker", hostile.identity, h_bases)
        # the offer last: its valid variants take the hostile client's offer slots
        worker_cases.sort(key=lambda c: c.type_name == "offer")
        worker_cases += envelope_cases("worker", hostile.identity, other, h_bases["heartbeat"])
        await run_cases(worker_cases, worker.node, from_hostile, outcome, hostile.node.peer_id)

        # --- the arbiter: every type from the hostile peer, then disputes citing bundles
        arbiter_cases = cases_for("arbiter", hostile.identity, h_bases)
        arbiter_cases += envelope_cases("arbiter", hostile.identity, other, h_bases["dispute_open"])
        for label, bundle in bundle_list:
            cited = hostile.node.blobs.put_bytes(bundle)
            dispute = DisputeOpen(h_spec.job_id, "wrong", (cited,), (len(bundle),))
            frame = encode_frame(hostile.node.seal(dispute))
            arbiter_cases.append(Case("arbiter", "dispute_open", label, frame, True))
        await run_cases(arbiter_cases, arbiter.node, from_hostile, outcome, hostile.node.peer_id)

        # --- the client, from the worker of a live job (a job that runs for 20 s)
        job_id = submit_noop(client, {"duration_ms": 20_000}, redundancy=1, deadline_s=120)
        await wait_state(client, job_id, {"running", "assigned"}, limit_s=60)
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        number = int(rec.data["attempt"])
        (assigned,) = rec.data["attempts"][str(number)]["workers"]
        index = next(i for i, x in enumerate(swarm.identities) if x.did == assigned["did"])
        live_worker = swarm.identities[index]
        c_bases = bases(job_id, number, live_worker, h_offer)
        side = swarm.hub.transport(live_worker.peer_id)  # speaks as the live job's worker

        async def from_worker(peer: str) -> ByteStream:
            return await side.open_stream(peer, NEGOTIATE_PROTOCOL)

        client_cases = cases_for("client", live_worker, c_bases)
        # valid variants last, a decline (which ends the attempt) after everything else
        client_cases.sort(key=lambda c: (c.valid, c.type_name == "decline"))
        client_cases += envelope_cases("client", live_worker, other, c_bases["heartbeat"])
        await run_cases(client_cases, client.node, from_worker, outcome, live_worker.peer_id)

        # --- the blob service of each role, and the gossip validator of each
        for lc in (worker, client, arbiter):
            for frame in blob_cases():
                stream = await hostile.node.transport.open_stream(lc.node.peer_id, BLOB_PROTOCOL)
                reply = await ask_raw(stream, frame)
                outcome.seen[f"blob:{reply.kind}:{reply.reason}"] += 1
                assert reply.reason not in ("bad_request", "internal_error"), reply
            binding = hostile.identity.eth_binding()
            ad_body = {
                **ad.to_body(),
                "peer_id": hostile.node.peer_id,
                "eth_address": hostile.identity.eth_address,
                "eth_binding_ed25519_sig": binding.ed25519_sig,
                "eth_binding_eth_sig": binding.eth_sig,
            }
            for label, body in mutations(ad_body):
                data = seal_body(hostile.identity, "cap_ad", body)
                lc.node.book._buckets.clear()  # the rate limit would answer them all
                verdict = lc.node._validate_gossip(data, hostile.node.peer_id, hostile.node.peer_id)
                outcome.seen[f"gossip:{verdict.action.value}:{verdict.reason}"] += 1
                if verdict.reason == "bad_request":
                    outcome.unforeseen.append(f"gossip/cap_ad/{label}")

        total = len(worker_cases) + len(arbiter_cases) + len(client_cases)
        took = trio.current_time() - started
        print(f"{total} negotiate cases in {took:.0f} s: {sorted(outcome.seen.items())}")
        assert not outcome.problems(), "\n".join(outcome.problems()[:60])

        # --- every arbitration the disputes started has ended (without a task failure)
        await wait_for(lambda: _arbitrations(arbiter) == 0, 60)
        print(f"arbitrations over after {trio.current_time() - started:.0f} s")
        # --- and the nodes still serve an honest peer: a new job settles
        honest = submit_noop(client, {"payload": "after"}, redundancy=1, deadline_s=120)
        assert await wait_state(client, honest, {"settled"}, limit_s=120) == "settled"
        assert [x.task_failures for x in swarm.lifecycles if x is not None] == [0] * 4


def _arbitrations(lc: Lifecycle) -> int:
    """Tasks of the arbiter's lifecycle still running (it runs no jobs: arbitrations)."""
    nursery = lc._nursery
    assert nursery is not None
    return sum(1 for t in nursery.child_tasks if "_guarded" in t.name)


def test_the_matrix_covers_every_type_and_field() -> None:
    """Every message type and every one of its fields gets every mutation kind."""
    hints_total = 0
    for type_name, cls in MESSAGE_TYPES.items():
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        hints_total += len(names)
        assert typing.get_type_hints(cls)
        body = dict.fromkeys(names, 0)
        labels = [label for label, _ in mutations(body)]
        for name in names:
            assert f"{name}:missing" in labels, (type_name, name)
            for kind in MUTANTS:
                assert f"{name}:{kind}" in labels, (type_name, name, kind)
    assert hints_total >= 90  # 16 types, 98 fields when this was written
