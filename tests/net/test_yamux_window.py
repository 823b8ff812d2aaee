"""Yamux window credit (node/net/yamux_window.py) on real py-libp2p hosts over TCP:
small request/replies send no WINDOW_UPDATE frames, py-libp2p's own code sends one per
read, and transfers far larger than the window still complete, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from node.net import yamux_window
from tests.net.conftest import heartbeat, wait_for
from tests.net.test_tcp import decline, tcp_nodes


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every WINDOW_UPDATE increment any stream of this process sends."""
    sent: list[int] = []
    original = YamuxStream.send_window_update

    async def counting(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        if increment > 0:
            sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counting)
    return sent


async def _round_trips(tmp: Path, count: int) -> None:
    async with tcp_nodes(tmp, 2, first_seed=60) as (a, b):
        a.on("heartbeat", decline)
        await wait_for(lambda: len(b.caps) == 1, 30)
        for _ in range(count):
            assert await b.request(a.peer_id, b.seal(heartbeat())) is not None


async def test_small_messages_send_no_window_updates(tmp_path: Path, updates: list[int]) -> None:
    yamux_window.install()
    await _round_trips(tmp_path, 50)
    # a few KB over a 256 KiB window: nothing to return (gossip, identify included)
    assert len(updates) < 5


async def test_stock_py_libp2p_sends_one_per_read(
    tmp_path: Path, updates: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(YamuxStream, "_auto_tune_and_send_window_update", yamux_window.ORIGINAL)
    monkeypatch.setattr(yamux_window, "install", lambda: None)  # the hosts start stock
    await _round_trips(tmp_path, 50)
    assert len(updates) >= 100  # each request and each reply: the baseline this fixes


async def test_large_transfers_still_flow(tmp_path: Path, updates: list[int]) -> None:
    yamux_window.install()
    async with tcp_nodes(tmp_path, 2, first_seed=64) as (a, b):
        await wait_for(lambda: len(b.caps) == 1, 30)
        data = bytes(range(251)) * (12 * 1024 * 1024 // 251)  # ~48 windows of 256 KiB
        sha = a.blobs.put_bytes(data)
        path = await b.blobs.fetch(a.peer_id, sha, len(data))
        assert path.read_bytes() == data
    # credit went back in large increments, not one per read
    assert updates
    assert min(updates) >= 128 * 1024
