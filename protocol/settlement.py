"""Settlement rules without I/O: escrow terms, their hashes, commit hashes and EIP-712 receipts.

Everything here mirrors protocol/contracts/escrow.vy bit for bit (spec/settlement.md):
the node validates with these functions before it spends gas, and tests check that the
contract computes the same hashes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys import keys  # type: ignore[attr-defined]
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from protocol.errors import C0Error

ZERO_ADDRESS = "0x" + "00" * 20
MAX_WORKERS = 5
MAX_BATCH = 64
MAX_GROUPS = 8
MAX_DEPTH = 6  # 2**MAX_DEPTH == MAX_BATCH
ZERO32 = bytes(32)
SHA256_MULTIHASH_PREFIX = b"\x12\x20"
# secp256k1 group order / 2: the contract refuses signatures with a larger s (EIP-2)
HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

# CHALLENGE_PERIOD and RULING_PERIOD of the escrows a local testnet deploys (seconds; a
# public deployment chooses hours and days: spec/settlement.md, "Dispute and resolution")
DEV_CHALLENGE_PERIOD = 30
DEV_RULING_PERIOD = 300

DOMAIN_NAME = "c0-escrow"
DOMAIN_VERSION = "1"
ASSIGNMENT_ABI = "(address,uint256,uint256)"
COMMON_ABI = "(address,address,uint256,uint256,uint256,uint256,address)"
REF_ABI = "(uint256,uint256,uint256,bytes32[])"
RELEASE_TYPES: dict[str, list[dict[str, str]]] = {
    "Release": [
        {"name": "escrows", "type": "uint256[]"},
        {"name": "expires", "type": "uint256"},
    ]
}
CONSENT_TYPES: dict[str, list[dict[str, str]]] = {
    "Consent": [
        {"name": "job", "type": "bytes32"},
        {"name": "client", "type": "address"},
        {"name": "arbiter", "type": "address"},
        {"name": "quorum", "type": "uint256"},
        {"name": "workers", "type": "uint256"},
        {"name": "commit_deadline", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
        {"name": "payout", "type": "uint256"},
        {"name": "stake_lock", "type": "uint256"},
    ]
}
_CONSENT_TYPEHASH = bytes(
    keccak(
        (
            "Consent("
            + ",".join(f"{f['type']} {f['name']}" for f in CONSENT_TYPES["Consent"])
            + ")"
        ).encode()
    )
)
_DOMAIN_TYPEHASH = bytes(
    keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
)

# on-chain status of an escrow, as `status(seq)` and `job_status(terms, ref)` return it
STATUS_UNKNOWN, STATUS_OPEN, STATUS_DISPUTED, STATUS_SETTLED = 0, 1, 2, 3


class SettlementError(C0Error):
    """An escrow call the contract refuses (or would refuse); `reason` is its revert text."""

    code = "settlement_error"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"escrow refused: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class ChainUnavailable(SettlementError):
    """The chain could not be asked: its RPC endpoint refused the connection, timed out or
    answered garbage. A local failure, never the fault of a peer whose message this node
    was handling (the boundary refuses that message without penalising anyone), and
    never a refusal by the contract: the same call may succeed later."""

    code = "chain_unavailable"

    def __init__(self, detail: str = "") -> None:
        super().__init__("chain unreachable", detail)


@dataclass(frozen=True)
class Assignment:
    """One assigned worker: what it is paid on success and how much of its stake is locked."""

    worker: str
    payout: int
    stake_lock: int = 0

    def as_abi(self) -> tuple[str, int, int]:
        return (to_checksum_address(self.worker), self.payout, self.stake_lock)


@dataclass(frozen=True)
class Common:
    """Terms a group of jobs shares: client, verifier fee, quorum, deadlines (unix s), arbiter."""

    client: str
    arbiter: str
    commit_deadline: int
    deadline: int
    quorum: int = 1
    verifier: str = ZERO_ADDRESS
    verifier_fee: int = 0

    def as_abi(self) -> tuple[str, str, int, int, int, int, str]:
        return (
            to_checksum_address(self.client),
            to_checksum_address(self.verifier),
            self.verifier_fee,
            self.quorum,
            self.commit_deadline,
            self.deadline,
            to_checksum_address(self.arbiter),
        )


@dataclass(frozen=True)
class EscrowRef:
    """Where an opened escrow sits: its batch (the sequence number of the batch's first job
    and the batch's size), its position in the batch, and the Merkle proof of its terms."""

    first: int
    size: int
    index: int
    proof: tuple[bytes, ...]

    @property
    def seq(self) -> int:
        """The escrow's sequence number: what receipts and `status(seq)` name."""
        return self.first + self.index

    def as_abi(self) -> tuple[int, int, int, list[bytes]]:
        return (self.first, self.size, self.index, list(self.proof))


@dataclass(frozen=True)
class Consent:
    """What a worker signs before a client may lock its stake (EIP-712 `Consent`): the
    attempt's escrow key, the client, the arbiter, the quorum out of how many workers, both
    deadlines, and its own payout and stake lock. The contract's `open` recomputes it from
    the terms and requires the worker's signature wherever `stake_lock` is not zero."""

    job: bytes
    client: str
    arbiter: str
    quorum: int
    workers: int
    commit_deadline: int
    deadline: int
    payout: int
    stake_lock: int

    def encoding(self) -> bytes:
        """abi.encode(CONSENT_TYPEHASH, ...fields): the EIP-712 struct's encoding."""
        return b"".join(
            (
                _CONSENT_TYPEHASH,
                _bytes32(self.job),
                _address_word(self.client),
                _address_word(self.arbiter),
                _uint_word(self.quorum),
                _uint_word(self.workers),
                _uint_word(self.commit_deadline),
                _uint_word(self.deadline),
                _uint_word(self.payout),
                _uint_word(self.stake_lock),
            )
        )

    def typed_data(self, chain_id: int, contract: str) -> dict[str, Any]:
        """The full EIP-712 message (for wallets and cross-checks; `consent_digest` is the
        fast path)."""
        return {
            "types": {"EIP712Domain": _DOMAIN_FIELDS, **CONSENT_TYPES},
            "primaryType": "Consent",
            "domain": _domain(chain_id, contract),
            "message": {
                "job": self.job,
                "client": to_checksum_address(self.client),
                "arbiter": to_checksum_address(self.arbiter),
                "quorum": self.quorum,
                "workers": self.workers,
                "commit_deadline": self.commit_deadline,
                "deadline": self.deadline,
                "payout": self.payout,
                "stake_lock": self.stake_lock,
            },
        }


def consent_for(terms: EscrowTerms, index: int) -> Consent:
    """The `Consent` the worker of `terms.assignments[index]` signs for these terms."""
    c, a = terms.common, terms.assignments[index]
    return Consent(
        job=terms.job_id,
        client=c.client,
        arbiter=c.arbiter,
        quorum=c.quorum,
        workers=len(terms.assignments),
        commit_deadline=c.commit_deadline,
        deadline=c.deadline,
        payout=a.payout,
        stake_lock=a.stake_lock,
    )


@dataclass(frozen=True)
class EscrowTerms:
    """Everything the escrow commits to for one job; the same object is passed on every call.

    `ref` says where the escrow sits once opened (EscrowClient.open fills it in); it is not
    part of the terms and not hashed.
    """

    job_id: bytes  # 32 bytes: the SHA-256 digest of the canonical job spec
    common: Common
    assignments: tuple[Assignment, ...]
    ref: EscrowRef | None = field(default=None, compare=False)
    # Each worker's 64-byte compact signature of its `Consent` (b"" where its stake lock is
    # zero), in assignment order; passed to `open` only, not part of the terms.
    consents: tuple[bytes, ...] = field(default=(), compare=False)

    def located(self) -> EscrowRef:
        """The escrow's ref; SettlementError if these terms were never opened."""
        if self.ref is None:
            raise SettlementError("unknown job", "terms carry no escrow ref (never opened?)")
        return self.ref

    @property
    def escrowed(self) -> int:
        """What leaves the client's free balance when the job is opened."""
        return sum(a.payout for a in self.assignments) + self.common.verifier_fee

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(to_checksum_address(a.worker) for a in self.assignments)


def onchain_job_id(job_id: bytes) -> bytes:
    """The bytes32 the contract uses for a job: the digest inside a SHA-256 multihash."""
    if len(job_id) == 34 and job_id[:2] == SHA256_MULTIHASH_PREFIX:
        return job_id[2:]
    if len(job_id) == 32:
        return job_id
    raise SettlementError("bad job id", "expected a 34-byte SHA-256 multihash or a 32-byte digest")


def _address_word(address: str) -> bytes:
    raw = bytes.fromhex(address[2:] if address[:2] in ("0x", "0X") else address)
    if len(raw) != 20:
        raise ValueError(f"not an address: {address!r}")
    return bytes(12) + raw


def _uint_word(value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**256:
        raise ValueError(f"not a uint256: {value!r}")
    return value.to_bytes(32, "big")


def _bytes32(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"not 32 bytes: {value!r}")
    return value


def _common_encoding(common: Common) -> bytes:
    """abi.encode of the Common struct: all its fields are static, one word each."""
    return b"".join(
        (
            _address_word(common.client),
            _address_word(common.verifier),
            _uint_word(common.verifier_fee),
            _uint_word(common.quorum),
            _uint_word(common.commit_deadline),
            _uint_word(common.deadline),
            _address_word(common.arbiter),
        )
    )


def common_hash(common: Common) -> bytes:
    """keccak256(abi.encode(common)). Encoded word by word: eth_abi's general encoder
    (validation, registry look-ups per value) made terms hashing a visible share of a
    node's CPU per job (every open, assignment and Merkle proof hashes terms); a test
    checks the bytes equal eth_abi's."""
    return bytes(keccak(_common_encoding(common)))


def terms_encoding(terms: EscrowTerms) -> bytes:
    """abi.encode(bytes32 job_id, bytes32 common_hash, (address,uint256,uint256)[])."""
    parts = [
        _bytes32(terms.job_id),
        common_hash(terms.common),
        _uint_word(96),  # offset of the dynamic array: after the three head words
        _uint_word(len(terms.assignments)),
    ]
    for a in terms.assignments:
        parts += (_address_word(a.worker), _uint_word(a.payout), _uint_word(a.stake_lock))
    return b"".join(parts)


def terms_hash(terms: EscrowTerms) -> bytes:
    """keccak256(abi.encode(job_id, common_hash, assignments)): the escrow's commitment."""
    return bytes(keccak(terms_encoding(terms)))


# ---------------------------------------------------------------- batch Merkle trees


def _node(left: bytes, right: bytes) -> bytes:
    return bytes(keccak(left + right))


def _depth(size: int) -> int:
    depth = 0
    while (1 << depth) < size:
        depth += 1
    return depth


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The contract's `_root`: pairs hashed level by level, an odd node out paired with zero."""
    _require(0 < len(leaves) <= MAX_BATCH, f"a batch holds 1 to {MAX_BATCH} jobs")
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(ZERO32)
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """The siblings from leaf `index` up to the root (zero where a node had no pair)."""
    level = list(leaves)
    proof: list[bytes] = []
    while len(level) > 1:
        if len(level) % 2:
            level.append(ZERO32)
        proof.append(level[index ^ 1])
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        index //= 2
    return tuple(proof)


def batch_commitment(root: bytes, size: int) -> bytes:
    """What `open` stores for a batch: keccak256(root ‖ uint256(size))."""
    return bytes(keccak(root + size.to_bytes(32, "big")))


def root_from_ref(leaf: bytes, ref: EscrowRef) -> bytes | None:
    """The root a ref's proof leads to from `leaf`, or None if the ref is malformed."""
    if not 0 <= ref.index < ref.size <= MAX_BATCH or len(ref.proof) != _depth(ref.size):
        return None
    node, index = leaf, ref.index
    for sibling in ref.proof:
        node = _node(node, sibling) if index % 2 == 0 else _node(sibling, node)
        index //= 2
    return node


def merkle_proofs(leaves: Sequence[bytes]) -> list[tuple[bytes, ...]]:
    """`merkle_proof` of every leaf, the tree built once (n log n hashes, not n²)."""
    proofs: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))  # each leaf's index in the current level
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(ZERO32)
        for leaf, index in enumerate(positions):
            proofs[leaf].append(level[index ^ 1])
            positions[leaf] = index // 2
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return [tuple(p) for p in proofs]


