"""The checked-in escrow.json is exactly what escrow.vy compiles to."""

from __future__ import annotations

import json

from protocol.contracts import build


def test_checked_in_artifact_matches_a_fresh_compile() -> None:
    fresh = build.render(build.compile_source())
    on_disk = build.ARTIFACT.read_text()
    assert json.loads(on_disk)["bytecode"] == json.loads(fresh)["bytecode"], (
        "escrow.json is stale: run `python -m protocol.contracts.build`"
    )
    assert on_disk == fresh
