"""Real OS processes: `c0 node run` shutdown and crash recovery, `c0 testnet` up/down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.control import ControlClient, NodeNotRunning, control_path
from node.store import EventLog, Store
from protocol.identity import Identity
from protocol.jobs import job_id_text
from tests.net.conftest import JOB_ID

pytestmark = pytest.mark.slow
C0 = [sys.executable, "-m", "node"]


def c0(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*C0, *args], capture_output=True, text=True, timeout=120, check=False)


def poll(cond: Callable[[], bool], limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def answers(home: Path) -> bool:
    try:
        ControlClient(control_path(home), timeout=5).call("status")
    except NodeNotRunning:
        return False
    return True


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    result = c0("node", "init", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["created_keys"] is True
    config = home / "config.toml"
    config.write_text(config.read_text().replace("/tcp/4001", "/tcp/0"))
    return home


@pytest.fixture
def start_node(home: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*C0, "node", "run", "--home", str(home)],
            stdout=subprocess.DEVNULL,
            stderr=(home / "node.log").open("ab"),
        )
        procs.append(proc)
        poll(lambda: proc.poll() is None and answers(home))
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_node_run_status_and_sigterm_exit_zero(
    home: Path, start_node: Callable[[], subprocess.Popen[bytes]]
) -> None:
    proc = start_node()
    result = c0("node", "status", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    ident = json.loads(c0("identity", "show", "--home", str(home), "--json").stdout)
    assert status["peer_id"] == ident["peer_id"]
    assert status["did"] == ident["did"]
    for key in ("listen_addrs", "connected_peers", "uptime_s", "known_workers"):
        assert key in status
    assert c0("peers", "--home", str(home), "--json").returncode == 0
    assert json.loads(c0("caps", "--home", str(home), "--json").stdout) == []
    assert oct(control_path(home).stat().st_mode & 0o777) == "0o600"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not control_path(home).exists()
    result = c0("node", "status", "--home", str(home))
    assert result.returncode != 0
    assert "no node is running" in result.stderr


def test_kill_9_loses_nothing_acknowledged(
    home: Path, start_node: Callable[[], subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    proc = start_node()
    client = ControlClient(control_path(home))
    src = tmp_path / "input.bin"
    src.write_bytes(os.urandom(300_000))
    blob = client.call("blob_put", path=str(src))
    hashes = [
        client.call("event_append", job_id=job_id_text(JOB_ID), state=state)["hash"]
        for state in ("requested", "funded", "assigned")
    ]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    start_node()  # restarts over a stale control socket and a hot WAL
    client = ControlClient(control_path(home))
    assert client.call("blob_has", sha256=blob["sha256"]) is True
    events = client.call("events", job_id=job_id_text(JOB_ID))
    assert [e["hash"] for e in events] == hashes
    identity = Identity.from_seed(bytes(32))  # reading the log needs no key
    assert EventLog(Store(home / "node.db"), identity).verify_chain() == 3


def test_testnet_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    net = tmp_path / "net"
    result = c0("testnet", "up", "--nodes", "3", "--dir", str(net), "--json")
    try:
        _check_testnet(net, result)
    finally:  # whatever failed, leave no process behind
        c0("testnet", "down", "--dir", str(net), "--json")


def _check_testnet(net: Path, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    state = json.loads((net / "testnet.json").read_text())
    assert [n["role"] for n in state["nodes"]] == ["arbiter", "worker", "worker", "client"]
    for node in state["nodes"]:
        assert set(node) >= {"did", "peer_id", "eth_address", "multiaddrs", "home", "pid", "role"}
        caps = ControlClient(control_path(Path(node["home"]))).call("caps")
        assert len(caps) == (3 if node["role"] == "client" else 2)  # light nodes send no ad
    assert {"rpc_url", "chain_id", "escrow"} <= set(state)
    anvil_pid = state["chain"]["pid"]
    assert Path(f"/proc/{anvil_pid}").exists()
    status = json.loads(c0("testnet", "status", "--dir", str(net), "--json").stdout)
    assert all(n["running"] for n in status["nodes"])
    result = c0("testnet", "down", "--dir", str(net), "--json")
    assert result.returncode == 0, result.stderr
    for pid in [n["pid"] for n in state["nodes"]] + [anvil_pid]:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    result = c0("testnet", "status", "--dir", str(net), "--json")
    assert result.returncode == 1
    assert not any(n["running"] for n in json.loads(result.stdout)["nodes"])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_node_that_ignores_sigterm_is_killed_and_gone_when_down_returns(tmp_path: Path) -> None:
    import subprocess
    import sys

    from testnet.local import _alive, _stop_pids

    home = str(tmp_path / "stubborn-home")
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
        "print('up', flush=True); time.sleep(600)"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, home], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        assert _alive(proc.pid, home)
        assert _stop_pids([(proc.pid, home)], grace_s=0.2) == [proc.pid]
        assert not _alive(proc.pid, home)  # no "still running" report for a dying process
        assert not Path(f"/proc/{proc.pid}").exists()  # killed and reaped (down reaps)
    finally:
        proc.kill()
        proc.wait()
