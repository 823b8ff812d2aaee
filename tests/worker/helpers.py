"""Helpers shared by the worker tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from protocol.jobs import InputRef


def input_ref(path: Path) -> InputRef:
    data = path.read_bytes()
    return InputRef(hashlib.sha256(data).digest(), len(data))


def listing(root: Path) -> set[str]:
    """Every path under `root`, relative, for before/after comparisons."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}
