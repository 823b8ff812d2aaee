"""The node home folder: where keys, config and the database live.

A home holds the node's keys, its database (prompts and results of jobs among them),
its blobs and its work and result folders, so it is owner-only: created 0700 whatever
the umask, tightened to 0700 (with a log line) when the node creates things in a home
that is not, and the key file is refused at load unless only its owner can read it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from protocol.errors import UserError
from protocol.identity import Identity

__all__ = [
    "HOME_FOLDERS",
    "KEY_FILE",
    "UnsafeKeyFile",
    "create_identity",
    "ensure_home",
    "home_dir",
    "load_identity",
    "prepare_home",
    "private_dir",
    "private_file",
    "write_private",
]

log = logging.getLogger(__name__)

KEY_FILE = "keys/identity.key"  # hex: 32-byte Ed25519 seed, newline, 32-byte eth key
# Folders a node makes in its home (blobs by node/blobstore.py, work/ by the worker,
# results/ by the client, arbitration/ by the arbiter); made owner-only by prepare_home.
HOME_FOLDERS = ("blobs", "work", "results", "arbitration")

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


class UnsafeKeyFile(UserError):
    """The key file can be read or written by someone other than its owner, or is not
    owned by the user running the node: refused at load, with the command that fixes it."""

    code = "unsafe_key_file"


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--home, else $C0_HOME, else ~/.c0."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("C0_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".c0"


def private_dir(path: Path, *, parents: bool = False) -> Path:
    """Make `path` a folder only its owner can enter: created 0700 (exactly, whatever the
    umask; missing parents too with `parents`), or tightened to 0700 with a log line if
    it exists with group or other bits. Returns `path`."""
    path = Path(path)
    if parents and not path.parent.exists():
        private_dir(path.parent, parents=True)
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{path} exists and is not a folder") from None
        if st.st_mode & _OPEN_TO_OTHERS:
            os.chmod(path, _DIR_MODE)
            log.warning(
                "%s had mode %04o; tightened to 0700 (only its owner may use it)",
                path,
                stat.S_IMODE(st.st_mode),
            )
        return path
    os.chmod(path, _DIR_MODE)  # mkdir's mode is masked by the umask, never widened: be exact
    return path


def private_file(path: Path) -> Path:
    """Make `path` a file only its owner can read: created empty with mode 0600 if it is
    missing, tightened to 0600 if it exists with group or other bits. Returns `path`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        st = os.stat(path)
        if st.st_mode & _OPEN_TO_OTHERS:
            os.chmod(path, _FILE_MODE)
            log.warning("%s had mode %04o; tightened to 0600", path, stat.S_IMODE(st.st_mode))
        return path
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)
    return path


def ensure_home(home: Path) -> Path:
    """The node home, owner-only: created 0700 (with any missing parents), or tightened
    to 0700 if it exists with group or other bits. Call before creating things in it."""
    return private_dir(Path(home), parents=True)


def prepare_home(home: Path, folders: Iterable[str] = HOME_FOLDERS) -> Path:
    """`ensure_home`, and the folders a node makes inside it, each owner-only."""
    home = ensure_home(home)
    for name in folders:
        private_dir(home / name)
    return home


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only the owner can read, created atomically and never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_identity(home: Path, identity: Identity | None = None) -> Identity:
    key_path = home / KEY_FILE
    if key_path.exists():
        raise UserError(f"keys already exist in {home} (refusing to overwrite {key_path})")
    ensure_home(home)
    private_dir(key_path.parent)
    identity = identity or Identity.generate()
    text = f"{identity.seed.hex()}\n{identity.eth_private_key.hex()}\n"
    try:
        write_private(key_path, text.encode("ascii"))
    except FileExistsError:
        raise UserError(f"keys already exist in {home} (refusing to overwrite)") from None
    return identity


def _check_key_file(key_path: Path, st: os.stat_result) -> None:
    """Refuse a key file anyone but its owner may read or write, or that is not ours."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeKeyFile(f"{key_path} is not a regular file")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeKeyFile(
            f"{key_path} is owned by uid {st.st_uid}, not by uid {uid} that runs this node:"
            f" run 'chown {uid} {key_path}' as root, or run the node as its owner"
        )
    if mode & _OPEN_TO_OTHERS:
        raise UnsafeKeyFile(
            f"{key_path} has mode {mode:04o}: a key file must be readable and writable by"
            f" its owner only; run 'chmod 600 {key_path}'"
        )


def load_identity(home: Path) -> Identity:
    key_path = home / KEY_FILE
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"no keys in {home}: run 'c0 identity new --home {home}'") from None
    try:
        _check_key_file(key_path, os.fstat(fd))  # the file read, not what a path names later
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        lines = raw.decode("ascii").split()
        seed, eth_key = bytes.fromhex(lines[0]), bytes.fromhex(lines[1])
        return Identity(seed, eth_key)
    except (IndexError, ValueError):
        raise UserError(f"{key_path} is damaged: expected two lines of hex") from None
