"""The whole lifecycle in one process: memory transport, embedded chain, real executors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.lifecycle import worker as worker_module
from node.lifecycle.escrow import terms_from_json
from protocol.jobs import job_id_from_text
from protocol.settlement import DEV_CHALLENGE_PERIOD, STATUS_SETTLED
from tests.lifecycle.conftest import (
    memory_swarm,
    offering,
    submit_noop,
    wait_record,
    wait_state,
)
from tests.net.conftest import wait_for


async def test_noop_job_with_redundancy_two_settles(tmp_path: Path) -> None:
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        before = [swarm.balance(i) for i in (1, 2)]
        job_id = submit_noop(client, {"payload": "hello"}, redundancy=2)
        state = await wait_state(client, job_id, {"settled", "refunded", "cancelled"})
        assert state == "settled"
        after = [swarm.balance(i) for i in (1, 2)]
        assert [b - a for a, b in zip(before, after, strict=True)] == [10**12, 10**12]
        states = [s.message.state for s in client.node.events.events(job_id)]
        for needed in (
            "requested",
            "funded",
            "assigned",
            "running",
            "submitted",
            "verified",
            "settled",
        ):
            assert needed in states, states
        assert client.node.events.verify_chain() >= len(states)
        brief = [(j, role, st) for j, role, st, _ in client.node.store.job_states()]
        assert brief == [(job_id, "client", "settled")]
        from node.lifecycle.control import reconcile_node

        report = await reconcile_node(client)
        assert report["jobs"] == 1
        assert report["chain_events"] >= 2
        assert report["mismatches"] == []


async def test_transcode_and_inference_with_redundancy_two(tmp_path: Path) -> None:
    from testnet.testdata import make_clip, make_tiny_gguf

    clip = make_clip(tmp_path / "clip.mp4", seconds=2.0)
    model = make_tiny_gguf(tmp_path / "tiny.gguf")
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        transcode = client.client.submit(
            {
                "job_class": "media.transcode",
                "params": {
                    "height": 72,
                    "video_codec": "h264",
                    "segment_seconds": 1.0,
                    "keyframe_interval_s": 1.0,
                    "threads": 1,
                },
            },
            {"source": str(clip)},
            redundancy=2,
            max_price=10**16,
            deadline_s=120,
        )
        generate = client.client.submit(
            {
                "job_class": "llm.generate",
                "params": {"prompt": "Once upon a time", "max_tokens": 16, "n_ctx": 128},
            },
            {"model": str(model)},
            redundancy=2,
            max_price=10**16,
            deadline_s=120,
        )
        for text in (transcode, generate):
            job_id = job_id_from_text(text)
            assert (
                await wait_state(client, job_id, {"settled", "refunded", "cancelled"}, limit_s=120)
                == "settled"
            )
            rec = client.node.store.get_job(job_id)
            assert rec is not None
            verdicts = rec.data["attempts"]["1"]["verdicts"]
            assert [v["passed"] for v in verdicts.values()] == [True, True]
        # the LLM job's events carry the prompt's hash, never the prompt
        events = client.node.events.events(job_id_from_text(generate))
        assert all(e.message.prompt_hash is not None for e in events)  # type: ignore[attr-defined]
        assert all("Once upon" not in repr(e.message) for e in events)
        out = tmp_path / "fetched"
        files = client.client.fetch_result(job_id_from_text(transcode), out)
        assert any(f["name"].endswith(".m3u8") for f in files)


async def test_wrong_output_is_detected_unpaid_and_slashed(tmp_path: Path) -> None:
    from node.lifecycle import LifecycleSettings

    def settings(i: int) -> LifecycleSettings:
        if i == 2:
            return LifecycleSettings(behaviour="wrong_output")
        if i == 3:
            return LifecycleSettings(execute=False)  # the arbiter runs no jobs
        return LifecycleSettings()

    async with memory_swarm(tmp_path, workers=3, settings=settings, arbiter_index=3) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        honest_before, wrong_before = swarm.balance(1), swarm.balance(2)
        wrong_stake = swarm.stake(2)
        job_id = submit_noop(client, {"payload": "check me"}, redundancy=2)
        assert await wait_state(client, job_id, {"settled", "refunded"}) == "settled"
        assert swarm.balance(1) - honest_before == 10**12  # honest: paid
        assert swarm.balance(2) == wrong_before  # wrong: unpaid
        lock = swarm.lc(2).settings.stake_lock_wei
        assert swarm.stake(2) == wrong_stake - lock  # and its stake lock slashed
        states = [e.message.state for e in client.node.events.events(job_id)]  # type: ignore[attr-defined]
        assert "disputed" in states
        honest = client.reputation_of(swarm.identities[1].did, "noop")
        wrong = client.reputation_of(swarm.identities[2].did, "noop")
        assert wrong.verify_failed == 1
        assert wrong.slashed == 1
        assert wrong.score < honest.score


async def test_dead_worker_is_replaced_and_nobody_is_paid_twice(tmp_path: Path) -> None:
    from node.lifecycle import LifecycleSettings

    def settings(i: int) -> LifecycleSettings:
        return LifecycleSettings(heartbeat_timeout_s=3.0, offer_fanout=0)

    async with memory_swarm(tmp_path, workers=3, settings=settings) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 3, 60)
        before = [swarm.balance(i) for i in (1, 2, 3)]
        job_id = submit_noop(client, {"duration_ms": 4000}, redundancy=2)
        await wait_state(client, job_id, {"running"})
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        victim = rec.data["attempts"]["1"]["workers"][0]["did"]
        index = [i.did for i in swarm.identities].index(victim)
        await swarm.kill(index)
        assert await wait_state(client, job_id, {"settled", "refunded"}, limit_s=90) == "settled"
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        assert rec.data["attempt"] == 2
        paid = [swarm.balance(i) - b for i, b in zip((1, 2, 3), before, strict=True)]
        assert paid[index - 1] == 0
        assert sorted(paid) == [0, 10**12, 10**12]  # two workers paid once each
        # Attempt 1's escrow waits for its deadline to be refunded. A client restarted
        # meanwhile still knows it must refund it (the keeper is rebuilt from the records).
        first = terms_from_json(rec.data["attempts"]["1"]["terms"])
        await swarm.kill(0)
        restarted = await swarm.start(0)
        assert first.job_id in restarted.refunds.pending  # its deadline is ~2 minutes away
        swarm.chain.advance_time(130 + DEV_CHALLENGE_PERIOD)
        await wait_for(lambda: first.job_id in restarted.refunds.refunded, 60)
        assert swarm.client_escrow().job_status(first) == STATUS_SETTLED


async def test_client_vanishes_after_funding_and_workers_claim(tmp_path: Path) -> None:
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        before = [swarm.balance(i) for i in (1, 2)]
        job_id = submit_noop(client, {"duration_ms": 500}, redundancy=2, deadline_s=30)
        await wait_state(client, job_id, {"assigned", "running"})
        await swarm.kill(0)  # the client disappears with the escrow funded
        worker = swarm.lc(1)
        await wait_record(
            worker, job_id, {"claimed", "settled_by_claim", "released", "claim_failed"}, 90
        )
        await wait_for(
            lambda: (
                [swarm.balance(i) - b for i, b in zip((1, 2), before, strict=True)]
                == [10**12, 10**12]
            ),
            30,
        )
        phases = [
            e.message.detail.get("phase")  # type: ignore[attr-defined]
            for e in worker.node.events.events(job_id)
        ]
        assert "committed_on_chain" in phases
        assert "revealed_on_chain" in phases


async def test_no_worker_can_run_it_so_the_client_is_refunded(tmp_path: Path) -> None:
    from node.lifecycle import LifecycleSettings

    not_media = tmp_path / "notes.txt"
    not_media.write_text("this is not a video\n" * 50)
    async with memory_swarm(
        tmp_path, workers=2, settings=lambda i: LifecycleSettings(max_attempts=2)
    ) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        escrow = client.escrow
        assert escrow is not None
        text = client.client.submit(
            {"job_class": "media.transcode", "params": {"height": 72}},
            {"source": str(not_media)},
            redundancy=2,
            max_price=10**16,
            deadline_s=12,
        )
        job_id = job_id_from_text(text)
        funded = await wait_state(client, job_id, {"assigned", "running", "failed"})
        assert funded
        deposit_after_open = swarm.balance(0)
        assert await wait_state(client, job_id, {"refunded", "settled"}, limit_s=90) == "refunded"
        assert swarm.balance(0) == deposit_after_open + 2 * 10**15  # every wei back
        states = [e.message.state for e in client.node.events.events(job_id)]  # type: ignore[attr-defined]
        assert "failed" in states
        assert states[-1] == "refunded"
        chain_events = await client.chain_events_for()
        assert any(e["event"] == "refunded" for e in chain_events)


async def test_client_restarted_mid_job_resumes(tmp_path: Path) -> None:
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        job_id = submit_noop(client, {"duration_ms": 1500}, redundancy=2)
        await wait_state(client, job_id, {"running"})
        await swarm.kill(0)
        restarted = await swarm.start(0)  # same home, same database
        assert await wait_state(restarted, job_id, {"settled", "refunded"}, 60) == "settled"
        states = [e.message.state for e in restarted.node.events.events(job_id)]  # type: ignore[attr-defined]
        assert "resumed" in states
        assert states[-1] == "settled"
        assert restarted.node.events.verify_chain() == len(states)


async def test_lazy_worker_copying_a_commitment_cannot_reveal_it(tmp_path: Path) -> None:
    from node.lifecycle import LifecycleSettings

    cheap = tuple((c, 10**11) for c, _ in LifecycleSettings().prices)

    def settings(i: int) -> LifecycleSettings:
        common = {"heartbeat_timeout_s": 3.0, "offer_fanout": 0}
        if i == 1:  # the lazy one underbids to be chosen
            return LifecycleSettings(behaviour="copy_commit", prices=cheap, **common)
        return LifecycleSettings(**common)

    async with memory_swarm(tmp_path, workers=3, settings=settings) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 3, 60)
        lazy_before = swarm.balance(1)
        job_id = submit_noop(client, {}, redundancy=2, deadline_s=30)
        assert await wait_state(client, job_id, {"settled", "refunded"}, 90) == "settled"
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        assert swarm.identities[1].did in [w["did"] for w in rec.data["attempts"]["1"]["workers"]]
        assert rec.data["attempt"] == 2  # attempt 1 failed: the lazy worker never delivered
        lazy = swarm.lc(1)
        lazy_rec = await wait_record(lazy, job_id, {"claim_failed"}, 60)
        assert lazy_rec.data["copied"]  # it did copy an honest commitment on chain
        assert lazy_rec.data["reason"] == "reveal does not match commitment"
        assert swarm.balance(1) == lazy_before


async def test_a_worker_waiting_to_be_paid_takes_the_next_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_concurrent counts jobs being worked on, not jobs whose payment is pending:
    with the client's release held back, a one-slot worker still runs a second job."""
    import dataclasses

    from node.lifecycle import LifecycleSettings

    def settings(i: int) -> LifecycleSettings:
        return dataclasses.replace(
            LifecycleSettings(), max_concurrent=1, max_queued=0, release_interval_s=3600
        )

    async with memory_swarm(tmp_path, workers=1, settings=settings) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 1, 60)

        first = submit_noop(client, {"payload": "one"}, redundancy=1)
        assert await wait_state(client, first, {"verified", "settled", "refunded"}) == "verified"
        second = submit_noop(client, {"payload": "two"}, redundancy=1)
        assert await wait_state(client, second, {"verified", "settled", "refunded"}) == "verified"
        assert client.node.store.get_job(first).state == "verified"  # still unpaid
        worker = swarm.lc(1).worker
        assert worker.running == 0
        # jobs awaiting payment are remembered (their receipt is still to come) ...
        monkeypatch.setattr(worker_module, "_FORGET_AFTER_S", -1.0)
        worker._forget_old()
        assert {job_id for job_id, _ in worker.jobs} == {first, second}


