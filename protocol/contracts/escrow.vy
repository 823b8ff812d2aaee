# pragma version 0.4.3
# pragma nonreentrancy on
"""
@title c0 job escrow
@notice Funds a job before work starts and pays it only after verification:
        by a receipt the client signs (EIP-712, batched), by a quorum of
        commit-then-reveal results, by a refund after the deadline, or by the
        arbiter named in the terms after a dispute. A worker's stake is locked only
        on terms the worker signed (an EIP-712 `Consent`), and a dispute the
        arbiter leaves unresolved lapses at a deadline on chain, returning every
        party's own funds. spec/settlement.md is the normative description; this
        file implements it.
@dev    Escrows are numbered: `open` gives the jobs of one call consecutive
        sequence numbers and keeps ONE storage slot for the whole batch, the
        commitment keccak256(root, size) to a Merkle tree whose leaves are the jobs'
        terms hashes. Every later call passes a job's terms and its `Ref` (batch,
        position, Merkle proof) as calldata and the contract recomputes the
        commitment. "Closed" and "disputed" are one bit per sequence number in two
        bitmaps, so settling a batch costs about one storage write, not one per job.
        Money moves by pull payments: payouts credit internal balances and only
        `withdraw` sends ether, so no call here hands control to a payee.
"""

MAX_WORKERS: constant(uint256) = 5
MAX_BATCH: constant(uint256) = 64
MAX_GROUPS: constant(uint256) = 8
MAX_DEPTH: constant(uint256) = 6  # 2**MAX_DEPTH == MAX_BATCH
MAX_CONSENT_WORDS: constant(uint256) = 10  # 2 * MAX_WORKERS: one compact signature each

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
RELEASE_TYPEHASH: constant(bytes32) = keccak256("Release(uint256[] escrows,uint256 expires)")
CONSENT_TYPEHASH: constant(bytes32) = keccak256(
    "Consent(bytes32 job,address client,address arbiter,uint256 quorum,uint256 workers,uint256 commit_deadline,uint256 deadline,uint256 payout,uint256 stake_lock)"
)
DOMAIN_NAME_HASH: constant(bytes32) = keccak256("c0-escrow")
DOMAIN_VERSION_HASH: constant(bytes32) = keccak256("1")
# secp256k1n / 2: signatures with a larger s are malleable copies (EIP-2)
HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080035488
LOW_255_BITS: constant(uint256) = 57896044618658097711785492504343953926634992332820282019728792003956564819967


struct Assignment:
    worker: address
    payout: uint256
    stake_lock: uint256


# terms shared by the jobs of one group (same client, deadlines, verifier, arbiter)
struct Common:
    client: address
    verifier: address
    verifier_fee: uint256
    quorum: uint256
    commit_deadline: uint256
    deadline: uint256
    arbiter: address


struct Job:
    job_id: bytes32
    group: uint256  # index into the `commons` argument; not part of the terms
    assignments: DynArray[Assignment, MAX_WORKERS]


# where a job's escrow sits: its batch (the sequence number of the batch's first job and
# the number of jobs in it), its position there, and the Merkle proof of its terms hash
struct Ref:
    first: uint256
    size: uint256
    index: uint256
    proof: DynArray[bytes32, MAX_DEPTH]


event Deposit:
    account: indexed(address)
    amount: uint256

event Withdraw:
    account: indexed(address)
    amount: uint256

event Staked:
    worker: indexed(address)
    amount: uint256

event Unstaked:
    worker: indexed(address)
    amount: uint256

# batched happy path: one event per call, carrying every job ID (cf. ERC-1155 TransferBatch)
# job i of an Opened event has the sequence number first + i
event Opened:
    client: indexed(address)
    first: uint256
    job_ids: DynArray[bytes32, MAX_BATCH]
    escrowed: uint256

event Released:
    client: indexed(address)
    seqs: DynArray[uint256, MAX_BATCH]
    job_ids: DynArray[bytes32, MAX_BATCH]
    paid: uint256

event Committed:
    job_id: indexed(bytes32)
    worker: indexed(address)
    seq: uint256
    commitment: bytes32

