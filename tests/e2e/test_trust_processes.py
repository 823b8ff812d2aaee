"""Trust between strangers (issue 18) over real processes: node processes on 127.0.0.1, a
real anvil, the real CLI; the process versions of the most important adversary tests of
tests/lifecycle/test_trust.py. Each says where every wei went, read from the chain, and
checks the money invariants (testnet/invariants.py) at its end."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from node.chain.backends import rpc_chain
from node.chain.client import EscrowClient
from node.lifecycle.escrow import terms_to_json
from node.lifecycle.settings import CHAIN_FILE
from node.store import DB_FILE, Store
from protocol.jobs import job_id_from_text
from protocol.settlement import STATUS_OPEN, EscrowTerms
from testnet.invariants import check_money, terms_of_records
from testnet.local import down, up
from tests.e2e.test_lifecycle_processes import (
    _gone,
    await_offers,
    chain_events,
    control_of,
    kinds,
    network,
    node_of,
    submit,
    wait_status,
)
from tests.e2e.test_swarm_processes import escrow_view, poll
from tests.net.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.anvil]
NOOP = 10**12  # the default worker price of noop
STAKE_LOCK = 10**14  # the default stake lock a client asks (LifecycleSettings.stake_lock_wei)


def test_a_wrong_result_at_redundancy_one_is_never_paid(tmp_path: Path) -> None:
    """node-00 arbitrates, node-01 returns a wrong result, node-02 runs nothing, the client
    gives up after one attempt. At K = 1 the wrong worker alone reaches quorum on chain:
    it commits and reveals, and would claim once the challenge period is over; the client,
    whose verification failed, disputes once the reveal window is over, and the arbiter
    pays nobody and slashes the worker's stake lock to the client."""
    lifecycle = {
        1: {"behaviour": "wrong_output"},
        2: {"execute": False},  # the only worker offering: node-01
        3: {"max_attempts": 1},  # the client
    }
    with network(tmp_path / "net", 3, lifecycle=lifecycle) as state:
        (client,) = node_of(state, "client")
        (arbiter,) = node_of(state, "arbiter")
        wrong = state["nodes"][1]
        control = control_of(client)
        view = escrow_view(state)
        w3 = rpc_chain(state["rpc_url"], chain_id=state["chain_id"]).w3
        await_offers(state, 1)
        balance, stake = view.balance(wrong["eth_address"]), view.stake_of(wrong["eth_address"])
        arbiter_balance = view.balance(arbiter["eth_address"])
        nonce = w3.eth.get_transaction_count(wrong["eth_address"])  # staked at start
        job = submit(
            state,
            tmp_path,
            {"job_class": "noop", "params": {"payload": "check me"}},
            "--redundancy",
            "1",
            "--max-price",
            str(NOOP),
            "--deadline",
            "24",  # the escrow's: commit by ~60 % of it, reveal by its end, then disputed
        )
        poll(lambda: control.call("job_status", job_id=job)["escrow_tx"], 60, "the escrow")
        funded = view.balance(client["eth_address"])  # the escrow is open: paid out of this

        final = wait_status(control, job, ("settled", "refunded", "cancelled"), 120)
        assert final["state"] == "refunded"
        assert final["attempt"] == 1
        assert final["workers"] == [wrong["did"]]
        events = chain_events(state, job, 1)
        assert kinds(events)[:3] == ["opened", "committed", "revealed"]  # quorum 1 on chain
        assert {e["worker"].lower() for e in events if e["event"] == "revealed"} == {
            wrong["eth_address"].lower()
        }
        assert "claimed" not in kinds(events)
        assert "released" not in kinds(events)
        assert "refunded" not in kinds(events)
        assert kinds(events).count("disputed") == 1
        (opened,) = [e for e in events if e["event"] == "opened"]
        (ruling,) = [e for e in events if e["event"] == "resolved"]
        (slash,) = [e for e in events if e["event"] == "slashed"]
        assert opened["escrowed"] == NOOP
        assert ruling["to_workers"] == 0
        assert ruling["to_client"] == NOOP + STAKE_LOCK  # the escrow back + the slash
        assert slash["tx"] == ruling["tx"]
        assert w3.eth.get_transaction(ruling["tx"])["from"] == arbiter["eth_address"]
        (disputed,) = [e for e in events if e["event"] == "disputed"]
        assert w3.eth.get_transaction(disputed["tx"])["from"] == client["eth_address"]
        states = [e["state"] for e in control.call("job_events", job_id=job)]
        assert "disputed" in states
        assert states[-1] == "refunded"

        # Every wei: the client got its escrow back and the stake lock; the wrong worker
        # not a wei, and its stake lock is gone; the arbiter took nothing.
        assert view.balance(client["eth_address"]) == funded + NOOP + STAKE_LOCK
        assert view.balance(wrong["eth_address"]) == balance
        assert view.stake_of(wrong["eth_address"]) == stake - STAKE_LOCK
        assert view.balance(arbiter["eth_address"]) == arbiter_balance

        # The worker's claim comes due after the ruling (deadline + challenge period): it
        # finds the escrow closed, its own record ends there, and no claim reaches the chain.
        def phases() -> list[str]:
            return [
                e["detail"].get("phase") for e in control_of(wrong).call("job_events", job_id=job)
            ]

        after = poll(
            lambda: "revealed_on_chain" in (p := phases())[:-1] and p,
            60,
            "the wrong worker's claim time",
        )
        assert "committed_on_chain" in after
        assert "claimed" not in after
        assert "claimed" not in kinds(chain_events(state, job, 1))
        # The worker sent its commit and its reveal, and no claim (nor anything else).
        assert w3.eth.get_transaction_count(wrong["eth_address"]) == nonce + 2
        committed = [e for e in events if e["event"] in ("committed", "revealed")]
        assert all(
            w3.eth.get_transaction(e["tx"])["from"] == wrong["eth_address"] for e in committed
        )