async def test_a_worker_queues_accepted_jobs_and_runs_one_at_a_time(tmp_path: Path) -> None:
    """max_queued: a one-slot worker takes the next job while one runs (it is funded and
    assigned meanwhile), and starts it only when the slot is free."""
    import dataclasses

    from node.lifecycle import LifecycleSettings

    def settings(i: int) -> LifecycleSettings:
        return dataclasses.replace(LifecycleSettings(), max_concurrent=1, max_queued=1)

    async with memory_swarm(tmp_path, workers=1, settings=settings) as swarm:
        client, worker = swarm.client, swarm.lc(1)
        await wait_for(lambda: offering(client) == 1, 60)
        ad = next(iter(client.node.caps.values())).ad
        assert ad.max_concurrent == 2  # the ad tells clients the jobs it takes at once
        first = submit_noop(client, {"payload": "a", "duration_ms": 3000}, redundancy=1)
        await wait_state(worker, first, {"running"})
        second = submit_noop(client, {"payload": "b"}, redundancy=1)
        for job in (first, second):
            assert await wait_state(client, job, {"settled", "refunded"}) == "settled"
        at: dict[bytes, dict[str, int]] = {}
        for job in (first, second):
            for signed in worker.node.events.events(job):
                e = signed.message
                at.setdefault(job, {}).setdefault(e.state, e.timestamp)  # type: ignore[attr-defined]
        # accepted while the first still ran (without a queue it was declined as busy) ...
        assert at[second]["assigned"] < at[first]["committed"]
        # ... and started only once the first's child was done
        assert at[second]["running"] >= at[first]["running"] + 3000


