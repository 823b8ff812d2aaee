"""Random sequences of every escrow call from several accounts, against a model.

After each step: the contract holds exactly the free balances, free stakes, open escrows
and locked stakes; every account's balance and stake equal the model's; no job is paid
twice; refunds come only after the challenge period and only for unpaid jobs; frozen
jobs move only by their arbiter until the ruling deadline, and then only back to their
owners; a stake is locked only with its worker's signed consent; receipts for another
chain or contract never release anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node.chain import Chain, EscrowClient, embedded_chain
from node.chain.client import revert_reason
from protocol import settlement as S

CHAIN: Chain | None = None


def args_of(terms: S.EscrowTerms) -> tuple[Any, ...]:
    """The `(c, job, ref)` arguments of the contract's single-job calls."""
    return (terms.common.as_abi(), S.job_abi(terms), terms.located().as_abi())


ROLES = ("client_a", "client_b", "w1", "w2", "w3", "arbiter", "verifier", "outsider")
WORKERS = ("w1", "w2", "w3")
CLIENTS = ("client_a", "client_b")
amounts = st.integers(min_value=1, max_value=10**6)
CHALLENGE, RULING = 50, 100  # the deployment's periods (s); `advance` steps 30, 101, 201


def chain() -> Chain:
    global CHAIN
    if CHAIN is None:
        CHAIN = embedded_chain()
    return CHAIN


@dataclass
class JobModel:
    terms: S.EscrowTerms
    state: str = "open"  # open | disputed | settled
    commits: dict[str, bytes] = field(default_factory=dict)
    salts: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # worker -> (result, salt)
    reveals: dict[str, bytes] = field(default_factory=dict)
    payouts: int = 0  # how many times this job paid out


class EscrowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.chain = chain()
        keys = self.chain.dev_keys
        self.addr = {r: self.chain.dev_account(i).address for i, r in enumerate(ROLES)}
        self.key = {r: keys[i] for i, r in enumerate(ROLES)}
        deployer, _ = EscrowClient.deploy(
            self.chain, self.chain.dev_account(0), challenge_period=CHALLENGE, ruling_period=RULING
        )
        self.escrow = deployer.contract
        self.balance = dict.fromkeys(ROLES, 0)
        self.stake = dict.fromkeys(ROLES, 0)
        self.jobs: dict[int, JobModel] = {}  # by escrow sequence number
        self.next_seq = 0
        self.counter = 0

    # -------------------------------------------------------------- helpers

    def send(self, role: str, fn: str, *args: Any, value: int = 0) -> str | None:
        """Run a call; None if it succeeded, else the revert reason (which must exist)."""
        call = self.escrow.get_function_by_name(fn)(*args)
        try:
            call.transact({"from": self.addr[role], "value": value})
        except Exception as exc:
            reason = revert_reason(exc)
            if reason is None:
                raise AssertionError(f"not a revert: {exc!r}") from exc
            return reason
        return None

    def now(self) -> int:
        return self.chain.now()

    def role_of(self, address: str) -> str:
        return next(r for r, a in self.addr.items() if a == address)

    def live(self, state: str) -> list[int]:
        return sorted(j for j, m in self.jobs.items() if m.state == state)

    # -------------------------------------------------------------- balances

    @initialize(data=st.data())
    def fund(self, data: st.DataObject) -> None:
        for c in CLIENTS:
            self.deposit(c, 10**7)
        for w in WORKERS:
            self.stake_in(w, data.draw(st.integers(min_value=0, max_value=10**5)))

    @rule(role=st.sampled_from(ROLES), amount=amounts)
    def deposit(self, role: str, amount: int) -> None:
        assert self.send(role, "deposit", value=amount) is None
        self.balance[role] += amount

    @rule(role=st.sampled_from(ROLES), amount=st.integers(min_value=1, max_value=2 * 10**7))
    def withdraw(self, role: str, amount: int) -> None:
        reason = self.send(role, "withdraw", amount)
        if amount <= self.balance[role]:
            assert reason is None
            self.balance[role] -= amount
        else:
            assert reason == "insufficient balance"

    @rule(role=st.sampled_from(WORKERS), amount=amounts)
    def stake_in(self, role: str, amount: int) -> None:
        if amount == 0:
            return
        assert self.send(role, "stake", value=amount) is None
        self.stake[role] += amount

    @rule(role=st.sampled_from(WORKERS), amount=amounts)
    def unstake(self, role: str, amount: int) -> None:
        reason = self.send(role, "unstake", amount)
        if amount <= self.stake[role]:
            assert reason is None
            self.stake[role] -= amount
            self.balance[role] += amount
        else:
            assert reason == "insufficient stake"

    # -------------------------------------------------------------- open

    @rule(
        client=st.sampled_from(CLIENTS),
        sender=st.sampled_from(ROLES),
        n=st.integers(min_value=1, max_value=3),
        workers=st.lists(st.sampled_from(WORKERS), min_size=1, max_size=3, unique=True),
        quorum=st.integers(min_value=1, max_value=3),
        payout=st.integers(min_value=0, max_value=10**6),
        lock=st.integers(min_value=0, max_value=10**4),
        fee=st.integers(min_value=0, max_value=10**3),
        reuse=st.booleans(),
        consent=st.sampled_from(["signed", "signed", "missing", "by another", "other terms"]),
    )
    def open_jobs(
        self,
        client: str,
        sender: str,
        n: int,
        workers: list[str],
        quorum: int,
        payout: int,
        lock: int,
        fee: int,
        reuse: bool,
        consent: str,
    ) -> None:
        now = self.now()
        common = S.Common(
            client=self.addr[client],
            arbiter=self.addr["arbiter"],
            commit_deadline=now + 100,
            deadline=now + 200,
            quorum=quorum,
            verifier=self.addr["verifier"],
            verifier_fee=fee,
        )
        batch = []
        for _ in range(n):
            self.counter += 1
            job_id = hashlib.sha256(
                self.counter.to_bytes(8, "big") + self.escrow.address.encode()
            ).digest()
            if reuse and self.jobs:  # an ID opened before, or twice in this batch
                job_id = self.jobs[min(self.jobs)].terms.job_id
            assignments = tuple(S.Assignment(self.addr[w], payout, lock) for w in workers)
            batch.append(self.consented(S.EscrowTerms(job_id, common, assignments), consent))
        batch.sort(key=lambda t: t.job_id)  # the contract wants ascending IDs
        commons, jobs = S.group_terms(batch)
        consents = [S.consent_words(t) for t in batch]
        reason = self.send(sender, "open", commons, jobs, consents)
        # the model's verdict, in the contract's order of checks
        expected: str | None = None
        stake = dict(self.stake)
        previous = b""
        total = 0
        if sender != client:
            expected = "only the client opens its jobs"
        elif quorum > len(workers):
            expected = "quorum above the number of workers"
        else:
            for t in batch:
                if t.job_id == previous:
                    expected = "duplicate job id"
                    break
                previous = t.job_id
                for w in workers:
                    if lock > 0:
                        if consent != "signed":
                            expected = "stake lock without the worker's consent"
                            break
                        if stake[w] < lock:
                            expected = "worker stake too low"
                            break
                        stake[w] -= lock
                if expected:
                    break
                total += t.escrowed
            if expected is None and total > self.balance[client]:
                expected = "insufficient balance"
        assert reason == expected
        if reason is None:
            self.stake = stake
            self.balance[client] -= total
            for t in S.locate_batch(batch, self.next_seq):
                self.jobs[t.located().seq] = JobModel(t)
            self.next_seq += len(batch)

    def consented(self, terms: S.EscrowTerms, how: str) -> S.EscrowTerms:
        """`terms` with each worker's consent: signed as asked, missing, signed by another
        account, or signed for other terms (a higher stake lock)."""
        sigs = []
        for i, a in enumerate(terms.assignments):
            consent = S.consent_for(terms, i)
            signer = self.key[self.role_of(a.worker)]
            if how == "missing":
                sigs.append(b"")
                continue
            if how == "by another":
                signer = self.key["outsider"]
            elif how == "other terms":
                consent = dataclasses.replace(consent, stake_lock=consent.stake_lock + 1)
            sigs.append(S.sign_consent(signer, self.chain.chain_id, self.escrow.address, consent))
        return dataclasses.replace(terms, consents=tuple(sigs))

    # -------------------------------------------------------------- release

    @precondition(lambda self: self.live("open") or self.live("disputed") or self.live("settled"))
    @rule(
        data=st.data(),
        submitter=st.sampled_from(ROLES),
        signer=st.sampled_from(ROLES),
        domain=st.sampled_from(["ok", "other chain", "other contract"]),
        expired=st.booleans(),
    )
    def release(
        self, data: st.DataObject, submitter: str, signer: str, domain: str, expired: bool
    ) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.jobs)), min_size=1, max_size=3, unique=True)
        )
        batch = [self.jobs[j].terms for j in ids]
        now = self.now()
        expires = now - 1 if expired else now + 1000
        chain_id = self.chain.chain_id + (1 if domain == "other chain" else 0)
        contract = self.addr["outsider"] if domain == "other contract" else self.escrow.address
        sig = S.sign_release(self.key[signer], chain_id, contract, ids, expires)
        commons, jobs = S.group_terms(batch)
        refs = [t.located().as_abi() for t in batch]
        reason = self.send(submitter, "release", commons, jobs, refs, expires, sig)
        clients = {t.common.client for t in batch}
        ok = (
            not expired
            and domain == "ok"
            and clients == {self.addr[signer]}
            and all(self.jobs[j].state == "open" for j in ids)
        )
        if not ok:
            assert reason is not None
            if domain != "ok":
                assert reason in (
                    "receipt expired",
                    "receipt not signed by the client",
                    "bad signature",
                )
            return
        assert reason is None, reason
        for j in ids:
            m = self.jobs[j]
            m.state = "settled"
            m.payouts += 1
            for a in m.terms.assignments:
                r = self.role_of(a.worker)
                self.balance[r] += a.payout
                self.stake[r] += a.stake_lock
            self.balance["verifier"] += m.terms.common.verifier_fee

    # -------------------------------------------------------------- claim path

    @precondition(lambda self: self.live("open"))
    @rule(data=st.data(), worker=st.sampled_from(WORKERS), honest=st.booleans())
    def commit(self, data: st.DataObject, worker: str, honest: bool) -> None:
        j = data.draw(st.sampled_from(self.live("open")))
        m = self.jobs[j]
        result = hashlib.sha256(b"right" if honest else b"wrong").digest()
        salt = hashlib.sha256(j.to_bytes(8, "big") + worker.encode()).digest()
        commitment = S.commit_hash(result, self.addr[worker], salt)
        reason = self.send(worker, "commit", *args_of(m.terms), commitment)
        assigned = self.addr[worker] in m.terms.workers
        if self.now() >= m.terms.common.commit_deadline:
            assert reason == "commit deadline passed"
        elif not assigned:
            assert reason == "not an assigned worker"
        elif worker in m.commits:
            assert reason == "already committed"
        else:
            assert reason is None
            m.commits[worker] = commitment
            m.salts[worker] = (result, salt)

    @precondition(lambda self: any(m.commits for m in self.jobs.values()))
    @rule(data=st.data(), cheat=st.booleans())
    def reveal(self, data: st.DataObject, cheat: bool) -> None:
        j = data.draw(st.sampled_from(sorted(k for k, m in self.jobs.items() if m.commits)))
        m = self.jobs[j]
        worker = data.draw(st.sampled_from(sorted(m.commits)))
        result, salt = m.salts[worker]
        if cheat:
            result = hashlib.sha256(b"copied" + result).digest()
        reason = self.send(worker, "reveal", *args_of(m.terms), result, salt)
        now = self.now()
        if m.state == "settled":
            assert reason == "job already settled"
        elif m.state == "disputed":
            assert reason == "job is disputed"
        elif now < m.terms.common.commit_deadline:
            assert reason == "reveal before the commit deadline"
        elif now >= m.terms.common.deadline:
            assert reason == "reveal deadline passed"
        elif worker in m.reveals:
            assert reason == "already revealed"
        elif cheat:
            assert reason == "reveal does not match commitment"
        else:
            assert reason is None
            m.reveals[worker] = result

    def votes(self, m: JobModel, result: bytes) -> int:
        return sum(1 for r in m.reveals.values() if r == result)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), caller=st.sampled_from(ROLES), right=st.booleans())
    def claim(self, data: st.DataObject, caller: str, right: bool) -> None:
        j = data.draw(st.sampled_from(sorted(self.jobs)))
        m = self.jobs[j]
        result = hashlib.sha256(b"right" if right else b"wrong").digest()
        reason = self.send(caller, "claim", *args_of(m.terms), result)
        c = m.terms.common
        ok = (
            m.state == "open"
            and self.now() >= c.deadline + CHALLENGE
            and self.votes(m, result) >= c.quorum
        )
        if not ok:
            assert reason is not None
            if m.state == "open" and self.now() < c.deadline + CHALLENGE:
                assert reason == "claim before the challenge period ends"
            return
        assert reason is None, reason
        m.state = "settled"
        m.payouts += 1
        client = self.role_of(c.client)
        self.balance[client] += c.verifier_fee
        for a in m.terms.assignments:
            r = self.role_of(a.worker)
            if m.reveals.get(r) == result:
                self.balance[r] += a.payout
                self.stake[r] += a.stake_lock
            elif r in m.commits:  # committed, then another result or none: slashed
                self.balance[client] += a.payout + a.stake_lock
            else:  # never committed: no pay, its stake back
                self.balance[client] += a.payout
                self.stake[r] += a.stake_lock

    # -------------------------------------------------------------- refund, dispute

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), caller=st.sampled_from(ROLES))
    def refund(self, data: st.DataObject, caller: str) -> None:
        j = data.draw(st.sampled_from(sorted(self.jobs)))
        m = self.jobs[j]
        reason = self.send(caller, "refund", *args_of(m.terms))
        c = m.terms.common
        top = max((self.votes(m, r) for r in m.reveals.values()), default=0)
        ok = m.state == "open" and self.now() >= c.deadline + CHALLENGE and top < c.quorum
        if not ok:
            assert reason is not None
            if m.state == "open" and self.now() < c.deadline + CHALLENGE:
                assert reason == "refund before the challenge period ends"
            return
        assert reason is None, reason
        m.state = "settled"
        self.balance[self.role_of(c.client)] += m.terms.escrowed
        for a in m.terms.assignments:
            self.stake[self.role_of(a.worker)] += a.stake_lock

    @precondition(lambda self: self.live("open"))
    @rule(data=st.data(), caller=st.sampled_from(ROLES))
    def dispute(self, data: st.DataObject, caller: str) -> None:
        j = data.draw(st.sampled_from(self.live("open")))
        m = self.jobs[j]
        reason = self.send(caller, "dispute", *args_of(m.terms))
        party = self.addr[caller] == m.terms.common.client or self.addr[caller] in m.terms.workers
        if self.now() >= m.terms.common.deadline + CHALLENGE:
            assert reason == "dispute after the challenge period"
        elif not party:
            assert reason == "not an assigned worker"
        else:
            assert reason is None
            m.state = "disputed"

    @precondition(lambda self: self.live("disputed"))
    @rule(data=st.data(), caller=st.sampled_from(("arbiter", "client_a", "w1", "outsider")))
    def resolve(self, data: st.DataObject, caller: str) -> None:
        j = data.draw(st.sampled_from(self.live("disputed")))
        m = self.jobs[j]
        t = m.terms
        pay = [data.draw(st.integers(0, a.payout)) for a in t.assignments]
        slash = [data.draw(st.integers(0, a.stake_lock)) for a in t.assignments]
        vpay = data.draw(st.integers(0, t.escrowed - sum(pay)))
        reason = self.send(caller, "resolve", *args_of(t), pay, slash, vpay)
        if caller != "arbiter":
            assert reason == "only the arbiter resolves"
            return
        if self.now() >= t.common.deadline + CHALLENGE + RULING:
            assert reason == "ruling period over"
            return
        assert reason is None, reason
        m.state = "settled"
        m.payouts += 1
        client = self.role_of(t.common.client)
        for a, p_, s_ in zip(t.assignments, pay, slash, strict=True):
            r = self.role_of(a.worker)
            self.balance[r] += p_
            self.stake[r] += a.stake_lock - s_
        self.balance["verifier"] += vpay
        self.balance[client] += t.escrowed - sum(pay) - vpay + sum(slash)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), caller=st.sampled_from(ROLES))
    def lapse(self, data: st.DataObject, caller: str) -> None:
        """Anyone closes a dispute its arbiter left past the ruling deadline: every party
        gets its own funds back."""
        j = data.draw(st.sampled_from(sorted(self.jobs)))
        m = self.jobs[j]
        t = m.terms
        reason = self.send(caller, "lapse", *args_of(t))
        if m.state == "settled":
            assert reason == "job already settled"
            return
        if m.state == "open":
            assert reason == "job is not disputed"
            return
        if self.now() < t.common.deadline + CHALLENGE + RULING:
            assert reason == "ruling period not over"
            return
        assert reason is None, reason
        m.state = "settled"
        self.balance[self.role_of(t.common.client)] += t.escrowed
        for a in t.assignments:
            self.stake[self.role_of(a.worker)] += a.stake_lock

    # -------------------------------------------------------------- time

    @rule(seconds=st.sampled_from([30, 101, 201]))
    def advance(self, seconds: int) -> None:
        self.chain.advance_time(seconds)

    # -------------------------------------------------------------- invariants

    @invariant()
    def holdings_add_up(self) -> None:
        open_escrow = sum(m.terms.escrowed for m in self.jobs.values() if m.state != "settled")
        locked = sum(
            a.stake_lock
            for m in self.jobs.values()
            if m.state != "settled"
            for a in m.terms.assignments
        )
        expected = sum(self.balance.values()) + sum(self.stake.values()) + open_escrow + locked
        assert self.chain.w3.eth.get_balance(self.escrow.address) == expected

    @invariant()
    def accounts_match_the_model(self) -> None:
        for r in ROLES:
            assert self.escrow.functions.balances(self.addr[r]).call() == self.balance[r], r
            assert self.escrow.functions.stakes(self.addr[r]).call() == self.stake[r], r

    @invariant()
    def jobs_match_the_model(self) -> None:
        status = {"open": S.STATUS_OPEN, "disputed": S.STATUS_DISPUTED, "settled": S.STATUS_SETTLED}
        for j, m in self.jobs.items():
            assert m.payouts <= 1
            assert self.escrow.functions.status(j).call() == status[m.state]
            assert self.escrow.functions.job_status(*args_of(m.terms)).call() == status[m.state]
        assert self.escrow.functions.status(self.next_seq).call() == S.STATUS_UNKNOWN

    @precondition(lambda self: len(self.jobs) >= 2)
    @rule(data=st.data(), caller=st.sampled_from(ROLES))
    def forged_ref(self, data: st.DataObject, caller: str) -> None:
        """One job's terms at another job's place in the tree are no escrow at all."""
        a, b = data.draw(
            st.lists(st.sampled_from(sorted(self.jobs)), min_size=2, max_size=2, unique=True)
        )
        forged = dataclasses.replace(self.jobs[a].terms, ref=self.jobs[b].terms.ref)
        if S.terms_hash(forged) == S.terms_hash(self.jobs[b].terms):
            return  # identical terms: the same leaf, nothing forged
        assert self.escrow.functions.job_status(*args_of(forged)).call() == S.STATUS_UNKNOWN
        for fn, extra in (("dispute", ()), ("refund", ()), ("claim", (bytes(32),))):
            assert (
                self.send(caller, fn, *args_of(forged), *extra) == "terms do not match the escrow"
            )


EscrowMachine.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=18,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEscrowMachine = EscrowMachine.TestCase
