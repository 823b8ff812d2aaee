"""Deterministic CBOR encode and decode: the implementation behind `protocol.codec`.

This file is plain Python and also the source of the compiled implementation: the build
(`tools/build_speedups.py`, run by `make`) compiles a copy of it with mypyc. Both must
behave identically (tests/protocol/test_codec.py runs every test on both), so keep it to
what mypyc compiles: typed, no dynamic tricks.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from protocol.cbor_types import DEFAULT_LIMITS, CBORTag, DecodeLimits, EncodedMap
from protocol.errors import LocalProtocolError, PeerProtocolError

__all__ = ["decode", "encode"]

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


def decode(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    keep_encoded: frozenset[str] = frozenset(),
) -> Any:
    """Decode exactly one deterministic CBOR item, or raise PeerProtocolError.

    Map values that are maps and sit under a text key in `keep_encoded` come back as
    `EncodedMap`, carrying the bytes they were decoded from.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PeerProtocolError("malformed", "input is not bytes")
    raw = bytes(data)
    n = len(raw)
    if n > limits.max_size:
        raise PeerProtocolError("oversized", f"{n} bytes > {limits.max_size}")
    if not n:
        raise PeerProtocolError("truncated", "empty input")
    decoder = _Decoder(raw, limits, keep_encoded)
    try:
        value, pos = decoder.item(0, 0)
    except RecursionError:  # pragma: no cover - max_depth keeps us far from it
        raise PeerProtocolError("too_deep", "recursion limit") from None
    if pos != n:
        raise PeerProtocolError("malformed", f"{n - pos} trailing bytes")
    return value


class _Decoder:
    """One input being decoded. Items inside arrays and maps take inlined fast paths for
    small integers and short text; `item` handles everything else. `depth` is the depth
    of the item being decoded."""

    def __init__(self, raw: bytes, limits: DecodeLimits, keep: frozenset[str]) -> None:
        self.raw = raw
        self.n = len(raw)
        self.max_depth = limits.max_depth
        self.max_items = limits.max_items
        self.max_string = limits.max_string
        self.allowed_tags = limits.allowed_tags
        self.keep = keep
        self.keeping = bool(keep)

    def truncated(self, end: int) -> PeerProtocolError:
        return PeerProtocolError("truncated", f"needs {end} bytes, has {self.n}")

    def too_deep(self) -> PeerProtocolError:
        return PeerProtocolError("too_deep", f"nesting deeper than {self.max_depth}")

    def short_text(self, pos: int, head: int) -> tuple[str, int]:
        """A text string of fewer than 24 bytes (head 0x60..0x77), the commonest item."""
        end = pos + 1 + (head - 0x60)
        if end > self.n:
            raise self.truncated(end)
        try:
            return self.raw[pos + 1 : end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise PeerProtocolError("malformed", "text string is not UTF-8") from None

    def head_at(self, pos: int) -> int:
        """The byte at `pos`, or 0xFF past the end (then `item` reports the truncation)."""
        return self.raw[pos] if pos < self.n else 0xFF

    def item(self, pos: int, depth: int) -> tuple[Any, int]:
        if depth > self.max_depth:
            raise self.too_deep()
        raw = self.raw
        n = self.n
        if pos >= n:
            raise self.truncated(pos + 1)
        initial = raw[pos]
        if initial < 24:
            return initial, pos + 1
        if 0x60 <= initial <= 0x77:
            return self.short_text(pos, initial)
        pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if major == 7:
            return self.simple(info, pos)
        arg = 0
        if info < 24:
            arg = info
        elif info == 24:
            if pos >= n:
                raise self.truncated(pos + 1)
            arg = raw[pos]
            pos += 1
            if arg < 24:
                raise PeerProtocolError("non_canonical", "integer head not in shortest form")
        elif info <= 27:
            size = 1 << (info - 24)
            end = pos + size
            if end > n:
                raise self.truncated(end)
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
            if arg > self.max_string:
                raise PeerProtocolError("oversized", f"string of {arg} bytes")
            end = pos + arg
            if end > n:
                raise self.truncated(end)
            if major == 2:
                return raw[pos:end], end
            try:
                return raw[pos:end].decode("utf-8"), end
            except UnicodeDecodeError:
                raise PeerProtocolError("malformed", "text string is not UTF-8") from None
        if major == 1:
            return -1 - arg, pos
        if major == 4:
            return self.array(pos, depth + 1, arg)
        if major == 5:
            return self.map(pos, depth + 1, arg)
        # major == 6: tag
        if arg not in self.allowed_tags:
            raise PeerProtocolError("malformed", f"tag {arg} is not allowed")
        value, pos = self.item(pos, depth + 1)
        return CBORTag(arg, value), pos

    def array(self, pos: int, child: int, count: int) -> tuple[Any, int]:
        if count > self.max_items:
            raise PeerProtocolError("oversized", f"array of {count} items")
        if count and child > self.max_depth:
            raise self.too_deep()
        out: list[Any] = []
        for _ in range(count):
            head = self.head_at(pos)
            if head < 24:
                out.append(head)
                pos += 1
            elif 0x60 <= head <= 0x77:
                text, pos = self.short_text(pos, head)
                out.append(text)
            else:
                value, pos = self.item(pos, child)
                out.append(value)
        return out, pos

    def map(self, pos: int, child: int, count: int) -> tuple[Any, int]:
        if count > self.max_items:
            raise PeerProtocolError("oversized", f"map of {count} pairs")
        if count and child > self.max_depth:
            raise self.too_deep()
        raw = self.raw
        result: dict[Any, Any] = {}
        previous = b""
        for _ in range(count):
            start = pos
            head = self.head_at(pos)
            key: Any = None
            if 0x60 <= head <= 0x77:  # short text key: the common case
                key, pos = self.short_text(pos, head)
            else:
                key, pos = self.item(pos, child)
                if not isinstance(key, int | str | bytes):
                    raise PeerProtocolError("malformed", "map keys must be int, text or bytes")
            kbytes = raw[start:pos]
            if kbytes <= previous:
                reason = "duplicate map key" if kbytes == previous else "map keys not sorted"
                raise PeerProtocolError("non_canonical", reason)
            previous = kbytes
            head = self.head_at(pos)
            if head < 24:
                result[key] = head
                pos += 1
            elif 0x60 <= head <= 0x77:
                text, pos = self.short_text(pos, head)
                result[key] = text
            else:
                vstart = pos
                value, pos = self.item(pos, child)
                if self.keeping and type(value) is dict and key in self.keep:
                    value = EncodedMap(value, raw[vstart:pos])
                result[key] = value
        return result, pos

    def simple(self, info: int, pos: int) -> tuple[Any, int]:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        if info in _FLOAT_FORMATS:
            fmt = _FLOAT_FORMATS[info]
            end = pos + struct.calcsize(fmt)
            if end > self.n:
                raise self.truncated(end)
            value: float = struct.unpack(fmt, self.raw[pos:end])[0]
            if not math.isfinite(value):
                raise PeerProtocolError("malformed", "non-finite float")
            if _float(value)[0] != 0xE0 | info:
                raise PeerProtocolError("non_canonical", "float not in shortest form")
            return value, end
        if info == 31:
            raise PeerProtocolError("non_canonical", "indefinite length is not allowed")
        raise PeerProtocolError("malformed", f"simple value {info} is not allowed")
