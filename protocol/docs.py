"""Markdown tables drawn from the code (job classes, state table) for spec/."""

from __future__ import annotations

from protocol.jobs import JOB_CLASSES, Param
from protocol.state import TERMINAL, TRANSITIONS, State, mermaid_diagram

__all__ = ["job_classes_markdown", "state_table_markdown"]


def _bounds(param: Param) -> str:
    parts = []
    if param.choices is not None:
        parts.append(" / ".join(f"`{c}`" for c in param.choices))
    if param.minimum is not None or param.maximum is not None:
        parts.append(f"{param.minimum:g} … {param.maximum:g}")
    if param.max_len is not None:
        unit = "items" if param.kind is list else "bytes"
        parts.append(f"≤ {param.max_len} {unit}")
    return "; ".join(parts) or "—"


def job_classes_markdown() -> str:
    out: list[str] = []
    for cls in JOB_CLASSES.values():
        inputs = ", ".join(f"`{name}`" for name in cls.inputs) or "none"
        lim = cls.limits
        out += [
            f"### `{cls.name}`",
            "",
            cls.doc,
            "",
            f"Inputs: {inputs}. Limits: `timeout_s` {lim.timeout_s} (max {lim.max_timeout_s}),"
            f" `memory_mb` {lim.memory_mb} (max {lim.max_memory_mb}).",
            "",
            "| parameter | type | default | allowed |",
            "|---|---|---|---|",
        ]
        for name, param in cls.params.items():
            default = "**required**" if param.required else f"`{param.default!r}`"
            if not param.required and param.default is None:
                default = "absent"
            out.append(f"| `{name}` | {param.kind.__name__} | {default} | {_bounds(param)} |")
        if cls.rules:
            out += ["", "Rules: " + "; ".join(message for _, message in cls.rules) + "."]
        out.append("")
    return "\n".join(out)


def state_table_markdown() -> str:
    events_by_state: dict[State, list[str]] = {}
    for (state, event), nxt in TRANSITIONS.items():
        events_by_state.setdefault(state, []).append(f"`{event}` → `{nxt}`")
    out = ["| state | terminal | events → next state |", "|---|---|---|"]
    for state in State:
        row = ", ".join(events_by_state.get(state, [])) or "—"
        out.append(f"| `{state}` | {'yes' if state in TERMINAL else 'no'} | {row} |")
    out += ["", "```mermaid", mermaid_diagram(), "```"]
    return "\n".join(out)
