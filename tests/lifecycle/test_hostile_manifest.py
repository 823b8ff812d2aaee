"""A revealed manifest is a peer's data: any shape of its artifacts ends as a typed
PeerProtocolError before anything is fetched or written (issue 18: a reveal naming an
artifact hash that is not hex crashed its client, and again at every restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.lifecycle.results import materialize
from protocol.errors import PeerProtocolError

GOOD = {"name": "out.bin", "sha256": "ab" * 32, "size": 3}


@pytest.mark.parametrize(
    "manifest",
    [
        {"artifacts": "not a list"},
        {"artifacts": [["out.bin", "ab" * 32, 3]]},
        {"artifacts": [{**GOOD, "sha256": "zz" * 32}]},
        {"artifacts": [{**GOOD, "sha256": "ab" * 31}]},
        {"artifacts": [{**GOOD, "sha256": 12345}]},
        {"artifacts": [{**GOOD, "size": "3"}]},
        {"artifacts": [{**GOOD, "size": -1}]},
        {"artifacts": [{**GOOD, "size": True}]},
        {"artifacts": [{**GOOD, "name": 7}]},
        {"artifacts": [{**GOOD, "name": "../escape"}]},
        {"artifacts": [{**GOOD, "name": ".hidden"}]},
        {"artifacts": [{"name": "out.bin"}]},
        ["not", "a", "map"],
    ],
)
async def test_a_malformed_manifest_is_a_peer_error(tmp_path: Path, manifest: Any) -> None:
    folder = tmp_path / "result"
    with pytest.raises(PeerProtocolError) as caught:
        await materialize(None, "peer", manifest, folder)  # type: ignore[arg-type]
    assert caught.value.reason == "protocol_violation"
    assert not folder.exists()  # nothing fetched, nothing laid out
