"""The arbiter (issue 18, item 4): its cases survive a restart, `c0 job dispute` works end
to end, a DisputeOpen sent again changes nothing, and an `unreleased` mark stands only on
chain facts. Each test says where every wei went, read from the chain; the swarm's money
invariants are checked at its end (conftest: testnet/invariants.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

from node.chain.events import decode_logs
from node.control import ControlClient, ControlServer
from node.lifecycle import Lifecycle, LifecycleSettings
from node.lifecycle.arbitration import DUPLICATE, OPEN, RESOLVED, _split
from node.lifecycle.control import register_job_commands
from node.lifecycle.escrow import terms_from_json
from protocol import codec
from protocol.errors import UserError
from protocol.jobs import job_id_text
from protocol.messages import DisputeOpen
from protocol.settlement import STATUS_DISPUTED, Assignment, Common, EscrowTerms
from tests.lifecycle.conftest import Swarm, memory_swarm, offering, submit_noop, wait_state
from tests.net.conftest import wait_for


async def _deposited(swarm: Swarm, i: int) -> int:
    """What node `i` put into the escrow contract (deposits less withdrawals), from the
    chain's logs: its free balance there moves by this besides jobs' money."""
    async with swarm.lock:
        escrow = swarm.client_escrow()
        logs = swarm.chain.w3.eth.get_logs(
            {"address": escrow.address, "fromBlock": 0, "toBlock": "latest"}
        )
        entries = decode_logs(escrow.contract, logs)
    me = swarm.identities[i].eth_address.lower()
    total = 0
    for entry in entries:
        if str(entry["args"].get("account", "")).lower() == me:
            sign = {"Deposit": 1, "Withdraw": -1}.get(entry["name"], 0)
            total += sign * int(entry["args"]["amount"])
    return total


async def _money(swarm: Swarm) -> list[tuple[int, int, int]]:
    """(free balance, free stake, deposited) of every node, read from the chain."""
    async with swarm.lock:
        held = [(swarm.balance(i), swarm.stake(i)) for i in range(len(swarm.identities))]
    return [(b, s, await _deposited(swarm, i)) for i, (b, s) in enumerate(held)]


def _terms(lc: Lifecycle, job_id: bytes, number: int = 1) -> EscrowTerms:
    rec = lc.node.store.get_job(job_id)
    assert rec is not None
    return terms_from_json(rec.data["attempts"][str(number)]["terms"])


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in events]


def _control(lc: Lifecycle, tmp: Path) -> ControlServer:
    """The node's control commands, called directly (what `c0 job …` sends)."""
    server = ControlServer(tmp / f"c{lc.node.did[-6:]}.sock")
    register_job_commands(server, lc)
    return server


async def _dispute(lc: Lifecycle, tmp: Path, job_id: bytes, reason: str = "doubtful") -> Any:
    return await _control(lc, tmp).commands["job_dispute"](
        {"job_id": job_id_text(job_id), "reason": reason}
    )


