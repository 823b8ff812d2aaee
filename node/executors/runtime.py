"""The runtime fingerprint: exact versions of everything that decides a job's output bytes.

Two results may be compared bit for bit only when their fingerprints are equal.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "banner_in",
    "base_runtime",
    "encoder_version",
    "llm_runtime",
    "media_runtime",
]

# FFmpeg wrapper names of the external codec libraries, and the shared object each uses.
CODEC_LIBRARIES = {
    "libx264": "libx264",
    "libx265": "libx265",
    "libvpx-vp9": "libvpx",
    "libsvtav1": "libSvtAv1Enc",
    "libopus": "libopus",
}


X264_BANNER = rb"x264 - core [0-9]+(?: r[0-9]+ [0-9a-f]+)?"
X265_BANNER = rb"x265 \(build [0-9]+\) - [0-9A-Za-z.+_-]+"


def base_runtime(threads: int) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
        "threads": {"requested": threads, "cpus_allowed": len(os.sched_getaffinity(0))},
    }


@functools.cache
def _bundled_libraries() -> dict[str, str]:
    """Versions of the shared objects shipped in the PyAV wheel (from their file names)."""
    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    found: dict[str, str] = {}
    if libs.is_dir():
        for entry in sorted(libs.iterdir()):
            match = re.match(r"^(lib[A-Za-z0-9_]+?)-[0-9a-f]{8}\.so\.([0-9.]+)$", entry.name)
            if match:
                found[match.group(1)] = match.group(2)
    return found


@functools.cache
def _encoder_banner(codec: str) -> str | None:
    """x264 and x265 write their exact build into the stream (an SEI message); encode a
    few tiny frames and read it back."""
    import av

    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
    ctx.time_base = Fraction(1, 25)
    ctx.thread_count = 1
    if codec == "libx265":
        ctx.options = {"x265-params": "log-level=none:pools=1:frame-threads=1"}
    data = b""
    for i in range(2):
        frame = av.VideoFrame(64, 64, "yuv420p")
        frame.pts = i
        data += b"".join(bytes(p) for p in ctx.encode(frame))
    data += b"".join(bytes(p) for p in ctx.encode(None))
    return banner_in(data, codec)


def banner_in(data: bytes, encoder: str) -> str | None:
    """The x264/x265 version banner inside encoded bytes, if any."""
    pattern = {"libx264": X264_BANNER, "libx265": X265_BANNER}.get(encoder)
    match = re.search(pattern, data) if pattern else None
    return match.group(0).decode("ascii") if match else None


def encoder_version(encoder: str, banner: str | None = None) -> str:
    """An encoder's version: its banner if known, and the SONAME of the library shipped
    in the PyAV wheel; FFmpeg's own encoders are versioned with libavcodec."""
    import av

    library = CODEC_LIBRARIES.get(encoder)
    if library is None:
        version = ".".join(str(p) for p in av.library_versions["libavcodec"])
        return f"libavcodec {version}"
    soname = _bundled_libraries().get(library)
    parts = (banner, f"{library}.so.{soname}" if soname else None)
    return " / ".join(part for part in parts if part) or "unknown"


def media_runtime(
    threads: int, encoders: tuple[str, ...] = (), *, probe_banners: bool = True
) -> dict[str, Any]:
    """Python, PyAV, the FFmpeg libraries and, for each encoder used, its exact version.
    Without `probe_banners` the caller reads the banner from its own output instead."""
    import av

    runtime = base_runtime(threads)
    runtime["pyav"] = av.__version__
    runtime["ffmpeg"] = str(getattr(av, "ffmpeg_version_info", ""))
    runtime["ffmpeg_libraries"] = {
        name: ".".join(str(p) for p in version)
        for name, version in sorted(av.library_versions.items())
    }
    codecs: dict[str, str] = {}
    for encoder in encoders:
        probe = probe_banners and encoder in ("libx264", "libx265")
        codecs[encoder] = encoder_version(encoder, _encoder_banner(encoder) if probe else None)
    runtime["codecs"] = codecs
    return runtime


def llm_runtime(threads: int) -> dict[str, Any]:
    """Python, llama-cpp-python, the llama.cpp library version and its CPU feature build."""
    import llama_cpp

    runtime = base_runtime(threads)
    runtime["llama_cpp_python"] = llama_cpp.__version__
    runtime["llama_cpp"] = llama_cpp.llama_version().decode("utf-8", "replace")
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    runtime["llama_system_info"] = " ".join(info.split())
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    runtime["llama_libraries"] = (
        sorted(p.name for p in lib_dir.glob("lib*.so.*.*") if p.name.count(".") >= 4)
        if lib_dir.is_dir()
        else []
    )
    return runtime
