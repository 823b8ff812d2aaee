"""What the node needs from a network: streams by protocol, one gossip topic, peers.

Two implementations: `Libp2pTransport` (node.net.host, real py-libp2p) and
`MemoryTransport` (node.net.memory, trio memory streams, for deterministic tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from node.net.caps import Verdict
from node.net.streams import ByteStream

__all__ = ["GossipValidator", "StreamHandler", "Transport"]

StreamHandler = Callable[[ByteStream, str], Awaitable[None]]  # (stream, remote peer id)
# (data, origin peer id, forwarding peer id) -> verdict; runs before a message is forwarded
GossipValidator = Callable[[bytes, str, str], Verdict]


class Transport(Protocol):
    peer_id: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; report started once streams can be opened."""
        ...

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    async def open_stream(self, peer_id: str, protocol: str) -> ByteStream: ...

    def set_gossip(self, topic: str, validator: GossipValidator) -> None:
        """Subscribe to `topic` at start; every message passes `validator` first."""
        ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def connect(self, multiaddr: str) -> str:
        """Dial a peer by multiaddr (ending in /p2p/<id>); return its peer id."""
        ...

    async def disconnect(self, peer_id: str) -> None: ...

    def block(self, peer_id: str) -> None:
        """Refuse this peer's gossip and streams from now on (it was banned)."""
        ...

    def unblock(self, peer_id: str) -> None: ...

    def listen_addrs(self) -> list[str]: ...

    def connected_peers(self) -> list[str]: ...
