"""Helpers shared by the worker tests."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

from protocol.jobs import InputRef


def input_ref(path: Path) -> InputRef:
    data = path.read_bytes()
    return InputRef(hashlib.sha256(data).digest(), len(data))


def listing(root: Path) -> set[str]:
    """Every path under `root`, relative, for before/after comparisons."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def freeze(execution: Any) -> None:
    """Stop the job's child (SIGSTOP) so that only the executor (or a SIGCONT) can end
    it: a forked child of a small job can finish within a millisecond or two of `start`
    on a fast host. The executor's SIGKILL still ends a stopped process."""
    assert execution._proc is not None
    os.kill(execution._proc.pid, signal.SIGSTOP)