async def test_a_worker_forgets_lost_offers_and_ended_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        job_id = submit_noop(client, {"payload": "x"}, redundancy=1)
        assert await wait_state(client, job_id, {"settled", "refunded"}) == "settled"
        workers = [swarm.lc(i).worker for i in (1, 2)]
        await wait_for(lambda: all(j.ended for w in workers for j in w.jobs.values()
                                   if j.assignment is not None), 30)  # fmt: skip
        assert sum(len(w.jobs) for w in workers) == 2  # the winner's job, the loser's offer
        for w in workers:
            w._forget_old()  # too recent: kept
        assert sum(len(w.jobs) for w in workers) == 2
        monkeypatch.setattr(worker_module, "_FORGET_AFTER_S", -1.0)
        for w in workers:
            w._forget_old()  # the ended job goes; the lost offer waits for offer_keep_s
        assert sum(len(w.jobs) for w in workers) == 1
        for w in workers:
            w.lc.settings = dataclasses.replace(w.lc.settings, offer_keep_s=-1.0)
            w._forget_old()
        assert [w.jobs for w in workers] == [{}, {}]
        assert [w._offers_of for w in workers] == [{}, {}]  # no offer counted for the client


async def test_a_lone_worker_reveals_without_a_separate_commit(tmp_path: Path) -> None:
    """Redundancy 1: the worker sends no ResultCommit (nobody could copy it); the client
    derives the commitment from the reveal and keeps it. With two workers each still
    commits before it reveals: the same handler refuses a reveal that comes first."""
    import os

    from protocol.envelope import open_envelope
    from protocol.errors import PeerProtocolError
    from protocol.messages import ResultReveal
    from protocol.settlement import commit_hash

    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        seen: list[str] = []
        handlers = client.node.negotiator.handlers
        for kind in ("result_commit", "result_reveal"):
            real = handlers[kind]

            async def counted(signed, peer, real=real, kind=kind):  # type: ignore[no-untyped-def]
                seen.append(kind)
                return await real(signed, peer)

            handlers[kind] = counted
        job_id = submit_noop(client, {"payload": "solo"}, redundancy=1)
        assert await wait_state(client, job_id, {"settled", "refunded", "cancelled"}) == "settled"
        assert seen == ["result_reveal"]
        info = client.node.store.get_job(job_id).data["attempts"]["1"]
        (did,) = info["reveals"]
        reveal = open_envelope(bytes.fromhex(info["reveals"][did]), now=None).message
        assert isinstance(reveal, ResultReveal)
        worker_eth = info["workers"][0]["eth"]
        expected = commit_hash(reveal.result_hash, worker_eth, reveal.salt)
        assert info["commits"][did] == expected.hex()

        seen.clear()
        pair = submit_noop(client, {"payload": "pair"}, redundancy=2)
        assert await wait_state(client, pair, {"settled", "refunded", "cancelled"}) == "settled"
        assert sorted(seen) == ["result_commit"] * 2 + ["result_reveal"] * 2
        assert seen[0] == "result_commit"
        # a worker of a two-worker attempt revealing first is refused
        from node.lifecycle.client import Attempt, WorkerSlot

        w1, w2 = swarm.identities[1], swarm.identities[2]
        fake = b"\x12\x20" + os.urandom(32)
        client.client.active[(fake, 1)] = Attempt(
            1,
            {
                w1.did: WorkerSlot(w1.did, w1.peer_id, w1.eth_address, 1),
                w2.did: WorkerSlot(w2.did, w2.peer_id, w2.eth_address, 1),
            },
            terms_from_json(info["terms"]),
        )
        early = ResultReveal(
            job_id=fake,
            attempt=1,
            manifest=reveal.manifest,
            result_hash=reveal.result_hash,
            salt=reveal.salt,
        )
        signed = open_envelope(swarm.lc(1).node.seal(early), now=None)
        try:
            with pytest.raises(PeerProtocolError, match="reveal before commit"):
                await client.client.on_reveal(signed, w1.peer_id)
            # committed, but its co-worker has not: still too early (the commit window
            # of these terms is far from over)
            slots = client.client.active[(fake, 1)].slots
            slots[w1.did].commitment = commit_hash(reveal.result_hash, w1.eth_address, reveal.salt)
            again = open_envelope(swarm.lc(1).node.seal(early), now=None)
            with pytest.raises(PeerProtocolError, match="before every commit is in"):
                await client.client.on_reveal(again, w1.peer_id)
            assert slots[w1.did].reveal is None
            # once every commit is in, the same reveal stands
            slots[w2.did].commitment = bytes(32)
            third = open_envelope(swarm.lc(1).node.seal(early), now=None)
            await client.client.on_reveal(third, w1.peer_id)
            assert slots[w1.did].reveal is third
        finally:
            del client.client.active[(fake, 1)]


