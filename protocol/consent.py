"""What a worker agrees to, and the checks it makes before it signs or starts (no I/O).

A worker signs an EIP-712 `Consent` (settlement.md) in its bid, over the terms the offer
announces at the worker's own price; the escrow locks its stake only with that signature.
Before it signs, it checks the offer against its own policy (`check_offer`); before it
starts work, it checks that the terms the client opened are exactly the ones it consented
to (`check_assignment`). Each failed check is a `TermsRefused` with a code from
`REFUSAL_CODES`; the worker declines or refuses with it, and the client is penalised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.errors import C0Error
from protocol.messages import Offer
from protocol.settlement import MAX_WORKERS, Consent, EscrowTerms

__all__ = [
    "HOSTILE_CODES",
    "REFUSAL_CODES",
    "TermsPolicy",
    "TermsRefused",
    "attempt_chain_id",
    "check_assignment",
    "check_offer",
    "check_terms_shape",
    "offer_consent",
]

# code -> what it means; the same codes go back in a Decline (to an offer) or an error
# frame (to an assignment), and spec/job-lifecycle.md lists them
REFUSAL_CODES = {
    "stake_lock": "the offer locks more stake than this worker allows per job",
    "arbiter": "the arbiter is not one this worker accepts (or is the client or the worker)",
    "deadline": "the escrow deadlines leave no room for the job or do not match the offer",
    "client_binding": "client_eth is not bound to the client's DID by its signature",
    "terms_mismatch": "the opened terms differ from the terms the worker consented to",
    "malformed_terms": "the terms are not well formed (a field of the wrong type or range)",
}
# Codes no honest client causes: it named itself (or the worker) arbiter, named an address
# that is not its own, or opened terms the worker never signed. The others are a policy
# mismatch an honest client meets too (workers do not advertise their limits).
HOSTILE_CODES = frozenset({"client_binding", "terms_mismatch", "malformed_terms"})


class TermsRefused(C0Error):
    """Terms this worker will not sign or start on; `code` is one of REFUSAL_CODES.
    `hostile`: no honest client sends these (the node penalises it hard; a policy
    mismatch costs a client only a mild penalty)."""

    def __init__(self, code: str, detail: str, *, hostile: bool | None = None) -> None:
        assert code in REFUSAL_CODES, code
        super().__init__(f"{REFUSAL_CODES[code]}: {detail}", code=code)
        self.hostile = code in HOSTILE_CODES if hostile is None else hostile


@dataclass(frozen=True)
class TermsPolicy:
    """A worker's limits on the terms it signs."""

    own_eth: str  # this worker's payee address
    max_stake_lock: int  # wei a client may lock per job
    arbiters: tuple[str, ...]  # addresses it accepts as arbiter (never empty)
    min_commit_window_s: int = 5  # chain seconds from now to the commit deadline, at least
    min_reveal_window_s: int = 2  # between the commit deadline and the deadline, at least


def attempt_chain_id(job_id: bytes, attempt: int) -> bytes:
    """The escrow key of one attempt: the job's digest for attempt 1, then a derived key
    (settlement.md; each attempt has its own escrow)."""
    digest = job_id[2:] if len(job_id) == 34 else job_id
    if attempt == 1:
        return digest
    return hashlib.sha256(b"c0/attempt\x00" + digest + attempt.to_bytes(4, "big")).digest()


def offer_consent(offer: Offer, price: int) -> Consent:
    """The Consent a worker signs when it bids `price` on `offer` (c0 nodes use quorum =
    redundancy: every worker of an attempt must agree)."""
    return Consent(
        job=attempt_chain_id(offer.job_id, offer.attempt),
        client=offer.client_eth,
        arbiter=offer.arbiter,
        quorum=offer.redundancy,
        workers=offer.redundancy,
        commit_deadline=offer.escrow_commit_deadline,
        deadline=offer.escrow_deadline,
        payout=price,
        stake_lock=offer.stake_lock,
    )


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _accepted(address: str, arbiters: Iterable[str]) -> bool:
    return any(_same(address, x) for x in arbiters)