def locate_batch(batch: Sequence[EscrowTerms], first: int) -> list[EscrowTerms]:
    """`batch` as `open` numbered it (sorted by job ID, from `first`), each with its ref."""
    ordered = sorted(batch, key=lambda t: t.job_id)
    proofs = merkle_proofs([terms_hash(t) for t in ordered])
    return [
        replace(t, ref=EscrowRef(first, len(ordered), i, proofs[i])) for i, t in enumerate(ordered)
    ]


def commit_hash(result_hash: bytes, worker: str, salt: bytes) -> bytes:
    """keccak256(abi.encode(result_hash, worker, salt)): binds a result to its worker.
    Three static words, so encoded word by word (eth_abi took ~0.2 ms a call; a client
    checks one per reveal)."""
    _require(
        isinstance(result_hash, bytes) and isinstance(salt, bytes),
        "result hash and salt are bytes",
    )
    _require(len(result_hash) == 32 and len(salt) == 32, "result hash and salt are 32 bytes")
    try:
        worker_word = _address_word(worker)
    except (ValueError, TypeError, AttributeError):
        raise SettlementError(f"not an address: {worker!r}") from None
    return bytes(keccak(result_hash + worker_word + salt))


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise SettlementError(reason)


def validate_terms(terms: EscrowTerms, *, now: int) -> None:
    """Raise SettlementError with the contract's own reason if `open` would refuse `terms`."""
    c = terms.common
    _require(len(terms.job_id) == 32, "bad job id")
    _require(terms.job_id != bytes(32), "zero job id")
    _require(int(c.arbiter, 16) != 0, "zero address")
    _require(int(c.verifier, 16) != 0 or c.verifier_fee == 0, "zero address")
    _require(c.quorum > 0, "quorum must be at least 1")
    _require(c.commit_deadline > now, "deadlines must lie in the future")
    _require(c.deadline > c.commit_deadline, "deadline must follow the commit deadline")
    n = len(terms.assignments)
    _require(n > 0, "no workers")
    _require(n <= MAX_WORKERS, f"at most {MAX_WORKERS} workers")
    _require(c.quorum <= n, "quorum above the number of workers")
    seen: set[int] = set()
    for a in terms.assignments:
        _require(int(a.worker, 16) != 0, "zero address")
        _require(int(a.worker, 16) not in seen, "duplicate worker")
        seen.add(int(a.worker, 16))
        _require(a.payout >= 0 and a.stake_lock >= 0, "negative amount")