async def test_workers_reveal_only_once_every_commit_is_in(tmp_path: Path) -> None:
    """Redundancy 2 with one worker held back before it commits: the other commits, and
    its reveal waits for the client's call, which comes only after the second commit."""
    import trio

    from node.app import now_ms

    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        gate = trio.Event()
        held = swarm.lc(2).worker
        real_submit = held._submit

        async def gated(job, result):  # type: ignore[no-untyped-def]
            await gate.wait()
            await real_submit(job, result)

        held._submit = gated  # type: ignore[method-assign]
        job_id = submit_noop(client, {"payload": "pair"}, redundancy=2)

        def one_commit_in() -> bool:
            attempt = client.client.active.get((job_id, 1))
            return (
                attempt is not None
                and [s.commitment is not None for s in attempt.slots.values()].count(True) == 1
            )

        await wait_for(one_commit_in, 60)
        opened = now_ms()
        gate.set()
        assert await wait_state(client, job_id, {"settled", "refunded", "cancelled"}) == "settled"
        for i in (1, 2):
            phases = {
                e.message.state: e.message.timestamp for e in swarm.lc(i).node.events.events(job_id)
            }  # type: ignore[attr-defined]
            assert phases["committed"] <= phases["revealed"]
            assert phases["revealed"] >= opened, (i, phases, opened)
        info = client.node.store.get_job(job_id).data["attempts"]["1"]
        assert len(info["commits"]) == len(info["reveals"]) == 2

        # A lost call is made again: the first one each worker gets is refused as if it
        # never arrived; the job still settles, well before its deadline.
        from node.lifecycle.worker import Refused

        calls: list[str] = []
        for i in (1, 2):
            handlers = swarm.lc(i).node.negotiator.handlers
            real = handlers["reveal_call"]

            async def lossy(signed, peer, real=real, i=i):  # type: ignore[no-untyped-def]
                calls.append(f"w{i}")
                if calls.count(f"w{i}") == 1:
                    raise Refused("lost", code="unknown_job")  # not retried by the sender
                return await real(signed, peer)

            handlers["reveal_call"] = lossy
        again = submit_noop(client, {"payload": "pair again"}, redundancy=2)
        assert await wait_state(client, again, {"settled", "refunded", "cancelled"}) == "settled"
        assert calls.count("w1") >= 2  # the refused call, then the one made again
        assert calls.count("w2") >= 2


