"""Real py-libp2p hosts on 127.0.0.1 in this process: TCP + Noise + yamux, no mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import multiaddr
import pytest
import trio

from node.app import Node
from node.config import NodeConfig
from node.net.framing import encode_frame
from node.net.negotiate import NEGOTIATE_PROTOCOL
from protocol.envelope import SignedMessage
from protocol.messages import Decline, Message
from tests.net.conftest import JOB_ID, heartbeat, ident, now_ms, wait_for

LOOPBACK = NodeConfig().replace(network={"listen": ["/ip4/127.0.0.1/tcp/0"]})


@asynccontextmanager
async def tcp_nodes(tmp: Path, count: int, first_seed: int = 20) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i in range(count):
            boot = [nodes[0].transport.listen_addrs()[0]] if nodes else []
            cfg = LOOPBACK.replace(network={"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": boot})
            node = Node(ident(first_seed + i), cfg, tmp / f"n{i}")
            await nursery.start(node.run)
            nodes.append(node)
        yield nodes
        nursery.cancel_scope.cancel()


async def decline(signed: SignedMessage, peer: str) -> Message:
    return Decline(job_id=JOB_ID, attempt=1, reason="busy", detail="")


async def test_peer_id_is_the_identity_and_only_noise_is_offered(tmp_path: Path) -> None:
    async with tcp_nodes(tmp_path, 1) as (a,):
        assert a.transport.listen_addrs()[0].endswith("/p2p/" + ident(20).peer_id)
        upgrader = a.transport.host.get_network().upgrader  # type: ignore[attr-defined]
        assert list(upgrader.security_multistream.transports) == ["/noise"]


async def test_gossip_request_and_blob_over_tcp(tmp_path: Path) -> None:
    async with tcp_nodes(tmp_path, 3) as nodes:
        a, b, c = nodes
        await wait_for(lambda: all(len(n.caps) == 2 for n in nodes), 30)
        a.on("heartbeat", decline)
        reply = await c.request(a.peer_id, c.seal(heartbeat()))
        assert reply is not None
        assert reply.sender == a.did
        data = bytes(range(256)) * 8192
        sha = a.blobs.put_bytes(data)
        path = await b.blobs.fetch(a.peer_id, sha, len(data))
        assert path.read_bytes() == data


async def test_garbage_on_a_real_stream_is_answered_and_penalised(tmp_path: Path) -> None:
    async with tcp_nodes(tmp_path, 2) as (a, b):
        a.on("heartbeat", decline)
        await b.transport.connect(a.transport.listen_addrs()[0])
        stream = await b.transport.open_stream(a.peer_id, NEGOTIATE_PROTOCOL)
        await stream.write(encode_frame(b"\x01\x02\x03"))
        with trio.fail_after(10):
            reply = await stream.read(1000)
        assert b"malformed" in reply
        assert a.penalties.score(b.peer_id, trio.current_time()) < 0
        # the same peer may still make a proper request (one offence is not a ban)
        assert await b.request(a.peer_id, b.seal(heartbeat()))


async def test_standard_ping_and_identify(tmp_path: Path) -> None:
    """A plain libp2p peer (no c0 code on its side) can connect, identify and ping."""
    from libp2p import new_host
    from libp2p.host.ping import PingService
    from libp2p.identity.identify.identify import ID as IDENTIFY
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    async with tcp_nodes(tmp_path, 1) as (a,):
        other = new_host()
        async with other.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await other.connect(
                info_from_p2p_addr(multiaddr.Multiaddr(a.transport.listen_addrs()[0]))
            )
            rtts = await PingService(other).ping(ID.from_base58(a.peer_id), ping_amt=2)
            assert len(rtts) == 2
            stream = await other.new_stream(ID.from_base58(a.peer_id), [IDENTIFY])
            assert await stream.read(65536)
            await stream.close()


@pytest.mark.parametrize("light", [True])
async def test_light_node_over_tcp(tmp_path: Path, light: bool) -> None:
    async with tcp_nodes(tmp_path, 2) as (a, _b), trio.open_nursery() as nursery:
        cfg = LOOPBACK.replace(
            light=light,
            network={
                "listen": ["/ip4/127.0.0.1/tcp/0"],
                "bootstrap": [a.transport.listen_addrs()[0]],
            },
        )
        client = Node(ident(40), cfg, tmp_path / "light")
        await nursery.start(client.run)
        await wait_for(lambda: len(client.caps) == 2, 30)
        assert client.did not in a.caps
        a.on("heartbeat", decline)
        assert await client.request(a.peer_id, client.seal(heartbeat()))
        nursery.cancel_scope.cancel()


async def test_a_plain_gossipsub_peer_reads_the_caps_topic(tmp_path: Path) -> None:
    """A py-libp2p peer with the library's own GossipSub (offering meshsub 1.1-2.0) joins
    the topic of a c0 node, which speaks only 1.1, and receives its ads."""
    from libp2p import new_host
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import (
        PROTOCOL_ID_V11,
        PROTOCOL_ID_V12,
        PROTOCOL_ID_V20,
        GossipSub,
    )
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    from node.net.caps import CAPS_TOPIC
    from protocol.envelope import open_envelope
    from protocol.messages import CapabilityAd

    async with tcp_nodes(tmp_path, 1) as (a,):
        other = new_host()
        router = GossipSub(
            protocols=[PROTOCOL_ID_V20, PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=6, degree_low=4, degree_high=12, heartbeat_interval=1,
        )  # fmt: skip
        ps = Pubsub(other, router)
        async with (
            other.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]),
            background_trio_service(ps),
            background_trio_service(router),
        ):
            await ps.wait_until_ready()
            sub = await ps.subscribe(CAPS_TOPIC)
            await other.connect(
                info_from_p2p_addr(multiaddr.Multiaddr(a.transport.listen_addrs()[0]))
            )
            got = None
            with trio.fail_after(30):
                while got is None:  # a publishes on joining peers; republish until heard
                    await a.publish_ad()
                    with trio.move_on_after(1.0):
                        got = await sub.get()
            signed = open_envelope(bytes(got.data), now=now_ms())
            assert isinstance(signed.message, CapabilityAd)
            assert signed.sender == a.did
            assert str(router.peer_protocol[ID.from_base58(a.peer_id)]) == "/meshsub/1.1.0"
