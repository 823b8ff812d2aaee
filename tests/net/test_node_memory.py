"""Whole nodes on the in-memory network: gossip, light nodes, the request API, bans."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from node.app import Node
from node.config import NodeConfig
from node.net.caps import CAPS_TOPIC, Action, Verdict
from node.net.memory import MemoryHub
from protocol.envelope import SignedMessage, seal
from protocol.messages import Decline, Message
from tests.net.conftest import JOB_ID, heartbeat, ident, memory_nodes, now_ms, wait_for
from tests.net.test_caps import ad, env


def accept_all(data: bytes, origin: str, forwarder: str) -> Verdict:
    return Verdict(Action.ACCEPT)


async def test_full_nodes_learn_each_other(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with memory_nodes(hub, tmp_path, 3) as nodes:
        await wait_for(lambda: all(len(n.caps) == 2 for n in nodes))
        a, b, _ = nodes
        assert set(a.caps) == {b.did, nodes[2].did}
        assert a.caps[b.did].ad.peer_id == b.peer_id
        assert a.status()["known_workers"] == 2
        # stored (just after acceptance, in one commit): a restarted node starts with them
        await wait_for(lambda: len(a.store.ads(now_ms())) == 2)
        assert {row[0] for row in a.store.ads(now_ms())} == set(a.caps)


async def test_light_node_listens_but_does_not_advertise(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    light_cfg = NodeConfig(light=True)
    async with (
        memory_nodes(hub, tmp_path / "full", 2) as full,
        memory_nodes(hub, tmp_path / "light", 1, light_cfg, first_seed=50) as (light,),
    ):
        await wait_for(lambda: len(light.caps) == 2)
        await trio.sleep(10)
        assert all(light.did not in n.caps for n in full)
        assert light.ads_published == 0


async def test_request_reply_and_update_ad(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with memory_nodes(hub, tmp_path, 2) as (a, b):

        async def handler(signed: SignedMessage, peer: str) -> Message:
            return Decline(job_id=JOB_ID, attempt=1, reason="busy", detail="")

        a.on("heartbeat", handler)
        reply = await b.request(a.peer_id, b.seal(heartbeat()))
        assert reply is not None
        assert reply.sender == a.did
        await wait_for(lambda: a.did in b.caps)
        a.update_ad(load=0.75)
        await wait_for(lambda: b.caps[a.did].ad.load == 0.75)


async def test_blob_between_nodes(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with memory_nodes(hub, tmp_path, 2) as (a, b):
        src = tmp_path / "input.bin"
        src.write_bytes(b"frame" * 10_000)
        sha = a.blobs.put_file(src)
        path = await b.blobs.fetch(a.peer_id, sha, src.stat().st_size)
        assert path.read_bytes() == src.read_bytes()
        assert b.status()["blobs"] == 1


async def test_flooding_the_caps_topic_gets_the_peer_banned(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    attacker = ident(66)
    transport = hub.transport(attacker.peer_id)
    async with memory_nodes(hub, tmp_path, 2) as (a, b), trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        transport.set_gossip(CAPS_TOPIC, accept_all)
        for seq in range(1, 40):
            await transport.publish(CAPS_TOPIC, env(attacker, ad(attacker, seq=seq)))
        assert a.penalties.is_banned(attacker.peer_id, trio.current_time())
        assert "flood" in a.penalties.snapshot(trio.current_time())[attacker.peer_id]["last_reason"]
        assert attacker.did in a.caps  # its first ads were fine

        # banned: its streams are refused, everyone else is still served
        async def handler(signed: SignedMessage, peer: str) -> None:
            return None

        a.on("heartbeat", handler)
        try:
            await transport.open_stream(a.peer_id, "/c0/negotiate/1.0.0")
            refused = False
        except trio.BrokenResourceError:
            refused = True
        assert refused
        assert await b.request(a.peer_id, b.seal(heartbeat())) is None
        nursery.cancel_scope.cancel()


async def test_forged_ads_get_the_forwarder_banned(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    forger, victim = ident(67), ident(68)
    transport = hub.transport(forger.peer_id)
    async with memory_nodes(hub, tmp_path, 1) as (a,), trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        transport.set_gossip(CAPS_TOPIC, accept_all)
        for seq in (1, 2):
            bad = bytearray(env(forger, ad(forger, seq=seq)))
            bad[-1] ^= 1
            await transport.publish(CAPS_TOPIC, bytes(bad))
        assert a.penalties.is_banned(forger.peer_id, trio.current_time())
        assert forger.did not in a.caps
        assert victim.did not in a.caps
        nursery.cancel_scope.cancel()


async def test_node_survives_restart_with_its_ads_and_events(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with memory_nodes(hub, tmp_path, 2) as (a, _b):
        await wait_for(lambda: len(a.caps) == 1)
    again = Node(ident(1), NodeConfig(), tmp_path / "n0", transport=hub.transport(ident(1).peer_id))
    assert len(again.caps) == 1
    assert seal  # keep import used in this module's helpers
    again.store.close()


async def test_gossip_that_makes_validation_raise_is_rejected_and_the_node_goes_on(
    hub: MemoryHub, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An exception nobody raised on purpose while a node checks one peer's gossip: that
    message is rejected (`bad_request`, the forwarder penalised), the exception does not
    reach the gossip stack (here: the publisher), and the node keeps accepting the
    others' ads. A failing `on_ad` hook is logged; the other hooks still run."""
    attacker = ident(69)
    transport = hub.transport(attacker.peer_id)
    async with memory_nodes(hub, tmp_path, 2) as (a, b), trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        transport.set_gossip(CAPS_TOPIC, accept_all)
        await wait_for(lambda: b.did in a.caps)
        validate = a.book.validate

        def fragile(data: bytes, origin: str, now: int) -> Verdict:
            if origin == attacker.peer_id:
                raise TypeError("unhashable type: 'list'")
            return validate(data, origin, now)

        a.book.validate = fragile  # type: ignore[method-assign]
        seen: list[str] = []

        def broken_hook(worker: object) -> None:
            raise KeyError("no such job")

        a.on_ad[:0] = [broken_hook]
        a.on_ad.append(lambda worker: seen.append(worker.did))
        await transport.publish(CAPS_TOPIC, env(attacker, ad(attacker, seq=1)))
        snapshot = a.penalties.snapshot(trio.current_time())
        assert snapshot[attacker.peer_id]["last_reason"] == "bad_request"
        assert attacker.did not in a.caps
        b.update_ad(load=0.5)
        await wait_for(lambda: a.caps[b.did].ad.load == 0.5)
        assert b.did in seen  # the hook after the broken one ran
        assert b.peer_id not in a.penalties.snapshot(trio.current_time())
        nursery.cancel_scope.cancel()
