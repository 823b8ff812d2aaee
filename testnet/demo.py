"""`make demo`: a local swarm settles two real jobs on a real chain, from a fresh clone.

Four full nodes (an arbiter and three workers) and a light client start as separate OS
processes on 127.0.0.1 with anvil; the client submits an HLS transcode of a generated
clip and an inference job on a generated GGUF model, each to two workers; the demo shows
live progress, then events, verdicts, payouts, gas, and reconciliation, and tears it all
down. It exits 0 only if both jobs settled and reconciliation is clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.control import ControlClient, control_path
from testnet.local import down, up
from testnet.testdata import make_clip, make_tiny_gguf

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"settled", "refunded", "cancelled"}


def _short(did: str | None) -> str:
    return "" if not did else "…" + did[-8:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.demo")
    parser.add_argument("--nodes", type=int, default=4, help="full nodes (one is the arbiter)")
    parser.add_argument("--keep", action="store_true", help="leave the network running")
    parser.add_argument("--dir", help="where to put the network (default: a temporary folder)")
    args = parser.parse_args(argv)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="c0-demo-")).resolve()
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"{time.monotonic() - started:6.1f} s  {line}", flush=True)

    say(f"making test data in {directory}")
    clip = make_clip(directory / "clip.mp4", seconds=4.0, width=320, height=180)
    model = make_tiny_gguf(directory / "tiny.gguf")
    say(f"starting {args.nodes} full nodes, a light client and anvil")
    state = up(args.nodes, directory / "net", progress=lambda s: say(f"  {s}"))
    ok = False
    try:
        ok = _run_jobs(state, clip, model, say)
    finally:
        if args.keep:
            say(f"left running; stop with: c0 testnet down --dir {directory / 'net'}")
        else:
            down(directory / "net")
            say("stopped every node process and anvil")
    say("demo " + ("passed: both jobs settled, reconciliation clean" if ok else "FAILED"))
    return 0 if ok else 1


def _run_jobs(state: dict[str, Any], clip: Path, model: Path, say: Any) -> bool:
    names = {n["did"]: f"{n['role']}-{i}" for i, n in enumerate(state["nodes"])}
    client_home = Path(next(n["home"] for n in state["nodes"] if n["role"] == "client"))
    client = ControlClient(control_path(client_home), timeout=120)
    workers = sum(1 for n in state["nodes"] if n["role"] == "worker")
    ready_by = time.monotonic() + 120
    while time.monotonic() < ready_by:  # workers advertise prices once fingerprinted
        if sum(1 for w in client.call("caps") if w["ad"]["prices"]) >= workers:
            break
        time.sleep(0.2)
    say(f"{workers} workers advertise their job classes and prices")
    jobs = {
        "transcode": client.call(
            "job_submit",
            spec=json.loads((ROOT / "spec/examples/media.transcode.json").read_text()),
            inputs={"source": str(clip)},
            redundancy=2,
            max_price=10**16,
            deadline_s=180,
        )["job_id"],
        "inference": client.call(
            "job_submit",
            spec=json.loads((ROOT / "spec/examples/llm.generate.json").read_text()),
            inputs={"model": str(model)},
            redundancy=2,
            max_price=10**16,
            deadline_s=180,
        )["job_id"],
    }
    for label, job_id in jobs.items():
        say(f"submitted {label} job {job_id} (redundancy 2)")
    seen = dict.fromkeys(jobs.values(), 0)
    status: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for label, job_id in jobs.items():
            for ev in client.call("job_events", job_id=job_id, since=seen[job_id]):
                seen[job_id] = ev["seq"] + 1
                who = names.get(ev["worker_did"], _short(ev["worker_did"]))
                say(f"  {label:<9} [{ev['attempt']}] {ev['state']:<9} {who}")
            status[label] = client.call("job_status", job_id=job_id)
        if all(s["state"] in TERMINAL for s in status.values()):
            break
        time.sleep(0.2)
    print()
    print("summary")
    for label, job_id in jobs.items():
        s = status[label]
        events = client.call("job_events", job_id=job_id)
        print(f"  {label}: {s['state']} after {s['elapsed_ms']} ms, {len(events)} signed events")
        for did, passed in s["verdicts"].items():
            pay = s["payouts"].get(did, 0)
            print(
                f"    {names.get(did, did):<10} verdict {'pass' if passed else 'FAIL'}"
                f"  paid {pay / 1e18:.6f} ETH"
            )
        gas = s["gas"]
        print(
            f"    gas: open {gas['open']}, release share {gas['release_share']}"
            f" (escrow {s['escrow_tx'][:12]}…, release {str(s['release_tx'])[:12]}…)"
        )
    report = client.call("reconcile")
    print(
        f"  reconciliation: {report['jobs']} jobs, {report['chain_events']} escrow events on"
        f" chain, {len(report['mismatches'])} mismatches"
    )
    for m in report["mismatches"]:
        print(f"    {m['job_id']}: {m['kind']}: {m['detail']}")
    out = client_home / "fetched"
    files = client.call("job_fetch", job_id=jobs["transcode"], output=str(out))
    print(f"  fetched {len(files)} verified artifacts of the transcode into {out}")
    print()
    settled = all(status[label]["state"] == "settled" for label in jobs)
    return settled and not report["mismatches"]


if __name__ == "__main__":
    sys.exit(main())
