"""Restarts and repeats are safe (issue 18, item 5): the same submission is the same job,
a restarted client reads its escrows on chain before it acts, and the chain being down
is a local failure, never a peer's fault. On the memory swarm: where every wei went is
read from the chain, and the money invariants run at the end of each test."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
import trio
from web3 import HTTPProvider, Web3

from node.chain.backends import Chain
from node.chain.client import EscrowClient
from node.chain.rpc import JsonRpc, RpcError
from node.lifecycle.escrow import NOW_TTL_S, AsyncEscrow, terms_from_json
from node.net.negotiate import refusal_for
from protocol.consent import attempt_chain_id
from protocol.errors import C0Error, PeerProtocolError
from protocol.jobs import JobTemplate, derive_nonce, job_id_from_text
from protocol.settlement import STATUS_SETTLED, ChainUnavailable, SettlementError
from protocol.state import TERMINAL
from tests.lifecycle.conftest import (
    Swarm,
    memory_swarm,
    offering,
    submit_noop,
    wait_record,
    wait_state,
)
from tests.net.conftest import ident, wait_for

NOOP_PRICE = 10**12  # what a worker bids for a noop job (LifecycleSettings.prices)
ENDS = {str(s) for s in TERMINAL}


def _noop(params: dict[str, Any]) -> dict[str, Any]:
    return {"job_class": "noop", "params": params}


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


async def _chain_events(swarm: Swarm, chain_id: bytes) -> list[dict[str, Any]]:
    async with swarm.lock:  # py-evm is not thread-safe: the nodes' calls share this lock
        events = swarm.client_escrow().job_events()
    want = "0x" + chain_id.hex()
    return [e for e in events if str(e.get("job_id", "")).lower() == want]


# ---------------------------------------------------------------- the derived nonce
def test_the_nonce_is_derived_from_what_defines_the_job() -> None:
    client = ident(1).did
    template = JobTemplate.from_json(_noop({"payload": "x"}))
    spec = template.bind({}, client=client, nonce=bytes(16))

    def nonce(*, spec: Any = spec, redundancy: int = 2, max_price: int = 10**15) -> bytes:
        return derive_nonce(spec, redundancy=redundancy, max_price=max_price)

    base = nonce()
    assert len(base) == 16
    assert base == nonce()  # deterministic
    # the spec's own nonce is not part of it; defaults filled in or written out are one job
    assert base == nonce(spec=template.bind({}, client=client, nonce=b"\x01" * 16))
    explicit = JobTemplate.from_json(_noop({"payload": "x", **dict(spec.params)}))
    assert base == nonce(spec=explicit.bind({}, client=client, nonce=bytes(16)))
    # whatever changes what is bought, from whom, or at what price is another job
    assert base != nonce(redundancy=1)
    assert base != nonce(max_price=10**15 + 1)
    assert base != nonce(spec=template.bind({}, client=ident(2).did, nonce=bytes(16)))
    other = JobTemplate.from_json(_noop({"payload": "y"}))
    assert base != nonce(spec=other.bind({}, client=client, nonce=bytes(16)))


async def test_the_same_submission_twice_is_one_job_and_new_is_another(tmp_path: Path) -> None:
    async with memory_swarm(tmp_path, workers=1) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 1, 60)
        worker_before = swarm.balance(1)
        first = submit_noop(client, {"duration_ms": 1000}, redundancy=1)
        # again while it runs: the same job, and no second task or escrow for it
        again = client.client.submit_job(
            _noop({"duration_ms": 1000}), {}, redundancy=1, max_price=10**15, deadline_s=999
        )
        assert job_id_from_text(again.job_id) == first
        assert again.existing
        rec = client.node.store.get_job(first)
        assert rec is not None
        assert again.deadline_ms == rec.data["deadline_ms"]  # the first submission's
        assert await wait_state(client, first, ENDS) == "settled"
        # again once settled: reported as it ended, nothing paid again
        settled = client.client.submit_job(
            _noop({"duration_ms": 1000}), {}, redundancy=1, max_price=10**15, deadline_s=120
        )
        assert (settled.job_id, settled.state, settled.existing) == (again.job_id, "settled", True)
        # `new`: a new, separately paid job with the same definition
        fresh = client.client.submit_job(
            _noop({"duration_ms": 1000}),
            {},
            redundancy=1,
            max_price=10**15,
            deadline_s=120,
            new=True,
        )
        assert not fresh.existing
        second = job_id_from_text(fresh.job_id)
        assert second != first
        assert await wait_state(client, second, ENDS) == "settled"
        states = [e.message.state for e in client.node.events.events(first)]  # type: ignore[attr-defined]
        assert states.count("requested") == 1
        assert states.count("settled") == 1
        for job_id in (first, second):  # one escrow each, opened and released once
            assert _kinds(await _chain_events(swarm, attempt_chain_id(job_id, 1))) == [
                "opened",
                "released",
            ]
            assert await _chain_events(swarm, attempt_chain_id(job_id, 2)) == []
        await wait_for(lambda: swarm.balance(1) - worker_before == 2 * NOOP_PRICE, 30)


# ---------------------------------------------------------------- restarted client
async def test_a_client_restarted_after_its_workers_claimed_records_the_claim(
    tmp_path: Path,
) -> None:
    """The client dies with the escrow funded; its workers commit and reveal on chain and
    claim after the challenge period. The restarted client reads that on chain: the job is
    settled by the claim, nothing is released or refunded, no new attempt is funded."""
    async with memory_swarm(tmp_path, workers=2, challenge_period=5) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        workers_before = [swarm.balance(i) for i in (1, 2)]
        job_id = submit_noop(client, {"duration_ms": 1500}, redundancy=2, deadline_s=20)
        await wait_state(client, job_id, {"assigned", "running"})
        await swarm.kill(0)  # the escrow is funded; the client is gone
        client_after_open = swarm.balance(0)
        chain_id = attempt_chain_id(job_id, 1)
        for i in (1, 2):
            await wait_record(
                swarm.lc(i), job_id, {"claimed", "settled_by_claim", "released", "claim_failed"}, 90
            )
        assert "claimed" in _kinds(await _chain_events(swarm, chain_id))

        restarted = await swarm.start(0)  # same home, same database
        assert await wait_state(restarted, job_id, ENDS, 30) == "settled"
        rec = restarted.node.store.get_job(job_id)
        assert rec is not None
        info = rec.data["attempts"]["1"]
        kinds = _kinds(await _chain_events(swarm, chain_id))
        claimed = [e for e in await _chain_events(swarm, chain_id) if e["event"] == "claimed"]
        assert info["claim_tx"] == claimed[0]["tx"]
        assert "release_tx" not in info
        assert rec.data["attempt"] == 1
        # where every wei went, from the chain: paid once by the claim, nothing else
        assert kinds.count("claimed") == 1
        assert "released" not in kinds
        assert "refunded" not in kinds
        assert await _chain_events(swarm, attempt_chain_id(job_id, 2)) == []
        paid = [swarm.balance(i) - b for i, b in zip((1, 2), workers_before, strict=True)]
        assert paid == [NOOP_PRICE, NOOP_PRICE]
        assert swarm.balance(0) == client_after_open  # no refund, no second escrow
        events = list(restarted.node.events.events(job_id))
        last = events[-1].message
        assert last.state == "settled"  # type: ignore[attr-defined]
        assert last.detail == {"on_chain": "claimed", "tx": claimed[0]["tx"]}  # type: ignore[attr-defined]
        await trio.sleep(2)  # and it stays that way: nothing pending with the keeper
        assert not restarted.refunds.pending
        assert _kinds(await _chain_events(swarm, chain_id)) == kinds


async def test_a_worker_restarted_before_it_was_paid_claims_once(tmp_path: Path) -> None:
    """The client dies with the escrow funded; its one worker finishes, cannot deliver,
    and dies too, its result committed to but not paid. Restarted, the worker reads the
    chain (what it committed and revealed there), goes on where it was and claims after
    the challenge period: paid exactly once, its stake intact, nothing refunded."""
    async with memory_swarm(tmp_path, workers=1, challenge_period=5) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 1, 60)
        worker_before, stake_before = swarm.balance(1), swarm.stake(1)
        job_id = submit_noop(client, {"duration_ms": 500}, redundancy=1, deadline_s=20)
        await wait_state(client, job_id, {"assigned", "running"})
        await swarm.kill(0)  # the escrow is funded; the client is gone
        # the result computed and committed to, not delivered: the worker dies too
        await wait_record(swarm.lc(1), job_id, {"submitted", "committed"}, 60)
        await swarm.kill(1)
        restarted = await swarm.start(1)  # same home, same database
        rec = await wait_record(
            restarted, job_id, {"claimed", "settled_by_claim", "claim_failed", "released"}, 90
        )
        assert rec.state == "claimed", rec.data
        chain_id = attempt_chain_id(job_id, 1)
        kinds = _kinds(await _chain_events(swarm, chain_id))
        assert kinds.count("committed") == 1  # never twice, whenever the restart came
        assert kinds.count("revealed") == 1
        assert kinds.count("claimed") == 1
        assert "refunded" not in kinds
        assert "released" not in kinds
        assert swarm.balance(1) - worker_before == NOOP_PRICE
        assert swarm.stake(1) == stake_before
        phases = [e.message.detail.get("phase") for e in restarted.node.events.events(job_id)]  # type: ignore[attr-defined]
        assert "resumed" in phases


async def test_a_client_stopped_after_its_release_releases_nothing_again(
    tmp_path: Path,
) -> None:
    """The release transaction is mined, and the client dies before it records it. The
    restarted client finds the escrow released on chain and records that release."""
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        workers_before = [swarm.balance(i) for i in (1, 2)]
        real = client.releases.release
        mined = trio.Event()

        async def release_then_die(terms: Any) -> Any:
            out = await real(terms)
            mined.set()
            await trio.sleep_forever()  # the process dies here: nothing is recorded
            return out

        client.releases.release = release_then_die  # type: ignore[method-assign]
        job_id = submit_noop(client, {"payload": "once"}, redundancy=2)
        with trio.fail_after(60):
            await mined.wait()
        await swarm.kill(0)
        chain_id = attempt_chain_id(job_id, 1)
        assert _kinds(await _chain_events(swarm, chain_id)) == ["opened", "released"]
        restarted = await swarm.start(0)
        assert await wait_state(restarted, job_id, ENDS, 30) == "settled"
        rec = restarted.node.store.get_job(job_id)
        assert rec is not None
        released = (await _chain_events(swarm, chain_id))[1]
        assert rec.data["attempts"]["1"]["release_tx"] == released["tx"]
        states = [e.message.state for e in restarted.node.events.events(job_id)]  # type: ignore[attr-defined]
        assert states[-2:] == ["verified", "settled"]
        await trio.sleep(2)
        assert _kinds(await _chain_events(swarm, chain_id)) == ["opened", "released"]
        paid = [swarm.balance(i) - b for i, b in zip((1, 2), workers_before, strict=True)]
        assert paid == [NOOP_PRICE, NOOP_PRICE]


async def test_a_client_stopped_between_funding_and_assigning_opens_no_second_escrow(
    tmp_path: Path,
) -> None:
    """Funded, and the assignments out, but the client dies before it records them: the
    restarted client assigns the same escrow again (each worker answers the same Accept)
    instead of funding attempt 1 a second time."""
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: offering(client) == 2, 60)
        real = client.client._assign
        assigned = trio.Event()

        async def assign_then_die(*args: Any) -> list[str]:
            refused = await real(*args)
            assigned.set()
            await trio.sleep_forever()  # dies before the ASSIGN step is saved
            return refused

        client.client._assign = assign_then_die  # type: ignore[method-assign]
        job_id = submit_noop(client, {"duration_ms": 1500}, redundancy=2)
        with trio.fail_after(60):
            await assigned.wait()
        await swarm.kill(0)
        restarted = await swarm.start(0)
        assert await wait_state(restarted, job_id, ENDS, 60) == "settled"
        rec = restarted.node.store.get_job(job_id)
        assert rec is not None
        assert rec.data["attempt"] == 1
        states = [e.message.state for e in restarted.node.events.events(job_id)]  # type: ignore[attr-defined]
        assert states.count("funded") == 1
        assert states.index("funded") < states.index("assigned") < states.index("resumed")
        chain_id = attempt_chain_id(job_id, 1)
        assert _kinds(await _chain_events(swarm, chain_id)) == ["opened", "released"]
        assert await _chain_events(swarm, attempt_chain_id(job_id, 2)) == []
        terms = terms_from_json(rec.data["attempts"]["1"]["terms"])
        async with swarm.lock:
            assert swarm.client_escrow().job_status(terms) == STATUS_SETTLED


# ---------------------------------------------------------------- the chain down
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on leaving: nothing listens there


async def test_an_unreachable_chain_is_a_typed_local_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    chain = Chain(
        w3=Web3(HTTPProvider(url, request_kwargs={"timeout": 2})),
        kind="rpc",
        chain_id=31337,
        url=url,
        rpc=JsonRpc(url, timeout=2),
    )
    account = ident(3).eth_account
    escrow = AsyncEscrow(
        EscrowClient(chain, "0x" + "11" * 20, account, retries=0),  # type: ignore[arg-type]
    )
    with pytest.raises(ChainUnavailable) as now:
        await escrow.now()
    assert isinstance(now.value, SettlementError)  # the existing refusals' handlers apply
    assert now.value.code == "chain_unavailable"
    with pytest.raises(ChainUnavailable):
        await escrow.read(escrow.client.balance)  # web3's path (requests)
    with pytest.raises(ChainUnavailable):
        await escrow.call(escrow.client.balance)
    # what the JSON-RPC layer and web3 raise when the endpoint misbehaves, mapped too;
    # a bug (any other exception) is not
    for raised in (
        requests.exceptions.ConnectionError("refused"),
        http.client.RemoteDisconnected("gone"),
        TimeoutError("slow"),
    ):

        def fail(exc: Exception = raised) -> None:
            raise exc

        with pytest.raises(ChainUnavailable):
            await escrow.call(fail)

    def bug() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await escrow.call(bug)
    # at the boundary: a typed C0Error is answered as is (no penalty); only an exception
    # nobody raised on purpose becomes `bad_request` (a penalty)
    assert not isinstance(ChainUnavailable("x"), PeerProtocolError)
    assert isinstance(refusal_for(KeyError("k"), "peer", "a request"), PeerProtocolError)


@pytest.mark.anvil
async def test_a_real_chain_that_stops_answering_is_unavailable() -> None:
    """Beside the closed port above: a real JSON-RPC chain (anvil) answers, then stops."""
    from node.chain.anvil import Anvil
    from node.chain.backends import rpc_chain
    from tests.settlement.conftest import anvil_binary_or_fail

    anvil_binary_or_fail()
    with Anvil() as node:
        assert node.url is not None
        chain = rpc_chain(node.url)
        client, _ = EscrowClient.deploy(chain, chain.dev_account(0), retries=1)
        escrow = AsyncEscrow(client)
        assert await escrow.now() > 0
        await escrow.call(client.deposit, 10)
        assert await escrow.read(client.balance) == 10
        node.stop()
        await trio.sleep(NOW_TTL_S)  # the block time read above is kept that long
        with pytest.raises(ChainUnavailable):
            await escrow.now()
        with pytest.raises(ChainUnavailable):
            await escrow.read(client.balance)
        with pytest.raises(ChainUnavailable):
            await escrow.call(client.deposit, 10)  # a transaction: nothing sent, typed


async def test_a_worker_whose_chain_is_down_refuses_without_penalising_the_client(
    tmp_path: Path,
) -> None:
    """The worker's escrow read fails as the JSON-RPC client does when a gateway answers
    HTTP 503 (before: an untyped exception, `bad_request`, the client penalised 40), then
    as `requests` does when the endpoint is down: each assignment is refused
    (chain_unavailable), the client is not penalised, and once the chain answers again
    the job settles."""
    async with memory_swarm(tmp_path, workers=1, challenge_period=5) as swarm:
        client = swarm.client
        worker = swarm.lc(1)
        await wait_for(lambda: offering(client) == 1, 60)
        escrow = worker.escrow
        assert escrow is not None
        troubles: list[Exception] = [
            RpcError("HTTP 503 from http://rpc.example"),
            requests.exceptions.ConnectionError("connection refused"),
        ]
        failed: list[str] = []

        def down(*_args: Any) -> int:
            trouble = troubles.pop(0)
            if not troubles:
                del escrow.client.job_status  # type: ignore[attr-defined]  # answers next time
            failed.append(type(trouble).__name__)
            raise trouble

        escrow.client.job_status = down  # type: ignore[method-assign]
        job_id = submit_noop(client, {"payload": "down"}, redundancy=1, deadline_s=40)
        assert await wait_state(client, job_id, ENDS, 60) == "settled"
        assert failed == ["RpcError", "ConnectionError"]
        assert worker.node.penalties.score(client.node.peer_id, trio.current_time()) == 0.0
        assert not worker.node.penalties.is_banned(client.node.peer_id, trio.current_time())
        details = [
            e.message.detail  # type: ignore[attr-defined]
            for e in client.node.events.events(job_id)
            if e.message.state == "failed"  # type: ignore[attr-defined]
        ]
        assert len(details) == 2
        assert all("chain_unavailable" in str(d) for d in details), details
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        assert rec.data["attempt"] == 3  # the refused attempts failed; the third one ran
        assert worker.task_failures == 0


def test_chain_unavailable_is_a_c0_error() -> None:
    exc = ChainUnavailable("connection refused")
    assert isinstance(exc, C0Error)
    assert exc.reason == "chain unreachable"
    assert "connection refused" in exc.message
