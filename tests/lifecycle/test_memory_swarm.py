"""The whole lifecycle in one process: memory transport, embedded chain, real executors."""

from __future__ import annotations

from pathlib import Path

from protocol.jobs import job_id_from_text
from tests.lifecycle.conftest import memory_swarm, wait_state
from tests.net.conftest import wait_for


async def test_noop_job_with_redundancy_two_settles(tmp_path: Path) -> None:
    async with memory_swarm(tmp_path, workers=2) as swarm:
        client = swarm.client
        await wait_for(lambda: len(client.node.caps) == 2)
        before = [client.escrow.client.balance(n.identity.eth_address) for n in swarm.nodes[1:]]
        text = client.client.submit(
            {"job_class": "noop", "params": {"payload": "hello"}},
            {},
            redundancy=2,
            max_price=10**15,
            deadline_s=120,
        )
        job_id = job_id_from_text(text)
        state = await wait_state(client, job_id, {"settled", "refunded", "cancelled"})
        assert state == "settled"
        after = [client.escrow.client.balance(n.identity.eth_address) for n in swarm.nodes[1:]]
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
