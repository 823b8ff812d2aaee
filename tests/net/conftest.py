"""Shared helpers for the networking tests: identities, in-memory nodes, raw streams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from node.app import Node
from node.config import NodeConfig
from node.net.memory import MemoryHub
from node.net.streams import TrioByteStream
from protocol.identity import Identity
from protocol.messages import Heartbeat

JOB_ID = b"\x12\x20" + bytes(range(32))


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def heartbeat(progress: float = 0.5) -> Heartbeat:
    return Heartbeat(job_id=JOB_ID, attempt=1, phase="run", progress=progress)


class Penalties:
    """Records (peer, reason) calls in place of a node's penalise()."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, peer: str, reason: str) -> None:
        self.calls.append((peer, reason))

    def reasons(self, peer: str) -> list[str]:
        return [r for p, r in self.calls if p == peer]


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@asynccontextmanager
async def memory_nodes(
    hub: MemoryHub, tmp: Path, count: int, config: NodeConfig | None = None, first_seed: int = 1
) -> AsyncIterator[list[Node]]:
    """`count` nodes on an in-memory network, started, cancelled on exit."""
    config = config or NodeConfig()
    nodes = []
    for i in range(count):
        identity = ident(first_seed + i)
        nodes.append(
            Node(identity, config, tmp / f"n{i}", transport=hub.transport(identity.peer_id))
        )
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        yield nodes
        nursery.cancel_scope.cancel()


async def wait_for(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll a condition until true, failing after `limit_s` (of trio's clock).

    Polling, not an event: the conditions are facts about other nodes' state.
    """
    with trio.fail_after(limit_s):
        while not cond():  # noqa: ASYNC110
            await trio.sleep(0.01)


def stream_pair() -> tuple[TrioByteStream, TrioByteStream]:
    a, b = trio.testing.memory_stream_pair()
    return TrioByteStream(a), TrioByteStream(b)
