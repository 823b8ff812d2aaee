"""/c0/blob/1.0.0: content-addressed blobs, chunked, verified, resumable.

Request (client -> server): one control frame `{"get": sha256, "offset": n}`.
Reply: `{"size": total, "offset": n}`, then data frames of at most `chunk_size` bytes,
then an empty frame; or `{"error": reason, "detail": text}`. The client hashes what it
receives and keeps the blob only if the SHA-256 matches; an interrupted transfer leaves
a partial file that the next fetch resumes from. Every read has a timeout, and a whole
transfer a deadline (`min_rate_bytes_s`), so a peer trickling bytes cannot hold a fetch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node.blobstore import BlobStore
from node.config import BlobConfig
from node.net.framing import (
    FrameReader,
    decode_control,
    encode_control,
    encode_varint,
    error_frame,
    is_control,
)
from node.net.negotiate import OpenStream, Penalise, RemoteRefused
from node.net.streams import ByteStream
from protocol.errors import PeerProtocolError

__all__ = ["BLOB_PROTOCOL", "BlobService"]

BLOB_PROTOCOL = "/c0/blob/1.0.0"
_CONTROL_MAX = 4096
log = logging.getLogger("c0.blobs")


@dataclass
class BlobService:
    """Serves blobs from the store and fetches blobs from peers into it."""

    store: BlobStore
    config: BlobConfig
    open_stream: OpenStream
    penalise: Penalise
    request_timeout_s: float = 10.0
    _active: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    _fetching: dict[bytes, trio.Lock] = field(default_factory=dict)
    _slots: dict[str, trio.Semaphore] = field(default_factory=dict)  # outbound, per peer
    bytes_served: int = 0

    # ------------------------------------------------------------ local API
    def put_file(self, path: Path) -> bytes:
        return self.store.put_file(path)

    async def put_file_async(self, path: Path) -> bytes:
        return await self.store.put_file_async(path)

    def put_bytes(self, data: bytes) -> bytes:
        return self.store.put_bytes(data)

    def has(self, sha256: bytes) -> bool:
        return self.store.has(sha256)

    def path_of(self, sha256: bytes) -> Path:
        return self.store.path_of(sha256)

    # ------------------------------------------------------------ server
    async def serve_stream(self, stream: ByteStream, peer_id: str) -> None:
        if self._active[peer_id] >= self.config.max_streams_per_peer:
            self.penalise(peer_id, "busy")
            await _send_quietly(stream, error_frame("busy", "too many blob streams"))
            await stream.reset()
            return
        self._active[peer_id] += 1
        try:
            await self._serve(stream, peer_id)
        except PeerProtocolError as exc:
            log.info("blob: %s from %s: %s", exc.reason, peer_id, exc.detail)
            self.penalise(peer_id, exc.reason)
            await _send_quietly(stream, error_frame(exc.reason, exc.detail))
        except trio.BrokenResourceError:
            pass
        except Exception as exc:  # the request was checked: this node failed (store, disk)
            log.warning("blob: serving %s failed: %s", peer_id, type(exc).__name__, exc_info=exc)
            await stream.reset()  # mid-transfer an error frame would read as data
        finally:
            self._active[peer_id] -= 1
            if not self._active[peer_id]:
                del self._active[peer_id]
            await stream.close()

    async def _serve(self, stream: ByteStream, peer_id: str) -> None:
        reader = FrameReader(stream, max_size=_CONTROL_MAX, read_timeout=self.config.read_timeout_s)
        payload = await reader.read_frame()
        if payload is None:
            raise PeerProtocolError("truncated", "stream closed before a request")
        if not is_control(payload):
            raise PeerProtocolError("unexpected_type", "a blob request is a control map")
        req = decode_control(payload)
        sha, offset = req.get("get"), req.get("offset", 0)
        if not isinstance(sha, bytes) or len(sha) != 32 or type(offset) is not int:
            raise PeerProtocolError("malformed", "need get: 32-byte SHA-256, offset: int")
        size = self.store.size(sha)
        if size is None:
            await stream.write(error_frame("not_found", sha.hex()))
            return
        if not 0 <= offset <= size:
            raise PeerProtocolError("protocol_violation", f"offset {offset} outside 0..{size}")
        await stream.write(encode_control({"size": size, "offset": offset}))
        chunk = self.config.chunk_size
        with self.store.open(sha) as f:
            f.seek(offset)
            remaining = size - offset
            while remaining:
                data = f.read(min(chunk, remaining))
                if not data:
                    raise OSError(f"blob {sha.hex()} shorter than indexed")
                with trio.fail_after(self.config.read_timeout_s):
                    await stream.write(encode_varint(len(data)) + data)
                remaining -= len(data)
                self.bytes_served += len(data)
        await stream.write(b"\x00")

    # ------------------------------------------------------------ client
    async def fetch(
        self,
        peer_id: str,
        sha256: bytes,
        size: int,
        dest: Path | None = None,
        *,
        deadline_s: float | None = None,
    ) -> Path:
        """Fetch a blob from `peer_id` into the store (and copy it to `dest`); return its path.

        Already held: no transfer. The transfer (opening the stream to the last byte) must
        end within `deadline_s`; by default `request_timeout_s + size / min_rate_bytes_s`
        (BlobConfig.min_rate_bytes_s, 256 KiB/s unless configured), on top of the limit
        on every read. Raises ValueError (a size above `max_blob_size`: before any stream
        is opened), RemoteRefused (e.g. not_found), PeerProtocolError (the peer is
        penalised: bad bytes, and the partial file is dropped; or `timeout`, a read or
        the whole transfer too slow, and the partial file is kept to resume),
        trio.TooSlowError (no stream within `request_timeout_s`) or
        trio.BrokenResourceError (the partial file is kept to resume).
        """
        if len(sha256) != 32:
            raise ValueError("sha256 must be 32 bytes")
        if not 0 <= size <= self.config.max_blob_size:
            raise ValueError(f"size {size} outside 0..{self.config.max_blob_size}")
        if deadline_s is None:
            deadline_s = self.request_timeout_s + size / self.config.min_rate_bytes_s
        # Held already (the index implies a complete file): no lock. Taking even a free
        # trio lock is a turn of the event loop, and a client verifying a burst of equal
        # results (every noop job's) found its artifact held ~150 times in a row.
        if not self.store.has(sha256):
            lock = self._fetching.setdefault(sha256, trio.Lock())
            async with lock:
                if not self.store.has(sha256):
                    async with self._slot(peer_id):
                        await self._fetch(peer_id, sha256, size, deadline_s)
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._fetching.pop(sha256, None)
        path = self.store.path_of(sha256)
        if dest is not None:
            shutil.copyfile(path, dest)
            return Path(dest)
        return path

    def _slot(self, peer_id: str) -> trio.Semaphore:
        """Our blob streams to one peer: at most half its inbound limit at once (the rest
        wait here, before their transfer's deadline starts). A burst of our own fetches
        (a client verifying many results of one worker) must queue, not trip the peer's
        limit: `busy` fails the fetch and costs us a penalty. As negotiate.py does."""
        slots = self._slots.get(peer_id)
        if slots is None:
            slots = self._slots[peer_id] = trio.Semaphore(
                max(1, self.config.max_streams_per_peer // 2)
            )
        return slots

    async def _fetch(self, peer_id: str, sha256: bytes, size: int, deadline_s: float) -> None:
        part = self.store.partial_path(sha256)
        hasher = hashlib.sha256()
        offset = 0
        if part.exists():
            offset = part.stat().st_size
            if offset > size:
                part.unlink()
                offset = 0
            else:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        hasher.update(chunk)
        opened = ok = False
        with trio.move_on_after(deadline_s) as transfer:
            with trio.fail_after(self.request_timeout_s):
                stream = await self.open_stream(peer_id, BLOB_PROTOCOL)
            opened = True
            try:
                await self._receive(stream, peer_id, sha256, size, offset, part, hasher)
                ok = True
            except PeerProtocolError as exc:
                self.penalise(peer_id, exc.reason)
                if exc.reason in ("hash_mismatch", "oversized", "protocol_violation"):
                    part.unlink(missing_ok=True)  # bytes we cannot trust: start afresh
                raise
            finally:
                # even past the deadline (shielded), but not for long
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
                    if ok:
                        await stream.close()
                    else:
                        await stream.reset()
        if transfer.cancelled_caught and not opened:
            raise trio.TooSlowError(f"no blob stream to {peer_id} within {deadline_s:g} s")
        if transfer.cancelled_caught:  # a trickle: each read in time, the whole too slow
            self.penalise(peer_id, "timeout")  # the partial file stays, as after a read timeout
            raise PeerProtocolError("timeout", f"{size} bytes not received within {deadline_s:g} s")
        await self.store.commit_async(sha256, part, size)

    async def _receive(
        self,
        stream: ByteStream,
        peer_id: str,
        sha256: bytes,
        size: int,
        offset: int,
        part: Path,
        hasher: hashlib._Hash,
    ) -> None:
        cfg = self.config
        await stream.write(encode_control({"get": sha256, "offset": offset}))
        reader = FrameReader(stream, max_size=_CONTROL_MAX, read_timeout=cfg.read_timeout_s)
        payload = await reader.read_frame()
        if payload is None:
            raise trio.BrokenResourceError(f"{peer_id} closed the blob stream")
        header = decode_control(payload) if is_control(payload) else None
        if header is None:
            raise PeerProtocolError("malformed", "blob reply must start with a control map")
        if isinstance(header.get("error"), str):
            raise RemoteRefused(header["error"], str(header.get("detail", "")))
        if header.get("size") != size or header.get("offset") != offset:
            raise PeerProtocolError("hash_mismatch", f"peer holds {header.get('size')} bytes")
        reader.max_size = cfg.chunk_size
        received = offset
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:

            def sink(data: bytes) -> None:
                nonlocal received
                received += len(data)
                if received > size:
                    raise PeerProtocolError("oversized", f"more than the {size} bytes asked")
                hasher.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]

            while True:
                length = await reader.read_frame_into(sink)
                if length is None:
                    raise trio.BrokenResourceError(f"{peer_id} ended the transfer early")
                if length == 0:
                    break
            # off the event loop: a disk sync here took ~9 ms, once per artifact fetched
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        if received != size or hasher.digest() != sha256:
            raise PeerProtocolError("hash_mismatch", "the bytes do not hash to the name asked")


async def _send_quietly(stream: ByteStream, data: bytes) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.write(data)
        except trio.BrokenResourceError:
            pass