event Revealed:
    job_id: indexed(bytes32)
    worker: indexed(address)
    seq: uint256
    result_hash: bytes32

event Claimed:
    job_id: indexed(bytes32)
    seq: uint256
    result_hash: bytes32
    paid: uint256

event Refunded:
    job_id: indexed(bytes32)
    client: indexed(address)
    seq: uint256
    amount: uint256

event Disputed:
    job_id: indexed(bytes32)
    by: indexed(address)
    seq: uint256

event Resolved:
    job_id: indexed(bytes32)
    arbiter: indexed(address)
    seq: uint256
    to_workers: uint256
    to_verifier: uint256
    to_client: uint256

event Slashed:
    job_id: indexed(bytes32)
    worker: indexed(address)
    seq: uint256
    amount: uint256

# a dispute its arbiter left unresolved past the ruling deadline: own funds back
event Lapsed:
    job_id: indexed(bytes32)
    client: indexed(address)
    seq: uint256
    amount: uint256


TOKEN: public(immutable(address))  # empty(address) = native ether (the only kind today)
# seconds after a job's deadline during which its client or a worker may still dispute;
# claims and refunds wait for it to pass
CHALLENGE_PERIOD: public(immutable(uint256))
# seconds after the challenge period the arbiter has to resolve a dispute; then it lapses
RULING_PERIOD: public(immutable(uint256))
CACHED_CHAIN_ID: immutable(uint256)
CACHED_DOMAIN_SEPARATOR: immutable(bytes32)

balances: public(HashMap[address, uint256])
stakes: public(HashMap[address, uint256])
batches: public(HashMap[uint256, bytes32])  # first seq -> keccak256(root, size)
closed_words: HashMap[uint256, uint256]
disputed_words: HashMap[uint256, uint256]
next_seq: public(uint256)
commitments: public(HashMap[uint256, HashMap[address, bytes32]])  # seq -> worker ->
reveals: public(HashMap[uint256, HashMap[address, bytes32]])
votes: public(HashMap[uint256, HashMap[bytes32, uint256]])
top_votes: public(HashMap[uint256, uint256])


@deploy
def __init__(token: address, challenge_period: uint256, ruling_period: uint256):
    assert token == empty(address), "only native ether is supported"
    assert challenge_period > 0 and ruling_period > 0, "periods must be positive"
    assert challenge_period <= 31536000 and ruling_period <= 31536000, "periods above a year"
    TOKEN = token
    CHALLENGE_PERIOD = challenge_period
    RULING_PERIOD = ruling_period
    CACHED_CHAIN_ID = chain.id
    CACHED_DOMAIN_SEPARATOR = self._domain_separator()


# ---------------------------------------------------------------- balances


@external
@payable
def deposit():
    assert msg.value > 0, "zero amount"
    self.balances[msg.sender] += msg.value
    log Deposit(account=msg.sender, amount=msg.value)


