"""`c0 identity` through a real process: keys, permissions, refusal, one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from node.home import KEY_FILE


def c0(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_new_then_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = c0("identity", "new", "--home", str(home), "--json")
    assert created.returncode == 0, created.stderr
    shown = c0("identity", "show", "--home", str(home), "--json")
    assert shown.returncode == 0
    info = json.loads(shown.stdout)
    assert set(info) == {"did", "peer_id", "eth_address"}
    assert info["did"] == json.loads(created.stdout)["did"]
    key_file = home / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    seed = bytes.fromhex(key_file.read_text().split()[0])
    assert info["peer_id"] == ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()


def test_refuses_to_overwrite_and_keeps_keys(tmp_path: Path) -> None:
    assert c0("identity", "new", "--home", str(tmp_path)).returncode == 0
    before = (tmp_path / KEY_FILE).read_bytes()
    again = c0("identity", "new", "--home", str(tmp_path))
    assert again.returncode != 0
    assert again.stderr.count("\n") == 1
    assert "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / KEY_FILE).read_bytes() == before


def test_home_from_environment_and_missing_keys(tmp_path: Path) -> None:
    env = {**os.environ, "C0_HOME": str(tmp_path / "envhome")}
    missing = c0("identity", "show", env=env)
    assert missing.returncode == 2
    assert "no keys" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert c0("identity", "new", env=env).returncode == 0
    assert (tmp_path / "envhome" / KEY_FILE).exists()
