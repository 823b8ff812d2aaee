"""Deterministic CBOR (RFC 8949 §4.2.1) encoding and a strict, bounded decoder.

The decoder accepts only the deterministic subset: shortest-form heads, definite lengths,
map keys unique and sorted by their encoded bytes, floats in their shortest exact form.
Anything else raises PeerProtocolError before more work is done; it never raises another
exception type, whatever the input bytes (a fuzz test holds it to that).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from protocol.errors import LocalProtocolError, PeerProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "CBORTag",
    "DecodeLimits",
    "decode",
    "encode",
]


@dataclass(frozen=True, slots=True)
class CBORTag:
    """A tagged data item (major type 6)."""

    tag: int
    value: Any


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what a decoder will accept from a peer."""

    max_size: int = 1 << 20  # bytes of input
    max_depth: int = 16  # nesting of arrays, maps and tags
    max_items: int = 4096  # elements of one array or pairs of one map
    max_string: int = 1 << 20  # bytes of one byte or text string
    allowed_tags: frozenset[int] = frozenset({18})


DEFAULT_LIMITS = DecodeLimits()

_MAX_UINT64 = (1 << 64) - 1


# ---------------------------------------------------------------- encoding


def _head(major: int, value: int) -> bytes:
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value <= 0xFF:
        return bytes((mt | 24, value))
    if value <= 0xFFFF:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    if value <= _MAX_UINT64:
        return bytes((mt | 27,)) + value.to_bytes(8, "big")
    raise LocalProtocolError(f"integer out of CBOR range: {value}")


def _float(value: float) -> bytes:
    if not math.isfinite(value):
        raise LocalProtocolError("non-finite floats are not allowed in c0 messages")
    for code, fmt in ((25, ">e"), (26, ">f")):
        try:
            packed = struct.pack(fmt, value)
        except OverflowError:
            continue
        if struct.unpack(fmt, packed)[0] == value:
            return bytes((0xE0 | code,)) + packed
    return b"\xfb" + struct.pack(">d", value)


def _encode(obj: Any, out: list[bytes]) -> None:
    # bool before int: bool is a subclass of int.
    if obj is False:
        out.append(b"\xf4")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is None:
        out.append(b"\xf6")
    elif isinstance(obj, int):
        out.append(_head(0, obj) if obj >= 0 else _head(1, -1 - obj))
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        out.append(_head(2, len(data)))
        out.append(data)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
    elif isinstance(obj, list | tuple):
        out.append(_head(4, len(obj)))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, dict):
        pairs = []
        for key, value in obj.items():
            kbuf: list[bytes] = []
            _encode(key, kbuf)
            pairs.append((b"".join(kbuf), value))
        pairs.sort(key=lambda p: p[0])
        out.append(_head(5, len(pairs)))
        for kbytes, value in pairs:
            out.append(kbytes)
            _encode(value, out)
    elif isinstance(obj, float):
        out.append(_float(obj))
    elif isinstance(obj, CBORTag):
        out.append(_head(6, obj.tag))
        _encode(obj.value, out)
    else:
        raise LocalProtocolError(f"cannot encode {type(obj).__name__} as CBOR")


def encode(obj: Any) -> bytes:
    """Deterministic CBOR of `obj` (dict keys sorted by encoded bytes, shortest heads)."""
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


# ---------------------------------------------------------------- decoding


class _Decoder:
    __slots__ = ("data", "limits", "pos")

    def __init__(self, data: bytes, limits: DecodeLimits) -> None:
        self.data = data
        self.limits = limits
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise PeerProtocolError("truncated", f"needs {end} bytes, has {len(self.data)}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            value = self._take(1)[0]
            if value < 24:
                raise PeerProtocolError("non_canonical", "integer head not in shortest form")
            return value
        if info in (25, 26, 27):
            size = 1 << (info - 24)
            value = int.from_bytes(self._take(size), "big")
            if value >> (4 * size) == 0:  # would fit in half the width
                raise PeerProtocolError("non_canonical", "integer head not in shortest form")
            return value
        if info == 31:
            raise PeerProtocolError("non_canonical", "indefinite length is not allowed")
        raise PeerProtocolError("malformed", f"reserved additional information {info}")

    def item(self, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise PeerProtocolError("too_deep", f"nesting deeper than {self.limits.max_depth}")
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        arg = self._argument(info)
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major in (2, 3):
            if arg > self.limits.max_string:
                raise PeerProtocolError("oversized", f"string of {arg} bytes")
            raw = self._take(arg)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PeerProtocolError("malformed", "text string is not UTF-8") from None
        if major == 4:
            if arg > self.limits.max_items:
                raise PeerProtocolError("oversized", f"array of {arg} items")
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            if arg > self.limits.max_items:
                raise PeerProtocolError("oversized", f"map of {arg} pairs")
            result: dict[Any, Any] = {}
            previous = b""
            for index in range(arg):
                start = self.pos
                key = self.item(depth + 1)
                kbytes = self.data[start : self.pos]
                if index and kbytes <= previous:
                    reason = "duplicate map key" if kbytes == previous else "map keys not sorted"
                    raise PeerProtocolError("non_canonical", reason)
                previous = kbytes
                if not isinstance(key, int | str | bytes):
                    raise PeerProtocolError("malformed", "map keys must be int, text or bytes")
                result[key] = self.item(depth + 1)
            return result
        # major == 6: tag
        if arg not in self.limits.allowed_tags:
            raise PeerProtocolError("malformed", f"tag {arg} is not allowed")
        return CBORTag(arg, self.item(depth + 1))

    def _simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info in (25, 26, 27):
            fmt = {25: ">e", 26: ">f", 27: ">d"}[info]
            value: float = struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]
            if not math.isfinite(value):
                raise PeerProtocolError("malformed", "non-finite float")
            if _float(value)[0] != 0xE0 | info:
                raise PeerProtocolError("non_canonical", "float not in shortest form")
            return value
        if info == 31:
            raise PeerProtocolError("non_canonical", "indefinite length is not allowed")
        raise PeerProtocolError("malformed", f"simple value {info} is not allowed")


def decode(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """Decode exactly one deterministic CBOR item, or raise PeerProtocolError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PeerProtocolError("malformed", "input is not bytes")
    raw = bytes(data)
    if len(raw) > limits.max_size:
        raise PeerProtocolError("oversized", f"{len(raw)} bytes > {limits.max_size}")
    if not raw:
        raise PeerProtocolError("truncated", "empty input")
    decoder = _Decoder(raw, limits)
    try:
        value = decoder.item(0)
    except RecursionError:  # pragma: no cover - max_depth keeps us far from it
        raise PeerProtocolError("too_deep", "recursion limit") from None
    if decoder.pos != len(raw):
        raise PeerProtocolError("malformed", f"{len(raw) - decoder.pos} trailing bytes")
    return value
