"""Trust between strangers on the in-process swarm (issue 18): each test says where every
wei went, read from the chain, and the swarm's money invariants are checked at its end
(conftest: testnet/invariants.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.lifecycle import LifecycleSettings
from node.lifecycle.escrow import terms_from_json
from tests.lifecycle.conftest import memory_swarm, offering, submit_noop, wait_state
from tests.net.conftest import wait_for


async def test_a_wrong_result_at_redundancy_one_is_never_paid(tmp_path: Path) -> None:
    """One worker, which returns a wrong result and then goes on chain: it commits, reveals
    (quorum 1) and would claim after the challenge period. The client, whose verification
    failed, disputes once the reveal window is over; the arbiter re-verifies, pays nobody
    and slashes the worker's stake lock to the client. Before issue 18 the worker claimed."""

    def settings(i: int) -> LifecycleSettings:
        if i == 1:
            return LifecycleSettings(behaviour="wrong_output")
        if i == 2:
            return LifecycleSettings(execute=False)  # the arbiter runs no jobs
        return LifecycleSettings(max_attempts=1)

    async with memory_swarm(tmp_path, workers=2, settings=settings, arbiter_index=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 1, 60)
        balance, stake = swarm.balance(1), swarm.stake(1)
        job_id = submit_noop(client, {"payload": "check me"}, redundancy=1, deadline_s=30)
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=120) == (
            "refunded"
        )
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        terms = terms_from_json(rec.data["attempts"]["1"]["terms"])
        events = await client.chain_events_for(terms.job_id)
        kinds = [e["event"] for e in events]
        assert "revealed" in kinds  # the worker did reach quorum on chain
        assert "claimed" not in kinds
        assert "released" not in kinds
        assert kinds.count("disputed") == 1
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        lock = terms.assignments[0].stake_lock
        assert int(ruling["to_workers"]) == 0
        assert int(ruling["to_client"]) == terms.escrowed + lock  # escrow back + the slash
        assert swarm.balance(1) == balance  # the wrong worker: not a wei
        assert swarm.stake(1) == stake - lock  # and its stake lock slashed


async def test_a_worker_signs_and_starts_only_on_terms_it_agreed_to(tmp_path: Path) -> None:
    """A hostile client over the real negotiate protocol: an offer locking more stake than
    the worker allows, naming the client itself arbiter, leaving no time to commit, or
    naming an address that is not the client's is declined with its code, and nothing is
    signed or sent on chain. An escrow opened on other terms than the worker consented to
    (1 wei instead of its bid) is refused before any work starts."""
    import dataclasses
    import os

    import trio

    from node.app import now_ms
    from node.net.negotiate import RemoteRefused
    from protocol.consent import offer_consent
    from protocol.jobs import JobTemplate
    from protocol.messages import Assignment, Bid, Decline, Offer
    from protocol.settlement import Assignment as EscrowAssignment
    from protocol.settlement import Common, EscrowTerms, recover_consent_signer

    async with memory_swarm(tmp_path, workers=1) as swarm:
        client, worker = swarm.client, swarm.lc(1)
        await wait_for(lambda: offering(client) == 1, 60)
        assert client.escrow is not None
        assert client.chain is not None
        me, peer = client.node.identity, worker.node.peer_id
        chain_now = await client.escrow.now()
        spec = JobTemplate.from_json({"job_class": "noop", "params": {}}).bind(
            {}, client=me.did, nonce=os.urandom(16)
        )
        offer = Offer(
            job_id=spec.job_id,
            spec=spec,
            attempt=1,
            redundancy=1,
            max_price=10**15,
            deadline=now_ms() + 60_000,
            commit_deadline=now_ms() + 30_000,
            chain_id=client.chain.chain_id,
            escrow=client.chain.escrow,
            arbiter=client.arbiter_address(),
            client_eth=me.eth_address,
            client_eth_sig=me.eth_binding().eth_sig,
            input_providers=(client.node.peer_id,),
            stake_lock=worker.settings.stake_lock_wei,
            escrow_commit_deadline=chain_now + 30,
            escrow_deadline=chain_now + 60,
        )
        worker_nonce = swarm.chain.w3.eth.get_transaction_count(swarm.identities[1].eth_address)

        async def ask(o: Offer) -> object:
            reply = await client.node.request(peer, client.node.seal(o), timeout=10)
            assert reply is not None
            return reply.message

        # The honest offer: a bid whose consent is the worker's signature of these terms.
        bid = await ask(offer)
        assert isinstance(bid, Bid)
        signer = recover_consent_signer(
            bid.consent, offer.chain_id, offer.escrow, offer_consent(offer, bid.price)
        )
        assert signer == swarm.identities[1].eth_address
        hostile = {
            "stake_lock": dataclasses.replace(offer, stake_lock=10**18),
            "arbiter": dataclasses.replace(offer, arbiter=me.eth_address),
            "deadline": dataclasses.replace(offer, escrow_commit_deadline=chain_now + 1),
            "client_binding": dataclasses.replace(offer, client_eth="0x" + "42" * 20),
        }
        hostile_codes = {"arbiter", "client_binding"}  # the others: a policy mismatch
        for code, bad in hostile.items():
            bad = dataclasses.replace(bad, spec=spec, job_id=spec.job_id, attempt=2)
            answer = await ask(bad)
            assert isinstance(answer, Decline), (code, answer)
            assert answer.reason == code
            entry = worker.node.penalties.snapshot(trio.current_time())[client.node.peer_id]
            assert entry["last_reason"] == (
                "bad_terms" if code in hostile_codes else "terms_declined"
            )
        # two hostile offers cost 60, the two policy mismatches 2: an honest client whose
        # offers miss a worker's limits is not banned for it
        score = worker.node.penalties.snapshot(trio.current_time())[client.node.peer_id]["score"]
        assert -62.5 < float(score) < -61

        # Underpaid: an escrow of 1 wei and no stake lock (no consent needed to open it).
        terms = EscrowTerms(
            bytes(offer_consent(offer, bid.price).job),
            Common(
                client=me.eth_address,
                arbiter=offer.arbiter,
                commit_deadline=offer.escrow_commit_deadline,
                deadline=offer.escrow_deadline,
                quorum=1,
            ),
            (EscrowAssignment(bid.eth_address, 1, 0),),
        )
        await client.escrow.ensure_deposit(terms.escrowed, top_up_to=10**18)
        (opened,) = (await client.escrow.open([terms])).opened
        swarm.extra_terms[offer.job_id] = [opened]  # opened by hand: for the money checks
        from node.lifecycle.escrow import terms_to_json

        assignment = Assignment(
            job_id=offer.job_id,
            attempt=1,
            worker=worker.node.did,
            workers=(worker.node.did,),
            payouts=(1,),
            terms_hash=client.escrow.terms_hash(opened),
            chain_job_id=opened.job_id,
            terms=terms_to_json(opened),
            escrow_tx=b"",
        )
        with pytest.raises(RemoteRefused) as refused:
            await client.node.request(peer, client.node.seal(assignment), timeout=10)
        assert refused.value.reason == "terms_mismatch"
        assert not worker.worker.jobs[(offer.job_id, 1)].assignment  # nothing started
        # the worker sent no transaction at all (no approval, nothing)
        assert (
            swarm.chain.w3.eth.get_transaction_count(swarm.identities[1].eth_address)
            == worker_nonce
        )


