"""Job classes, parameter validation, job specs and job IDs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.errors import InvalidJobSpec
from protocol.jobs import (
    JOB_CLASSES,
    InputRef,
    JobSpec,
    JobTemplate,
    job_id_from_text,
    validate_params,
)
from tests.protocol.vectors import identities

CLIENT = identities()[0].did
SRC = InputRef(b"\xab" * 32, 1000)
EXAMPLES = Path(__file__).resolve().parents[2] / "spec" / "examples"


def test_all_six_classes_registered() -> None:
    assert set(JOB_CLASSES) == {
        "noop",
        "media.probe",
        "media.thumbnail",
        "media.segment",
        "media.transcode",
        "llm.generate",
    }


@pytest.mark.parametrize(
    ("job_class", "params", "fragment"),
    [
        ("mine.bitcoin", {}, "unknown job class"),
        ("media.transcode", {}, "missing required parameter 'height'"),
        ("media.transcode", {"height": 100_000}, "above 2160"),
        ("media.transcode", {"height": 360, "video_codec": "mpeg2"}, "not one of"),
        ("media.transcode", {"height": 360, "crf": 20, "bitrate": 10**6}, "at most one"),
        ("media.transcode", {"height": 360, "crf": 60}, "only valid for vp9"),
        ("media.transcode", {"height": "360"}, "must be int"),
        ("media.transcode", {"height": True}, "not a boolean"),
        ("media.transcode", {"height": 360, "shell": "rm -rf /"}, "unknown parameter"),
        ("llm.generate", {"prompt": "hi", "temperature": float("nan")}, "finite"),
        ("llm.generate", {"prompt": "hi", "stop": ["a"] * 9}, "longer than 8"),
        ("llm.generate", {"prompt": "hi", "stop": [""]}, "stop string"),
        ("llm.generate", {"prompt": "hi", "top_p": 0.0}, "top_p"),
        ("llm.generate", {"max_tokens": 4}, "missing required parameter 'prompt'"),
        ("noop", [], "must be an object"),
    ],
)
def test_bad_params_have_clear_reasons(job_class: str, params: Any, fragment: str) -> None:
    with pytest.raises(InvalidJobSpec, match=fragment):
        validate_params(job_class, params)


def test_defaults_fill_in_and_ids_ignore_spelled_out_defaults() -> None:
    short = JobSpec("media.transcode", {"height": 360}, {"source": SRC}, CLIENT, b"n" * 16)
    full = JobSpec(
        "media.transcode",
        {"height": 360, "video_codec": "h264", "preset": "veryfast", "threads": 1},
        {"source": SRC},
        CLIENT,
        b"n" * 16,
    )
    assert short.params["video_codec"] == "h264"
    assert short.job_id == full.job_id
    assert short.job_id[:2] == b"\x12\x20"
    assert len(short.job_id) == 34
    assert job_id_from_text(short.job_id_text) == short.job_id
    other_nonce = JobSpec("media.transcode", {"height": 360}, {"source": SRC}, CLIENT, b"m" * 16)
    assert other_nonce.job_id != short.job_id


def test_job_spec_cbor_round_trip_and_input_rules() -> None:
    spec = JobSpec("llm.generate", {"prompt": "hi"}, {"model": SRC}, CLIENT, b"n" * 16)
    assert JobSpec.from_cbor(spec.to_cbor()) == spec
    with pytest.raises(InvalidJobSpec, match="needs input"):
        JobSpec("llm.generate", {"prompt": "hi"}, {}, CLIENT, b"n" * 16)
    with pytest.raises(InvalidJobSpec, match="takes no input"):
        JobSpec("noop", {}, {"model": SRC}, CLIENT, b"n" * 16)
    with pytest.raises(InvalidJobSpec, match="did:key"):
        JobSpec("noop", {}, {}, "alice", b"n" * 16)
    with pytest.raises(InvalidJobSpec, match="limit"):
        JobSpec("noop", {}, {}, CLIENT, b"n" * 16, {"timeout_s": 10**9})


@pytest.mark.parametrize(
    ("params", "limits", "hashes_received_bytes"),
    [
        ({"prompt": "hi"}, {}, False),  # defaults filled in on construction
        ("normalized", "normalized", True),  # exactly what a node sends
        ("widen", "normalized", False),  # temperature 0 (int) becomes 0.0
    ],
)
def test_job_id_of_a_received_spec(params: Any, limits: Any, hashes_received_bytes: bool) -> None:
    # A spec decoded with its bytes (codec.EncodedMap) hashes them only when building it
    # changed nothing; either way its ID is the hash of its own canonical encoding.
    base = JobSpec("llm.generate", {"prompt": "hi"}, {"model": SRC}, CLIENT, b"n" * 16)
    wire = base.to_cbor()
    wire["params"] = {"prompt": "hi"} if params != "normalized" else dict(base.params)
    if params == "widen":
        wire["params"] = {**base.params, "temperature": 0}
    wire["limits"] = {} if limits != "normalized" else dict(base.limits)
    data = codec.encode({"spec": wire})
    received = codec.decode(data, keep_encoded=frozenset({"spec"}))["spec"]
    assert isinstance(received, codec.EncodedMap)
    spec = JobSpec.from_cbor(received)
    assert spec == base
    assert spec.canonical == codec.encode(spec.to_cbor()) == base.canonical
    assert spec.job_id == base.job_id
    assert (spec.canonical is received.encoded) == hashes_received_bytes
    if not hashes_received_bytes:
        assert received.encoded != base.canonical


def test_template_binding() -> None:
    template = JobTemplate.from_json({"job_class": "media.probe", "inputs": {"source": None}})
    assert template.unbound() == ["source"]
    with pytest.raises(InvalidJobSpec, match="not bound"):
        template.bind({}, client=CLIENT, nonce=b"n" * 16)
    spec = template.bind({"source": SRC}, client=CLIENT, nonce=b"n" * 16)
    assert spec.inputs["source"] == SRC
    with pytest.raises(InvalidJobSpec, match="sha256"):
        JobTemplate.from_json(
            {"job_class": "media.probe", "inputs": {"source": {"sha256": "x", "size": 1}}}
        )


def test_examples_parse_when_present() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        template = JobTemplate.from_json(json.loads(path.read_text()))
        assert path.stem == template.job_class


@given(st.dictionaries(st.text(max_size=12), st.integers() | st.text() | st.floats() | st.none()))
def test_random_params_are_accepted_or_refused_cleanly(params: dict[str, Any]) -> None:
    for name in JOB_CLASSES:
        try:
            validate_params(name, params)
        except InvalidJobSpec:
            pass
