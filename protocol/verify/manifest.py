"""Checks on a result manifest itself: schema, job identity, artifact names and hashes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from protocol.verify.report import Check, fail, passed

__all__ = ["ARTIFACT_NAME", "check_artifact_hashes", "check_manifest_schema"]

ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("job_id", "job_class", "exit_code", "error", "artifacts", "metrics", "runtime")


def _finite_tree(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _finite_tree(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_finite_tree(v) for v in value)
    return value is None or isinstance(value, str | int | bool)


def check_manifest_schema(
    manifest: Mapping[str, Any], *, job_class: str, job_id: str | None = None
) -> list[Check]:
    """The manifest has every field with the right type, names this job, reports
    success, and lists well-formed artifacts."""
    name = "manifest"
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        return [fail(name, f"missing field(s): {', '.join(missing)}")]
    if manifest["job_class"] != job_class:
        return [fail(name, f"job_class is {manifest['job_class']!r}, expected {job_class!r}")]
    if job_id is not None and manifest["job_id"] != job_id:
        return [fail(name, f"job_id {manifest['job_id']!r} is not this job's {job_id!r}")]
    if manifest["error"] is not None or manifest["exit_code"] != 0:
        return [fail(name, f"the job failed: {manifest['error']!r}")]
    if not isinstance(manifest["metrics"], Mapping) or not isinstance(manifest["runtime"], Mapping):
        return [fail(name, "metrics and runtime must be objects")]
    if not _finite_tree(dict(manifest)):
        return [fail(name, "values must be strings, integers, finite numbers, lists, maps")]
    artifacts = manifest["artifacts"]
    if not isinstance(artifacts, list):
        return [fail(name, "artifacts must be a list")]
    seen: set[str] = set()
    for item in artifacts:
        if not isinstance(item, Mapping) or set(item) != {"name", "path", "sha256", "size"}:
            return [fail(name, f"malformed artifact entry {item!r}")]
        artifact = item["name"]
        if not isinstance(artifact, str) or not ARTIFACT_NAME.match(artifact):
            return [fail(name, f"artifact name {artifact!r} is not allowed")]
        if item["path"] != artifact or artifact in seen:
            return [fail(name, f"artifact {artifact!r}: path differs or name repeats")]
        sha, size = item["sha256"], item["size"]
        if not isinstance(sha, str) or not _HEX64.match(sha):
            return [fail(name, f"artifact {artifact!r}: sha256 is not 64 hex digits")]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return [fail(name, f"artifact {artifact!r}: bad size {size!r}")]
        seen.add(artifact)
    return [passed(name, f"{len(artifacts)} artifact(s), job {manifest['job_id']}")]


def check_artifact_hashes(
    artifacts: Sequence[Mapping[str, Any]], observed: Mapping[str, tuple[str, int] | None]
) -> Check:
    """Each declared artifact exists with exactly the declared SHA-256 and size.
    `observed` maps a name to (sha256 hex, size) of the file found, or None if absent."""
    name = "artifact_hashes"
    if not artifacts:
        return fail(name, "the result has no artifacts")
    for item in artifacts:
        found = observed.get(str(item["name"]))
        if found is None:
            return fail(name, f"artifact {item['name']!r} is missing")
        if found != (item["sha256"], item["size"]):
            return fail(name, f"artifact {item['name']!r} does not match its hash or size")
    return passed(name, f"{len(artifacts)} artifact(s) match")
