"""`c0 testnet up|status|down`: a local network of node processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from node.cli import emit


def _up(args: argparse.Namespace) -> int:
    from testnet.local import up

    start = time.monotonic()

    def progress(line: str) -> None:
        if not args.json:
            print(
                f"testnet: {time.monotonic() - start:6.1f} s  {line}", file=sys.stderr, flush=True
            )

    state = up(
        args.nodes, Path(args.dir), chain=args.chain, client=not args.no_client, progress=progress
    )
    lines = [
        f"{n['role']:<8} {n['peer_id']}  {n['multiaddrs'][0]}  pid {n['pid']}"
        for n in state["nodes"]
    ]
    emit(state, as_json=args.json, text="\n".join(lines))
    return 0


def _status(args: argparse.Namespace) -> int:
    from testnet.local import status

    state = status(Path(args.dir))
    lines = [
        f"{n['peer_id']}  pid {n['pid']}  "
        + (
            f"up, {n.get('connected_peers', '?')} peers, {n.get('known_workers', '?')} workers"
            if n["running"]
            else "DOWN"
        )
        for n in state["nodes"]
    ]
    emit(state, as_json=args.json, text="\n".join(lines))
    return 0 if all(n["running"] for n in state["nodes"]) else 1


def _down(args: argparse.Namespace) -> int:
    from testnet.local import down

    emit(down(Path(args.dir)), as_json=args.json)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("testnet", help="a local network of nodes on this machine")
    tsub = parser.add_subparsers(dest="testnet_command", metavar="ACTION", required=True)
    for name, func, doc in (
        ("up", _up, "start N nodes; return when each has every other node's ad"),
        ("status", _status, "is each node running, and what does it know"),
        ("down", _down, "stop every process the testnet started"),
    ):
        p = tsub.add_parser(name, help=doc)
        p.add_argument("--dir", default="testnet-run", help="where homes and testnet.json live")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        if name == "up":
            p.add_argument("--nodes", type=int, default=3, help="number of full nodes")
            p.add_argument(
                "--chain",
                default="anvil",
                choices=["none", "anvil"],
                help="the chain to settle on (default: anvil, from `make tools`)",
            )
            p.add_argument(
                "--no-client", action="store_true", help="do not start the light client node"
            )
