"""/c0/blob/1.0.0 on memory streams: transfer, resume, hash mismatch, limits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from node.blobstore import BlobStore
from node.config import BlobConfig
from node.net.blobs import BlobService
from node.net.framing import encode_control, encode_frame
from node.net.negotiate import RemoteRefused
from node.net.streams import ByteStream, TrioByteStream
from node.store import Store
from protocol.errors import PeerProtocolError
from tests.net.conftest import Penalties

SERVER, CLIENT = "12D3KooWServer", "12D3KooWClient"


def service(tmp: Path, name: str, config: BlobConfig, dial, penalties: Penalties) -> BlobService:  # type: ignore[no-untyped-def]
    store = Store(tmp / name / "node.db")
    return BlobService(BlobStore(tmp / name / "blobs", store), config, dial, penalties)


class Net:
    def __init__(self, nursery: trio.Nursery, tmp: Path, config: BlobConfig | None = None) -> None:
        self.nursery = nursery
        self.config = config or BlobConfig(chunk_size=4096)
        self.server_penalties = Penalties()
        self.client_penalties = Penalties()
        self.server = service(tmp, "s", self.config, self._no_dial, self.server_penalties)
        self.client = service(tmp, "c", self.config, self._dial, self.client_penalties)
        self.serve = self.server.serve_stream  # replaced by fakes in some tests

    async def _no_dial(self, peer: str, protocol: str) -> ByteStream:
        raise trio.BrokenResourceError("no")

    async def _dial(self, peer: str, protocol: str) -> ByteStream:
        a, b = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.serve, TrioByteStream(b), CLIENT)
        return TrioByteStream(a)


async def test_fetch_verifies_and_stores(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    data = os.urandom(100_000)
    sha = net.server.put_bytes(data)
    dest = tmp_path / "out.bin"
    await net.client.fetch(SERVER, sha, len(data), dest)
    assert dest.read_bytes() == data
    assert net.client.has(sha)
    assert net.server.bytes_served == len(data)
    # a second fetch is served from the local store: no transfer
    await net.client.fetch(SERVER, sha, len(data))
    assert net.server.bytes_served == len(data)


async def test_empty_blob(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    sha = net.server.put_bytes(b"")
    path = await net.client.fetch(SERVER, sha, 0)
    assert path.read_bytes() == b""


async def test_not_found(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    with pytest.raises(RemoteRefused) as err:
        await net.client.fetch(SERVER, bytes(32), 10)
    assert err.value.reason == "not_found"
    assert net.server_penalties.calls == net.client_penalties.calls == []


async def test_resume_after_interruption(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    data = os.urandom(50_000)
    sha = net.server.put_bytes(data)

    async def cut_after_first_chunks(stream: ByteStream, peer: str) -> None:
        reader_data = await stream.read(1000)
        assert reader_data
        await stream.write(encode_control({"size": len(data), "offset": 0}))
        await stream.write(encode_frame(data[:4096]) + encode_frame(data[4096:8192]))
        await stream.reset()

    net.serve = cut_after_first_chunks
    with pytest.raises(trio.BrokenResourceError):
        await net.client.fetch(SERVER, sha, len(data))
    part = net.client.store.partial_path(sha)
    assert part.stat().st_size == 8192
    net.serve = net.server.serve_stream
    path = await net.client.fetch(SERVER, sha, len(data))
    assert path.read_bytes() == data
    assert net.server.bytes_served == len(data) - 8192  # only the rest was sent
    assert not part.exists()


async def test_bytes_not_matching_the_hash(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    data = os.urandom(20_000)
    sha = net.server.put_bytes(data)
    # corrupt the served file behind the store's back
    path = net.server.path_of(sha)
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    with pytest.raises(PeerProtocolError) as err:
        await net.client.fetch(SERVER, sha, len(data))
    assert err.value.reason == "hash_mismatch"
    assert net.client_penalties.reasons(SERVER) == ["hash_mismatch"]
    assert not net.client.has(sha)
    assert not net.client.store.partial_path(sha).exists()  # untrusted bytes dropped


async def test_peer_sending_more_than_asked(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    sha = hashlib.sha256(b"abc").digest()

    async def overfeed(stream: ByteStream, peer: str) -> None:
        await stream.read(1000)
        await stream.write(encode_control({"size": 3, "offset": 0}))
        await stream.write(encode_frame(b"abcdef") + b"\x00")

    net.serve = overfeed
    with pytest.raises(PeerProtocolError) as err:
        await net.client.fetch(SERVER, sha, 3)
    assert err.value.reason == "oversized"
    assert net.client_penalties.reasons(SERVER) == ["oversized"]


async def test_malformed_request_is_penalised(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path)
    stream = await net._dial(SERVER, "")
    await stream.write(encode_control({"get": b"short", "offset": 0}))
    reply = await stream.read(1000)
    assert b"malformed" in reply
    assert await stream.read(100) == b""
    assert net.server_penalties.reasons(CLIENT) == ["malformed"]
    # and serves the next request normally
    sha = net.server.put_bytes(b"hello")
    assert (await net.client.fetch(SERVER, sha, 5)).read_bytes() == b"hello"


async def test_blob_stream_never_written(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = Net(nursery, tmp_path, BlobConfig(read_timeout_s=2))
    stream = await net._dial(SERVER, "")
    reply = await stream.read(1000)
    assert b"timeout" in reply
    assert net.server_penalties.reasons(CLIENT) == ["timeout"]


async def test_size_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    net = Net(nursery, tmp_path, BlobConfig(max_blob_size=1000))
    with pytest.raises(ValueError, match="outside"):
        await net.client.fetch(SERVER, bytes(32), 1001)


def trickle(data: bytes, every_s: float):  # type: ignore[no-untyped-def]
    """A serving peer that answers properly, then sends one byte of data every `every_s`
    seconds: each read is well within the read timeout, the whole is endless."""

    async def serve(stream: ByteStream, peer: str) -> None:
        await stream.read(1000)
        try:
            await stream.write(encode_control({"size": len(data), "offset": 0}))
            for byte in data:
                await trio.sleep(every_s)
                await stream.write(encode_frame(bytes([byte])))
            await stream.write(b"\x00")
        except trio.BrokenResourceError:
            pass  # the client gave up

    return serve


async def test_a_trickling_peer_fails_the_fetch_at_its_overall_deadline(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Every read arrives in time (one byte each 5 s, read timeout 30 s), but the
    transfer must end by request_timeout_s + size / min_rate_bytes_s: then it fails
    with the read timeout's error, the peer is penalised, the partial file is kept,
    and a normal fetch of the same blob (resuming) succeeds."""
    net = Net(nursery, tmp_path, BlobConfig(chunk_size=4096, min_rate_bytes_s=100))
    data = os.urandom(1_000)
    sha = net.server.put_bytes(data)
    net.serve = trickle(data, every_s=5.0)
    deadline = net.client.request_timeout_s + len(data) / 100  # 10 + 10 s
    start = trio.current_time()
    with pytest.raises(PeerProtocolError) as err:
        await net.client.fetch(SERVER, sha, len(data))
    assert err.value.reason == "timeout"  # as a read timeout
    assert trio.current_time() - start == pytest.approx(deadline)  # virtual time
    assert net.client_penalties.reasons(SERVER) == ["timeout"]
    assert not net.client.has(sha)
    part = net.client.store.partial_path(sha)
    kept = part.read_bytes()
    assert 0 < len(kept) < len(data)
    assert data.startswith(kept)  # kept to resume, as after other timeouts
    net.serve = net.server.serve_stream
    assert (await net.client.fetch(SERVER, sha, len(data))).read_bytes() == data
    assert net.server.bytes_served == len(data) - len(kept)  # it resumed


