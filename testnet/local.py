"""A local network: N full nodes as separate OS processes on 127.0.0.1.

`up` writes DIR/testnet.json and returns once every node holds every other node's ad;
`down` stops exactly the processes listed there (checking each is still ours).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.config import CONFIG_FILE, NodeConfig, render_config
from node.control import ControlClient, NodeNotRunning, control_path
from node.home import KEY_FILE, create_identity, ensure_home, load_identity
from node.lifecycle.settings import CHAIN_FILE, SETTINGS_FILE
from protocol.errors import C0Error, UserError
from testnet import chain as chain_setup
from testnet.chain import ABSENT_ARBITER

__all__ = ["STATE_FILE", "down", "restart", "status", "up"]

STATE_FILE = "testnet.json"
BOOTSTRAP_FANOUT = 3  # each node dials this many others; gossip does the rest


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _poll(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    delay = 0.02
    while not cond():
        if time.monotonic() > deadline:
            raise C0Error(f"testnet: timed out waiting for {what}", code="testnet_timeout")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _call(home: Path, cmd: str) -> Any:
    return ControlClient(control_path(home), timeout=5).call(cmd)


def _alive(pid: int, home: str) -> bool:
    """True if `pid` runs and is the node of `home` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return home.encode() in cmdline


def up(
    nodes: int,
    directory: Path,
    *,
    config: NodeConfig | None = None,
    chain: str = "anvil",
    client: bool = True,
    lifecycle: dict[int, dict[str, Any]] | None = None,
    limit_s: float = 120.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Start `nodes` full nodes (node-00 is the arbiter, the rest are workers) and, with
    `client`, one light node to submit jobs from; with a chain, anvil starts first, the
    escrow is deployed and every account funded, so each node boots settled on it.
    `lifecycle` maps a node index to settings for its lifecycle.toml (a researcher's
    faults: `{2: {"behaviour": "wrong_output"}}`)."""
    if nodes < 1:
        raise UserError("--nodes must be at least 1")
    directory = directory.resolve()
    state_path = directory / STATE_FILE
    if state_path.exists():
        old = json.loads(state_path.read_text())
        if any(_alive(n["pid"], n["home"]) for n in old.get("nodes", [])):
            raise UserError(f"a testnet is already running in {directory}: run `c0 testnet down`")
    directory.mkdir(parents=True, exist_ok=True)
    config = config or NodeConfig()
    total = nodes + (1 if client else 0)
    ports = _free_ports(total)
    homes = [directory / f"node-{i:02d}" for i in range(nodes)]
    if client:
        homes.append(directory / "client")
    roles = ["arbiter" if i == 0 and nodes >= 3 else "worker" for i in range(nodes)]
    roles += ["client"] if client else []
    for home in homes:
        ensure_home(home)  # owner-only: it holds keys, the database, prompts and results
    identities = [
        load_identity(h) if (h / KEY_FILE).exists() else create_identity(h) for h in homes
    ]
    addrs = [
        f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id}"
        for port, ident in zip(ports, identities, strict=True)
    ]
    procs: list[subprocess.Popen[bytes]] = []
    state: dict[str, Any] = {"nodes": [], "chain": None, "created_ms": time.time_ns() // 10**6}
    try:
        state["chain"] = chain_setup.start(chain, directory, [i.eth_address for i in identities])
        if state["chain"] is not None:
            state.update(_chain_json(state["chain"]))  # rpc_url, chain_id, escrow
            progress(f"anvil at {state['chain']['rpc_url']}, escrow {state['chain']['escrow']}")
            # Without an arbiter node the terms name an address nobody runs: a dispute then
            # lapses after the ruling period (spec/settlement.md), never the client itself.
            arbiter = (
                identities[roles.index("arbiter")].eth_address
                if "arbiter" in roles
                else ABSENT_ARBITER
            )
            for home in homes:
                (home / CHAIN_FILE).write_text(
                    json.dumps({**_chain_json(state["chain"]), "arbiter": arbiter}, indent=2)
                )
        for i, home in enumerate(homes):
            settings = dict((lifecycle or {}).get(i, {}))
            if roles[i] in ("arbiter", "client"):
                settings["execute"] = False
            (home / SETTINGS_FILE).write_text(_toml(settings))
            full = [a for j, a in enumerate(addrs[:nodes]) if j != i]
            others = [full[(i + k) % len(full)] for k in range(min(BOOTSTRAP_FANOUT, len(full)))]
            cfg = config.replace(
                network={
                    **_section(config.network),
                    "listen": (f"/ip4/127.0.0.1/tcp/{ports[i]}",),
                    "bootstrap": tuple(others),
                }
            )
            (home / CONFIG_FILE).write_text(render_config(cfg), "utf-8")
            procs.append(_launch(home, roles[i]))
            state["nodes"].append(
                {
                    "did": identities[i].did,
                    "peer_id": identities[i].peer_id,
                    "eth_address": identities[i].eth_address,
                    "multiaddrs": [addrs[i]],
                    "home": str(home),
                    "pid": procs[i].pid,
                    "role": roles[i],
                }
            )
        _write(state_path, state)
        progress(f"started {total} node processes ({', '.join(roles)})")
        for home, proc in zip(homes, procs, strict=True):
            _poll(lambda h=home, p=proc: _ready(h, p), limit_s, f"{home.name} to start")
        progress("all nodes answer on their control sockets")
        _poll(lambda: _all_heard(homes, nodes, procs), limit_s, "every node to hear every ad")
        progress("every node has received every full node's ad")
    except BaseException:
        _stop_pids([(p.pid, str(h)) for p, h in zip(procs, homes, strict=False)])
        chain_setup.stop(state.get("chain"))
        raise
    return state


def _launch(home: Path, role: str) -> subprocess.Popen[bytes]:
    """Start the node of `home` as its own process, appending to its node.log."""
    argv = [sys.executable, "-m", "node", "node", "run", "--home", str(home)]
    with (home / "node.log").open("ab") as log:
        return subprocess.Popen(
            [*argv, "--light"] if role == "client" else argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl+C on `testnet up` leaves the nodes be
        )


def restart(directory: Path, index: int, *, limit_s: float = 60.0) -> dict[str, Any]:
    """Start node `index` of the testnet in `directory` again after it stopped or was
    killed, from the same home: its identity, database, config (so the same listen port
    and bootstrap peers), lifecycle.toml and chain.json, so it rejoins the network and
    resumes its unfinished jobs. The new pid goes into testnet.json, so `down` stops it.
    Returns the node's entry once it answers on its control socket and is connected to
    the peers it bootstraps from."""
    directory = directory.resolve()
    state = _load(directory)
    node = state["nodes"][index]
    home = Path(node["home"])
    if _alive(node["pid"], node["home"]):
        raise UserError(f"{home.name} is still running (pid {node['pid']})")
    _reap(node["pid"])
    proc = _launch(home, node["role"])
    node["pid"] = proc.pid
    _write(directory / STATE_FILE, state)
    _poll(lambda: _ready(home, proc), limit_s, f"{home.name} to restart")
    full = sum(1 for n in state["nodes"] if n["role"] != "client") - (
        0 if node["role"] == "client" else 1
    )
    _poll(
        lambda: _call(home, "status")["connected_peers"] >= min(BOOTSTRAP_FANOUT, full),
        limit_s,
        f"{home.name} to reconnect",
    )
    return dict(node)


def _chain_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {"rpc_url": entry["rpc_url"], "chain_id": entry["chain_id"], "escrow": entry["escrow"]}


def _toml(settings: dict[str, Any]) -> str:
    import tomli_w

    header = (
        "# lifecycle settings written by `c0 testnet up` (defaults: node/lifecycle/settings.py)\n"
    )
    return header + tomli_w.dumps(settings)


def _section(section: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def _ready(home: Path, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        tail = (home / "node.log").read_text(errors="replace")[-1500:]
        raise C0Error(f"{home.name} exited with code {proc.returncode}:\n{tail}")
    try:
        _call(home, "status")
    except (NodeNotRunning, OSError):
        return False
    return True


def _all_heard(homes: list[Path], n: int, procs: list[subprocess.Popen[bytes]]) -> bool:
    """Every node knows every full node's ad (its own aside; light nodes publish none)."""
    for home, proc in zip(homes, procs, strict=True):  # a dead node fails fast
        if proc.poll() is not None:
            raise C0Error(f"{home.name} exited with code {proc.returncode}")
    for index, home in enumerate(homes):
        expected = n - 1 if index < n else n
        if _call(home, "status")["known_workers"] < expected:
            return False
    return True


def _write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _load(directory: Path) -> dict[str, Any]:
    path = directory.resolve() / STATE_FILE
    if not path.exists():
        raise UserError(f"no testnet in {directory} ({STATE_FILE} not found)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def status(directory: Path) -> dict[str, Any]:
    state = _load(directory)
    rows = []
    for node in state["nodes"]:
        row: dict[str, Any] = {"peer_id": node["peer_id"], "pid": node["pid"], "home": node["home"]}
        row["running"] = _alive(node["pid"], node["home"])
        if row["running"]:
            try:
                st = _call(Path(node["home"]), "status")
                row.update(
                    connected_peers=st["connected_peers"],
                    known_workers=st["known_workers"],
                    uptime_s=st["uptime_s"],
                )
            except (C0Error, OSError) as exc:
                row["error"] = str(exc)
        rows.append(row)
    return {"nodes": rows, "chain": state.get("chain")}


def _stop_pids(pids: list[tuple[int, str]], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, wait, SIGKILL what is left; return the pids that were running."""
    running = [(pid, home) for pid, home in pids if _alive(pid, home)]
    for pid, _ in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for pid, home in running:
        _wait_gone(pid, home, deadline)
        if _alive(pid, home):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # SIGKILL is delivered asynchronously: wait (bounded) until the process is gone,
            # or `down` would report a process that is about to vanish as left behind.
            _wait_gone(pid, home, time.monotonic() + 10.0)
        _reap(pid)
    return [pid for pid, _ in running]


def _wait_gone(pid: int, home: str, until: float) -> None:
    """Until `pid` has exited or `until` (monotonic) passes. A pidfd turns readable when
    its process exits; a kernel without pidfds (before Linux 5.3) gets a bounded poll."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:
        while _alive(pid, home) and time.monotonic() < until:
            _reap(pid)
            time.sleep(0.05)  # pacing of the fallback poll
        return
    try:
        select.select([fd], [], [], max(0.0, until - time.monotonic()))
    finally:
        os.close(fd)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our child when up and down run in one process
    except ChildProcessError:
        pass


def down(directory: Path) -> dict[str, Any]:
    state = _load(directory)
    stopped = _stop_pids([(n["pid"], n["home"]) for n in state["nodes"]])
    chain_setup.stop(state.get("chain"))
    left = [n["pid"] for n in state["nodes"] if _alive(n["pid"], n["home"])]
    if left:
        raise C0Error(f"testnet: processes still running: {left}")
    return {"stopped": stopped}