async def test_a_failed_result_whose_dispute_was_refused_is_never_released(
    tmp_path: Path,
) -> None:
    """K = 2, one worker wrong. The client's first dispute does not land (the chain is
    unreachable for that one call: a fault injected into the real escrow client, whose
    every other call runs): the job is verified (one result passed), yet its escrow is
    never released, which would pay the wrong worker too. The dispute is filed again; the
    arbiter pays the honest worker and slashes the wrong one."""
    from protocol.settlement import ChainUnavailable

    def settings(i: int) -> LifecycleSettings:
        if i == 2:
            return LifecycleSettings(behaviour="wrong_output")
        if i == 3:
            return LifecycleSettings(execute=False)  # the arbiter runs no jobs
        return LifecycleSettings(max_attempts=1)

    async with memory_swarm(
        tmp_path, workers=3, settings=settings, arbiter_index=3, challenge_period=10
    ) as swarm:
        client = swarm.client
        assert client.escrow is not None
        await wait_for(lambda: offering(client) == 2, 60)
        escrow_client = client.escrow.client
        real_dispute = escrow_client.dispute
        refused: list[str] = []

        def dispute_once_unreachable(*args: object, **kwargs: object) -> object:
            if not refused:
                refused.append("refused")
                raise ChainUnavailable("injected: connection refused")
            return real_dispute(*args, **kwargs)  # type: ignore[arg-type]

        escrow_client.dispute = dispute_once_unreachable  # type: ignore[method-assign]
        before = [swarm.balance(i) for i in (1, 2)]
        stakes = [swarm.stake(i) for i in (1, 2)]
        job_id = submit_noop(client, {"payload": "two of us"}, redundancy=2, deadline_s=30)
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=120) == ("settled")
        assert refused == ["refused"]  # the first filing did fail
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        terms = terms_from_json(rec.data["attempts"]["1"]["terms"])
        kinds = [e["event"] for e in await client.chain_events_for(terms.job_id)]
        assert "released" not in kinds  # never released with a failed result in it
        assert "claimed" not in kinds
        assert kinds.count("disputed") == 1
        assert kinds.count("resolved") == 1
        honest, wrong = terms.assignments  # in the order of the workers' slots
        if honest.worker.lower() != swarm.identities[1].eth_address.lower():
            honest, wrong = wrong, honest
        assert swarm.balance(1) - before[0] == honest.payout
        assert swarm.balance(2) == before[1]  # the wrong worker: not a wei
        assert swarm.stake(1) == stakes[0]
        assert swarm.stake(2) == stakes[1] - wrong.stake_lock
