"""`make demo`: start a small local network and show the nodes discovering each other.

The job lifecycle (issue 6) extends this with jobs; today it shows networking only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from node.control import ControlClient, control_path
from testnet.local import down, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.demo")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="leave the network running")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="c0-demo-"))
    start = time.monotonic()
    print(f"starting {args.nodes} nodes in {directory} ...", flush=True)
    state = up(
        args.nodes,
        directory,
        progress=lambda s: print(f"  {time.monotonic() - start:5.1f} s  {s}", flush=True),
    )
    try:
        names = {n["did"]: f"node-{i:02d}" for i, n in enumerate(state["nodes"])}
        for i, node in enumerate(state["nodes"]):
            client = ControlClient(control_path(Path(node["home"])))
            status = client.call("status")
            heard = sorted(names[c["did"]] for c in client.call("caps"))
            print(
                f"node-{i:02d} {node['peer_id'][:20]}…  {status['connected_peers']} connections,"
                f" knows {len(heard)} workers: {', '.join(heard)}"
            )
        print("every node received every other node's signed capability ad over GossipSub")
    finally:
        if args.keep:
            print(f"left running; stop with: c0 testnet down --dir {directory}")
        else:
            down(directory)
            print("stopped every node process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
