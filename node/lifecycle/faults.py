"""Adversarial worker behaviours for researchers' scenarios and end-to-end tests.

A node configured with `behaviour = "wrong_output"` runs the job honestly, then corrupts
its result in a way only verification can see: artifact bytes replaced (with hashes
recomputed, so the manifest is self-consistent) or inference tokens changed. `"lazy"`
skips the work's substance and reveals an empty result. Honest nodes never call this.

Behaviours that act on the lifecycle rather than on a result (each active only on a node
whose settings name it; an honest node never takes these paths):

- `"stall"` (worker.py): accepts its assignment and runs the job, then goes silent: no
  heartbeat, no commit or reveal to the client, which abandons the attempt and retries
  elsewhere. Alone on chain it commits at once, reveals once the commit window closes
  (before the escrow's deadline: a late result at quorum) and claims after the challenge
  period, whatever the escrow's status. Only an accepted result is ever paid: the client
  disputes the unreleased escrow (settle.RefundKeeper) and the arbiter pays nobody.
- `"silent_arbiter"` (arbitration.py): an arbiter that receives every dispute and never
  rules. The dispute lapses at the ruling deadline: the client's RefundKeeper calls
  `lapse`, every party gets its own funds back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from node.executors.manifest import write_manifest

__all__ = ["tamper_result"]


def tamper_result(folder: Path, manifest: dict[str, Any], behaviour: str) -> dict[str, Any]:
    forged = dict(manifest)
    if behaviour == "lazy":
        forged["artifacts"] = []
        if isinstance(forged.get("output"), dict):
            forged["output"] = {"text": "", "tokens": []}
        write_manifest(folder, forged)
        return forged
    output = forged.get("output")
    if isinstance(output, dict) and output.get("tokens"):
        tokens = [int(t) for t in output["tokens"]]
        # Shift every token: the text still looks like text, the model never chose it.
        forged["output"] = {
            **output,
            "tokens": [(t + 7) % 256 + 3 for t in tokens],
            "text": "".join(chr(ord(c) ^ 1) for c in str(output.get("text", ""))),
        }
    artifacts = []
    for index, artifact in enumerate(forged.get("artifacts", [])):
        artifact = dict(artifact)
        if index == 0 or str(artifact["name"]).endswith((".ts", ".m4s", ".mp4")):
            path = folder / artifact["path"]
            data = bytearray(path.read_bytes())
            for i in range(0, len(data), 97):  # corrupt the payload throughout
                data[i] ^= 0x5A
            path.write_bytes(bytes(data))
            artifact["sha256"] = hashlib.sha256(data).hexdigest()
            artifact["size"] = len(data)
        artifacts.append(artifact)
    forged["artifacts"] = artifacts
    write_manifest(folder, forged)
    return forged