def validate_split(
    terms: EscrowTerms, worker_pay: Sequence[int], slash: Sequence[int], verifier_pay: int
) -> None:
    """Raise SettlementError if an arbiter's split is one the contract refuses."""
    n = len(terms.assignments)
    _require(len(worker_pay) == n and len(slash) == n, "one amount per worker")
    for a, cut in zip(terms.assignments, slash, strict=True):
        _require(0 <= cut <= a.stake_lock, "slash above the stake lock")
    _require(all(p >= 0 for p in worker_pay) and verifier_pay >= 0, "negative amount")
    _require(sum(worker_pay) + verifier_pay <= terms.escrowed, "split exceeds the escrow")


def group_terms(
    batch: Iterable[EscrowTerms],
) -> tuple[list[tuple[Any, ...]], list[tuple[bytes, int, list[tuple[str, int, int]]]]]:
    """Split a batch into the contract's `(commons, jobs)` arguments (shared terms sent once),
    jobs in the order given."""
    commons: list[Common] = []
    jobs: list[tuple[bytes, int, list[tuple[str, int, int]]]] = []
    for t in batch:
        if t.common not in commons:
            commons.append(t.common)
        jobs.append((t.job_id, commons.index(t.common), [a.as_abi() for a in t.assignments]))
    _require(0 < len(jobs) <= MAX_BATCH, f"a batch holds 1 to {MAX_BATCH} jobs")
    _require(len(commons) <= MAX_GROUPS, f"a batch holds at most {MAX_GROUPS} distinct commons")
    return [c.as_abi() for c in commons], jobs


