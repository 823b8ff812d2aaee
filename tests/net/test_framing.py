"""Length framing: the sans-IO parser and the reader over memory streams."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from node.net.framing import (
    FrameReader,
    decode_control,
    encode_control,
    encode_frame,
    encode_varint,
    is_control,
    parse_frame,
)
from protocol.errors import PeerProtocolError
from tests.net.conftest import stream_pair


@given(st.integers(min_value=0, max_value=2**62))
def test_varint_round_trip(n: int) -> None:
    data = encode_varint(n)
    assert parse_frame(data, max_size=2**63) == (len(data), n)


@given(st.binary(max_size=40))
def test_parse_frame_never_raises_other_errors(data: bytes) -> None:
    reason = "ok"
    try:
        parse_frame(data, max_size=1000)
    except PeerProtocolError as exc:
        reason = exc.reason
    assert reason in {"ok", "malformed", "oversized"}


def test_incomplete_header_waits() -> None:
    assert parse_frame(b"", 10) is None
    assert parse_frame(b"\x80", 1000) is None


def test_oversized_is_refused_before_reading_the_payload() -> None:
    with pytest.raises(PeerProtocolError) as err:
        parse_frame(encode_varint(1001), 1000)
    assert err.value.reason == "oversized"


def test_non_minimal_varint_is_malformed() -> None:
    with pytest.raises(PeerProtocolError) as err:
        parse_frame(b"\x81\x00", 1000)
    assert err.value.reason == "malformed"


def test_ten_byte_varint_is_malformed() -> None:
    with pytest.raises(PeerProtocolError) as err:
        parse_frame(b"\xff" * 9 + b"\x01", 2**70)
    assert err.value.reason in {"malformed", "oversized"}


def test_control_frames_are_maps() -> None:
    payload = encode_control({"ok": True})[1:]
    assert is_control(payload)
    assert decode_control(payload) == {"ok": True}
    assert not is_control(b"\x84")


async def test_reader_reassembles_split_frames() -> None:
    client, server = stream_pair()
    reader = FrameReader(server, max_size=1 << 20, read_timeout=5)
    data = encode_frame(b"hello") + encode_frame(b"x" * 70000) + encode_frame(b"")

    async def trickle() -> None:
        for i in range(0, len(data), 1000):
            await client.write(data[i : i + 1000])
        await client.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        assert await reader.read_frame() == b"hello"
        assert await reader.read_frame() == b"x" * 70000
        assert await reader.read_frame() == b""
        assert await reader.read_frame() is None


async def test_reader_truncated_inside_a_frame() -> None:
    client, server = stream_pair()
    reader = FrameReader(server, max_size=100, read_timeout=5)
    await client.write(encode_frame(b"abcdef")[:4])
    await client.close()
    with pytest.raises(PeerProtocolError) as err:
        await reader.read_frame()
    assert err.value.reason == "truncated"


async def test_reader_times_out_on_silence(autojump_clock: trio.testing.MockClock) -> None:
    _client, server = stream_pair()
    reader = FrameReader(server, max_size=100, read_timeout=5)
    start = trio.current_time()
    with pytest.raises(PeerProtocolError) as err:
        await reader.read_frame()
    assert err.value.reason == "timeout"
    assert trio.current_time() - start == pytest.approx(5)
