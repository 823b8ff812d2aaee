"""Deterministic CBOR: round trips, canonical form, limits, and fuzzed input."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.errors import PeerProtocolError

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.text(max_size=8) | st.integers(-50, 50), children, max_size=6)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip_and_agrees_with_cbor2_canonical(value: Any) -> None:
    data = codec.encode(value)
    assert codec.decode(data) == value
    # cbor2's canonical mode implements the same ordering rules for these types.
    assert cbor2.loads(data) == value
    assert codec.encode(codec.decode(data)) == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x18\x05", "non_canonical"),  # 5 in a 2-byte head
        (b"\x19\x00\xff", "non_canonical"),  # 255 in a 3-byte head
        (b"\x9f\x01\xff", "non_canonical"),  # indefinite array
        (b"\xa2\x61b\x01\x61a\x02", "non_canonical"),  # keys unsorted
        (b"\xa2\x61a\x01\x61a\x02", "non_canonical"),  # duplicate key
        (b"\xfa\x3f\x80\x00\x00", "non_canonical"),  # 1.0 as float32, fits float16
        (b"\x83\x01\x02", "truncated"),
        (b"", "truncated"),
        (b"\x01\x02", "malformed"),  # trailing bytes
        (b"\x62\xff\xfe", "malformed"),  # invalid UTF-8
        (b"\xf9\x7c\x00", "malformed"),  # +inf
        (b"\xc1\x01", "malformed"),  # tag 1 not allowed
        (b"\x1c", "malformed"),  # reserved info 28
        (b"\xf0", "malformed"),  # unassigned simple value
        (b"\xa1\x80\x01", "malformed"),  # array as map key
    ],
)
def test_rejects_non_deterministic_and_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(PeerProtocolError) as info:
        codec.decode(data)
    assert info.value.reason == reason


def test_limits() -> None:
    limits = codec.DecodeLimits(max_size=100, max_depth=3, max_items=4, max_string=10)
    with pytest.raises(PeerProtocolError, match="oversized"):
        codec.decode(b"\x00" * 101, limits)
    with pytest.raises(PeerProtocolError, match="too_deep"):
        codec.decode(codec.encode([[[[[1]]]]]), limits)
    with pytest.raises(PeerProtocolError, match="oversized"):
        codec.decode(codec.encode([1, 2, 3, 4, 5]), limits)
    with pytest.raises(PeerProtocolError, match="oversized"):
        codec.decode(codec.encode(b"x" * 11), limits)
    # A head claiming 2**32 items is refused before any allocation.
    with pytest.raises(PeerProtocolError, match="oversized"):
        codec.decode(b"\x9a\xff\xff\xff\xff")


@given(st.binary(max_size=256))
def test_any_bytes_decode_or_peer_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except PeerProtocolError:
        pass