async def test_a_restarted_arbiter_takes_up_the_case_it_had_not_judged(tmp_path: Path) -> None:
    """K = 2, one wrong result: the client disputes and the arbiter records the case, then
    dies before it judges (the `arbiter_hold_s` hook holds it). Restarted on the same home,
    it takes the case up from its database, fetches the evidence again, judges and
    resolves: the honest worker paid, the wrong one slashed to the client."""
    hold = {"s": 600.0}

    def settings(i: int) -> LifecycleSettings:
        if i == 1:
            return LifecycleSettings(behaviour="wrong_output")
        if i == 3:
            return LifecycleSettings(execute=False, arbiter_hold_s=hold["s"])
        if i == 0:
            return LifecycleSettings(max_attempts=1)
        return LifecycleSettings()

    async with memory_swarm(tmp_path, workers=3, settings=settings, arbiter_index=3) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        before = await _money(swarm)
        job_id = submit_noop(client, {"payload": "restart"}, redundancy=2, deadline_s=60)
        assert await wait_state(client, job_id, {"disputed"}, limit_s=60) == "disputed"
        arbiter = swarm.lc(3)

        def recorded() -> bool:
            cases = arbiter.arbitration.cases(job_id)
            return len(cases) == 1 and cases[0].status == OPEN and "terms" in cases[0].data

        await wait_for(recorded, 30)
        (case,) = arbiter.arbitration.cases(job_id)
        await swarm.kill(3)  # dies holding the case, unjudged
        terms = _terms(client, job_id)
        assert client.escrow is not None
        assert await client.escrow.status(terms) == STATUS_DISPUTED
        assert "resolved" not in _kinds(await client.chain_events_for(terms.job_id))
        hold["s"] = 0.0
        arbiter = await swarm.start(3)  # same home, same database
        assert arbiter.arbitration._running == {(job_id, case.evidence)}  # taken up at start
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=60) == "settled"
        (case,) = arbiter.arbitration.cases(job_id)
        assert case.status == RESOLVED
        assert case.chain_job_id == terms.job_id
        events = await client.chain_events_for(terms.job_id)
        kinds = _kinds(events)
        assert kinds.count("disputed") == 1
        assert kinds.count("resolved") == 1
        assert "released" not in kinds
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        assert ruling["tx"] == case.data["tx"]
        wrong_eth = swarm.identities[1].eth_address.lower()
        by_worker = {a.worker.lower(): a for a in terms.assignments}
        wrong, honest = by_worker.pop(wrong_eth), next(iter(by_worker.values()))
        assert int(ruling["to_workers"]) == honest.payout
        assert int(ruling["to_client"]) == terms.escrowed - honest.payout + wrong.stake_lock
        (slashed,) = [e for e in events if e["event"] == "slashed"]
        assert str(slashed["worker"]).lower() == wrong_eth
        after = await _money(swarm)
        assert after[1][:2] == (before[1][0], before[1][1] - wrong.stake_lock)
        assert after[2][:2] == (before[2][0] + honest.payout, before[2][1])
        assert after[3][:2] == before[3][:2]  # the arbiter: not a wei either way
        assert after[0][0] == before[0][0] + (after[0][2] - before[0][2]) - terms.escrowed + (
            int(ruling["to_client"])
        )


async def test_job_dispute_on_a_verified_job_goes_to_the_arbiter(tmp_path: Path) -> None:
    """`c0 job dispute` on a verified job whose release waits in the batch: the batch gives
    it back, the job's task disputes on chain, goes `disputed` and sends the evidence;
    the arbiter finds the result good and pays the worker; the client never releases.
    Refused: a job of another node, a disputed one, a settled one."""

    def settings(i: int) -> LifecycleSettings:
        if i == 0:  # releases wait 30 s in the batch: the dispute comes first
            return LifecycleSettings(max_attempts=1, release_interval_s=30.0)
        if i == 2:
            return LifecycleSettings(execute=False)
        return LifecycleSettings()

    async with memory_swarm(tmp_path, workers=2, settings=settings, arbiter_index=2) as swarm:
        client, worker, arbiter = swarm.client, swarm.lc(1), swarm.lc(2)
        await wait_for(lambda: offering(client) == 1, 60)
        before = await _money(swarm)
        job_id = submit_noop(client, {"payload": "fine"}, redundancy=1, deadline_s=60)
        assert await wait_state(client, job_id, {"verified"}, limit_s=60) == "verified"
        await wait_for(lambda: len(client.releases.queue) == 1, 10)  # its release, queued
        server = _control(client, tmp_path)  # over the control socket, as `c0 job dispute`
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            remote = ControlClient(server.path, timeout=60)
            out = await trio.to_thread.run_sync(
                lambda: remote.call(
                    "job_dispute", job_id=job_id_text(job_id), reason="I want a second opinion"
                )
            )
            nursery.cancel_scope.cancel()
        assert out["state"] == "disputed"
        assert out["arbiter_notified"] is True
        assert not client.releases.queue  # taken back from the batch
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        assert rec.state == "disputed"
        assert rec.data["attempts"]["1"]["dispute"]["reason"] == "I want a second opinion"
        with pytest.raises(UserError, match="disputed already"):
            await _dispute(client, tmp_path, job_id)
        with pytest.raises(UserError, match="not submitted from this node"):
            await _dispute(worker, tmp_path, job_id)
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=60) == "settled"
        with pytest.raises(UserError, match="settled: nothing left"):
            await _dispute(client, tmp_path, job_id)
        await trio.sleep(1.0)  # a release, if one were still coming, would be sent by now
        terms = _terms(client, job_id)
        events = await client.chain_events_for(terms.job_id)
        kinds = _kinds(events)
        assert kinds.count("disputed") == 1
        assert "released" not in kinds
        assert not client.releases.batches  # no release was ever sent
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        (paid,) = terms.assignments
        assert int(ruling["to_workers"]) == paid.payout
        assert int(ruling["to_client"]) == 0
        assert "slashed" not in kinds
        (case,) = arbiter.arbitration.cases(job_id)
        assert case.status == RESOLVED
        assert case.data["split"]["worker_pay"] == [paid.payout]
        after = await _money(swarm)
        assert after[1][:2] == (before[1][0] + paid.payout, before[1][1])
        assert after[0][0] == before[0][0] + (after[0][2] - before[0][2]) - terms.escrowed
        assert after[2][:2] == before[2][:2]