def check_offer(offer: Offer, policy: TermsPolicy, *, chain_now: int) -> None:
    """Raise TermsRefused unless this worker may sign a Consent for `offer`. The binding of
    `client_eth` to the client's DID is checked by the caller (it costs a signature
    recovery; the node caches it)."""
    if offer.stake_lock > policy.max_stake_lock:
        raise TermsRefused(
            "stake_lock", f"{offer.stake_lock} wei asked, at most {policy.max_stake_lock}"
        )
    if _same(offer.arbiter, offer.client_eth) or _same(offer.arbiter, policy.own_eth):
        raise TermsRefused("arbiter", "the arbiter is a party to the job", hostile=True)
    if not _accepted(offer.arbiter, policy.arbiters):
        raise TermsRefused("arbiter", f"{offer.arbiter} is not among the accepted arbiters")
    if offer.escrow_commit_deadline - chain_now < policy.min_commit_window_s:
        raise TermsRefused(
            "deadline",
            f"commit deadline {offer.escrow_commit_deadline - chain_now} s away, "
            f"at least {policy.min_commit_window_s} s needed",
        )
    if offer.escrow_deadline - offer.escrow_commit_deadline < policy.min_reveal_window_s:
        raise TermsRefused("deadline", "no room to reveal between the deadlines")


def _is_address(value: object) -> bool:
    if type(value) is not str or len(value) != 42 or value[:2] not in ("0x", "0X"):
        return False
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        return False
    return True


def _is_uint(value: object, bits: int = 256) -> bool:
    return type(value) is int and 0 <= value < 1 << bits


def check_terms_shape(terms: EscrowTerms) -> None:
    """Raise TermsRefused('malformed_terms') unless every field of `terms` (built from a
    peer's JSON: anything at all) has its type and range: 32-byte keys, addresses,
    unsigned integers that fit the contract's words, at most MAX_WORKERS assignments.
    Every later check, hash and chain call may then take the fields as typed."""
    c = terms.common
    problems = []
    if type(terms.job_id) is not bytes or len(terms.job_id) != 32:
        problems.append("job_id")
    if not all(_is_address(a) for a in (c.client, c.arbiter, c.verifier)):
        problems.append("an address of the common terms")
    if not (_is_uint(c.commit_deadline, 64) and _is_uint(c.deadline, 64)):
        problems.append("deadlines")
    if not (_is_uint(c.quorum, 8) and _is_uint(c.verifier_fee)):
        problems.append("quorum or verifier fee")
    assignments = terms.assignments
    if type(assignments) is not tuple or not 0 < len(assignments) <= MAX_WORKERS:
        problems.append("assignments")
    elif not all(
        _is_address(a.worker) and _is_uint(a.payout) and _is_uint(a.stake_lock) for a in assignments
    ):
        problems.append("an assignment")
    ref = terms.ref
    if ref is not None and not (
        _is_uint(ref.first, 64)
        and _is_uint(ref.size, 64)
        and _is_uint(ref.index, 64)
        and type(ref.proof) is tuple
        and len(ref.proof) <= 64
        and all(type(p) is bytes and len(p) == 32 for p in ref.proof)
    ):
        problems.append("escrow ref")
    if problems:
        raise TermsRefused("malformed_terms", ", ".join(problems))


def check_assignment(terms: EscrowTerms, offer: Offer, price: int, own_eth: str) -> None:
    """Raise TermsRefused unless `terms` are exactly those the worker consented to when it
    bid `price` on `offer`: the attempt's key, client, arbiter, deadlines, quorum out of
    the offer's redundancy, and its own payout and stake lock. Their shape first
    (`check_terms_shape`): they come from the client's JSON."""
    check_terms_shape(terms)
    c = terms.common
    mine = [a for a in terms.assignments if _same(a.worker, own_eth)]
    expected = offer_consent(offer, price)
    problems = []
    if terms.job_id != expected.job:
        problems.append("escrow key")
    if not _same(c.client, offer.client_eth):
        problems.append("client")
    if not _same(c.arbiter, offer.arbiter):
        problems.append("arbiter")
    if (c.commit_deadline, c.deadline) != (expected.commit_deadline, expected.deadline):
        problems.append("deadlines")
    if c.quorum != expected.quorum or len(terms.assignments) != expected.workers:
        problems.append("quorum or worker count")
    if len(mine) != 1:
        problems.append("this worker's assignment")
    elif (mine[0].payout, mine[0].stake_lock) != (price, offer.stake_lock):
        problems.append("payout or stake lock")
    if problems:
        raise TermsRefused("terms_mismatch", ", ".join(problems))