async def test_spare_offers_come_only_from_room_our_other_jobs_do_not_need(
    tmp_path: Path,
) -> None:
    """offer_fanout: a lone job is offered to K + 2 workers; while other jobs of the same
    client bid for the same room, the spare offers are withheld (and `c0 job explain`
    says so), so a burst does not tie up the room the rest of it needs."""
    import dataclasses

    from node.lifecycle import LifecycleSettings

    def settings(i: int) -> LifecycleSettings:  # one job at a time per worker: room 3
        return dataclasses.replace(
            LifecycleSettings(), max_concurrent=1, max_queued=0, release_max_wait_s=0.2
        )

    async with memory_swarm(tmp_path, workers=3, settings=settings) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 3, 60)

        def offers(job_id: bytes) -> list[str]:
            explain = client.node.store.get_job(job_id).data["explain"]["1"]
            return [e["reason"] for e in explain]

        alone = submit_noop(client, {"payload": "alone"}, redundancy=1)
        assert await wait_state(client, alone, {"settled", "refunded"}) == "settled"
        assert offers(alone).count("selected") == 3

        # two more jobs of ours bidding (stand-ins): 3 jobs x K=1 take all the room
        others = {b"\x12\x20" + bytes([i]) * 32 for i in (1, 2)}
        client.client.bidding |= others
        try:
            burst = submit_noop(client, {"payload": "burst"}, redundancy=1)
            assert await wait_state(client, burst, {"settled", "refunded"}) == "settled"
        finally:
            client.client.bidding -= others
        reasons = offers(burst)
        assert reasons.count("selected") == 1
        assert sum("spare offer withheld" in r for r in reasons) == 2