async def test_an_explicit_deadline_bounds_the_transfer(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = Net(nursery, tmp_path)
    data = os.urandom(100)
    sha = net.server.put_bytes(data)
    net.serve = trickle(data, every_s=1.0)
    start = trio.current_time()
    with pytest.raises(PeerProtocolError) as err:
        await net.client.fetch(SERVER, sha, len(data), deadline_s=7.5)
    assert err.value.reason == "timeout"
    assert trio.current_time() - start == pytest.approx(7.5)
    # a generous deadline lets the same slow peer finish: 100 bytes at 1 byte/s
    net.client.store.partial_path(sha).unlink()
    path = await net.client.fetch(SERVER, sha, len(data), deadline_s=200)
    assert path.read_bytes() == data
    assert net.client_penalties.reasons(SERVER) == ["timeout"]


async def test_a_normal_fetch_is_well_within_the_default_deadline(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = Net(nursery, tmp_path, BlobConfig(chunk_size=4096, min_rate_bytes_s=100))
    data = os.urandom(50_000)  # deadline 10 + 500 s; memory streams take no time
    sha = net.server.put_bytes(data)
    assert (await net.client.fetch(SERVER, sha, len(data))).read_bytes() == data
    assert net.client_penalties.calls == []


async def test_max_blob_size_is_checked_before_any_stream_is_opened(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    net = Net(nursery, tmp_path, BlobConfig(max_blob_size=1000))
    dialled: list[str] = []

    async def dial(peer: str, protocol: str) -> ByteStream:
        dialled.append(peer)
        raise AssertionError("no stream may be opened for a blob above the limit")

    net.client.open_stream = dial
    with pytest.raises(ValueError, match="outside"):
        await net.client.fetch(SERVER, bytes(32), 1001)
    assert dialled == []
    assert not net.client.store.partial_path(bytes(32)).exists()


async def test_the_server_failing_on_its_side_resets_the_stream_and_goes_on(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception nobody raised on purpose while serving (the store, the disk) is
    logged with its traceback, the stream is reset (not penalised: the request was
    checked), and the next request is served."""
    net = Net(nursery, tmp_path)
    sha = net.server.put_bytes(b"hello")
    size = net.server.store.size

    def broken(digest: bytes) -> int | None:
        raise KeyError("index row")

    net.server.store.size = broken  # type: ignore[method-assign]
    with pytest.raises(trio.BrokenResourceError):
        await net.client.fetch(SERVER, sha, 5)
    assert any(r.levelname == "WARNING" and r.exc_info for r in caplog.records)
    assert net.server_penalties.calls == net.client_penalties.calls == []
    net.server.store.size = size  # type: ignore[method-assign]
    assert (await net.client.fetch(SERVER, sha, 5)).read_bytes() == b"hello"


async def test_a_burst_of_fetches_from_one_peer_stays_within_its_stream_limit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Many fetches at once from one peer (a client verifying a burst of one worker's
    results): at most half the peer's inbound limit of streams is open at a time, the
    others wait, so none is refused `busy` and nobody is penalised."""
    net = Net(nursery, tmp_path, BlobConfig(chunk_size=4096, max_streams_per_peer=4))
    blobs = [os.urandom(30_000) for _ in range(20)]
    shas = [net.server.put_bytes(b) for b in blobs]
    open_now, most = [0], [0]

    async def counting(stream: ByteStream, peer: str) -> None:
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])
        try:
            await trio.sleep(0.01)  # hold the stream a while: the fetches overlap
            await net.server.serve_stream(stream, peer)
        finally:
            open_now[0] -= 1

    net.serve = counting
    async with trio.open_nursery() as fetches:
        for sha, data in zip(shas, blobs, strict=True):
            fetches.start_soon(net.client.fetch, SERVER, sha, len(data))
    assert all(net.client.has(sha) for sha in shas)
    assert most[0] == 2
    assert net.server_penalties.calls == net.client_penalties.calls == []
