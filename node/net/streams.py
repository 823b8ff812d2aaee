"""The small byte-stream interface the node's protocols run on, and its two adapters.

py-libp2p has no in-memory transport, so protocol code talks to `ByteStream`; real
libp2p streams and trio memory streams both satisfy it.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

__all__ = ["ByteStream", "Libp2pByteStream", "TrioByteStream"]


class ByteStream(Protocol):
    """An ordered, reliable, bidirectional byte stream."""

    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` bytes (maybe fewer); b"" at end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Send all of `data`; raise trio.BrokenResourceError if the peer is gone."""
        ...

    async def close(self) -> None:
        """Half-close or close politely; never raises."""
        ...

    async def reset(self) -> None:
        """Abort the stream; never raises."""
        ...


class TrioByteStream:
    """Adapter for a trio.abc.Stream (memory streams in tests, raw TCP in benchmarks)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self._stream.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("stream closed") from None

    async def close(self) -> None:
        try:
            await self._stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def reset(self) -> None:
        await trio.aclose_forcefully(self._stream)


class Libp2pByteStream:
    """Adapter for a py-libp2p INetStream: EOF becomes b"", write errors one type."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def remote_peer(self) -> str:
        return str(self._stream.muxed_conn.peer_id)

    async def read(self, max_bytes: int) -> bytes:
        try:
            data = await self._stream.read(max_bytes)
        except Exception:  # StreamEOF, StreamReset, MuxedStreamError ...: all mean "gone"
            return b""
        return bytes(data or b"")

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except Exception as exc:
            raise trio.BrokenResourceError(f"stream write failed: {exc!r}") from None

    async def close(self) -> None:
        try:
            await self._stream.close()
        except Exception:
            pass

    async def reset(self) -> None:
        try:
            await self._stream.reset()
        except Exception:
            pass
