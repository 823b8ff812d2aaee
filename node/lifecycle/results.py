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
    for artifact in manifest.get("artifacts", []):
        name = str(artifact["name"])
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise PeerProtocolError("protocol_violation", f"artifact name {name!r}")
        digest = bytes.fromhex(str(artifact["sha256"]))
        fetched.append((await blobs.fetch(peer, digest, int(artifact["size"])), name))

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
