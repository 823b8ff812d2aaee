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


_TEXT_CACHE: dict[str, bytes] = {}
_TEXT_CACHE_MAX = 4096


def _text(value: str) -> bytes:
    """Encoded text string; short ones (map keys, enum values) are cached."""
    cached = _TEXT_CACHE.get(value)
    if cached is None:
        data = value.encode("utf-8")
        cached = _head(3, len(data)) + data
        if len(data) <= 32 and len(_TEXT_CACHE) < _TEXT_CACHE_MAX:
            _TEXT_CACHE[value] = cached
    return cached


def _first(pair: tuple[bytes, Any]) -> bytes:
    return pair[0]


def _encode(obj: Any, out: list[bytes]) -> None:
    if type(obj) is str:  # the commonest case first
        out.append(_text(obj))
    # bool before int: bool is a subclass of int.
    elif obj is False:
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
            if type(key) is str:
                pairs.append((_text(key), value))
            else:
                kbuf: list[bytes] = []
                _encode(key, kbuf)
                pairs.append((b"".join(kbuf), value))
        pairs.sort(key=_first)
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

_FLOAT_FORMATS = {25: ">e", 26: ">f", 27: ">d"}


def decode(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """Decode exactly one deterministic CBOR item, or raise PeerProtocolError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PeerProtocolError("malformed", "input is not bytes")
    raw = bytes(data)
    n = len(raw)
    if n > limits.max_size:
        raise PeerProtocolError("oversized", f"{n} bytes > {limits.max_size}")
    if not n:
        raise PeerProtocolError("truncated", "empty input")
    max_depth, max_items = limits.max_depth, limits.max_items
    max_string, allowed_tags = limits.max_string, limits.allowed_tags

    def truncated(end: int) -> PeerProtocolError:
        return PeerProtocolError("truncated", f"needs {end} bytes, has {n}")

    # One closure over the input keeps the hot path free of attribute lookups.
    def item(pos: int, depth: int) -> tuple[Any, int]:
        if depth > max_depth:
            raise PeerProtocolError("too_deep", f"nesting deeper than {max_depth}")
        if pos >= n:
            raise truncated(pos + 1)
        initial = raw[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return _simple(info, pos)
        if info < 24:
            arg = info
        elif info == 24:
            if pos >= n:
                raise truncated(pos + 1)
            arg = raw[pos]
            pos += 1
            if arg < 24:
                raise PeerProtocolError("non_canonical", "integer head not in shortest form")
        elif info <= 27:
            size = 1 << (info - 24)
            end = pos + size
            if end > n:
                raise truncated(end)
            arg = int.from_bytes(raw[pos:end], "big")
            pos = end
            if arg >> (4 * size) == 0:  # would fit in half the width
                raise PeerProtocolError("non_canonical", "integer head not in shortest form")
        elif info == 31:
            raise PeerProtocolError("non_canonical", "indefinite length is not allowed")
        else:
            raise PeerProtocolError("malformed", f"reserved additional information {info}")
        if major == 0:
            return arg, pos
        if major == 3 or major == 2:
            if arg > max_string:
                raise PeerProtocolError("oversized", f"string of {arg} bytes")
            end = pos + arg
            if end > n:
                raise truncated(end)
            if major == 2:
                return raw[pos:end], end
            try:
                return str(raw[pos:end], "utf-8"), end
            except UnicodeDecodeError:
                raise PeerProtocolError("malformed", "text string is not UTF-8") from None
        if major == 1:
            return -1 - arg, pos
        if major == 4:
            if arg > max_items:
                raise PeerProtocolError("oversized", f"array of {arg} items")
            out = []
            for _ in range(arg):
                value, pos = item(pos, depth + 1)
                out.append(value)
            return out, pos
        if major == 5:
            if arg > max_items:
                raise PeerProtocolError("oversized", f"map of {arg} pairs")
            result: dict[Any, Any] = {}
            previous = b""
            for _ in range(arg):
                start = pos
                head = raw[pos] if pos < n else -1
                if 0x60 <= head <= 0x77:  # short text key: the common case, inlined
                    pos += 1 + (head - 0x60)
                    if pos > n:
                        raise truncated(pos)
                    try:
                        key = str(raw[start + 1 : pos], "utf-8")
                    except UnicodeDecodeError:
                        raise PeerProtocolError("malformed", "text string is not UTF-8") from None
                else:
                    key, pos = item(pos, depth + 1)
                kbytes = raw[start:pos]
                if kbytes <= previous:
                    reason = "duplicate map key" if kbytes == previous else "map keys not sorted"
                    raise PeerProtocolError("non_canonical", reason)
                previous = kbytes
                if not isinstance(key, int | str | bytes):
                    raise PeerProtocolError("malformed", "map keys must be int, text or bytes")
                result[key], pos = item(pos, depth + 1)
            return result, pos
        # major == 6: tag
        if arg not in allowed_tags:
            raise PeerProtocolError("malformed", f"tag {arg} is not allowed")
        value, pos = item(pos, depth + 1)
        return CBORTag(arg, value), pos

    def _simple(info: int, pos: int) -> tuple[Any, int]:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        fmt = _FLOAT_FORMATS.get(info)
        if fmt is not None:
            end = pos + struct.calcsize(fmt)
            if end > n:
                raise truncated(end)
            value: float = struct.unpack(fmt, raw[pos:end])[0]
            if not math.isfinite(value):
                raise PeerProtocolError("malformed", "non-finite float")
            if _float(value)[0] != 0xE0 | info:
                raise PeerProtocolError("non_canonical", "float not in shortest form")
            return value, end
        if info == 31:
            raise PeerProtocolError("non_canonical", "indefinite length is not allowed")
        raise PeerProtocolError("malformed", f"simple value {info} is not allowed")

    try:
        value, pos = item(0, 0)
    except RecursionError:  # pragma: no cover - max_depth keeps us far from it
        raise PeerProtocolError("too_deep", "recursion limit") from None
    if pos != n:
        raise PeerProtocolError("malformed", f"{n - pos} trailing bytes")
    return value
