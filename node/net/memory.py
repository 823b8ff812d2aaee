"""An in-memory network of transports over trio memory streams: no sockets, no sleeps.

Gossip is a flood with per-node validation and de-duplication, which is enough to test
the node's rules; GossipSub itself is tested through the real transport.
"""

from __future__ import annotations

import hashlib

import trio
import trio.testing

from node.net.caps import Action
from node.net.streams import ByteStream, TrioByteStream
from node.net.transport import GossipValidator, StreamHandler

__all__ = ["MemoryHub", "MemoryTransport"]


class MemoryHub:
    """The 'network': transports register here and find each other by peer id."""

    def __init__(self) -> None:
        self.transports: dict[str, MemoryTransport] = {}

    def transport(self, peer_id: str) -> MemoryTransport:
        return MemoryTransport(self, peer_id)


class MemoryTransport:
    def __init__(self, hub: MemoryHub, peer_id: str) -> None:
        self.hub = hub
        self.peer_id = peer_id
        self._handlers: dict[str, StreamHandler] = {}
        self._gossip: dict[str, GossipValidator] = {}
        self._seen: set[bytes] = set()
        self._connected: set[str] = set()
        self._blocked: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.hub.transports[self.peer_id] = self
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self.hub.transports.get(self.peer_id) is self:  # a restarted node may be there
                del self.hub.transports[self.peer_id]
            for peer in self._connected:
                other = self.hub.transports.get(peer)
                if other is not None:
                    other._connected.discard(self.peer_id)
            self._nursery = None

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    async def open_stream(self, peer_id: str, protocol: str) -> ByteStream:
        remote = self.hub.transports.get(peer_id)
        if remote is None or remote._nursery is None or self.peer_id in remote._blocked:
            raise trio.BrokenResourceError(f"cannot reach {peer_id}")
        handler = remote._handlers.get(protocol)
        if handler is None:
            raise trio.BrokenResourceError(f"{peer_id} does not speak {protocol}")
        self._connected.add(peer_id)
        remote._connected.add(self.peer_id)
        mine, theirs = trio.testing.memory_stream_pair()
        try:
            remote._nursery.start_soon(handler, TrioByteStream(theirs), self.peer_id)
        except RuntimeError:  # its node is shutting down: the nursery takes no new task
            raise trio.BrokenResourceError(f"{peer_id} is shutting down") from None
        await trio.lowlevel.checkpoint()
        return TrioByteStream(mine)

    def set_gossip(self, topic: str, validator: GossipValidator) -> None:
        self._gossip[topic] = validator

    async def publish(self, topic: str, data: bytes) -> None:
        self._deliver(topic, data, origin=self.peer_id, forwarder=self.peer_id)
        await trio.lowlevel.checkpoint()

    def _deliver(self, topic: str, data: bytes, *, origin: str, forwarder: str) -> None:
        msg_id = hashlib.sha256(origin.encode() + data).digest()
        if msg_id in self._seen or forwarder in self._blocked or origin in self._blocked:
            return
        validator = self._gossip.get(topic)
        if validator is None:
            return
        self._seen.add(msg_id)
        if validator(data, origin, forwarder).action is not Action.ACCEPT:
            return
        for peer, other in list(self.hub.transports.items()):
            if peer != self.peer_id and peer != forwarder:
                other._deliver(topic, data, origin=origin, forwarder=self.peer_id)

    async def connect(self, multiaddr: str) -> str:
        peer_id = multiaddr.rsplit("/p2p/", 1)[-1]
        if peer_id not in self.hub.transports:
            raise trio.BrokenResourceError(f"cannot reach {peer_id}")
        self._connected.add(peer_id)
        self.hub.transports[peer_id]._connected.add(self.peer_id)
        await trio.lowlevel.checkpoint()
        return peer_id

    async def disconnect(self, peer_id: str) -> None:
        self._connected.discard(peer_id)
        other = self.hub.transports.get(peer_id)
        if other is not None:
            other._connected.discard(self.peer_id)
        await trio.lowlevel.checkpoint()

    def block(self, peer_id: str) -> None:
        self._blocked.add(peer_id)

    def unblock(self, peer_id: str) -> None:
        self._blocked.discard(peer_id)

    def listen_addrs(self) -> list[str]:
        return [f"/memory/p2p/{self.peer_id}"]

    def connected_peers(self) -> list[str]:
        return sorted(self._connected)
