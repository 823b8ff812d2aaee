"""protocol.abi against eth_abi: the same bytes for generated values of every type."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode as eth_abi_encode
from eth_utils.abi import get_abi_input_types
from hypothesis import given, settings
from hypothesis import strategies as st

from node.chain.artifact import escrow_artifact
from protocol.abi import encode
from protocol.errors import LocalProtocolError

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
uint256 = st.integers(min_value=0, max_value=2**256 - 1)
bytes32 = st.binary(min_size=32, max_size=32)


def values_for(t: str) -> st.SearchStrategy[Any]:
    """A strategy of values of ABI type `t` (the subset the escrow's calls use, and more)."""
    if t.endswith("]"):
        cut = t.rindex("[")
        inner = values_for(t[:cut])
        n = t[cut + 1 : -1]
        if n:
            return st.lists(inner, min_size=int(n), max_size=int(n))
        return st.lists(inner, max_size=4)
    if t.startswith("("):
        from protocol.abi import _split

        return st.tuples(*(values_for(p) for p in _split(t[1:-1])))
    if t.startswith("uint"):
        return st.integers(min_value=0, max_value=2 ** int(t[4:] or 256) - 1)
    if t.startswith("int"):
        bits = int(t[3:] or 256)
        return st.integers(min_value=-(2 ** (bits - 1)), max_value=2 ** (bits - 1) - 1)
    if t == "address":
        return addresses
    if t == "bool":
        return st.booleans()
    if t == "bytes":
        return st.binary(max_size=80)
    if t == "string":
        return st.text(max_size=40)
    if t.startswith("bytes"):
        return st.binary(min_size=int(t[5:]), max_size=int(t[5:]))
    raise AssertionError(t)


ESCROW_CALLS = [
    list(get_abi_input_types(entry))  # type: ignore[arg-type]
    for entry in escrow_artifact()["abi"]
    if entry["type"] == "function" and get_abi_input_types(entry)  # type: ignore[arg-type]
]
OTHER_TYPES = [
    ["uint8", "int16", "int256", "bool", "bytes4", "string"],
    ["(uint256,string)[2]", "bytes[]", "(bool,(bytes,address)[])"],
    ["uint256[3]", "(address,uint256)[2][]", "string[]"],
    [],
]


@pytest.mark.parametrize("types", ESCROW_CALLS + OTHER_TYPES, ids=lambda t: ",".join(t) or "()")
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_same_bytes_as_eth_abi(types: list[str], data: st.DataObject) -> None:
    values = [data.draw(values_for(t)) for t in types]
    assert encode(types, values) == eth_abi_encode(types, values)


@pytest.mark.parametrize(
    ("t", "value"),
    [
        ("uint256", -1),
        ("uint8", 256),
        ("uint256", True),  # a bool is not an integer here
        ("int8", 128),
        ("address", "0x1234"),
        ("address", "0x" + "zz" * 20),
        ("bytes32", b"\x00" * 33),
        ("bytes", "text"),
        ("string", b"bytes"),
        ("bool", 1),
        ("(uint256,uint256)", (1,)),
        ("uint256[2]", [1, 2, 3]),
        ("uint256[]", "123"),
    ],
)
def test_bad_values_raise(t: str, value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode([t], [value])


@pytest.mark.parametrize("t", ["uint7", "uint264", "fixed128x18", "bytes33", "uint256[0]", "foo"])
def test_unsupported_types_raise(t: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode([t], [0])


def test_count_mismatch_raises() -> None:
    with pytest.raises(LocalProtocolError):
        encode(["uint256"], [1, 2])
