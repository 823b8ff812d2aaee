"""Result folders rebuilt from a revealed manifest: what the client and the arbiter
verify. Artifacts are fetched by hash; names from the network are checked first."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from node.executors.manifest import write_manifest
from node.net.blobs import BlobService
from protocol.errors import PeerProtocolError
from protocol.jobs import JobSpec, JobTemplate

__all__ = ["materialize", "template_of"]

T = TypeVar("T")


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def template_of(spec: JobSpec) -> JobTemplate:
    """The JSON-form template of a bound spec (what `verify_result` takes)."""
    return JobTemplate.from_json(
        {
            "job_class": spec.job_class,
            "params": dict(spec.params),
            "inputs": {name: ref.to_json() for name, ref in spec.inputs.items()},
            "limits": dict(spec.limits),
        }
    )


def _artifacts(manifest: Any) -> list[tuple[str, bytes, int]]:
    """(name, sha256, size) of each artifact a peer's manifest declares; any entry of
    another shape, a name that is not a plain file name, a digest that is not 32 bytes of
    hex or a size that is not a whole number is a PeerProtocolError (the peer's fault,
    never an exception of another type reaching the node)."""
    artifacts = manifest.get("artifacts", []) if isinstance(manifest, dict) else None
    if not isinstance(artifacts, list):
        raise PeerProtocolError("protocol_violation", "manifest artifacts are not a list")
    out = []
    for artifact in artifacts:
        if not isinstance(artifact, dict):
            raise PeerProtocolError("protocol_violation", "an artifact is not a map")
        name, sha, size = artifact.get("name"), artifact.get("sha256"), artifact.get("size")
        if (
            not isinstance(name, str)
            or not name
            or "/" in name
            or "\\" in name
            or name.startswith(".")
        ):
            raise PeerProtocolError("protocol_violation", f"artifact name {name!r}")
        try:
            digest = bytes.fromhex(sha) if isinstance(sha, str) else b""
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise PeerProtocolError("protocol_violation", f"artifact {name!r}: bad sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PeerProtocolError("protocol_violation", f"artifact {name!r}: bad size")
        out.append((name, digest, size))
    return out


async def materialize(
    blobs: BlobService,
    peer: str,
    manifest: dict[str, Any],
    folder: Path,
    check: Callable[[Path], T] | None = None,
    *,
    sync: bool = True,
) -> tuple[Path, T | None]:
    """Fetch every artifact of `manifest` from `peer` into a fresh `folder` with the
    manifest beside them; a name that is not a plain file name is a peer error.

    `check`, if given, runs on the laid-out folder in the same worker thread (one thread
    hop per result instead of two: each hop cost the busy client an event-loop turn and
    a few context switches) and its result comes back with the folder. An exception it
    raises propagates as it would from its own call. `sync`: result.json synced to disk
    (a node passes its storage policy: the folder can be rebuilt from the evidence)."""
    fetched: list[tuple[Path, str]] = []
    for name, digest, size in _artifacts(manifest):
        fetched.append((await blobs.fetch(peer, digest, size), name))

    def lay_out() -> None:
        # One thread hop for the folder, the copies and the manifest (which is fsynced:
        # on the loop that held a client ~2 ms; one hop each cost as many loop turns).
        _fresh(folder)
        for path, name in fetched:
            shutil.copyfile(path, folder / name)
        write_manifest(folder, manifest, sync=sync)

    def lay_out_and_check() -> T | None:
        lay_out()
        return None if check is None else check(folder)

    return folder, await trio.to_thread.run_sync(lay_out_and_check)