async def test_receipts_pay_the_worker_only_when_its_client_signed_them(
    tmp_path: Path,
) -> None:
    """Each job released gets its receipt, kept by the worker as evidence, signed by
    the client (receipts of one release travel batched, as any requests to one peer do:
    tests/net/test_negotiate.py). A receipt for a job signed by anyone else pays nothing;
    the client's own for the same job does."""
    from node.lifecycle.worker import WorkerJob
    from protocol.envelope import open_envelope
    from protocol.messages import Receipt

    async with memory_swarm(tmp_path, workers=1) as swarm:
        client, worker = swarm.client, swarm.lc(1)
        await wait_for(lambda: offering(client) == 1, 60)
        jobs = [submit_noop(client, {"payload": f"r{i}"}, redundancy=1) for i in range(3)]
        for job in jobs:
            assert await wait_state(client, job, {"settled", "refunded"}) == "settled"
        for job in jobs:
            await wait_state(worker, job, {"released"})
        rows = worker.node.store.db.execute(
            "SELECT job_id, sender, envelope FROM envelopes WHERE type='receipt'"
        ).fetchall()
        assert {bytes(r[0]) for r in rows} == set(jobs)
        assert {r[1] for r in rows} == {client.node.did}

        genuine = open_envelope(bytes(rows[0][2]), now=None).message
        assert isinstance(genuine, Receipt)
        pending = next(iter(worker.worker.jobs.values()))
        fresh = WorkerJob(pending.offer, pending.client_peer)
        key = (b"\x12\x20" + b"\x07" * 32, 1)
        worker.worker.jobs[key] = fresh
        for_fresh = Receipt(
            job_id=key[0],
            result_hash=genuine.result_hash,
            workers=genuine.workers,
            payouts=genuine.payouts,
            eip712_sig=genuine.eip712_sig,
        )
        forged = open_envelope(swarm.lc(1).node.seal(for_fresh), now=None)
        await worker.worker.on_receipt(forged, worker.node.peer_id)
        assert not fresh.released.is_set()
        good = open_envelope(client.node.seal(for_fresh), now=None)
        await worker.worker.on_receipt(good, client.node.peer_id)
        assert fresh.released.is_set()
        del worker.worker.jobs[key]