def open_args(batch: Sequence[EscrowTerms]) -> tuple[Any, Any, list[list[bytes]]]:
    """The contract's `(commons, jobs, consents)` arguments of `open`, jobs in the order given."""
    commons, jobs = group_terms(batch)
    return commons, jobs, [consent_words(t) for t in batch]


def job_abi(terms: EscrowTerms) -> tuple[bytes, int, list[tuple[str, int, int]]]:
    """The `Job` argument of the single-job calls (group index 0)."""
    return (terms.job_id, 0, [a.as_abi() for a in terms.assignments])


def job_args_encoding(terms: EscrowTerms) -> bytes:
    """abi.encode(Common c, Job job, Ref ref): the arguments of the single-job views and
    calls (`job_status`, ...) with `job_abi`'s group 0. Word by word, like
    `terms_encoding`: a worker reads a job's status on every assignment and payment."""
    ref = terms.located()
    job = b"".join(
        [
            _bytes32(terms.job_id),
            _uint_word(0),  # group
            _uint_word(96),  # offset of the assignments, after the three head words
            _uint_word(len(terms.assignments)),
            *(
                _address_word(a.worker) + _uint_word(a.payout) + _uint_word(a.stake_lock)
                for a in terms.assignments
            ),
        ]
    )
    located = b"".join(
        [
            _uint_word(ref.first),
            _uint_word(ref.size),
            _uint_word(ref.index),
            _uint_word(128),  # offset of the proof, after the four head words
            _uint_word(len(ref.proof)),
            *(_bytes32(p) for p in ref.proof),
        ]
    )
    head = 9 * 32  # c inline (seven static words), then the offsets of job and ref
    return b"".join(
        [
            _common_encoding(terms.common),
            _uint_word(head),
            _uint_word(head + len(job)),
            job,
            located,
        ]
    )


