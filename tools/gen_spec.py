"""Rewrite the generated sections of spec/ from the code: `python -m tools.gen_spec`.

tests/protocol/test_spec_docs.py fails while a section is stale; it never writes.
"""

from __future__ import annotations

import re
from pathlib import Path

from protocol.docs import job_classes_markdown, state_table_markdown

SPEC = Path(__file__).resolve().parents[1] / "spec"
SECTIONS = (
    ("job-classes.md", "job-classes", job_classes_markdown),
    ("job-lifecycle.md", "state-table", state_table_markdown),
)


def main() -> None:
    for name, marker, render in SECTIONS:
        path = SPEC / name
        text = path.read_text()
        pattern = re.compile(
            rf"(<!-- generated:{marker}:start -->\n).*?(<!-- generated:{marker}:end -->)", re.S
        )
        new = pattern.sub(lambda m, r=render: m.group(1) + r() + "\n" + m.group(2), text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path}")


if __name__ == "__main__":
    main()
