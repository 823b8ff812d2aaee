"""`c0 job …`, `c0 jobs`, `c0 reputation`, `c0 reconcile`: the client's commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from node.cli import emit
from node.control import ControlClient, NodeNotRunning, control_path
from node.home import home_dir
from protocol.errors import C0Error, UserError

_POLL_S = 0.25
_TERMINAL = {"settled", "refunded", "cancelled"}


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(control_path(home_dir(args.home)), timeout=120.0)


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--input wants NAME=PATH, got {pair!r}")
        if not Path(path).is_file():
            raise UserError(f"--input {name}: no such file: {path}")
        out[name] = str(Path(path).resolve())
    return out


def _read_spec(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no such job spec: {path}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc}") from None


def _wait(client: ControlClient, job_id: str, *, as_json: bool, limit_s: float) -> dict[str, Any]:
    """Poll the node until the job is terminal, printing each new event as progress."""
    seen = 0
    deadline = time.monotonic() + limit_s
    while True:
        for ev in client.call("job_events", job_id=job_id, since=seen):
            seen = ev["seq"] + 1
            if not as_json:
                who = f" {ev['worker_did'][-10:]}" if ev.get("worker_did") else ""
                print(f"  [{ev['attempt']}] {ev['state']}{who}", file=sys.stderr, flush=True)
        status: dict[str, Any] = client.call("job_status", job_id=job_id)
        if status["state"] in _TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise C0Error(
                f"job {job_id} still {status['state']} after {limit_s:g} s", code="timeout"
            )
        time.sleep(_POLL_S)


def _submit(args: argparse.Namespace) -> int:
    spec = _read_spec(args.spec)
    inputs = _parse_inputs(args.input)
    request = {
        "spec": spec,
        "inputs": inputs,
        "redundancy": args.redundancy,
        "max_price": args.max_price,
        "deadline_s": args.deadline,
        "new": args.new,
    }
    try:
        client = _client(args)
        reply = client.call("job_submit", **request)
    except NodeNotRunning:
        return _submit_ephemeral(args, request)
    job_id = reply["job_id"]
    if reply.get("existing") and not args.json:
        print(_again(job_id, reply["state"]), file=sys.stderr, flush=True)
    if not args.wait:
        emit(reply, as_json=args.json, text=job_id)
        return 0
    if not args.json and not reply.get("existing"):
        print(f"submitted {job_id}", file=sys.stderr, flush=True)
    status = _wait(client, job_id, as_json=args.json, limit_s=_wait_s(reply, args.deadline))
    emit(status, as_json=args.json, text=f"{job_id} {status['state']}")
    return 0 if status["state"] == "settled" else 3


def _again(job_id: str, state: str) -> str:
    """The note for a submission that is the same job as an earlier one."""
    now = f"is {state}" if state in _TERMINAL else f"goes on ({state})"
    return (
        f"job {job_id} was submitted before and {now}: nothing new is paid "
        "(--new submits a new job)"
    )


def _wait_s(reply: dict[str, Any], deadline_s: int) -> float:
    """How long to follow a job: until its deadline (the first submission's, for the
    same job again) and a minute more."""
    deadline_ms = reply.get("deadline_ms")
    if deadline_ms is None:
        return deadline_s + 60
    return max(0.0, int(deadline_ms) / 1000 - time.time()) + 60


def _submit_ephemeral(args: argparse.Namespace, request: dict[str, Any]) -> int:
    """No node runs in this home: start a light node here for this one job."""
    from node.lifecycle.ephemeral import run_one_job

    status = run_one_job(home_dir(args.home), request, progress=not args.json)
    emit(status, as_json=args.json, text=f"{status['job_id']} {status['state']}")
    return 0 if status["state"] == "settled" else 3


def _status(args: argparse.Namespace) -> int:
    status = _client(args).call("job_status", job_id=args.job_id)
    emit(status, as_json=args.json)
    return 0


def _events(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        status = _wait(client, args.job_id, as_json=False, limit_s=3600)
        emit(status, as_json=args.json, text=f"{args.job_id} {status['state']}")
        return 0
    events = client.call("job_events", job_id=args.job_id)
    lines = [
        f"{e['timestamp']} [{e['attempt']}] {e['state']:<10} "
        f"{(e['worker_did'] or '')[-12:]:<12} {json.dumps(e['detail'], sort_keys=True)}"
        for e in events
    ]
    emit(events, as_json=args.json, text="\n".join(lines))
    return 0


def _explain(args: argparse.Namespace) -> int:
    report = _client(args).call("job_explain", job_id=args.job_id)
    lines = []
    for attempt, ranked in sorted(report["attempts"].items()):
        lines.append(f"attempt {attempt}:")
        for r in ranked:
            score = "" if r["score"] is None else f"score {r['score']:.4f} "
            parts = " ".join(f"{k}={v:.3f}" for k, v in r["breakdown"].items())
            outcome = f" -> {r['outcome']}" if r.get("outcome") else ""
            lines.append(f"  {r['did'][-16:]}  {score}{r['reason']}{outcome}  {parts}")
    emit(report, as_json=args.json, text="\n".join(lines) or "no routing yet")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    files = _client(args).call("job_fetch", job_id=args.job_id, output=str(out))
    emit(
        files,
        as_json=args.json,
        text="\n".join(f"{f['sha256'][:16]}  {f['size']:>10}  {f['name']}" for f in files),
    )
    return 0


def _dispute(args: argparse.Namespace) -> int:
    out = _client(args).call("job_dispute", job_id=args.job_id, reason=args.reason)
    told = (
        "the evidence went to the arbiter"
        if out["arbiter_notified"]
        else "the arbiter was not reached (the node sends it again while it waits)"
    )
    text = f"{out['job_id']} disputed on chain (tx {out['tx']}); {told}; now awaiting the ruling"
    emit(out, as_json=args.json, text=text)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    rows = _client(args).call("jobs")
    emit(
        rows,
        as_json=args.json,
        text="\n".join(
            f"{r['job_id']}  {r['role']:<6} {r['state']:<10} {r['job_class']}" for r in rows
        )
        or "no jobs",
    )
    return 0


def _reputation(args: argparse.Namespace) -> int:
    rows = _client(args).call("reputation", did=args.did)
    emit(
        rows,
        as_json=args.json,
        text="\n".join(
            f"{r['worker'][-16:]}  {r['job_class']:<16} score {r['score']:.3f}"
            f"  done {r['completed']}  failed {r['verify_failed']}"
            f"  timeouts {r['timeouts']}  slashed {r['slashed']}"
            for r in rows
        )
        or "no evidence yet",
    )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    report = _client(args).call("reconcile")
    text = f"{report['jobs']} job(s), {len(report['mismatches'])} mismatch(es)"
    for m in report["mismatches"]:
        text += f"\n  {m['job_id']}: {m['kind']}: {m['detail']}"
    emit(report, as_json=args.json, text=text)
    return 0 if not report["mismatches"] else 4


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="node home (default $C0_HOME, then ~/.c0)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="submit and follow jobs")
    jsub = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    p = jsub.add_parser("submit", help="hand a job to the swarm")
    p.add_argument("spec", help="job spec JSON (see spec/examples)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--redundancy", type=int, default=1, help="workers running it (default 1)")
    p.add_argument("--max-price", type=int, default=10**16, help="per worker, in wei")
    p.add_argument("--deadline", type=int, default=300, help="seconds until refund")
    p.add_argument("--wait", action="store_true", help="block until the job is terminal")
    p.add_argument(
        "--new",
        action="store_true",
        help="a new job even if this same one was submitted before (by default the same "
        "spec, inputs, redundancy and max price resume that job: it is paid once)",
    )
    _common(p)
    p.set_defaults(func=_submit)

    for name, func, doc in (
        ("status", _status, "state of one job"),
        ("explain", _explain, "every candidate worker and why it won or lost"),
    ):
        p = jsub.add_parser(name, help=doc)
        p.add_argument("job_id")
        _common(p)
        p.set_defaults(func=func)

    p = jsub.add_parser("events", help="the job's signed events")
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true", help="print events until terminal")
    _common(p)
    p.set_defaults(func=_events)

    p = jsub.add_parser("fetch", help="copy the verified artifacts out (hashes checked)")
    p.add_argument("job_id")
    p.add_argument("--output", required=True, help="folder to write into")
    _common(p)
    p.set_defaults(func=_fetch)

    p = jsub.add_parser("dispute", help="freeze the escrow for the arbiter")
    p.add_argument("job_id")
    p.add_argument("--reason", required=True)
    _common(p)
    p.set_defaults(func=_dispute)

    for name, func, doc in (
        ("jobs", _jobs, "every job this node knows"),
        ("reconcile", _reconcile, "match job records against the escrow on chain"),
    ):
        p = sub.add_parser(name, help=doc)
        _common(p)
        p.set_defaults(func=func)

    p = sub.add_parser("reputation", help="reputation from checkable evidence")
    p.add_argument("did", nargs="?")
    _common(p)
    p.set_defaults(func=_reputation)