# ---------------------------------------------------------------- EIP-712 receipts

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def _domain(chain_id: int, contract: str) -> dict[str, Any]:
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(contract),
    }


_DOMAINS: dict[tuple[int, str], bytes] = {}


def domain_separator(chain_id: int, contract: str) -> bytes:
    """The escrow's EIP-712 domain separator (its `domain_separator()` view); cached."""
    key = (chain_id, contract.lower())
    found = _DOMAINS.get(key)
    if found is None:
        found = bytes(
            keccak(
                _DOMAIN_TYPEHASH
                + bytes(keccak(DOMAIN_NAME.encode()))
                + bytes(keccak(DOMAIN_VERSION.encode()))
                + _uint_word(chain_id)
                + _address_word(contract)
            )
        )
        if len(_DOMAINS) < 64:
            _DOMAINS[key] = found
    return found


def consent_digest(chain_id: int, contract: str, consent: Consent) -> bytes:
    """keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(Consent)), word by word."""
    struct_hash = bytes(keccak(consent.encoding()))
    return bytes(keccak(b"\x19\x01" + domain_separator(chain_id, contract) + struct_hash))


def sign_consent(private_key: bytes, chain_id: int, contract: str, consent: Consent) -> bytes:
    """A worker's consent: the 64-byte compact signature (EIP-2098: r ‖ yParity·2²⁵⁵ + s)."""
    signed = Account.unsafe_sign_hash(consent_digest(chain_id, contract, consent), private_key)
    r, s, v = int(signed.r), int(signed.s), int(signed.v)
    return r.to_bytes(32, "big") + ((v - 27) << 255 | s).to_bytes(32, "big")


