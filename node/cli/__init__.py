"""The `c0` command line: one argparse tree, one subcommand module per concern."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from protocol.errors import C0Error

# Each module defines `register(subparsers)`; its parsers set `func(args) -> int`.
# Add a module here to add a command group; keep one concern per module.
COMMAND_MODULES: tuple[str, ...] = (
    "node.cli.identity_cmd",
    "node.cli.worker_cmd",
    "node.cli.chain_cmd",
    "node.cli.node_cmd",
    "node.cli.testnet_cmd",
    "node.cli.job_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c0", description="c0 node and client")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command group is not built yet
                continue
            raise
        module.register(sub)
    return parser


def emit(obj: Any, *, as_json: bool, text: str | None = None) -> None:
    """Print `obj` as one JSON document, or `text` (default: key: value lines)."""
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
    elif text is not None:
        print(text)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            print(f"{key}: {value}")
    else:
        print(obj)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except C0Error as exc:
        print(f"c0: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("c0: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(
            f"c0: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
