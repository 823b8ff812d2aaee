"""`c0 identity new|show`: the node's keys."""

from __future__ import annotations

import argparse
from typing import Any

from node.cli import emit
from node.home import create_identity, home_dir, load_identity
from protocol.identity import Identity


def _describe(identity: Identity) -> dict[str, Any]:
    return {"did": identity.did, "peer_id": identity.peer_id, "eth_address": identity.eth_address}


def _new(args: argparse.Namespace) -> int:
    home = home_dir(args.home)
    identity = create_identity(home)
    emit({**_describe(identity), "home": str(home)}, as_json=args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    emit(_describe(load_identity(home_dir(args.home))), as_json=args.json)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("identity", help="create or show this node's keys")
    isub = parser.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    for name, func, doc in (
        ("new", _new, "create keys (refuses to overwrite)"),
        ("show", _show, "print did, peer_id, eth_address"),
    ):
        p = isub.add_parser(name, help=doc)
        p.add_argument("--home", help="node home (default $C0_HOME, then ~/.c0)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
