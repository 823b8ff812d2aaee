"""The CBOR data types shared by both implementations of `protocol.codec`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_LIMITS", "CBORTag", "DecodeLimits", "EncodedMap"]


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


class EncodedMap(dict):  # type: ignore[type-arg]
    """A decoded map that also carries its exact encoded bytes (`decode(keep_encoded=...)`).

    The decoder accepts only deterministic CBOR, so `encoded == encode(self)`: a caller
    can hash the bytes it received instead of encoding the map again.
    """

    __slots__ = ("encoded",)

    def __init__(self, value: dict[Any, Any], encoded: bytes) -> None:
        super().__init__(value)
        self.encoded = encoded
