"""The runtime fingerprints a worker advertises, computed in a short-lived child process
(`python -m node.lifecycle.fingerprint CLASS...`): loading PyAV and llama.cpp into the
long-running node would cost it about 60 MB of resident memory for nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

__all__ = ["ad_runtimes", "compute"]

_VIDEO = {"h264": "libx264", "h265": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
_AUDIO = {"aac": "aac", "opus": "libopus"}


def compute(job_classes: list[str]) -> dict[str, dict[str, Any]]:
    from node.executors.runtime import base_runtime, llm_runtime, media_runtime

    out: dict[str, dict[str, Any]] = {}
    media = [c for c in job_classes if c.startswith("media.")]
    if media:
        import av

        available = set(av.codecs_available)
        video = [name for name, enc in _VIDEO.items() if enc in available]
        audio = [name for name, enc in _AUDIO.items() if enc in available]
        encoders = tuple(_VIDEO[v] for v in video)
        runtime = media_runtime(1, encoders, probe_banners=False)
        runtime.update(video_codecs=video, audio_codecs=audio)
        out.update({c: runtime for c in media})
    if "llm.generate" in job_classes:
        out["llm.generate"] = llm_runtime(1)
    if "noop" in job_classes:
        out["noop"] = base_runtime(1)
    return out


def ad_runtimes(job_classes: list[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """`compute` in a child process; raises subprocess errors if it cannot run."""
    done = subprocess.run(
        [sys.executable, "-m", "node.lifecycle.fingerprint", *job_classes],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    print(json.dumps(compute(sys.argv[1:]), sort_keys=True))
