"""Node homes are owner-only, whatever made them and whatever the umask, and a key file
that others may read (or that is not ours) is refused at load with one clear line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.home import KEY_FILE, UnsafeKeyFile, create_identity, load_identity, prepare_home
from protocol.errors import C0Error, UserError


def c0(*args: str, umask: int = -1) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=umask,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_identity_new_makes_an_owner_only_home(tmp_path: Path) -> None:
    home = tmp_path / "nodes" / "home"
    created = c0("identity", "new", "--home", str(home))
    assert created.returncode == 0, created.stderr
    assert mode(home) == 0o700
    assert mode(home.parent) == 0o700  # a parent we created for it, too
    assert mode((home / KEY_FILE).parent) == 0o700
    assert mode(home / KEY_FILE) == 0o600


def test_a_home_created_under_umask_0_is_still_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = c0("identity", "new", "--home", str(home), umask=0)
    assert created.returncode == 0, created.stderr
    assert mode(home) == 0o700
    assert mode(home / KEY_FILE) == 0o600
    init = tmp_path / "init"
    assert c0("node", "init", "--home", str(init), umask=0).returncode == 0
    assert mode(init) == 0o700
    assert mode(init / KEY_FILE) == 0o600


def test_an_existing_open_home_is_tightened_with_a_log_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    created = c0("identity", "new", "--home", str(home))
    assert created.returncode == 0, created.stderr
    assert mode(home) == 0o700
    assert "had mode 0755; tightened to 0700" in created.stderr
    assert created.stderr.count("\n") == 1


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o620, 0o604, 0o660])
def test_a_key_file_others_may_read_or_write_is_refused(tmp_path: Path, loose: int) -> None:
    home = tmp_path / "home"
    create_identity(home)
    key = home / KEY_FILE
    key.chmod(loose)
    with pytest.raises(UnsafeKeyFile) as refused:
        load_identity(home)
    assert isinstance(refused.value, C0Error)
    assert str(key) in refused.value.message
    assert f"mode {loose:04o}" in refused.value.message
    assert f"chmod 600 {key}" in refused.value.message
    key.chmod(0o600)
    assert load_identity(home).did  # and the fix it names works
    key.chmod(0o400)
    assert load_identity(home).did  # read-only for the owner is fine


def test_the_cli_reports_an_unsafe_key_file_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert c0("identity", "new", "--home", str(home)).returncode == 0
    key = home / KEY_FILE
    key.chmod(0o644)
    for command in (("identity", "show"), ("node", "run")):
        shown = c0(*command, "--home", str(home))
        assert shown.returncode != 0
        assert shown.stdout == ""
        assert shown.stderr.count("\n") == 1, shown.stderr
        assert "Traceback" not in shown.stderr
        assert shown.stderr.startswith(f"c0: error: {key} has mode 0644")
        assert f"run 'chmod 600 {key}'" in shown.stderr


def test_a_key_file_owned_by_someone_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    create_identity(home)
    uid = os.geteuid()
    monkeypatch.setattr("node.home.os.geteuid", lambda: uid + 1)
    with pytest.raises(UnsafeKeyFile, match=f"owned by uid {uid}, not by uid {uid + 1}"):
        load_identity(home)


def test_a_key_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / KEY_FILE).mkdir(parents=True)
    with pytest.raises(UserError):
        load_identity(home)


def test_a_node_makes_its_home_and_folders_owner_only_under_umask_0(tmp_path: Path) -> None:
    from node.app import Node
    from node.config import NodeConfig
    from node.net.memory import MemoryHub
    from node.store import DB_FILE

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    identity = create_identity(tmp_path / "keys")
    old = os.umask(0)
    try:
        node = Node(identity, NodeConfig(), home, transport=MemoryHub().transport("p"))
        try:
            node.store.set_meta("probe", "x")  # a write: the WAL and shared-memory files
            # (looked at while open: SQLite removes them when the last connection closes)
            db_files = {p.name: mode(p) for p in home.iterdir() if p.name.startswith(DB_FILE)}
        finally:
            node.store.close()
        prepare_home(tmp_path / "fresh")
    finally:
        os.umask(old)
    assert mode(home) == 0o700
    for name in ("blobs", "blobs/partial", "work", "results", "arbitration"):
        assert mode(home / name) == 0o700, name
    assert set(db_files) >= {DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"}
    assert set(db_files.values()) == {0o600}, db_files
    assert mode(tmp_path / "fresh") == 0o700
    assert mode(tmp_path / "fresh" / "work") == 0o700


def test_testnet_homes_are_owner_only(tmp_path: Path) -> None:
    from node.store import DB_FILE
    from testnet.local import down, up

    directory = tmp_path / "net"
    old = os.umask(0)
    try:
        state = up(1, directory, chain="none", client=False, limit_s=60.0)
    finally:
        os.umask(old)
    try:
        (entry,) = state["nodes"]
        home = Path(entry["home"])
        assert mode(home) == 0o700
        assert mode(home / KEY_FILE) == 0o600
        assert mode(home / DB_FILE) == 0o600  # made by the node process itself
        assert mode(home / "blobs") == 0o700
    finally:
        down(directory)
