"""`c0 node init|run|status`, `c0 peers`, `c0 caps`: running a node and looking at it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.cli import emit
from node.config import CONFIG_FILE, render_config
from node.control import ControlClient, control_path
from node.home import KEY_FILE, create_identity, ensure_home, home_dir, load_identity


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(control_path(home_dir(args.home)))


def _init(args: argparse.Namespace) -> int:
    home = home_dir(args.home)
    ensure_home(home)  # owner-only, whatever the umask
    created_keys = not (home / KEY_FILE).exists()
    identity = create_identity(home) if created_keys else load_identity(home)
    config = home / CONFIG_FILE
    created_config = not config.exists()
    if created_config:
        config.write_text(render_config(), "utf-8")
    emit(
        {
            "home": str(home),
            "config": str(config),
            "created_config": created_config,
            "created_keys": created_keys,
            "did": identity.did,
            "peer_id": identity.peer_id,
        },
        as_json=args.json,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from node.runtime import run_foreground  # imports libp2p: only for this command

    home = home_dir(args.home)
    load_identity(home)  # a clear error before anything starts
    return run_foreground(home, Path(args.config) if args.config else None, light=args.light)


def _status(args: argparse.Namespace) -> int:
    status = _client(args).call("status")
    emit(status, as_json=args.json)
    return 0


def _peers(args: argparse.Namespace) -> int:
    peers: list[dict[str, Any]] = _client(args).call("peers")
    lines = [
        f"{p['peer_id']}  {'connected' if p['connected'] else 'known':9}  score {p['score']:g}"
        + ("  BANNED" if p["banned"] else "")
        for p in peers
    ]
    emit(peers, as_json=args.json, text="\n".join(lines) or "no peers")
    return 0


def _caps(args: argparse.Namespace) -> int:
    caps: list[dict[str, Any]] = _client(args).call("caps")
    lines = [
        f"{c['did']}  {c['peer_id']}  classes {','.join(sorted(c['ad']['runtimes'])) or '-'}"
        f"  load {c['ad']['load']:.2f}"
        for c in caps
    ]
    emit(caps, as_json=args.json, text="\n".join(lines) or "no workers heard yet")
    return 0


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--home", help="node home (default $C0_HOME, then ~/.c0)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("node", help="initialise, run and inspect a node")
    nsub = parser.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    p = nsub.add_parser("init", help="write a commented config and create keys if absent")
    _common(p)
    p.set_defaults(func=_init)
    p = nsub.add_parser("run", help="run the node in the foreground until SIGINT/SIGTERM")
    _common(p, json_flag=False)
    p.add_argument("--config", help=f"config file (default HOME/{CONFIG_FILE})")
    p.add_argument("--light", action="store_true", help="light node: no ads, no execution")
    p.set_defaults(func=_run)
    p = nsub.add_parser("status", help="peer id, addresses, peers, uptime, known workers")
    _common(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("peers", help="peers of the running node, with their scores")
    _common(p)
    p.set_defaults(func=_peers)
    p = sub.add_parser("caps", help="workers heard through capability gossip")
    _common(p)
    p.set_defaults(func=_caps)
