"""`c0 chain deploy` and `c0 chain selftest` against a real anvil."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def c0(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_prints_the_escrow_address(anvil_url: str) -> None:
    out = c0("chain", "deploy", "--rpc", anvil_url, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["chain_id"] == 31337
    assert doc["escrow"].startswith("0x")
    assert len(doc["escrow"]) == 42
    assert doc["tx"].startswith("0x")
    assert len(doc["tx"]) == 66


def test_selftest_walks_a_job_through_the_escrow(anvil_url: str) -> None:
    out = c0("chain", "selftest", "--rpc", anvil_url, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    names = [s["step"] for s in doc["steps"]]
    assert names == ["deploy", "deposit", "stake", "open", "release", "withdraw"]
    assert all(s["gas"] > 21_000 for s in doc["steps"])


def test_wrong_chain_id_is_one_clear_error(anvil_url: str) -> None:
    out = c0("chain", "deploy", "--rpc", anvil_url, "--chain-id", "1")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f"c0: error: {anvil_url} serves chain id 31337, expected 1"
    ]
