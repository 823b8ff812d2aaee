"""Job classes, their parameter schemas and limits, job specs and job IDs."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import base58

from protocol import codec
from protocol.errors import InvalidJobSpec

__all__ = [
    "JOB_CLASSES",
    "InputRef",
    "JobClass",
    "JobSpec",
    "JobTemplate",
    "Param",
    "ResourceLimits",
    "derive_nonce",
    "get_job_class",
    "job_id_from_text",
    "job_id_text",
    "validate_params",
]

_SHA256_MULTIHASH_PREFIX = b"\x12\x20"


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a job class: its type, bounds, choices and default."""

    kind: type  # int, float, str, bool or list (a list of str)
    default: Any = None  # None with required=False means "absent unless given"
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    max_len: int | None = None  # for str (bytes of UTF-8) and list (items)
    doc: str = ""

    def check(self, name: str, value: Any) -> Any:
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, bool):
            raise InvalidJobSpec(f"parameter {name!r} must be an integer, not a boolean")
        if kind is list:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise InvalidJobSpec(f"parameter {name!r} must be a list of strings")
            value = list(value)
        elif not isinstance(value, kind):
            raise InvalidJobSpec(
                f"parameter {name!r} must be {kind.__name__}, got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidJobSpec(f"parameter {name!r} must be finite")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise InvalidJobSpec(f"parameter {name!r}={value!r} is not one of: {allowed}")
        if self.minimum is not None and value < self.minimum:
            raise InvalidJobSpec(f"parameter {name!r}={value!r} is below {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidJobSpec(f"parameter {name!r}={value!r} is above {self.maximum}")
        if self.max_len is not None:
            size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
            if size > self.max_len:
                raise InvalidJobSpec(f"parameter {name!r} is longer than {self.max_len}")
        return value


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """What a worker grants one job of a class: wall-clock seconds and memory."""

    timeout_s: int
    memory_mb: int
    max_timeout_s: int
    max_memory_mb: int


@dataclass(frozen=True, slots=True)
class JobClass:
    """A named kind of work: its inputs, parameters and resource limits."""

    name: str
    inputs: tuple[str, ...]
    params: Mapping[str, Param]
    limits: ResourceLimits
    doc: str
    # Cross-parameter rules: (predicate over normalized params, error message).
    rules: tuple[tuple[Any, str], ...] = ()


def _p(kind: type, default: Any = None, **kw: Any) -> Param:
    return Param(kind, default, **kw)


_VIDEO_CODECS = ("h264", "h265", "vp9", "av1")
_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)

_CLASSES: list[JobClass] = [
    JobClass(
        name="noop",
        inputs=(),
        params={
            "payload": _p(str, "", max_len=4096, doc="echoed back in the result"),
            "duration_ms": _p(int, 0, minimum=0, maximum=600_000, doc="busy time to simulate"),
        },
        limits=ResourceLimits(timeout_s=30, memory_mb=256, max_timeout_s=900, max_memory_mb=1024),
        doc="Does nothing but report; for tests, benchmarks and liveness checks.",
    ),
    JobClass(
        name="media.probe",
        inputs=("source",),
        params={
            "count_frames": _p(bool, False, doc="decode the video to count frames exactly"),
        },
        limits=ResourceLimits(timeout_s=60, memory_mb=512, max_timeout_s=600, max_memory_mb=2048),
        doc="Reads container and stream metadata of a media source.",
    ),
    JobClass(
        name="media.thumbnail",
        inputs=("source",),
        params={
            "at_s": _p(float, 0.0, minimum=0.0, maximum=86_400.0),
            "height": _p(int, 360, minimum=16, maximum=2160),
            "format": _p(str, "png", choices=("png", "jpeg")),
        },
        limits=ResourceLimits(timeout_s=60, memory_mb=512, max_timeout_s=600, max_memory_mb=2048),
        doc="One still image from a media source at a given time.",
    ),
    JobClass(
        name="media.segment",
        inputs=("source",),
        params={
            "segment_seconds": _p(float, 4.0, minimum=0.5, maximum=60.0),
        },
        limits=ResourceLimits(
            timeout_s=300, memory_mb=1024, max_timeout_s=3600, max_memory_mb=4096
        ),
        doc="Splits a source, without re-encoding, into keyframe-aligned time segments.",
    ),
    JobClass(
        name="media.transcode",
        inputs=("source",),
        params={
            "height": _p(int, required=True, minimum=16, maximum=2160),
            "video_codec": _p(str, "h264", choices=_VIDEO_CODECS),
            "crf": _p(int, minimum=0, maximum=63),
            "bitrate": _p(int, minimum=50_000, maximum=100_000_000),
            "preset": _p(str, "veryfast", choices=_PRESETS),
            "keyframe_interval_s": _p(float, 2.0, minimum=0.25, maximum=20.0),
            "audio_codec": _p(str, "aac", choices=("aac", "opus", "none")),
            "audio_bitrate": _p(int, 128_000, minimum=8_000, maximum=512_000),
            "segment_seconds": _p(float, 4.0, minimum=0.5, maximum=60.0),
            "threads": _p(int, 1, minimum=1, maximum=64),
        },
        limits=ResourceLimits(
            timeout_s=600, memory_mb=2048, max_timeout_s=7200, max_memory_mb=8192
        ),
        doc="One source or segment into one HLS rendition (playlist plus segments).",
        rules=(
            (
                lambda p: not ("crf" in p and "bitrate" in p),
                "give at most one of 'crf' and 'bitrate'",
            ),
            (
                lambda p: "crf" not in p or p["video_codec"] in ("vp9", "av1") or p["crf"] <= 51,
                "'crf' above 51 is only valid for vp9 and av1",
            ),
            (
                lambda p: p["keyframe_interval_s"] <= p["segment_seconds"],
                "'keyframe_interval_s' must not exceed 'segment_seconds'",
            ),
        ),
    ),
    JobClass(
        name="llm.generate",
        inputs=("model",),
        params={
            "prompt": _p(str, required=True, max_len=65_536),
            "max_tokens": _p(int, 128, minimum=1, maximum=8192),
            "temperature": _p(float, 0.0, minimum=0.0, maximum=2.0),
            "seed": _p(int, 0, minimum=0, maximum=2**32 - 1),
            "top_k": _p(int, 40, minimum=0, maximum=1000),
            "top_p": _p(float, 1.0, minimum=0.0, maximum=1.0),
            "stop": _p(list, [], max_len=8),
            "n_ctx": _p(int, 2048, minimum=64, maximum=131_072),
            "threads": _p(int, 1, minimum=1, maximum=64),
        },
        limits=ResourceLimits(
            timeout_s=300, memory_mb=4096, max_timeout_s=3600, max_memory_mb=65_536
        ),
        doc="Text generation with a GGUF model named by content hash.",
        rules=(
            (lambda p: all(0 < len(s) <= 64 for s in p["stop"]), "each stop string: 1-64 chars"),
            (lambda p: p["top_p"] > 0.0, "'top_p' must be above 0"),
        ),
    ),
]

JOB_CLASSES: Mapping[str, JobClass] = MappingProxyType({c.name: c for c in _CLASSES})


def get_job_class(name: Any) -> JobClass:
    """The registered job class called `name`, or InvalidJobSpec naming the known ones."""
    if not isinstance(name, str) or name not in JOB_CLASSES:
        known = ", ".join(JOB_CLASSES)
        raise InvalidJobSpec(f"unknown job class {name!r} (known: {known})")
    return JOB_CLASSES[name]


def validate_params(job_class: str, params: Any) -> dict[str, Any]:
    """Check `params` against the class schema; return them with defaults filled in."""
    cls = get_job_class(job_class)
    if not isinstance(params, Mapping):
        raise InvalidJobSpec("'params' must be an object")
    unknown = sorted(set(params) - set(cls.params))
    if unknown:
        raise InvalidJobSpec(
            f"unknown parameter(s) for {job_class}: {', '.join(map(str, unknown))}"
        )
    normalized: dict[str, Any] = {}
    for name, spec in cls.params.items():
        if name in params and params[name] is not None:
            normalized[name] = spec.check(name, params[name])
        elif spec.required:
            raise InvalidJobSpec(f"missing required parameter {name!r} for {job_class}")
        elif spec.default is not None:
            normalized[name] = spec.check(name, spec.default)
    for predicate, message in cls.rules:
        if not predicate(normalized):
            raise InvalidJobSpec(f"{job_class}: {message}")
    return normalized


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class InputRef:
    """A job input named by content: SHA-256 digest and size in bytes."""

    sha256: bytes
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, bytes) or len(self.sha256) != 32:
            raise InvalidJobSpec("input sha256 must be 32 bytes")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidJobSpec("input size must be a non-negative integer")

    @classmethod
    def from_json(cls, obj: Any) -> InputRef:
        if not isinstance(obj, Mapping) or set(obj) != {"sha256", "size"}:
            raise InvalidJobSpec('an input must be {"sha256": hex, "size": bytes}')
        digest = obj["sha256"]
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise InvalidJobSpec("input sha256 must be 64 lowercase hex characters")
        return cls(bytes.fromhex(digest), obj["size"])

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256.hex(), "size": self.size}

    def to_cbor(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


_DID_KEY_PREFIX = "did:key:z"


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (so 1, 1.0 and True differ).

    Only plain dicts and lists are walked; anything else of another type is "not the
    same", which only costs the caller an encoding."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return bool(a.keys() == b.keys()) and all(_same(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(frozen=True)
class JobSpec:
    """The immutable definition of a job; its canonical CBOR hash is the job ID.

    `params` is normalized (defaults filled in) at construction, so two specs that mean
    the same work have the same ID. `limits` holds `timeout_s` and `memory_mb`.
    """

    job_class: str
    params: Mapping[str, Any]
    inputs: Mapping[str, InputRef]
    client: str
    nonce: bytes
    limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cls = get_job_class(self.job_class)
        object.__setattr__(self, "params", validate_params(self.job_class, self.params))
        if not isinstance(self.inputs, Mapping):
            raise InvalidJobSpec("'inputs' must be an object")
        missing = [n for n in cls.inputs if n not in self.inputs]
        extra = [n for n in self.inputs if n not in cls.inputs]
        if missing:
            raise InvalidJobSpec(f"{self.job_class} needs input(s): {', '.join(missing)}")
        if extra:
            raise InvalidJobSpec(f"{self.job_class} takes no input(s): {', '.join(extra)}")
        for name, ref in self.inputs.items():
            if not isinstance(ref, InputRef):
                raise InvalidJobSpec(f"input {name!r} is not bound to a content hash")
        if not isinstance(self.client, str) or not self.client.startswith(_DID_KEY_PREFIX):
            raise InvalidJobSpec("'client' must be a did:key")
        if not isinstance(self.nonce, bytes) or not 8 <= len(self.nonce) <= 32:
            raise InvalidJobSpec("'nonce' must be 8 to 32 bytes")
        object.__setattr__(self, "limits", _check_limits(cls, self.limits))
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))

    def to_cbor(self) -> dict[str, Any]:
        """The map that is hashed for the job ID and carried in Offers."""
        return {
            "job_class": self.job_class,
            "params": dict(self.params),
            "inputs": {name: ref.to_cbor() for name, ref in self.inputs.items()},
            "client": self.client,
            "nonce": self.nonce,
            "limits": dict(self.limits),
        }

    @classmethod
    def from_cbor(cls, obj: Any) -> JobSpec:
        if not isinstance(obj, Mapping):
            raise InvalidJobSpec("a job spec must be a map")
        expected = {"job_class", "params", "inputs", "client", "nonce", "limits"}
        if set(obj) != expected:
            raise InvalidJobSpec(f"a job spec has exactly the keys {sorted(expected)}")
        inputs = obj["inputs"]
        if not isinstance(inputs, Mapping):
            raise InvalidJobSpec("'inputs' must be a map")
        refs = {}
        for name, ref in inputs.items():
            if not isinstance(ref, Mapping) or set(ref) != {"sha256", "size"}:
                raise InvalidJobSpec(f"input {name!r} must be {{sha256, size}}")
            refs[name] = InputRef(ref["sha256"], ref["size"])
        spec = cls(
            obj["job_class"], obj["params"], refs, obj["client"], obj["nonce"], obj["limits"]
        )
        # Received bytes (codec.EncodedMap) are exactly encode(obj): the strict decoder
        # accepts nothing else. When construction changed nothing (no default filled in,
        # no int widened to float), they are this spec's canonical form as well, and the
        # job ID can hash them instead of encoding the spec again.
        if (
            isinstance(obj, codec.EncodedMap)
            and _same(spec.params, obj["params"])
            and _same(spec.limits, obj["limits"])
        ):
            object.__setattr__(spec, "_canonical", obj.encoded)
        return spec

    @property
    def canonical(self) -> bytes:
        """The deterministic CBOR of `to_cbor()`; computed once (the spec is immutable)."""
        cached: bytes | None = self.__dict__.get("_canonical")
        if cached is None:
            cached = codec.encode(self.to_cbor())
            object.__setattr__(self, "_canonical", cached)
        return cached

    @property
    def job_id(self) -> bytes:
        """SHA-256 multihash (0x12 0x20 + digest) of the canonical job spec."""
        cached: bytes | None = self.__dict__.get("_job_id")
        if cached is None:
            cached = _SHA256_MULTIHASH_PREFIX + hashlib.sha256(self.canonical).digest()
            object.__setattr__(self, "_job_id", cached)
        return cached

    @property
    def job_id_text(self) -> str:
        return job_id_text(self.job_id)


@dataclass(frozen=True)
class JobTemplate:
    """The JSON form a person writes (spec/examples/*.json): a job spec without the
    client, the nonce, and possibly without input hashes (null until bound to files)."""

    job_class: str
    params: Mapping[str, Any]
    inputs: Mapping[str, InputRef | None]
    limits: Mapping[str, int]

    @classmethod
    def from_json(cls, obj: Any) -> JobTemplate:
        if not isinstance(obj, Mapping):
            raise InvalidJobSpec("a job spec must be a JSON object")
        unknown = sorted(set(obj) - {"job_class", "params", "inputs", "limits", "description"})
        if unknown:
            raise InvalidJobSpec(f"unknown job spec field(s): {', '.join(map(str, unknown))}")
        if "job_class" not in obj:
            raise InvalidJobSpec("a job spec needs 'job_class'")
        job_class = get_job_class(obj["job_class"])
        params = validate_params(job_class.name, obj.get("params", {}))
        raw_inputs = obj.get("inputs", {})
        if not isinstance(raw_inputs, Mapping):
            raise InvalidJobSpec("'inputs' must be an object")
        inputs: dict[str, InputRef | None] = {}
        for name in raw_inputs:
            if name not in job_class.inputs:
                raise InvalidJobSpec(f"{job_class.name} takes no input {name!r}")
            value = raw_inputs[name]
            inputs[name] = None if value is None else InputRef.from_json(value)
        for name in job_class.inputs:
            inputs.setdefault(name, None)
        limits = _check_limits(job_class, obj.get("limits", {}))
        return cls(job_class.name, params, inputs, limits)

    def unbound(self) -> list[str]:
        """Names of inputs still waiting for a file."""
        return [name for name, ref in self.inputs.items() if ref is None]

    def bind(self, inputs: Mapping[str, InputRef], *, client: str, nonce: bytes) -> JobSpec:
        """A full JobSpec: `inputs` overrides or fills the template's inputs."""
        for name in inputs:
            if name not in self.inputs:
                raise InvalidJobSpec(f"{self.job_class} takes no input {name!r}")
        merged = {name: inputs.get(name, ref) for name, ref in self.inputs.items()}
        missing = [name for name, ref in merged.items() if ref is None]
        if missing:
            raise InvalidJobSpec(f"input(s) not bound to a file: {', '.join(missing)}")
        bound = {name: ref for name, ref in merged.items() if ref is not None}
        return JobSpec(self.job_class, self.params, bound, client, nonce, self.limits)


_NONCE_DOMAIN = b"c0/job-nonce/v1\x00"
DERIVED_NONCE_BYTES = 16


def derive_nonce(spec: JobSpec, *, redundancy: int, max_price: int) -> bytes:
    """The nonce that makes a resubmission of the same job the same job (the same ID):
    a domain-separated SHA-256 of what defines "the same job", whatever `spec.nonce`
    holds: the job class, the normalised params, the bound inputs' hashes and sizes, the
    limits, the client's DID (all of the spec's canonical CBOR but its nonce), the
    redundancy and the max price (what the client buys and at most pays). The deadline
    is left out: it is a time that moves on every run (spec/job-lifecycle.md)."""
    body = {k: v for k, v in spec.to_cbor().items() if k != "nonce"}
    what = codec.encode({"spec": body, "redundancy": redundancy, "max_price": str(max_price)})
    return hashlib.sha256(_NONCE_DOMAIN + what).digest()[:DERIVED_NONCE_BYTES]


def _check_limits(cls: JobClass, limits: Any) -> dict[str, int]:
    if not isinstance(limits, Mapping):
        raise InvalidJobSpec("'limits' must be an object")
    unknown = sorted(set(limits) - {"timeout_s", "memory_mb"})
    if unknown:
        raise InvalidJobSpec(f"unknown limit(s): {', '.join(map(str, unknown))}")
    bounds = {
        "timeout_s": (cls.limits.timeout_s, cls.limits.max_timeout_s),
        "memory_mb": (cls.limits.memory_mb, cls.limits.max_memory_mb),
    }
    out = {}
    for name, (default, maximum) in bounds.items():
        value = limits.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise InvalidJobSpec(f"limit {name!r} must be an integer in 1..{maximum}")
        out[name] = value
    return out


@functools.lru_cache(maxsize=8192)
def job_id_text(job_id: bytes) -> str:
    """The printable job ID: base58btc of the multihash (starts with 'Qm'). Cached: a
    node names the same few thousand jobs over and over (events, listings, folders), and
    base58 is quadratic Python big-integer work."""
    return str(base58.b58encode(job_id).decode("ascii"))


def job_id_from_text(text: str) -> bytes:
    """Parse a printable job ID; raise InvalidJobSpec if it is not a SHA-256 multihash."""
    try:
        raw = base58.b58decode(text)
    except ValueError:
        raise InvalidJobSpec(f"not a job ID: {text!r}") from None
    if len(raw) != 34 or not raw.startswith(_SHA256_MULTIHASH_PREFIX):
        raise InvalidJobSpec(f"not a job ID: {text!r}")
    return raw
