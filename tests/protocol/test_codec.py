"""Deterministic CBOR: round trips, canonical form, limits, and fuzzed input — each test
on both implementations (the plain Python cbor_impl and its mypyc build), plus tests
that the two agree byte for byte and that the installed build is current."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor_impl
from protocol import codec as facade
from protocol.cbor_types import DecodeLimits, EncodedMap
from protocol.errors import PeerProtocolError

ROOT = Path(__file__).resolve().parents[2]
COMPILED = facade.compiled()
IMPLS = [pytest.param(cbor_impl, id="python")]
if COMPILED is not None:
    IMPLS.append(pytest.param(COMPILED, id="mypyc"))


@pytest.fixture(params=IMPLS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


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


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values)
def test_round_trip_and_agrees_with_cbor2_canonical(codec: ModuleType, value: Any) -> None:
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
def test_rejects_non_deterministic_and_malformed(
    codec: ModuleType, data: bytes, reason: str
) -> None:
    with pytest.raises(PeerProtocolError) as info:
        codec.decode(data)
    assert info.value.reason == reason


def test_limits(codec: ModuleType) -> None:
    limits = DecodeLimits(max_size=100, max_depth=3, max_items=4, max_string=10)
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


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=256))
def test_any_bytes_decode_or_peer_error(codec: ModuleType, data: bytes) -> None:
    try:
        codec.decode(data)
    except PeerProtocolError:
        pass


mutations = st.tuples(
    values,
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=1),
        ),
        min_size=1,
        max_size=3,
    ),
)


def _mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    for kind, where, byte in edits:
        pos = where % (len(data) + 1)
        if kind == "flip" and data:
            pos %= len(data)
            data = data[:pos] + bytes((data[pos] ^ (byte[0] or 1),)) + data[pos + 1 :]
        elif kind == "cut":
            data = data[:pos]
        else:
            data = data[:pos] + byte + data[pos:]
    return data


def _outcome(module: ModuleType, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", module.decode(data)
    except PeerProtocolError as exc:
        return "error", exc.reason


@given(mutations)
def test_accepts_only_its_own_encoding(case: tuple[Any, list[tuple[str, int, bytes]]]) -> None:
    # What the decoder accepts re-encodes to exactly the input: the property that lets a
    # job spec's ID hash the bytes received (codec.EncodedMap) instead of encoding again.
    value, edits = case
    data = _mutate(cbor_impl.encode(value), edits)
    kind, decoded = _outcome(cbor_impl, data)
    if kind == "ok":
        assert cbor_impl.encode(decoded) == data


@pytest.mark.skipif(COMPILED is None, reason="the mypyc build is not installed (make builds it)")
@given(mutations)
def test_implementations_agree(case: tuple[Any, list[tuple[str, int, bytes]]]) -> None:
    value, edits = case
    encoded = cbor_impl.encode(value)
    assert COMPILED is not None
    assert COMPILED.encode(value) == encoded
    for data in (encoded, _mutate(encoded, edits)):
        assert _outcome(COMPILED, data) == _outcome(cbor_impl, data)


def test_keep_encoded_returns_the_bytes_of_named_maps(codec: ModuleType) -> None:
    inner = {"b": [1, 2.5, "x" * 30], "a": {"spec": {"z": 1}}, "c": b"\x00" * 40}
    data = codec.encode({"spec": inner, "other": {"k": 1}, "list": [{"spec": 5}]})
    plain = codec.decode(data)
    kept = codec.decode(data, keep_encoded=frozenset({"spec"}))
    assert kept == plain
    assert type(plain["spec"]) is dict
    assert isinstance(kept["spec"], EncodedMap)
    assert kept["spec"].encoded == codec.encode(inner)
    assert isinstance(kept["spec"]["a"]["spec"], EncodedMap)  # nested ones too
    assert kept["spec"]["a"]["spec"].encoded == codec.encode({"z": 1})
    assert type(kept["other"]) is dict  # only the named keys
    assert kept["list"][0]["spec"] == 5  # only maps


def test_installed_build_is_current() -> None:
    if COMPILED is None:
        pytest.skip("the mypyc build is not installed (make builds it)")
    source = hashlib.sha256((ROOT / "protocol" / "cbor_impl.py").read_bytes()).hexdigest()
    assert source == COMPILED.SOURCE_SHA256, "stale mypyc build: run make (tools/build_speedups.py)"


@pytest.mark.parametrize("pure", ["0", "1"])
def test_facade_picks_the_implementation(pure: str) -> None:
    code = "from protocol import codec; print(codec.IMPLEMENTATION, codec.decode.__module__)"
    env = {**os.environ, "C0_PURE_PYTHON": pure}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    ).stdout.split()
    if pure == "1" or COMPILED is None:
        assert out == ["python", "protocol.cbor_impl"]
    else:
        assert out == ["mypyc", facade.COMPILED_MODULE]
