"""The real network: a py-libp2p host (TCP + Noise + yamux), GossipSub and the DHT.

Applies the workarounds of notes/py-libp2p.md: one connection per peer (no 250 ms
happy-eyeballs delay), Noise only (no plaintext), a 1 s GossipSub heartbeat, the
library's spam limit and scoring switched off (c0 rate-limits and scores peers itself),
and signed peer records on pubsub RPCs built and verified once, not per RPC
(node/net/pubsub_records.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from node.config import NodeConfig
from node.net import pubsub_records, yamux_window
from node.net.caps import Action
from node.net.streams import ByteStream, Libp2pByteStream
from node.net.transport import GossipValidator, StreamHandler
from protocol.identity import Identity

__all__ = ["Libp2pTransport"]

# py-libp2p's yamux sends a WINDOW_UPDATE after every partial read by default; with a
# dozen gossip peers that traffic feeds itself and an idle node burns 6-8 % of a core
# (measured: 8.1 % -> 1.3 % per node, 12 fully connected nodes). Read at call time.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

log = logging.getLogger("c0.host")
# Peer addresses learnt from ads and bootstrap lists stay this long in the peerstore.
_ADDR_TTL_S = 3600


class Libp2pTransport:
    """A py-libp2p host with the node's protocols, one gossip topic and the DHT."""

    def __init__(self, identity: Identity, config: NodeConfig) -> None:
        self.identity = identity
        self.config = config
        self.peer_id = identity.peer_id
        self._key_pair = create_new_key_pair(identity.seed)
        net = config.network
        self.host: Any = new_host(
            key_pair=self._key_pair,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    self._key_pair, noise_privkey=create_x25519_key_pair().private_key
                )
            },
            muxer_preference="YAMUX",
            listen_addrs=[multiaddr.Multiaddr(a) for a in net.listen],
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                max_connections=net.max_connections,
                # py-libp2p auto-dials every peer in its peerstore up to low_watermark
                # (default 100): every node would connect to every other. Keep the
                # graph sparse; GossipSub needs only its mesh degree.
                min_connections=min(4, net.target_peers),
                low_watermark=net.target_peers,
                high_watermark=max(net.max_peers, net.target_peers),
                dial_timeout=net.dial_timeout_s,
            ),
            announce_addrs=[multiaddr.Multiaddr(a) for a in net.announce] or None,
        )
        if str(self.host.get_id()) != identity.peer_id:
            raise RuntimeError("libp2p derived a different PeerID from the node key")
        self._handlers: dict[str, StreamHandler] = {}
        self._gossip: dict[str, GossipValidator] = {}
        self._blocked: set[str] = set()
        self.pubsub: Any = None
        self.dht: Any = None

    # ------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        pubsub_records.install()
        yamux_window.install()
        gossipsub = GossipSub(
            # meshsub/1.1.0 only: 1.2 adds IDONTWANT, which py-libp2p sends to every mesh
            # peer before forwarding each message, whatever its size. For ads of ~1 KB that
            # doubled the RPCs per hop; reach on 20 processes went 95 -> 66 ms without it.
            protocols=[PROTOCOL_ID_V11],
            degree=cfg.gossip.degree,
            degree_low=max(1, cfg.gossip.degree - 2),
            degree_high=cfg.gossip.degree * 2,
            heartbeat_interval=cfg.gossip.heartbeat_s,  # type: ignore[arg-type]
            heartbeat_initial_delay=0.1,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            adaptive_gossip_enabled=False,
        )
        self.pubsub = Pubsub(self.host, gossipsub, strict_signing=True)
        listen = [multiaddr.Multiaddr(a) for a in cfg.network.listen]
        try:
            async with (
                self.host.run(listen_addrs=listen),
                background_trio_service(self.pubsub),
                background_trio_service(gossipsub),
            ):
                await self.pubsub.wait_until_ready()
                subscription = None
                for protocol, handler in self._handlers.items():
                    self.host.set_stream_handler(protocol, self._wrap(handler))
                for topic, validator in self._gossip.items():
                    self.pubsub.set_topic_validator(topic, self._wrap_validator(validator), False)
                    subscription = await self.pubsub.subscribe(topic)
                if cfg.network.dht:
                    mode = DHTMode.CLIENT if cfg.light else DHTMode.SERVER
                    self.dht = KadDHT(self.host, mode, enable_random_walk=False)
                    async with background_trio_service(self.dht):
                        await self._serve(task_status, subscription)
                else:
                    await self._serve(task_status, subscription)
        except* RuntimeError as group:  # notes pitfall 7: shutdown under gossip load
            for exc in group.exceptions:
                if "Nursery is closed" not in str(exc):
                    raise

    async def _serve(self, task_status: trio.TaskStatus[None], subscription: Any) -> None:
        task_status.started()
        if subscription is None:
            await trio.sleep_forever()
        while True:  # validators did the work; drain the queue so it never fills
            await subscription.get()

    def _wrap(self, handler: StreamHandler) -> Any:
        async def on_stream(stream: Any) -> None:
            wrapped = Libp2pByteStream(stream)
            peer = wrapped.remote_peer
            if peer in self._blocked:
                await wrapped.reset()
                return
            await handler(wrapped, peer)

        return on_stream

    def _wrap_validator(self, validator: GossipValidator) -> Any:
        def check(forwarder: ID, msg: Any) -> bool:
            origin = ID(msg.from_id).to_base58()
            verdict = validator(bytes(msg.data), origin, forwarder.to_base58())
            return verdict.action is Action.ACCEPT

        return check

    # ------------------------------------------------------------ Transport API
    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    def set_gossip(self, topic: str, validator: GossipValidator) -> None:
        self._gossip[topic] = validator

    async def open_stream(self, peer_id: str, protocol: str) -> ByteStream:
        try:
            stream = await self.host.new_stream(ID.from_base58(peer_id), [protocol])
        except Exception as exc:
            raise trio.BrokenResourceError(f"cannot open {protocol} to {peer_id}: {exc}") from None
        return Libp2pByteStream(stream)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)

    def add_addrs(self, peer_id: str, addrs: list[str]) -> None:
        good = []
        for a in addrs:
            try:
                good.append(multiaddr.Multiaddr(a.split("/p2p/")[0]))
            except Exception:
                continue
        if good:
            self.host.get_peerstore().add_addrs(ID.from_base58(peer_id), good, _ADDR_TTL_S)

    async def connect(self, addr: str) -> str:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, _ADDR_TTL_S)
        # An explicit dial is paced by its caller (bootstrap retries back off): lift
        # libp2p's 60 s negative cache first, or one dial made before the peer listened
        # would make every retry fail at once for a minute.
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        try:
            await self.host.connect(info)
        except Exception as exc:
            raise trio.BrokenResourceError(f"cannot connect to {addr}: {exc}") from None
        if self.dht is not None:
            try:
                await self.dht.routing_table.add_peer(info)
            except Exception:  # the DHT is an optimisation; never fail a connect on it
                log.debug("dht: could not add %s", info.peer_id)
        return str(info.peer_id)

    async def disconnect(self, peer_id: str) -> None:
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except Exception:
            log.debug("disconnect %s failed", peer_id)

    def block(self, peer_id: str) -> None:
        self._blocked.add(peer_id)
        if self.pubsub is not None:
            self.pubsub.add_to_blacklist(ID.from_base58(peer_id))

    def unblock(self, peer_id: str) -> None:
        self._blocked.discard(peer_id)
        if self.pubsub is not None:
            self.pubsub.remove_from_blacklist(ID.from_base58(peer_id))

    def listen_addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    def connected_peers(self) -> list[str]:
        return sorted(str(p) for p in self.host.get_connected_peers())