@external
def withdraw(amount: uint256):
    assert amount > 0, "zero amount"
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    self.balances[msg.sender] -= amount
    log Withdraw(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


@external
@payable
def stake():
    assert msg.value > 0, "zero amount"
    self.stakes[msg.sender] += msg.value
    log Staked(worker=msg.sender, amount=msg.value)


@external
def unstake(amount: uint256):
    # only free stake; locked stake left `stakes` when a job was opened
    assert amount > 0, "zero amount"
    assert self.stakes[msg.sender] >= amount, "insufficient stake"
    self.stakes[msg.sender] -= amount
    self.balances[msg.sender] += amount
    log Unstaked(worker=msg.sender, amount=amount)


# ---------------------------------------------------------------- terms


@internal
@pure
def _common_hash(c: Common) -> bytes32:
    return keccak256(abi_encode(c))


@internal
@pure
def _terms_hash(job_id: bytes32, common_hash: bytes32, assignments: DynArray[Assignment, MAX_WORKERS]) -> bytes32:
    return keccak256(abi_encode(job_id, common_hash, assignments))


@internal
@view
def _is_closed(seq: uint256) -> bool:
    return (self.closed_words[seq >> 8] >> (seq & 255)) & 1 == 1


@internal
@view
def _is_disputed(seq: uint256) -> bool:
    return (self.disputed_words[seq >> 8] >> (seq & 255)) & 1 == 1


@internal
def _close(seq: uint256):
    self.closed_words[seq >> 8] |= 1 << (seq & 255)


@internal
@pure
def _depth(size: uint256) -> uint256:
    """Levels above the leaves of a tree of `size` leaves: ceil(log2(size))."""
    depth: uint256 = 0
    for i: uint256 in range(MAX_DEPTH):
        if (1 << depth) >= size:
            break
        depth += 1
    return depth


@internal
@view
def _located(leaf: bytes32, ref: Ref) -> bool:
    """True if `leaf` sits at `ref.index` of the batch `ref.first` as committed by `open`."""
    if ref.index >= ref.size or ref.size > MAX_BATCH or len(ref.proof) != self._depth(ref.size):
        return False
    node: bytes32 = leaf
    index: uint256 = ref.index
    for sibling: bytes32 in ref.proof:
        if index & 1 == 0:
            node = keccak256(concat(node, sibling))
        else:
            node = keccak256(concat(sibling, node))
        index >>= 1
    committed: bytes32 = self.batches[ref.first]
    return committed != empty(bytes32) and committed == keccak256(concat(node, convert(ref.size, bytes32)))


@internal
@view
def _load(c: Common, job: Job, ref: Ref) -> uint256:
    """Check the terms against the batch commitment; return the job's seq (job must be live)."""
    assert self.batches[ref.first] != empty(bytes32), "unknown job"
    leaf: bytes32 = self._terms_hash(job.job_id, self._common_hash(c), job.assignments)
    assert self._located(leaf, ref), "terms do not match the escrow"
    seq: uint256 = ref.first + ref.index
    assert not self._is_closed(seq), "job already settled"
    return seq


@internal
@pure
def _escrowed(c: Common, assignments: DynArray[Assignment, MAX_WORKERS]) -> uint256:
    total: uint256 = c.verifier_fee
    for a: Assignment in assignments:
        total += a.payout
    return total


@internal
@pure
def _worker_index(assignments: DynArray[Assignment, MAX_WORKERS], who: address) -> uint256:
    for i: uint256 in range(len(assignments), bound=MAX_WORKERS):
        if assignments[i].worker == who:
            return i
    raise "not an assigned worker"


# ---------------------------------------------------------------- open


@internal
@view
def _check_common(c: Common):
    assert c.client == msg.sender, "only the client opens its jobs"
    assert c.arbiter != empty(address), "zero address"
    assert c.verifier != empty(address) or c.verifier_fee == 0, "zero address"
    assert c.quorum > 0, "quorum must be at least 1"
    assert c.commit_deadline > block.timestamp, "deadlines must lie in the future"
    assert c.deadline > c.commit_deadline, "deadline must follow the commit deadline"


@internal
@pure
def _root(leaves: DynArray[bytes32, MAX_BATCH]) -> bytes32:
    """Merkle root: pairs hashed level by level, an odd node out paired with zero."""
    level: DynArray[bytes32, MAX_BATCH] = leaves
    n: uint256 = len(leaves)
    for d: uint256 in range(MAX_DEPTH):
        if n == 1:
            break
        half: uint256 = (n + 1) // 2
        for i: uint256 in range(half, bound=MAX_BATCH // 2):
            right: bytes32 = empty(bytes32)
            if 2 * i + 1 < n:
                right = level[2 * i + 1]
            level[i] = keccak256(concat(level[2 * i], right))
        n = half
    return level[0]


@internal
@view
def _consent_signer(
    domain: bytes32, job_id: bytes32, c: Common, workers: uint256, a: Assignment, r: bytes32, vs: bytes32
) -> address:
    """Who signed `Consent` for this assignment (EIP-712; `r`, `vs` a compact EIP-2098
    signature); empty(address) if the signature is malformed or recovers nothing."""
    struct_hash: bytes32 = keccak256(
        abi_encode(
            CONSENT_TYPEHASH,
            job_id,
            c.client,
            c.arbiter,
            c.quorum,
            workers,
            c.commit_deadline,
            c.deadline,
            a.payout,
            a.stake_lock,
        )
    )
    digest: bytes32 = keccak256(concat(b"\x19\x01", domain, struct_hash))
    word: uint256 = convert(vs, uint256)
    s: uint256 = word & LOW_255_BITS
    rr: uint256 = convert(r, uint256)
    if rr == 0 or s == 0 or s > HALF_N:
        return empty(address)
    return ecrecover(digest, 27 + (word >> 255), rr, s)


@external
def open(
    commons: DynArray[Common, MAX_GROUPS],
    jobs: DynArray[Job, MAX_BATCH],
    consents: DynArray[DynArray[bytes32, MAX_CONSENT_WORDS], MAX_BATCH],
):
    """Open escrows for `jobs` (job IDs strictly ascending); the caller is the client of every group.
    `consents[j]` holds two words (a compact signature) per assignment of job j, in order: the
    worker's signed `Consent` to these terms, required where its stake lock is not zero."""
    assert len(jobs) > 0, "no jobs"
    assert len(consents) == len(jobs), "one consent list per job"
    domain: bytes32 = CACHED_DOMAIN_SEPARATOR
    if chain.id != CACHED_CHAIN_ID:
        domain = self._domain_separator()
    common_hashes: DynArray[bytes32, MAX_GROUPS] = []
    for c: Common in commons:
        self._check_common(c)
        common_hashes.append(self._common_hash(c))
    first: uint256 = self.next_seq
    total: uint256 = 0
    ids: DynArray[bytes32, MAX_BATCH] = []
    leaves: DynArray[bytes32, MAX_BATCH] = []
    previous: uint256 = 0
    for j: uint256 in range(len(jobs), bound=MAX_BATCH):
        job: Job = jobs[j]
        assert job.group < len(commons), "bad group index"
        c: Common = commons[job.group]
        n: uint256 = len(job.assignments)
        assert n > 0, "no workers"
        assert c.quorum <= n, "quorum above the number of workers"
        assert job.job_id != empty(bytes32), "zero job id"
        id_value: uint256 = convert(job.job_id, uint256)
        assert id_value != previous, "duplicate job id"
        assert id_value > previous, "job ids must ascend"
        previous = id_value
        assert len(consents[j]) == 2 * n, "two consent words per worker"
        for i: uint256 in range(n, bound=MAX_WORKERS):
            a: Assignment = job.assignments[i]
            assert a.worker != empty(address), "zero address"
            for k: uint256 in range(i + 1, n, bound=MAX_WORKERS):
                assert job.assignments[k].worker != a.worker, "duplicate worker"
            total += a.payout
            if a.stake_lock > 0:
                signer: address = self._consent_signer(
                    domain, job.job_id, c, n, a, consents[j][2 * i], consents[j][2 * i + 1]
                )
                assert signer == a.worker, "stake lock without the worker's consent"
                assert self.stakes[a.worker] >= a.stake_lock, "worker stake too low"
                self.stakes[a.worker] -= a.stake_lock
        total += c.verifier_fee
        leaves.append(self._terms_hash(job.job_id, common_hashes[job.group], job.assignments))
        ids.append(job.job_id)
    assert self.balances[msg.sender] >= total, "insufficient balance"
    self.balances[msg.sender] -= total
    size: uint256 = len(jobs)
    self.batches[first] = keccak256(concat(self._root(leaves), convert(size, bytes32)))
    self.next_seq = first + size
    log Opened(client=msg.sender, first=first, job_ids=ids, escrowed=total)


# ---------------------------------------------------------------- release


@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(
        abi_encode(EIP712_DOMAIN_TYPEHASH, DOMAIN_NAME_HASH, DOMAIN_VERSION_HASH, chain.id, self)
    )


@internal
@view
def _release_digest(seqs: DynArray[uint256, MAX_BATCH], expires: uint256) -> bytes32:
    domain: bytes32 = CACHED_DOMAIN_SEPARATOR
    if chain.id != CACHED_CHAIN_ID:
        domain = self._domain_separator()
    # EIP-712 encodes uint256[] as keccak256 of the elements laid end to end
    packed: Bytes[2112] = abi_encode(seqs)
    ids_hash: bytes32 = keccak256(slice(packed, 64, 32 * len(seqs)))
    struct_hash: bytes32 = keccak256(abi_encode(RELEASE_TYPEHASH, ids_hash, expires))
    return keccak256(concat(b"\x19\x01", domain, struct_hash))


@external
@view
def domain_separator() -> bytes32:
    if chain.id != CACHED_CHAIN_ID:
        return self._domain_separator()
    return CACHED_DOMAIN_SEPARATOR


@external
@view
def release_digest(seqs: DynArray[uint256, MAX_BATCH], expires: uint256) -> bytes32:
    return self._release_digest(seqs, expires)


@internal
@view
def _recover(digest: bytes32, signature: Bytes[65]) -> address:
    assert len(signature) == 65, "malformed signature"
    r: uint256 = extract32(signature, 0, output_type=uint256)
    s: uint256 = extract32(signature, 32, output_type=uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    assert v == 27 or v == 28, "malformed signature"
    assert s <= HALF_N and s > 0 and r > 0, "malformed signature"
    signer: address = ecrecover(digest, v, r, s)
    assert signer != empty(address), "bad signature"
    return signer


@external
def release(
    commons: DynArray[Common, MAX_GROUPS],
    jobs: DynArray[Job, MAX_BATCH],
    refs: DynArray[Ref, MAX_BATCH],
    expires: uint256,
    signature: Bytes[65],
):
    """Pay every job in `jobs` as its terms say; anyone may submit the client's receipt,
    which names the jobs' sequence numbers (so it can never pay another escrow)."""
    assert len(jobs) > 0, "no jobs"
    assert len(refs) == len(jobs), "one ref per job"
    assert block.timestamp <= expires, "receipt expired"
    common_hashes: DynArray[bytes32, MAX_GROUPS] = []
    for c: Common in commons:
        common_hashes.append(self._common_hash(c))
    seqs: DynArray[uint256, MAX_BATCH] = []
    ids: DynArray[bytes32, MAX_BATCH] = []
    for i: uint256 in range(len(jobs), bound=MAX_BATCH):
        job: Job = jobs[i]
        assert job.group < len(commons), "bad group index"
        ref: Ref = refs[i]
        assert self.batches[ref.first] != empty(bytes32), "unknown job"
        leaf: bytes32 = self._terms_hash(job.job_id, common_hashes[job.group], job.assignments)
        assert self._located(leaf, ref), "terms do not match the escrow"
        seq: uint256 = ref.first + ref.index
        assert not self._is_disputed(seq), "job is disputed"
        assert not self._is_closed(seq), "job already settled"
        self._close(seq)
        seqs.append(seq)
        ids.append(job.job_id)
    client: address = self._recover(self._release_digest(seqs, expires), signature)
    for c: Common in commons:
        assert c.client == client, "receipt not signed by the client"
    paid: uint256 = 0
    for job: Job in jobs:
        for a: Assignment in job.assignments:
            self.balances[a.worker] += a.payout
            if a.stake_lock > 0:
                self.stakes[a.worker] += a.stake_lock
            paid += a.payout
        c: Common = commons[job.group]
        if c.verifier_fee > 0:
            self.balances[c.verifier] += c.verifier_fee
            paid += c.verifier_fee
    log Released(client=client, seqs=seqs, job_ids=ids, paid=paid)


# ---------------------------------------------------------------- claim


@external
def commit(c: Common, job: Job, ref: Ref, commitment: bytes32):
    """An assigned worker commits keccak256(abi_encode(result_hash, worker, salt))."""
    seq: uint256 = self._load(c, job, ref)
    assert not self._is_disputed(seq), "job is disputed"
    assert block.timestamp < c.commit_deadline, "commit deadline passed"
    self._worker_index(job.assignments, msg.sender)
    assert commitment != empty(bytes32), "zero commitment"
    assert self.commitments[seq][msg.sender] == empty(bytes32), "already committed"
    self.commitments[seq][msg.sender] = commitment
    log Committed(job_id=job.job_id, worker=msg.sender, seq=seq, commitment=commitment)


@external
def reveal(c: Common, job: Job, ref: Ref, result_hash: bytes32, salt: bytes32):
    seq: uint256 = self._load(c, job, ref)
    assert not self._is_disputed(seq), "job is disputed"
    assert block.timestamp >= c.commit_deadline, "reveal before the commit deadline"
    assert block.timestamp < c.deadline, "reveal deadline passed"
    self._worker_index(job.assignments, msg.sender)
    commitment: bytes32 = self.commitments[seq][msg.sender]
    assert commitment != empty(bytes32), "no commitment"
    assert self.reveals[seq][msg.sender] == empty(bytes32), "already revealed"
    assert result_hash != empty(bytes32), "zero result hash"
    assert keccak256(abi_encode(result_hash, msg.sender, salt)) == commitment, "reveal does not match commitment"
    self.reveals[seq][msg.sender] = result_hash
    count: uint256 = self.votes[seq][result_hash] + 1
    self.votes[seq][result_hash] = count
    if count > self.top_votes[seq]:
        self.top_votes[seq] = count
    log Revealed(job_id=job.job_id, worker=msg.sender, seq=seq, result_hash=result_hash)


@external
def claim(c: Common, job: Job, ref: Ref, result_hash: bytes32):
    """After the challenge period: pay the workers whose reveals reached quorum, slash those
    that committed and revealed another result or none."""
    seq: uint256 = self._load(c, job, ref)
    assert not self._is_disputed(seq), "job is disputed"
    assert block.timestamp >= c.deadline + CHALLENGE_PERIOD, "claim before the challenge period ends"
    assert result_hash != empty(bytes32), "zero result hash"
    assert self.votes[seq][result_hash] >= c.quorum, "no quorum for this result"
    self._close(seq)
    to_client: uint256 = c.verifier_fee  # no verifier signed off on-chain
    paid: uint256 = 0
    for a: Assignment in job.assignments:
        if self.reveals[seq][a.worker] == result_hash:
            self.balances[a.worker] += a.payout
            self.stakes[a.worker] += a.stake_lock
            paid += a.payout
        elif self.commitments[seq][a.worker] != empty(bytes32):
            # committed, then revealed another result or none: its stake lock is slashed
            to_client += a.payout + a.stake_lock
            if a.stake_lock > 0:
                log Slashed(job_id=job.job_id, worker=a.worker, seq=seq, amount=a.stake_lock)
        else:
            # never committed (it may never have seen this escrow): no pay, its stake back
            to_client += a.payout
            self.stakes[a.worker] += a.stake_lock
    self.balances[c.client] += to_client
    log Claimed(job_id=job.job_id, seq=seq, result_hash=result_hash, paid=paid)


# ---------------------------------------------------------------- refund


@external
def refund(c: Common, job: Job, ref: Ref):
    """After the challenge period, with nothing released or claimable: money back to the client."""
    seq: uint256 = self._load(c, job, ref)
    assert not self._is_disputed(seq), "job is disputed"
    assert block.timestamp >= c.deadline + CHALLENGE_PERIOD, "refund before the challenge period ends"
    assert self.top_votes[seq] < c.quorum, "a result reached quorum; claim it"
    self._close(seq)
    for a: Assignment in job.assignments:
        self.stakes[a.worker] += a.stake_lock
    amount: uint256 = self._escrowed(c, job.assignments)
    self.balances[c.client] += amount
    log Refunded(job_id=job.job_id, client=c.client, seq=seq, amount=amount)


# ---------------------------------------------------------------- dispute


@external
def dispute(c: Common, job: Job, ref: Ref):
    """Freeze a job until its arbiter resolves it (or the dispute lapses); the client or an
    assigned worker, before the challenge period ends."""
    seq: uint256 = self._load(c, job, ref)
    assert not self._is_disputed(seq), "job is disputed"
    assert block.timestamp < c.deadline + CHALLENGE_PERIOD, "dispute after the challenge period"
    if msg.sender != c.client:
        self._worker_index(job.assignments, msg.sender)
    self.disputed_words[seq >> 8] |= 1 << (seq & 255)
    log Disputed(job_id=job.job_id, by=msg.sender, seq=seq)


@external
def resolve(
    c: Common,
    job: Job,
    ref: Ref,
    worker_pay: DynArray[uint256, MAX_WORKERS],
    slash: DynArray[uint256, MAX_WORKERS],
    verifier_pay: uint256,
):
    """The arbiter splits a disputed escrow; whatever it does not give away returns to the client."""
    seq: uint256 = self._load(c, job, ref)
    assert msg.sender == c.arbiter, "only the arbiter resolves"
    assert self._is_disputed(seq), "job is not disputed"
    assert block.timestamp < c.deadline + CHALLENGE_PERIOD + RULING_PERIOD, "ruling period over"
    n: uint256 = len(job.assignments)
    assert len(worker_pay) == n and len(slash) == n, "one amount per worker"
    assert verifier_pay == 0 or c.verifier != empty(address), "zero address"
    escrow: uint256 = self._escrowed(c, job.assignments)
    to_workers: uint256 = 0
    slashed: uint256 = 0
    for i: uint256 in range(n, bound=MAX_WORKERS):
        to_workers += worker_pay[i]
        assert slash[i] <= job.assignments[i].stake_lock, "slash above the stake lock"
        slashed += slash[i]
    assert to_workers + verifier_pay <= escrow, "split exceeds the escrow"
    self._close(seq)
    for i: uint256 in range(n, bound=MAX_WORKERS):
        a: Assignment = job.assignments[i]
        self.balances[a.worker] += worker_pay[i]
        self.stakes[a.worker] += a.stake_lock - slash[i]
        if slash[i] > 0:
            log Slashed(job_id=job.job_id, worker=a.worker, seq=seq, amount=slash[i])
    if verifier_pay > 0:
        self.balances[c.verifier] += verifier_pay
    to_client: uint256 = escrow - to_workers - verifier_pay + slashed
    self.balances[c.client] += to_client
    log Resolved(
        job_id=job.job_id,
        arbiter=msg.sender,
        seq=seq,
        to_workers=to_workers,
        to_verifier=verifier_pay,
        to_client=to_client,
    )


@external
def lapse(c: Common, job: Job, ref: Ref):
    """A dispute its arbiter did not resolve by the ruling deadline: anyone may close it;
    the client gets the escrowed amount back and every worker its stake lock."""
    seq: uint256 = self._load(c, job, ref)
    assert self._is_disputed(seq), "job is not disputed"
    assert block.timestamp >= c.deadline + CHALLENGE_PERIOD + RULING_PERIOD, "ruling period not over"
    self._close(seq)
    for a: Assignment in job.assignments:
        self.stakes[a.worker] += a.stake_lock
    amount: uint256 = self._escrowed(c, job.assignments)
    self.balances[c.client] += amount
    log Lapsed(job_id=job.job_id, client=c.client, seq=seq, amount=amount)


# ---------------------------------------------------------------- views


@external
@view
def status(seq: uint256) -> uint256:
    """0 never opened, 1 open, 2 disputed, 3 settled (released, claimed, refunded, resolved or lapsed)."""
    if seq >= self.next_seq:
        return 0
    if self._is_closed(seq):
        return 3
    if self._is_disputed(seq):
        return 2
    return 1


@external
@view
def job_status(c: Common, job: Job, ref: Ref) -> uint256:
    """The status of the escrow at `ref` if it holds exactly these terms; 0 otherwise."""
    leaf: bytes32 = self._terms_hash(job.job_id, self._common_hash(c), job.assignments)
    if not self._located(leaf, ref):
        return 0
    seq: uint256 = ref.first + ref.index
    if self._is_closed(seq):
        return 3
    if self._is_disputed(seq):
        return 2
    return 1