def recover_consent_signer(signature: bytes, chain_id: int, contract: str, consent: Consent) -> str:
    """Who signed `consent` (checksummed), with the contract's rules; SettlementError if the
    signature is malformed."""
    _require(isinstance(signature, bytes) and len(signature) == 64, "malformed consent")
    r = int.from_bytes(signature[:32], "big")
    vs = int.from_bytes(signature[32:], "big")
    s, parity = vs & ((1 << 255) - 1), vs >> 255
    _require(r > 0 and 0 < s <= HALF_N, "malformed consent")
    try:
        public = keys.Signature(vrs=(parity, r, s)).recover_public_key_from_msg_hash(
            consent_digest(chain_id, contract, consent)
        )
    except Exception as exc:  # eth-keys raises several types for unrecoverable input
        raise SettlementError("malformed consent") from exc
    return str(public.to_checksum_address())


def consent_words(terms: EscrowTerms) -> list[bytes]:
    """The `consents` entry `open` takes for one job: two words per assignment (zero words
    where no consent is given)."""
    words: list[bytes] = []
    for i in range(len(terms.assignments)):
        sig = terms.consents[i] if i < len(terms.consents) else b""
        _require(len(sig) in (0, 64), "malformed consent")
        words += (sig[:32], sig[32:]) if sig else (ZERO32, ZERO32)
    return words


def release_typed_data(
    chain_id: int, contract: str, seqs: Sequence[int], expires: int
) -> dict[str, Any]:
    """The full EIP-712 message a client signs to release the escrows numbered `seqs` on one
    chain and contract."""
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, **RELEASE_TYPES},
        "primaryType": "Release",
        "domain": _domain(chain_id, contract),
        "message": {"escrows": list(seqs), "expires": expires},
    }


def release_digest(chain_id: int, contract: str, seqs: Sequence[int], expires: int) -> bytes:
    signable = encode_typed_data(full_message=release_typed_data(chain_id, contract, seqs, expires))
    # EIP-191 version 0x01: keccak256(0x19 0x01 domainSeparator hashStruct(message))
    return bytes(keccak(b"\x19" + signable.version + signable.header + signable.body))


def sign_release(
    private_key: bytes | str, chain_id: int, contract: str, seqs: Sequence[int], expires: int
) -> bytes:
    """The client's 65-byte receipt signature (r ‖ s ‖ v, v in {27, 28})."""
    signable = encode_typed_data(full_message=release_typed_data(chain_id, contract, seqs, expires))
    signed = Account.sign_message(signable, private_key)
    return bytes(signed.signature)


def recover_release_signer(
    signature: bytes, chain_id: int, contract: str, seqs: Sequence[int], expires: int
) -> str:
    """The address that signed a receipt, with the contract's malleability rules."""
    _require(len(signature) == 65, "malformed signature")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    _require(signature[64] in (27, 28) and 0 < s <= HALF_N and r > 0, "malformed signature")
    signable = encode_typed_data(full_message=release_typed_data(chain_id, contract, seqs, expires))
    try:
        return str(Account.recover_message(signable, signature=signature))
    except Exception as exc:  # eth-keys raises several types for unrecoverable input
        raise SettlementError("bad signature") from exc