async def test_a_revealed_job_no_longer_counts_against_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops counting a job against its capacity once it has revealed; so
    does the client's routing, while it is still verifying the result."""
    import threading

    import trio

    from node.lifecycle import client as client_module

    real_verify = client_module.verify_result
    entered, go = threading.Event(), threading.Event()

    def slow_verify(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        go.wait(30)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(client_module, "verify_result", slow_verify)
    async with memory_swarm(tmp_path, workers=1) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 1, 60)
        job_id = submit_noop(client, {"payload": "v"}, redundancy=1)
        try:
            await trio.to_thread.run_sync(entered.wait, 30)
            assert entered.is_set()
            (attempt,) = client.client.active.values()  # still being verified ...
            assert all(slot.reveal is not None for slot in attempt.slots.values())
            taken = {w: n for w, n in client.client._ours_in_flight().items() if n}
            assert taken == {}  # ... but takes no room at the worker
        finally:
            go.set()
        assert await wait_state(client, job_id, {"settled", "refunded"}) == "settled"


async def test_reputation_follows_new_evidence_and_rolled_back_evidence_is_forgotten(
    tmp_path: Path,
) -> None:
    """Routing reads a worker's evidence from memory once loaded: new evidence counts at
    once, and evidence written in a transaction that rolls back does not."""
    async with memory_swarm(tmp_path, workers=1) as swarm:
        client, did = swarm.client, swarm.identities[1].did
        assert client.reputation_of(did, "noop").completed == 0  # loads (nothing yet)
        client.add_evidence(did, "noop", "completed", b"\x12\x20" + b"\x01" * 32, "verdict:1")
        client.add_evidence(did, "noop", "completed", b"\x12\x20" + b"\x01" * 32, "verdict:1")
        assert client.reputation_of(did, "noop").completed == 1  # a duplicate is ignored

        def timeout_then_fail() -> None:
            with client.node.store.transaction():
                job = b"\x12\x20" + b"\x02" * 32
                client.add_evidence(did, "noop", "timeout", job, "attempt:1")
                assert client.reputation_of(did, "noop").timeouts == 1
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            timeout_then_fail()
        rep = client.reputation_of(did, "noop")
        assert (rep.completed, rep.timeouts) == (1, 0)
        assert len(client.evidence(did)) == 1
