"""The crash test of tests/lifecycle/test_peer_fields.py over real libp2p (issue 18, item 7):
lifecycles on py-libp2p hosts in this process (TCP on 127.0.0.1, Noise, yamux), one
embedded chain. Every field of an Offer and an Assignment (to the worker, from a hostile
client with a pending offer there), a ResultReveal (to the client, from the worker of a
live job, over that worker's own host) and a DisputeOpen (to the arbiter, from a hostile
peer that serves the bundles it cites, themselves mutated) is mutated; each ends in a
typed refusal, penalised where it is the peer's fault, never in `bad_request` or a
lifecycle task failing, and an honest job settles afterwards. The money invariants are
checked at the end (tests/lifecycle/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from node.app import Node
from node.chain.backends import embedded_chain
from node.chain.client import EscrowClient
from node.lifecycle import ChainInfo, Lifecycle, LifecycleSettings
from node.lifecycle.escrow import terms_to_json
from node.net.framing import encode_frame
from node.net.memory import MemoryHub
from node.net.negotiate import NEGOTIATE_PROTOCOL
from node.net.streams import ByteStream
from protocol.consent import attempt_chain_id
from protocol.envelope import open_envelope
from protocol.identity import Identity
from protocol.messages import Bid, CapabilityAd, DisputeOpen, Message
from protocol.settlement import Assignment as EscrowAssignment
from protocol.settlement import Common, EscrowTerms
from tests.lifecycle.conftest import Swarm, _produce_blocks, _run, fund, submit_noop, wait_state
from tests.lifecycle.test_peer_fields import (
    Case,
    Outcome,
    ask_raw,
    base_messages,
    bundles,
    cases_for,
    no_bans,
    offer_for,
    run_cases,
    spec_for,
)
from tests.net.conftest import ident, wait_for
from tests.net.test_tcp import LOOPBACK

pytestmark = pytest.mark.slow

PATHS = ("offer", "assignment", "result_reveal", "dispute_open")


@asynccontextmanager
async def tcp_swarm(tmp: Path) -> AsyncIterator[tuple[Swarm, Node]]:
    """Node 0 the client, 1 a worker, 2 the arbiter (runs no jobs), each a Lifecycle on a
    libp2p host; and a bare hostile node (no lifecycle). All bootstrap from node 0."""
    chain = embedded_chain()
    escrow, _ = EscrowClient.deploy(chain, chain.dev_account(0))
    identities = [ident(120 + i) for i in range(3)]
    for identity in identities:
        fund(chain, identity.eth_address, 10**19)
    info = ChainInfo("embedded", chain.chain_id, escrow.address, identities[2].eth_address)
    lock = trio.Lock()

    def settings(i: int) -> LifecycleSettings:
        return LifecycleSettings(execute=i == 1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_produce_blocks, chain, lock)
        swarm = Swarm(
            tmp, chain, escrow.address, info, MemoryHub(), lock, nursery, settings, identities,
            [None] * 3, [None] * 3,
        )  # fmt: skip
        boot: list[str] = []
        for i, identity in enumerate(identities):
            cfg = LOOPBACK.replace(network={"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": boot})
            node = Node(identity, cfg, tmp / f"n{i}")
            client = EscrowClient(chain, escrow.address, identity.eth_account)  # type: ignore[arg-type]
            lc = Lifecycle(node, settings(i), info, escrow_client=client, chain_lock=lock)
            stopped = trio.Event()
            scope = await nursery.start(_run, node, lc, stopped)
            swarm.lifecycles[i], swarm.scopes[i] = lc, (scope, stopped)
            boot = boot or [node.transport.listen_addrs()[0]]
        cfg = LOOPBACK.replace(network={"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": boot})
        hostile = Node(ident(177), cfg, tmp / "hostile")
        await nursery.start(hostile.run)
        yield swarm, hostile
        await swarm.check_money()
        nursery.cancel_scope.cancel()


async def test_no_field_stops_a_node_over_libp2p(tmp_path: Path) -> None:
    async with tcp_swarm(tmp_path) as (swarm, hostile):
        client, worker, arbiter = swarm.client, swarm.lc(1), swarm.lc(2)
        await wait_for(lambda: any(w.ad.prices for w in client.node.caps.values()), 120)
        for lc in (worker, arbiter):  # the hostile peer dials each role directly
            await hostile.transport.connect(lc.node.transport.listen_addrs()[0])
        no_bans(client, worker, arbiter)
        assert client.escrow is not None
        chain_now = await client.escrow.now()
        outcome = Outcome()
        h_ident = hostile.identity
        started = trio.current_time()

        async def from_hostile(peer: str) -> ByteStream:
            return await hostile.transport.open_stream(peer, NEGOTIATE_PROTOCOL)

        # a pending offer of the hostile client at the worker: a valid bid back
        h_spec = spec_for(h_ident, payload="hostile")
        h_offer = offer_for(worker, h_ident, h_spec, chain_now, attempt=1)
        first = await ask_raw(
            await from_hostile(worker.node.peer_id), encode_frame(hostile.seal(h_offer))
        )
        assert isinstance(first.message, Bid), first
        w_ident = swarm.identities[1]
        h_terms = EscrowTerms(
            attempt_chain_id(h_spec.job_id, 1),
            Common(
                client=h_ident.eth_address,
                arbiter=worker.arbiter_address(),
                commit_deadline=h_offer.escrow_commit_deadline,
                deadline=h_offer.escrow_deadline,
            ),
            (EscrowAssignment(w_ident.eth_address, first.message.price, h_offer.stake_lock),),
        )
        ad = open_envelope(worker.node.build_ad(), now=None).message
        assert isinstance(ad, CapabilityAd)
        bundle_list = bundles(h_spec, swarm.identities[2], h_ident, terms_to_json(h_terms))
        digest = hostile.blobs.put_bytes(bundle_list[0][1])

        def bases(job_id: bytes, attempt: int, signer: Identity) -> dict[str, Message]:
            return base_messages(
                job_id=job_id,
                attempt=attempt,
                spec=h_spec,
                offer=h_offer,
                sender=signer,
                worker=w_ident,
                terms=terms_to_json(h_terms),
                ad=ad,
                evidence=digest,
                size=len(bundle_list[0][1]),
            )

        h_bases = bases(h_spec.job_id, 1, h_ident)
        n_cases = 0
        for name in ("assignment", "offer"):  # the offer last: its valid variants take slots
            cases = cases_for("worker", h_ident, {name: h_bases[name]})
            await run_cases(cases, worker.node, from_hostile, outcome, hostile.peer_id, parallel=6)
            n_cases += len(cases)

        cases = cases_for("arbiter", h_ident, {"dispute_open": h_bases["dispute_open"]})
        for label, bundle in bundle_list:
            cited = hostile.blobs.put_bytes(bundle)
            dispute = DisputeOpen(h_spec.job_id, "wrong", (cited,), (len(bundle),))
            cases.append(
                Case("arbiter", "dispute_open", label, encode_frame(hostile.seal(dispute)), True)
            )
        await run_cases(cases, arbiter.node, from_hostile, outcome, hostile.peer_id, parallel=6)
        n_cases += len(cases)

        # the client, from the worker of a live job, over the worker's own host
        job_id = submit_noop(client, {"duration_ms": 20_000}, redundancy=1, deadline_s=120)
        await wait_state(client, job_id, {"running", "assigned"}, limit_s=60)
        rec = client.node.store.get_job(job_id)
        assert rec is not None
        number = int(rec.data["attempt"])

        async def from_worker(peer: str) -> ByteStream:
            return await worker.node.transport.open_stream(peer, NEGOTIATE_PROTOCOL)

        reveal = {"result_reveal": bases(job_id, number, w_ident)["result_reveal"]}
        cases = cases_for("client", w_ident, reveal)
        invalid = [c for c in cases if not c.valid]
        await run_cases(invalid, client.node, from_worker, outcome, worker.node.peer_id, parallel=6)
        valid = [c for c in cases if c.valid]  # after: one may take the live job further
        await run_cases(valid, client.node, from_worker, outcome, worker.node.peer_id)
        n_cases += len(cases)

        took = trio.current_time() - started
        print(f"{n_cases} cases over libp2p in {took:.0f} s: {sorted(outcome.seen.items())}")
        assert not outcome.problems(), "\n".join(outcome.problems()[:60])
        await wait_for(lambda: _idle(arbiter), 120)
        print(f"arbitrations over after {trio.current_time() - started:.0f} s")
        honest = submit_noop(client, {"payload": "after"}, redundancy=1, deadline_s=120)
        assert await wait_state(client, honest, {"settled"}, limit_s=150) == "settled"


def _idle(lc: Lifecycle) -> bool:
    nursery = lc._nursery
    assert nursery is not None
    return not any("_guarded" in t.name for t in nursery.child_tasks)
