"""Length framing: an unsigned-varint length prefix, then that many bytes.

`parse_frame` is the sans-IO core (bytes in, frame out); `FrameReader` runs it over a
ByteStream with a deadline on every read. Control frames (errors, acks) are CBOR maps;
envelopes are COSE_Sign1 arrays, so the first byte tells them apart.
"""

from __future__ import annotations

from typing import Any

import trio

from node.net.streams import ByteStream
from protocol import codec
from protocol.errors import PeerProtocolError

__all__ = [
    "MAX_VARINT_BYTES",
    "FrameReader",
    "decode_control",
    "encode_control",
    "encode_frame",
    "encode_varint",
    "error_frame",
    "is_control",
    "parse_frame",
]

MAX_VARINT_BYTES = 9  # 63-bit lengths, as multiformats unsigned-varint allows
_CONTROL_LIMITS = codec.DecodeLimits(max_size=4096, max_depth=3, max_items=32)


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    return encode_varint(len(payload)) + payload


def parse_frame(buf: bytes | bytearray, max_size: int) -> tuple[int, int] | None:
    """Return (header_length, payload_length) once the header is complete, else None.

    Raises PeerProtocolError('malformed') for a non-minimal or too-long varint and
    ('oversized') for a length above `max_size`, before any payload is read.
    """
    value = 0
    for i in range(min(len(buf), MAX_VARINT_BYTES)):
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise PeerProtocolError("malformed", "non-minimal varint length")
            if value > max_size:
                raise PeerProtocolError("oversized", f"frame of {value} bytes > {max_size}")
            return i + 1, value
        if value > max_size:
            raise PeerProtocolError("oversized", f"frame length exceeds {max_size}")
    if len(buf) >= MAX_VARINT_BYTES:
        raise PeerProtocolError("malformed", "varint length longer than 9 bytes")
    return None


def encode_control(obj: dict[str, Any]) -> bytes:
    return encode_frame(codec.encode(obj))


def error_frame(reason: str, detail: str = "") -> bytes:
    return encode_control({"error": reason, "detail": detail[:200]})


def is_control(payload: bytes) -> bool:
    """CBOR maps (major type 5) are control frames; envelopes are arrays or tag 18."""
    return bool(payload) and payload[0] >> 5 == 5


def decode_control(payload: bytes) -> dict[str, Any]:
    obj = codec.decode(payload, _CONTROL_LIMITS)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise PeerProtocolError("malformed", "control frame is not a map with text keys")
    return obj


class FrameReader:
    """Reads frames from a ByteStream; every read has a deadline."""

    def __init__(self, stream: ByteStream, *, max_size: int, read_timeout: float) -> None:
        self.stream = stream
        self.max_size = max_size
        self.read_timeout = read_timeout
        self._buf = bytearray()

    async def _fill(self, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            with trio.fail_after(timeout):
                data = await self.stream.read(max(65536, self.max_size - len(self._buf)))
        except trio.TooSlowError:
            raise PeerProtocolError("timeout", f"no data within {timeout:g} s") from None
        if not data:
            return False
        self._buf += data
        return True

    async def read_frame(self, first_timeout: float | None = None) -> bytes | None:
        """The next frame's payload; None at a clean end of stream between frames.

        `first_timeout` bounds the wait for the first byte (default: the read timeout);
        every later read inside the frame is bounded by the read timeout.
        """
        start = self.read_timeout if first_timeout is None else first_timeout
        first = True
        while True:
            header = parse_frame(self._buf, self.max_size)
            if header is not None:
                break
            if not await self._fill(start if first else self.read_timeout):
                if self._buf:
                    raise PeerProtocolError("truncated", "stream ended inside a frame header")
                return None
            first = False
        head, length = header
        while len(self._buf) < head + length:
            if not await self._fill(self.read_timeout):
                raise PeerProtocolError("truncated", "stream ended inside a frame")
        payload = bytes(self._buf[head : head + length])
        del self._buf[: head + length]
        return payload

    async def read_frame_into(self, sink: Any) -> int | None:
        """Like read_frame, but hands the payload to `sink(memoryview)` piece by piece.

        Used for blob data so that large chunks are not copied twice. Returns the
        payload length, or None at a clean end of stream.
        """
        while True:
            header = parse_frame(self._buf, self.max_size)
            if header is not None:
                break
            if not await self._fill(self.read_timeout):
                if self._buf:
                    raise PeerProtocolError("truncated", "stream ended inside a frame header")
                return None
        head, length = header
        del self._buf[:head]
        remaining = length
        if self._buf:
            take = min(remaining, len(self._buf))
            sink(bytes(self._buf[:take]))
            del self._buf[:take]
            remaining -= take
        while remaining:  # read straight into the sink, no buffering
            try:
                with trio.fail_after(self.read_timeout):
                    data = await self.stream.read(remaining)
            except trio.TooSlowError:
                raise PeerProtocolError("timeout", "no data within the read timeout") from None
            if not data:
                raise PeerProtocolError("truncated", "stream ended inside a frame")
            sink(data[:remaining])
            remaining -= min(len(data), remaining)
        return length
