"""An event's detail is stored as JSON data: plain data as given, anything else as its
JSON round trip (what every event did before the plain case skipped it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.lifecycle.service import _jsonable


@pytest.mark.parametrize(
    "detail",
    [
        {},
        {"reason": "no workers"},
        {"workers": ["did:key:z6Mk1", "did:key:z6Mk2"], "escrow_tx": "0xab", "price": 10**12},
        {"passed": True, "ratio": 0.5, "none": None, "nested": {"a": [1, [2, {"b": 3}]]}},
    ],
)
def test_plain_detail_is_kept_as_given(detail: dict[str, Any]) -> None:
    assert _jsonable(detail) is detail
    assert _jsonable(detail) == json.loads(json.dumps(detail))


@pytest.mark.parametrize(
    "detail",
    [
        {"split": (1, 2)},  # a tuple becomes a list
        {"raw": b"\x00\x01"},  # bytes become their text
        {"nested": [{"when": object()}]},
        {1: "a non-text key"},
        {"set": {1}},
    ],
)
def test_other_detail_takes_the_json_round_trip(detail: dict[str, Any]) -> None:
    out = _jsonable(detail)
    assert out == json.loads(json.dumps(detail, default=str))
    assert json.loads(json.dumps(out)) == out  # plain JSON data now
