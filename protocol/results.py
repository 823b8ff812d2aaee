"""The result digest: what redundant workers agree on, commit to and reveal.

A result manifest carries timings and host details that differ between honest workers,
so workers commit not to the manifest bytes but to its *outcome*: the job, the error
code, the artifacts (name, SHA-256, size) and, for inference, the output tokens. Two
workers with the same runtime fingerprint that did the same deterministic work have the
same digest; the on-chain quorum counts digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from protocol import codec
from protocol.errors import InvalidMessage

__all__ = ["result_digest", "result_outcome"]


def result_outcome(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The deterministic part of a manifest, as a CBOR-ready map."""
    try:
        error = manifest.get("error")
        artifacts = sorted(
            (str(a["name"]), str(a["sha256"]), int(a["size"])) for a in manifest["artifacts"]
        )
        output = manifest.get("output")
        tokens = None
        if isinstance(output, Mapping) and isinstance(output.get("tokens"), list):
            tokens = [int(t) for t in output["tokens"]]
        return {
            "job_id": str(manifest["job_id"]),
            "error": None if error is None else str(error["code"]),
            "artifacts": [list(a) for a in artifacts],
            "tokens": tokens,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidMessage(f"result manifest lacks its outcome: {exc}") from None


def result_digest(manifest: Mapping[str, Any]) -> bytes:
    """SHA-256 of the deterministic CBOR of the manifest's outcome."""
    return hashlib.sha256(codec.encode(result_outcome(manifest))).digest()