def chain_events_of(state: dict[str, Any], chain_job_id: bytes) -> list[dict[str, Any]]:
    """The escrow's own events for one escrow key, read from the chain."""
    key = "0x" + chain_job_id.hex()
    return [e for e in escrow_view(state).job_events() if e["job_id"].lower() == key]


def _worker_rows(node: dict[str, Any]) -> list[tuple[bytes, str]]:
    """A worker's job records, read from its database (read-only): (job id, state)."""
    uri = f"file:{Path(node['home']) / DB_FILE}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return [(bytes(r[0]), str(r[1])) for r in db.execute("SELECT job_id, state FROM jobs")]


def _money_problems(
    state: dict[str, Any], visitors: list[str], extra: dict[bytes, list[EscrowTerms]]
) -> list[str]:
    """check_money over the testnet (as check_testnet), the accounts of `visitors` and the
    escrows a test opened by hand (`extra`), which no node's records hold."""
    chain = rpc_chain(state["rpc_url"], chain_id=state["chain_id"])
    escrow = EscrowClient(chain, state["escrow"], chain.dev_account(0))
    accounts = [n["eth_address"] for n in state["nodes"]] + visitors
    accounts += [chain.dev_account(i).address for i in range(len(chain.dev_keys))]
    records = []
    for node in state["nodes"]:
        store = Store(Path(node["home"]) / DB_FILE)
        try:
            records += store.jobs()
        finally:
            store.close()
    return check_money(escrow, accounts, {**terms_of_records(records), **extra})