async def test_a_dispute_open_sent_again_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the arbiter holds a case, the client sends the same DisputeOpen three times
    more, and one with other evidence for the same escrow: the arbiter keeps the one case,
    finds the other evidence a duplicate of the escrow it holds (no row kept for it), and
    resolves once."""

    def settings(i: int) -> LifecycleSettings:
        if i == 0:
            return LifecycleSettings(max_attempts=1, release_interval_s=30.0)
        if i == 2:
            return LifecycleSettings(execute=False, arbiter_hold_s=3.0)
        return LifecycleSettings()

    async with memory_swarm(tmp_path, workers=2, settings=settings, arbiter_index=2) as swarm:
        client, arbiter = swarm.client, swarm.lc(2)
        await wait_for(lambda: offering(client) == 1, 60)
        before = await _money(swarm)
        job_id = submit_noop(client, {"payload": "again"}, redundancy=1, deadline_s=60)
        assert await wait_state(client, job_id, {"verified"}, limit_s=60) == "verified"
        out = await _dispute(client, tmp_path, job_id)
        digest = bytes.fromhex(out["evidence"])
        await wait_for(lambda: any("terms" in c.data for c in arbiter.arbitration.cases()), 10)
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        size = rec.data["attempts"]["1"]["dispute"]["size"]
        peer = arbiter.node.peer_id
        again = DisputeOpen(job_id=job_id, reason="again", evidence=(digest,), sizes=(size,))
        for _ in range(3):
            assert await client.send_quietly(peer, again)
        other = codec.decode(client.node.blobs.store.path_of(digest).read_bytes())
        other["note"] = "the same dispute, said otherwise"
        raw = codec.encode(other)
        digest2 = client.node.blobs.put_bytes(raw)
        second = DisputeOpen(job_id=job_id, reason="other", evidence=(digest2,), sizes=(len(raw),))
        assert await client.send_quietly(peer, second)
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=60) == "settled"
        await wait_for(lambda: not arbiter.arbitration._running, 20)  # every case ended
        (case,) = arbiter.arbitration.cases(job_id)  # the other evidence left no row
        assert case.evidence == digest
        assert case.status == RESOLVED
        said = [r.getMessage() for r in caplog.records if r.name == "c0.arbiter"]
        assert any(f"{DUPLICATE}: another case holds this escrow" in m for m in said), said
        terms = _terms(client, job_id)
        events = await client.chain_events_for(terms.job_id)
        assert _kinds(events).count("resolved") == 1
        (paid,) = terms.assignments
        after = await _money(swarm)
        assert after[1][:2] == (before[1][0] + paid.payout, before[1][1])
        assert not client.node.penalties.snapshot(trio.current_time()).get(peer)
        assert not arbiter.node.penalties.snapshot(trio.current_time()).get(client.node.peer_id)


async def test_a_forged_unreleased_mark_does_not_deprive_the_honest_worker(
    tmp_path: Path,
) -> None:
    """A client disputes the attempt it accepted with its evidence marked `unreleased`
    ("another attempt was paid: pay nobody"). No other attempt of the job exists on chain,
    so the mark does not stand: the arbiter judges the result on its merits and pays the
    worker whose result passes."""

    def settings(i: int) -> LifecycleSettings:
        if i == 0:
            return LifecycleSettings(max_attempts=1, release_interval_s=30.0)
        if i == 2:
            return LifecycleSettings(execute=False)
        return LifecycleSettings()

    async with memory_swarm(tmp_path, workers=2, settings=settings, arbiter_index=2) as swarm:
        client, arbiter = swarm.client, swarm.lc(2)
        await wait_for(lambda: offering(client) == 1, 60)
        honest_bundle = client.arbitration._bundle

        def forged(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**honest_bundle(*args, **kwargs), "unreleased": True}

        client.arbitration._bundle = forged  # type: ignore[method-assign]
        before = await _money(swarm)
        job_id = submit_noop(client, {"payload": "forged"}, redundancy=1, deadline_s=60)
        assert await wait_state(client, job_id, {"verified"}, limit_s=60) == "verified"
        await _dispute(client, tmp_path, job_id, "attempt 1 was never accepted")
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=60) == "settled"
        (case,) = arbiter.arbitration.cases(job_id)
        assert case.status == RESOLVED
        assert case.data["unreleased"] is True  # claimed by the evidence...
        assert case.data["split"]["superseded"] is False  # ...and not borne out on chain
        terms = _terms(client, job_id)
        (paid,) = terms.assignments
        events = await client.chain_events_for(terms.job_id)
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        assert int(ruling["to_workers"]) == paid.payout
        assert "released" not in _kinds(events)
        after = await _money(swarm)
        assert after[1][:2] == (before[1][0] + paid.payout, before[1][1])
        assert after[0][0] == before[0][0] + (after[0][2] - before[0][2]) - terms.escrowed
        # The chain facts the mark is checked against: seen from an attempt 2, attempt 1
        # (this client's escrow, resolved with pay) was paid; from attempt 1 nothing else
        # exists; an escrow of another client with the same key counts for nothing.
        superseded = arbiter.arbitration._superseded
        assert await superseded(job_id, terms, 2) == "paid"
        assert await superseded(job_id, terms, 1) == "none"
        stranger = dataclasses.replace(
            terms, common=dataclasses.replace(terms.common, client="0x" + "42" * 20)
        )
        assert await superseded(job_id, stranger, 2) == "none"


def test_the_ruling_rules() -> None:
    """spec/settlement.md, "Arbitration": who is paid and who slashed, per evidence."""
    a, b, c = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
    terms = EscrowTerms(
        bytes(32),
        Common(client="0x" + "11" * 20, arbiter="0x" + "22" * 20, commit_deadline=1, deadline=2),
        tuple(Assignment(w, 100, 7) for w in (a, b, c)),
    )
    passed, revealed = {a}, {a, b}  # a passes, b fails, c's result never reached the client
    # plain: c's result is not in the evidence the client chose: never slashed for it
    assert _split(terms, passed, revealed, False, False) == ([100, 0, 0], [0, 7, 0])
    # `unreleased`, another attempt paid on chain: nobody paid, the failed one slashed
    assert _split(terms, passed, revealed, True, True) == ([0, 0, 0], [0, 7, 0])
    # `unreleased`, no other attempt paid: on the merits; an unseen result neither way
    assert _split(terms, passed, revealed, True, False) == ([100, 0, 0], [0, 7, 0])
