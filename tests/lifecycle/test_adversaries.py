"""Adversaries on the in-process swarm (issue 18): a wrong worker at K = 2, a stalled worker
that reveals an abandoned attempt late, an arbiter that never rules, and 2,000 jobs between
one client and one worker. Each test says where every wei went, read from the chain; the
swarm's money invariants are checked at its end (conftest: testnet/invariants.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from node.chain.events import decode_logs
from node.lifecycle import LifecycleSettings
from node.lifecycle.escrow import terms_from_json
from protocol.settlement import STATUS_SETTLED, EscrowTerms
from tests.lifecycle.conftest import Swarm, memory_swarm, offering, submit_noop, wait_state
from tests.net.conftest import wait_for

HONEST_PRICE = 10**12  # LifecycleSettings' noop price
CHEAP_PRICE = 10**11  # an adversary that underbids, so it wins the first attempt


async def deposited(swarm: Swarm, i: int) -> int:
    """What node `i` has put into the escrow contract (deposits less withdrawals), from
    the chain's logs: its free balance there moves by this besides jobs' money."""
    async with swarm.lock:
        escrow = swarm.client_escrow()
        logs = swarm.chain.w3.eth.get_logs(
            {"address": escrow.address, "fromBlock": 0, "toBlock": "latest"}
        )
        entries = decode_logs(escrow.contract, logs)
    me = swarm.identities[i].eth_address.lower()
    total = 0
    for entry in entries:
        if str(entry["args"].get("account", "")).lower() != me:
            continue
        if entry["name"] == "Deposit":
            total += int(entry["args"]["amount"])
        elif entry["name"] == "Withdraw":
            total -= int(entry["args"]["amount"])
    return total


async def money(swarm: Swarm) -> list[tuple[int, int, int]]:
    """(free balance, free stake, deposited) of every node, read from the chain."""
    async with swarm.lock:
        held = [(swarm.balance(i), swarm.stake(i)) for i in range(len(swarm.identities))]
    return [(b, s, await deposited(swarm, i)) for i, (b, s) in enumerate(held)]


def attempt_terms(swarm: Swarm, job_id: bytes, number: int) -> EscrowTerms:
    rec = swarm.client.node.store.get_job(job_id)
    assert rec is not None
    return terms_from_json(rec.data["attempts"][str(number)]["terms"])


async def escrow_settled(swarm: Swarm, terms: EscrowTerms, limit_s: float) -> None:
    escrow = swarm.client.escrow
    assert escrow is not None
    with trio.fail_after(limit_s):
        while True:
            if await escrow.status(terms) == STATUS_SETTLED:
                return
            await trio.sleep(0.5)  # polling the chain: its status has no event to wait on


def kinds_of(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in events]


async def test_a_wrong_worker_at_redundancy_two_is_slashed_and_the_honest_one_paid(
    tmp_path: Path,
) -> None:
    """K = 2, one honest worker and one that corrupts its result. Both commit and reveal to
    the client, which verifies: one passes, one fails, so the escrow cannot be released
    whole. The client disputes; the arbiter re-verifies both, pays the honest worker its
    bid, slashes the wrong one's stake lock and returns the rest to the client. One
    attempt, paid once, never claimed or released."""

    def settings(i: int) -> LifecycleSettings:
        if i == 2:
            return LifecycleSettings(behaviour="wrong_output")
        if i == 3:
            return LifecycleSettings(execute=False)  # the arbiter runs no jobs
        return LifecycleSettings()

    async with memory_swarm(tmp_path, workers=3, settings=settings, arbiter_index=3) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        before = await money(swarm)
        job_id = submit_noop(client, {"payload": "two workers"}, redundancy=2, deadline_s=60)
        state = await wait_state(client, job_id, {"settled", "refunded"}, limit_s=120)
        assert state == "settled"
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        assert list(rec.data["attempts"]) == ["1"]  # one attempt, no retry
        terms = attempt_terms(swarm, job_id, 1)
        events = await client.chain_events_for(terms.job_id)
        kinds = kinds_of(events)
        assert "claimed" not in kinds
        assert "released" not in kinds
        assert kinds.count("disputed") == 1
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        by_eth = {a.worker.lower(): a for a in terms.assignments}
        honest = by_eth[swarm.identities[1].eth_address.lower()]
        wrong = by_eth[swarm.identities[2].eth_address.lower()]
        assert honest.payout == wrong.payout == HONEST_PRICE
        (slash,) = [e for e in events if e["event"] == "slashed"]
        assert str(slash["worker"]).lower() == wrong.worker.lower()
        assert int(slash["amount"]) == wrong.stake_lock > 0
        assert int(ruling["to_workers"]) == honest.payout
        assert int(ruling["to_client"]) == wrong.payout + wrong.stake_lock
        after = await money(swarm)
        # the honest worker: its bid, its stake lock back
        assert after[1][0] == before[1][0] + honest.payout
        assert after[1][1] == before[1][1]
        # the wrong worker: not a wei, and its stake lock gone to the client
        assert after[2][0] == before[2][0]
        assert after[2][1] == before[2][1] - wrong.stake_lock
        # the client: what it deposited, less the escrow, plus the ruling's share
        spent = terms.escrowed - int(ruling["to_client"])
        assert spent == honest.payout - wrong.stake_lock
        assert after[0][0] == before[0][0] + (after[0][2] - before[0][2]) - spent
        # the arbiter: nothing (it is paid by nobody here)
        assert after[3][:2] == before[3][:2]


async def test_a_stalled_worker_revealing_an_abandoned_attempt_late_is_never_paid(
    tmp_path: Path,
) -> None:
    """The cheapest worker wins attempt 1 and goes silent: no heartbeat, no result to the
    client, which abandons the attempt and retries with the honest worker; attempt 2 is
    released. The staller then commits and reveals attempt 1 on chain before its deadline
    (quorum 1) and claims after the challenge period. The client's RefundKeeper disputes
    the unreleased escrow once the reveal window closes; the arbiter pays nobody for an
    attempt the client did not accept, and slashes nobody (no revealed result of the
    staller's reached the client to fail): the client gets attempt 1's escrow back, the
    staller its stake lock, and its claim is refused."""

    def settings(i: int) -> LifecycleSettings:
        if i == 1:
            return LifecycleSettings(behaviour="stall", prices=(("noop", CHEAP_PRICE),))
        if i == 3:
            return LifecycleSettings(execute=False)  # the arbiter runs no jobs
        if i == 0:
            return LifecycleSettings(heartbeat_timeout_s=4.0)
        return LifecycleSettings()

    async with memory_swarm(
        tmp_path, workers=3, settings=settings, arbiter_index=3, challenge_period=10
    ) as swarm:
        client, staller = swarm.client, swarm.lc(1)
        await wait_for(lambda: offering(client) == 2, 60)
        before = await money(swarm)
        job_id = submit_noop(client, {"payload": "stall"}, redundancy=1, deadline_s=40)
        state = await wait_state(client, job_id, {"settled", "refunded"}, limit_s=60)
        assert state == "settled"
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        assert sorted(rec.data["attempts"]) == ["1", "2"]
        first, second = attempt_terms(swarm, job_id, 1), attempt_terms(swarm, job_id, 2)
        assert first.assignments[0].worker.lower() == swarm.identities[1].eth_address.lower()
        assert second.assignments[0].worker.lower() == swarm.identities[2].eth_address.lower()
        assert first.assignments[0].payout == CHEAP_PRICE
        assert second.assignments[0].payout == HONEST_PRICE
        # the staller's late result: disputed by the client, ruled, its claim refused
        await escrow_settled(swarm, first, limit_s=90)
        stalled = await wait_state(staller, job_id, {"claim_failed", "claimed"}, limit_s=60)
        assert stalled == "claim_failed"
        worker_rec = staller.node.store.get_job(job_id)
        assert worker_rec is not None
        assert worker_rec.data["reason"] in ("job already settled", "job is disputed")
        events = await client.chain_events_for(first.job_id)
        kinds = kinds_of(events)
        assert kinds.count("committed") == 1
        assert kinds.count("revealed") == 1  # it did reach quorum, late
        assert kinds.count("disputed") == 1
        assert "claimed" not in kinds
        assert "released" not in kinds
        assert "slashed" not in kinds
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        assert int(ruling["to_workers"]) == 0
        assert int(ruling["to_client"]) == first.escrowed
        # attempt 2: released once, to the honest worker
        kinds2 = kinds_of(await client.chain_events_for(second.job_id))
        assert kinds2.count("released") == 1
        assert not {"claimed", "disputed", "resolved", "refunded"} & set(kinds2)
        after = await money(swarm)
        assert after[1][:2] == before[1][:2]  # the staller: no pay, its stake lock back
        assert after[2][0] == before[2][0] + second.assignments[0].payout
        assert after[2][1] == before[2][1]
        assert after[0][0] == before[0][0] + (after[0][2] - before[0][2]) - second.escrowed
        assert after[3][:2] == before[3][:2]


async def test_a_dispute_the_arbiter_never_rules_on_lapses(tmp_path: Path) -> None:
    """The arbiter receives every dispute and never rules. Two disputes: one the client
    opens itself (K = 2, one result failed verification) and one its RefundKeeper opens
    (K = 1, the wrong worker's result reached quorum on chain, unaccepted). Past the
    ruling deadline the client's RefundKeeper lapses both (the test calls nothing): the
    client gets every escrowed wei back, every worker its stake lock, nobody is paid or
    slashed, and both jobs end refunded."""

    def settings(i: int) -> LifecycleSettings:
        if i == 2:  # the cheapest: it wins the K = 1 job
            return LifecycleSettings(behaviour="wrong_output", prices=(("noop", CHEAP_PRICE),))
        if i == 3:
            return LifecycleSettings(execute=False, behaviour="silent_arbiter")
        if i == 0:
            return LifecycleSettings(max_attempts=1)
        return LifecycleSettings()

    challenge, ruling = 10, 20
    async with memory_swarm(
        tmp_path,
        workers=3,
        settings=settings,
        arbiter_index=3,
        challenge_period=challenge,
        ruling_period=ruling,
    ) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        before = await money(swarm)
        pair = submit_noop(client, {"payload": "pair"}, redundancy=2, deadline_s=30)
        solo = submit_noop(client, {"payload": "solo"}, redundancy=1, deadline_s=30)
        assert await wait_state(client, pair, {"disputed"}, limit_s=30) == "disputed"
        limit = 30 + challenge + ruling + 30
        for job_id in (pair, solo):
            state = await wait_state(client, job_id, {"settled", "refunded"}, limit)
            assert state == "refunded"
        escrowed = 0
        for job_id in (pair, solo):
            rec = client.node.store.get_job(job_id)
            assert rec is not None
            assert list(rec.data["attempts"]) == ["1"]
            terms = attempt_terms(swarm, job_id, 1)
            escrowed += terms.escrowed
            events = await client.chain_events_for(terms.job_id)
            kinds = kinds_of(events)
            assert kinds.count("disputed") == 1, kinds
            (lapsed,) = [e for e in events if e["event"] == "lapsed"]
            assert int(lapsed["amount"]) == terms.escrowed
            assert not {"resolved", "claimed", "released", "refunded", "slashed"} & set(kinds)
            # lapsed by the client's node, at or after the ruling deadline
            assert lapsed["tx"] in client.refunds.refunded.values()
            async with swarm.lock:
                block = swarm.chain.w3.eth.get_block(int(lapsed["block"]))
            assert int(block["timestamp"]) >= terms.common.deadline + challenge + ruling
        solo_terms = attempt_terms(swarm, solo, 1)
        assert solo_terms.assignments[0].worker.lower() == swarm.identities[2].eth_address.lower()
        solo_kinds = kinds_of(await client.chain_events_for(solo_terms.job_id))
        assert "revealed" in solo_kinds  # the wrong result did reach quorum on chain
        after = await money(swarm)
        for i in (1, 2, 3):  # nobody paid, nobody slashed: stake locks back
            assert after[i][:2] == before[i][:2], i
        assert after[0][0] == before[0][0] + (after[0][2] - before[0][2])
        assert escrowed == HONEST_PRICE + 2 * CHEAP_PRICE


@pytest.mark.soak
async def test_two_thousand_jobs_between_one_client_and_one_worker(tmp_path: Path) -> None:
    """2,000 noop jobs at K = 1 from one client to one worker, in batches: every one
    settles, paid once; the worker's balance grows by exactly the sum of the payouts and
    the client's free balance falls by exactly that (besides its deposits and the escrows
    of attempts that timed out, waiting for their refund, whose stake locks are all the
    worker's stake lacks); nothing is refused after many jobs (no counter of consents,
    nonces or allowances runs out). Measured here: ~15 min on two shared cores."""
    total, batch = int(os.environ.get("C0_PAIR_JOBS", "2000")), 200

    def settings(i: int) -> LifecycleSettings:
        # One process runs the client, the worker and the chain on a shared CPU: a batch's
        # release (a py-evm call of seconds) can hold every heartbeat up past the default
        # 10 s, and a timed-out worker is excluded from the job, here the only one.
        return LifecycleSettings(heartbeat_timeout_s=60.0)

    async with memory_swarm(tmp_path, workers=1, settings=settings) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 1, 60)
        before = await money(swarm)
        jobs: list[bytes] = []
        for start in range(0, total, batch):
            ids = [
                submit_noop(client, {"payload": f"job {n}"}, redundancy=1, deadline_s=600)
                for n in range(start, min(total, start + batch))
            ]
            with trio.fail_after(480):  # the batch; a job stuck failed ends the test here
                for job_id in ids:
                    state = await wait_state(client, job_id, {"settled", "refunded"}, 480)
                    assert state == "settled"
            jobs += ids
        # Each job paid once, by one release; an attempt before it failed only by a
        # timeout of this loaded process (no assignment reply or heartbeat in time), never
        # by a refusal, and its escrow waits for its refund (deadline + challenge period).
        escrow = client.escrow
        assert escrow is not None
        events = await client.chain_events_for()
        released = {str(e["job_id"]).lower() for e in events if e["event"] == "released"}
        paid = locked = locked_stake = retried = 0
        for job_id in jobs:
            rec = client.node.store.get_job(job_id)
            assert rec is not None
            outcomes = [rec.data["attempts"][n]["outcome"] for n in rec.data["attempts"]]
            assert "passed" in outcomes[-1]
            for outcome in outcomes[:-1]:
                assert re.match(r".*(no reply from .* within|no heartbeat)", outcome["failed"])
            retried += len(outcomes) > 1
            for number in rec.data["attempts"]:
                terms = attempt_terms(swarm, job_id, int(number))
                if "0x" + terms.job_id.hex() in released:
                    assert number == str(len(outcomes))  # the last attempt, and only it
                    paid += terms.assignments[0].payout
                else:
                    assert await escrow.status(terms) != STATUS_SETTLED
                    locked += terms.escrowed
                    locked_stake += terms.assignments[0].stake_lock
        assert paid == total * HONEST_PRICE
        after = await money(swarm)
        assert after[1][0] == before[1][0] + paid
        assert after[1][1] == before[1][1] - locked_stake
        deposits = after[0][2] - before[0][2]
        assert after[0][0] == before[0][0] + deposits - paid - locked
        print(f"{total} jobs, {retried} retried after a timeout")