async def test_a_hostile_client_gets_no_signature_no_work_and_no_transaction(
    tmp_path: Path,
) -> None:
    """A hostile client, a libp2p node in this process (the project's own node code and
    identity), against a real worker process on anvil. Its offers locking more stake than
    the worker allows, naming itself arbiter, leaving no time to commit, or naming a payer
    bound to another DID are declined with their codes and nothing is signed. To an honest
    offer the worker bids with its Consent; an escrow opened on the worker with other terms
    (1 wei instead of its bid) is refused by the contract itself while it locks the
    worker's stake, and, with no stake lock, refused by the worker before any work. The
    worker sends no transaction and loses no wei, is not banned for it, and then serves an
    honest client's job as before."""
    from node.app import Node, now_ms
    from node.config import NodeConfig
    from node.home import create_identity
    from node.net.negotiate import RemoteRefused
    from protocol.consent import REFUSAL_CODES, offer_consent
    from protocol.identity import Identity
    from protocol.jobs import JobTemplate
    from protocol.messages import Assignment, Bid, Decline, Offer
    from protocol.settlement import Assignment as EscrowAssignment
    from protocol.settlement import (
        Common,
        SettlementError,
        open_args,
        recover_consent_signer,
        terms_hash,
    )

    directory = tmp_path / "net"
    state = up(1, directory)  # node-00: a worker (no arbiter node); a light client
    try:
        (worker,) = node_of(state, "worker")
        (client,) = node_of(state, "client")
        chain = rpc_chain(state["rpc_url"], chain_id=state["chain_id"])
        w3 = chain.w3
        view = escrow_view(state)
        arbiter = json.loads((Path(worker["home"]) / CHAIN_FILE).read_text())["arbiter"]

        home = tmp_path / "hostile"
        me = create_identity(home)
        forger = Identity.generate()  # another key: a payer bound to another DID
        funder = chain.dev_account(3)
        tx = funder.sign_transaction(
            {
                "to": me.eth_address,
                "value": 10**19,
                "gas": 21_000,
                "nonce": w3.eth.get_transaction_count(funder.address),
                "chainId": chain.chain_id,
                "maxFeePerGas": 50 * 10**9,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(tx.raw_transaction))
        hostile_escrow = EscrowClient(chain, state["escrow"], me.eth_account)  # type: ignore[arg-type]
        hostile_escrow.deposit(10**16)
        await_offers(state, 1)  # the worker staked and advertises
        address = worker["eth_address"]
        before = (view.balance(address), view.stake_of(address), w3.eth.get_balance(address))
        nonce = w3.eth.get_transaction_count(address)

        config = NodeConfig(light=True).replace(
            network={
                "listen": ["/ip4/127.0.0.1/tcp/0"],
                "bootstrap": worker["multiaddrs"],
                "dht": False,
            }
        )
        node = Node(me, config, home)
        peer = worker["peer_id"]
        chain_now = await trio.to_thread.run_sync(chain.now)

        def offer_of(**changes: Any) -> Offer:
            spec = JobTemplate.from_json({"job_class": "noop", "params": {}}).bind(
                {}, client=me.did, nonce=os.urandom(16)
            )
            offer = Offer(
                job_id=spec.job_id,
                spec=spec,
                attempt=1,
                redundancy=1,
                max_price=10**15,
                deadline=now_ms() + 120_000,
                commit_deadline=now_ms() + 60_000,
                chain_id=chain.chain_id,
                escrow=state["escrow"],
                arbiter=arbiter,
                client_eth=me.eth_address,
                client_eth_sig=me.eth_binding().eth_sig,
                input_providers=(node.peer_id,),
                stake_lock=STAKE_LOCK,
                escrow_commit_deadline=chain_now + 60,
                escrow_deadline=chain_now + 120,
            )
            return dataclasses.replace(offer, **changes)

        async def ask(offer: Offer) -> object:
            reply = await node.request(peer, node.seal(offer), timeout=20)
            assert reply is not None
            assert reply.sender == worker["did"]
            return reply.message

        hostile = {
            "stake_lock": offer_of(stake_lock=10**18),  # the worker allows 10**15
            "arbiter": offer_of(arbiter=me.eth_address),  # the client judging its own job
            "deadline": offer_of(escrow_commit_deadline=chain_now + 1),  # no time to commit
            "client_binding": offer_of(  # a payer bound to another DID, by another key
                client_eth=forger.eth_address, client_eth_sig=forger.eth_binding().eth_sig
            ),
        }
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await wait_for(lambda: peer in node.transport.connected_peers(), 30)
            for code, offer in hostile.items():
                assert code in REFUSAL_CODES
                answer = await ask(offer)
                assert isinstance(answer, Decline), (code, answer)
                assert (answer.reason, answer.job_id) == (code, offer.job_id)

            # The honest offer: a bid whose consent is the worker's signature of its terms.
            offer = offer_of()
            bid = await ask(offer)
            assert isinstance(bid, Bid)
            assert (bid.price, bid.eth_address) == (NOOP, address)
            consent = offer_consent(offer, bid.price)
            assert (
                recover_consent_signer(bid.consent, chain.chain_id, state["escrow"], consent)
                == address
            )
            common = Common(
                client=me.eth_address,
                arbiter=arbiter,
                commit_deadline=offer.escrow_commit_deadline,
                deadline=offer.escrow_deadline,
                quorum=1,
            )
            # 1 wei for the work, the worker's stake locked with its consent to its bid:
            # the contract refuses it, in the estimate and mined alike.
            underpaid = EscrowTerms(
                bytes(consent.job),
                common,
                (EscrowAssignment(address, 1, STAKE_LOCK),),
                consents=(bid.consent,),
            )
            with pytest.raises(SettlementError) as refused_open:
                await trio.to_thread.run_sync(hostile_escrow.open, [underpaid])
            assert refused_open.value.reason == "stake lock without the worker's consent"
            raw = me.eth_account.sign_transaction(  # type: ignore[attr-defined]
                {
                    "to": state["escrow"],
                    "data": hostile_escrow.encode_call("open", *open_args([underpaid])),
                    "value": 0,
                    "gas": 2_000_000,
                    "nonce": w3.eth.get_transaction_count(me.eth_address),
                    "chainId": chain.chain_id,
                    "maxFeePerGas": 50 * 10**9,
                    "maxPriorityFeePerGas": 10**9,
                }
            )
            receipt = await trio.to_thread.run_sync(
                lambda: w3.eth.wait_for_transaction_receipt(
                    w3.eth.send_raw_transaction(raw.raw_transaction)
                )
            )
            assert receipt["status"] == 0  # reverted on chain: no escrow, no lock
            assert chain_events_of(state, consent.job) == []

            # 1 wei and no stake lock: the contract needs no consent and opens it; the
            # worker refuses the assignment before it starts any work.
            unlocked = EscrowTerms(bytes(consent.job), common, (EscrowAssignment(address, 1, 0),))
            # (a client of its own: the raw transaction above used a nonce it did not count)
            hostile_escrow = EscrowClient(chain, state["escrow"], me.eth_account)  # type: ignore[arg-type]
            (opened,) = (await trio.to_thread.run_sync(hostile_escrow.open, [unlocked])).opened
            assignment = Assignment(
                job_id=offer.job_id,
                attempt=1,
                worker=worker["did"],
                workers=(worker["did"],),
                payouts=(1,),
                terms_hash=terms_hash(opened),
                chain_job_id=opened.job_id,
                terms=terms_to_json(opened),
                escrow_tx=b"",
            )
            with pytest.raises(RemoteRefused) as refused:
                await node.request(peer, node.seal(assignment), timeout=20)
            assert refused.value.reason == "terms_mismatch"

            # Refused, penalised, but not banned: a fresh honest offer still gets a bid.
            again = await ask(offer_of())
            assert isinstance(again, Bid)
            nursery.cancel_scope.cancel()

        # Nothing of the worker moved on chain: not a transaction, not a wei.
        assert w3.eth.get_transaction_count(address) == nonce
        assert (view.balance(address), view.stake_of(address), w3.eth.get_balance(address)) == (
            before
        )
        assert [e["event"] for e in chain_events_of(state, consent.job)] == ["opened"]
        assert view.job_status(opened) == STATUS_OPEN  # the 1 wei waits for its refund
        assert view.balance(me.eth_address) == 10**16 - 1
        (score,) = [p for p in control_of(worker).call("peers") if p["peer_id"] == node.peer_id]
        assert not score["banned"]
        assert -93 < score["score"] < -80  # arbiter 30, payer 30, terms 30, policy 1 + 1

        # The worker still serves an honest client (the light client node) as before.
        job = submit(
            state,
            tmp_path,
            {"job_class": "noop", "params": {}},
            "--redundancy",
            "1",
            "--max-price",
            str(NOOP),
            "--deadline",
            "60",
        )
        final = wait_status(control_of(client), job, ("settled", "refunded", "cancelled"), 90)
        assert final["state"] == "settled"
        assert final["workers"] == [worker["did"]]
        assert view.balance(address) == before[0] + NOOP
        rows = dict(_worker_rows(worker))  # the worker records the jobs it starts: this one
        assert rows[job_id_from_text(job)] == "released"
        assert offer.job_id not in rows  # … and not the one opened on other terms
        problems = _money_problems(state, [me.eth_address], {offer.job_id: [opened]})
        assert not problems, problems
    finally:
        down(directory)
    assert all(_gone(pid) for pid in [n["pid"] for n in state["nodes"]])
    assert _gone(state["chain"]["pid"])  # nor its anvil
