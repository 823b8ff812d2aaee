"""Content-addressed blob store in the node home: blobs/<aa>/<sha256 hex>, indexed in SQLite.

A blob becomes visible only after its bytes are on disk, fsynced, checked against the
hash and renamed into place; partial downloads live in blobs/partial/ and resume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import trio

from node.home import private_dir
from node.store import Store
from protocol.errors import UserError

__all__ = ["BlobStore", "hash_file"]

_COPY_CHUNK = 1 << 20
_INLINE_HASH_LIMIT = 64 << 10  # hashing this much takes ~0.1 ms: fine on the event loop


def hash_file(path: Path, limit: int | None = None) -> tuple[bytes, int]:
    """SHA-256 and size of a file (or of its first `limit` bytes)."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while limit is None or size < limit:
            want = _COPY_CHUNK if limit is None else min(_COPY_CHUNK, limit - size)
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.digest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs named by their SHA-256; the index lives in the node's Store."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self.partial_dir = root / "partial"
        private_dir(root, parents=True)  # blobs hold jobs' inputs and results: owner-only
        private_dir(self.partial_dir)

    def path_of(self, sha256: bytes) -> Path:
        if len(sha256) != 32:
            raise ValueError("a blob name is a 32-byte SHA-256")
        hexed = sha256.hex()  # only hex reaches the file system, never a peer's path
        return self.root / hexed[:2] / hexed

    def partial_path(self, sha256: bytes) -> Path:
        return self.partial_dir / (self.path_of(sha256).name + ".part")

    def has(self, sha256: bytes) -> bool:
        return self.store.blob_size(sha256) is not None and self.path_of(sha256).exists()

    def size(self, sha256: bytes) -> int | None:
        return self.store.blob_size(sha256) if self.has(sha256) else None

    def open(self, sha256: bytes) -> BinaryIO:
        return self.path_of(sha256).open("rb")

    def put_bytes(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        if not self.has(digest):
            tmp = self.partial_dir / f"put-{os.getpid()}-{digest.hex()}"
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.commit(digest, tmp, len(data))
        return digest

    def put_file(self, path: Path) -> bytes:
        """Copy a local file into the store; return its SHA-256."""
        digest, tmp, size = self._stage(path)
        if self.has(digest):
            tmp.unlink()
        else:
            self.commit(digest, tmp, size)
        return digest

    async def put_file_async(self, path: Path) -> bytes:
        """`put_file` with the copy and its fsync in a worker thread, so the event loop is
        not held up by the disk; the index is still written from the caller's thread.
        A file the store already holds is hashed and dropped, never synced: a worker's
        equal outputs (every noop job's, say) cost it one fsync, not one each. A small
        file is hashed here first: one the store holds costs no thread hop and no copy."""
        held = self._held_if_small(path)
        if held is not None:
            return held
        digest, tmp, size = await trio.to_thread.run_sync(lambda: self._stage(path, sync=False))
        if self.has(digest):
            tmp.unlink()
            return digest
        await trio.to_thread.run_sync(self._sync_and_place, digest, tmp)
        self.store.add_blob(digest, size)
        return digest

    def _held_if_small(self, path: Path) -> bytes | None:
        """The digest of `path` if it is a small file the store holds already, else None
        (a missing file too: `_stage` reports it)."""
        path = Path(path)
        try:
            if path.stat().st_size > _INLINE_HASH_LIMIT:
                return None
            digest, read = hash_file(path, _INLINE_HASH_LIMIT + 1)
        except OSError:
            return None
        if read <= _INLINE_HASH_LIMIT and self.has(digest):  # the whole file was read
            return digest
        return None

    def _sync_and_place(self, sha256: bytes, tmp: Path) -> None:
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        self._place(sha256, tmp)

    def _stage(self, path: Path, *, sync: bool = True) -> tuple[bytes, Path, int]:
        """Copy `path` to a fresh partial file, hashing it on the way, and sync it
        (unless the caller syncs it once it knows the blob is new)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"not a file: {path}")
        tmp = self.partial_dir / f"put-{os.getpid()}-{os.urandom(8).hex()}"
        h = hashlib.sha256()
        size = 0
        with path.open("rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                h.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            if sync:
                os.fsync(dst.fileno())
        return h.digest(), tmp, size

    def _place(self, sha256: bytes, tmp: Path) -> None:
        final = self.path_of(sha256)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def commit(self, sha256: bytes, tmp: Path, size: int) -> None:
        """Move verified bytes into place, then index them (the index implies the file)."""
        self._place(sha256, tmp)
        self.store.add_blob(sha256, size)

    async def commit_async(self, sha256: bytes, tmp: Path, size: int) -> None:
        """`commit` with the rename and its directory sync in a worker thread; the index is
        written from the caller's thread (the store's connection belongs to it)."""
        await trio.to_thread.run_sync(self._place, sha256, tmp)
        self.store.add_blob(sha256, size)

    def export(self, sha256: bytes, dest: Path) -> None:
        """Copy a blob out to `dest` (a path chosen by the local user)."""
        shutil.copyfile(self.path_of(sha256), dest)
