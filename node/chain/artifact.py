"""The compiled escrow contract, as checked in beside its source."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def escrow_artifact() -> dict[str, Any]:
    text = resources.files("protocol.contracts").joinpath("escrow.json").read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact
