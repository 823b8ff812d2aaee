"""The generated sections of spec/ match the code. The test never rewrites them:
`python -m tools.gen_spec` does (then commit)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.docs import job_classes_markdown, state_table_markdown
from protocol.jobs import JOB_CLASSES
from protocol.state import TRANSITIONS

SPEC = Path(__file__).resolve().parents[2] / "spec"


def _sync(path: Path, marker: str, render: Callable[[], str]) -> str:
    text = path.read_text()
    pattern = re.compile(
        rf"(<!-- generated:{marker}:start -->\n).*?(<!-- generated:{marker}:end -->)", re.S
    )
    assert pattern.search(text), f"{path.name} lacks the {marker} markers"
    new = pattern.sub(lambda m: m.group(1) + render() + "\n" + m.group(2), text)
    assert new == text, f"{path.name}: the {marker} section is stale: run python -m tools.gen_spec"
    return text


@pytest.mark.parametrize(
    ("name", "marker", "render"),
    [
        ("job-classes.md", "job-classes", job_classes_markdown),
        ("job-lifecycle.md", "state-table", state_table_markdown),
    ],
)
def test_generated_sections_current(name: str, marker: str, render: Callable[[], str]) -> None:
    text = _sync(SPEC / name, marker, render)
    assert render() in text


def test_every_class_and_transition_documented() -> None:
    classes = (SPEC / "job-classes.md").read_text()
    for name in JOB_CLASSES:
        assert f"### `{name}`" in classes
    lifecycle = (SPEC / "job-lifecycle.md").read_text()
    for (state, event), nxt in TRANSITIONS.items():
        assert f"{state} --> {nxt}: {event}" in lifecycle
