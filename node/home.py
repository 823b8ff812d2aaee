"""The node home folder: where keys, config and the database live."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.errors import UserError
from protocol.identity import Identity

__all__ = ["KEY_FILE", "create_identity", "home_dir", "load_identity", "write_private"]

KEY_FILE = "keys/identity.key"  # hex: 32-byte Ed25519 seed, newline, 32-byte eth key


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--home, else $C0_HOME, else ~/.c0."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("C0_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".c0"


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only the owner can read, created atomically and never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_identity(home: Path, identity: Identity | None = None) -> Identity:
    key_path = home / KEY_FILE
    if key_path.exists():
        raise UserError(f"keys already exist in {home} (refusing to overwrite {key_path})")
    identity = identity or Identity.generate()
    text = f"{identity.seed.hex()}\n{identity.eth_private_key.hex()}\n"
    try:
        write_private(key_path, text.encode("ascii"))
    except FileExistsError:
        raise UserError(f"keys already exist in {home} (refusing to overwrite)") from None
    return identity


def load_identity(home: Path) -> Identity:
    key_path = home / KEY_FILE
    try:
        lines = key_path.read_text("ascii").split()
    except FileNotFoundError:
        raise UserError(f"no keys in {home}: run 'c0 identity new --home {home}'") from None
    try:
        seed, eth_key = bytes.fromhex(lines[0]), bytes.fromhex(lines[1])
        return Identity(seed, eth_key)
    except (IndexError, ValueError):
        raise UserError(f"{key_path} is damaged: expected two lines of hex") from None
