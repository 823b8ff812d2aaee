"""The result manifest (result.json): building, hashing artifacts and writing it atomically."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.jobs import InputRef, JobSpec

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "artifact_entry",
    "build_manifest",
    "hash_file",
    "read_manifest",
    "spec_from_json",
    "spec_to_json",
    "write_manifest",
]

MANIFEST_NAME = "result.json"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def artifact_entry(root: Path, name: str) -> dict[str, Any]:
    sha256, size = hash_file(root / name)
    return {"name": name, "path": name, "sha256": sha256, "size": size}


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    """The job spec in JSON form (bytes as hex), so a result folder names its own job."""
    return {
        "job_class": spec.job_class,
        "params": dict(spec.params),
        "inputs": {name: ref.to_json() for name, ref in spec.inputs.items()},
        "client": spec.client,
        "nonce": spec.nonce.hex(),
        "limits": dict(spec.limits),
    }


def spec_from_json(obj: Mapping[str, Any]) -> JobSpec:
    inputs = {name: InputRef.from_json(ref) for name, ref in obj["inputs"].items()}
    return JobSpec(
        obj["job_class"],
        obj["params"],
        inputs,
        obj["client"],
        bytes.fromhex(obj["nonce"]),
        obj["limits"],
    )


def build_manifest(
    spec: JobSpec,
    *,
    attempt: int,
    exit_code: int,
    error: Mapping[str, str] | None,
    artifacts: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    runtime: Mapping[str, Any],
    output: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The manifest map. Only CBOR-friendly values (str, int, finite float, list, map), so
    the same map can travel inside a signed ResultReveal."""
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "job_id": spec.job_id_text,
        "job_class": spec.job_class,
        "attempt": attempt,
        "spec": spec_to_json(spec),
        "exit_code": exit_code,
        "error": dict(error) if error is not None else None,
        "artifacts": [dict(a) for a in artifacts],
        "metrics": dict(metrics),
        "runtime": dict(runtime),
    }
    if output is not None:
        manifest["output"] = dict(output)
    return manifest


def write_manifest(folder: Path, manifest: Mapping[str, Any], *, sync: bool = True) -> Path:
    """Write result.json atomically (a temporary name in the same folder, then rename),
    synced to disk first unless `sync` is false: then it survives the process being
    killed, not a power loss (a disk sync cost ~0.45 ms of CPU here, per result)."""
    final = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False))
        fh.write("\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def read_manifest(folder: Path) -> dict[str, Any]:
    with (folder / MANIFEST_NAME).open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("result.json is not a JSON object")
    return data
