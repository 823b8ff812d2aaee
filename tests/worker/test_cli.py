"""`c0 worker run` and `c0 verify` on every example spec, with generated inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from node.cli import main
from node.home import create_identity
from protocol.envelope import open_envelope
from protocol.jobs import JobTemplate
from protocol.messages import ResultReveal
from testnet.testdata import make_clip
from tests.worker.helpers import listing

EXAMPLES = Path(__file__).resolve().parents[2] / "spec" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))


@pytest.fixture(scope="module")
def example_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Big enough for the examples' 360p rendition and 1 s thumbnail, still quick.
    return make_clip(tmp_path_factory.mktemp("ex") / "ex.mp4", 2.0, 320, 180, 25)


def inputs_for(spec: Path, clip: Path, model: Path) -> list[str]:
    template = JobTemplate.from_json(json.loads(spec.read_text()))
    files = {"source": clip, "model": model}
    args: list[str] = []
    for name in template.unbound():
        args += ["--input", f"{name}={files[name]}"]
    return args


def test_every_job_class_has_an_example() -> None:
    assert {p.stem for p in EXAMPLE_FILES} == {
        "noop", "media.probe", "media.thumbnail", "media.segment", "media.transcode",
        "llm.generate",
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("spec", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_runs_and_verifies(
    spec: Path, example_clip: Path, tiny_model: Path, tmp_path: Path, capsys: Any
) -> None:
    JobTemplate.from_json(json.loads(spec.read_text()))
    out = tmp_path / "result"
    inputs = inputs_for(spec, example_clip, tiny_model)
    argv = ["worker", "run", "--job", str(spec), *inputs, "--output", str(out), "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == json.loads((out / "result.json").read_text())
    assert manifest["error"] is None
    code = main(["verify", "--job", str(spec), "--result", str(out), *inputs, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["passed"] is True
    assert all(c["status"] != "fail" for c in report["checks"])


def test_failed_job_writes_its_code(tmp_path: Path, capsys: Any) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    out = tmp_path / "out"
    spec = str(EXAMPLES / "media.transcode.json")
    before = listing(tmp_path)
    code = main(["worker", "run", "--job", spec, "--input", f"source={junk}", "--output", str(out)])
    assert code == 10
    manifest = json.loads((out / "result.json").read_text())
    assert manifest["error"]["code"] == "invalid_input"
    assert manifest["exit_code"] == 10
    assert listing(tmp_path) - before == {"out", "out/result.json"}
    assert "invalid_input" in capsys.readouterr().out
    # verify says no, with exit 1.
    assert main(["verify", "--job", spec, "--result", str(out)]) == 1


def test_usage_errors_exit_2_without_writing(tmp_path: Path, clip: Path, capsys: Any) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"job_class": "media.transcode", "params": {"height": 4320}}))
    out = tmp_path / "out"
    cases = [
        ["--job", str(big), "--input", f"source={clip}"],
        ["--job", str(EXAMPLES / "noop.json"), "--input", f"source={clip}"],
        ["--job", str(EXAMPLES / "media.probe.json")],
        ["--job", str(EXAMPLES / "media.probe.json"), "--input", "source"],
    ]
    for args in cases:
        assert main(["worker", "run", *args, "--output", str(out)]) == 2, args
        assert not out.exists()
    assert "above 2160" in capsys.readouterr().err


def test_result_is_signed_with_the_home_identity(tmp_path: Path, clip: Path, capsys: Any) -> None:
    home = tmp_path / "home"
    identity = create_identity(home)
    out = tmp_path / "out"
    spec = str(EXAMPLES / "media.probe.json")
    argv = ["worker", "run", "--job", spec, "--input", f"source={clip}", "--output", str(out)]
    assert main([*argv, "--home", str(home)]) == 0
    signed = open_envelope((out / "result.reveal.cose").read_bytes(), now=int(time.time() * 1000))
    assert signed.sender == identity.did
    assert isinstance(signed.message, ResultReveal)
    manifest = json.loads((out / "result.json").read_text())
    assert signed.message.manifest == manifest
    assert manifest["spec"]["client"] == identity.did
