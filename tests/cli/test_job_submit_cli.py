"""`c0 job submit`: `--new` reaches the node, and the same job again is said so (the
node's side of it: tests/lifecycle/test_restart.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from node.cli import build_parser, job_cmd


class _Node:
    """The node's control socket as `c0 job submit` sees it: the job exists once."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def call(self, name: str, **kwargs: Any) -> Any:
        assert name == "job_submit"
        self.calls.append(kwargs)
        existing = len(self.calls) > 1 and not kwargs["new"]
        return {
            "job_id": "JOB-NEW" if kwargs["new"] else "JOB",
            "state": "settled" if existing else "requested",
            "existing": existing,
            "deadline_ms": int(time.time() * 1000) + 120_000,
        }


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_submit_again_and_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = _Node()
    monkeypatch.setattr(job_cmd, "_client", lambda _args: node)
    spec = tmp_path / "noop.json"
    spec.write_text(json.dumps({"job_class": "noop", "params": {}}))
    argv = ["job", "submit", str(spec), "--home", str(tmp_path)]

    assert _run(argv) == 0
    first = capsys.readouterr()
    assert first.out.strip() == "JOB"
    assert first.err == ""
    assert _run(argv) == 0
    again = capsys.readouterr()
    assert again.out.strip() == "JOB"  # the same job, said so on stderr
    assert "was submitted before and is settled" in again.err
    assert "--new" in again.err
    assert _run([*argv, "--new", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["job_id"] == "JOB-NEW"
    assert [c["new"] for c in node.calls] == [False, False, True]


def test_wait_follows_the_first_submissions_deadline() -> None:
    in_a_minute = int(time.time() * 1000) + 60_000
    assert 110 < job_cmd._wait_s({"deadline_ms": in_a_minute}, 999) <= 120
    assert job_cmd._wait_s({}, 30) == 90
