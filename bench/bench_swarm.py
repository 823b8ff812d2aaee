"""Job lifecycle across a local swarm (issue 6): dispatch latency at 10 and 40 nodes, noop
throughput through batched settlement, a transcode through the swarm against the same
executor run locally, and the gas each settled job cost.

`python -m bench.bench_swarm` writes bench/results/swarm.json (`--quick` runs fewer
iterations, `--skip-40` leaves out the 40-node network). Every network is a real
`testnet.local.up`: anvil with the escrow, N full node processes on 127.0.0.1 (node-00 the
arbiter, the rest workers) and one light client, driven through the client's control
socket. Redundancy 1 throughout. Timestamps are the nodes' own signed job events
(`time.time_ns() // 10**6` on the same host), so control-socket polling does not enter
the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import testnet.chain
from bench import CpuMeter, idle_fraction
from node.control import ControlClient, control_path
from testnet.local import down, up

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "swarm.json"
NOOP = json.loads((ROOT / "spec/examples/noop.json").read_text())
TRANSCODE = json.loads((ROOT / "spec/examples/media.transcode.json").read_text())
MAX_PRICE = 10**16
TERMINAL = {"settled", "refunded", "cancelled", "failed", "expired"}
STARTED = time.monotonic()
STALL_S = 45.0
BURST_ROUNDS = 5  # bursts per throughput run; the median is the headline (3 until the 8th session)
WINDOW = 8  # jobs in flight for the paced throughput run: offers go to the same top 3


def say(line: str) -> None:
    print(f"{time.monotonic() - STARTED:7.1f} s  {line}", flush=True)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000  # the clock of every node's job events


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p90": round(_pct(values, 0.9), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def _wait(cond: Callable[[], Any], limit_s: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(every)


class Swarm:
    """A running local network and control clients for its nodes."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        nodes = state["nodes"]
        self.homes = {n["did"]: Path(n["home"]) for n in nodes}
        client_home = Path(next(n["home"] for n in nodes if n["role"] == "client"))
        self.client = ControlClient(control_path(client_home), timeout=120)
        self.workers = [n for n in nodes if n["role"] == "worker"]

    def cpu_meter(self) -> CpuMeter:
        """CPU of the client, the full nodes (with their fork servers) and anvil, from now."""
        nodes = self.state["nodes"]
        chain = self.state.get("chain") or {}
        return CpuMeter(
            {
                "client": [n["pid"] for n in nodes if n["role"] == "client"],
                "nodes": [n["pid"] for n in nodes if n["role"] != "client"],
                "anvil": [chain["pid"]] if chain.get("pid") else [],
            }
        )

    def node(self, did: str) -> ControlClient:
        return ControlClient(control_path(self.homes[did]), timeout=60)

    def submit(self, spec: dict[str, Any], inputs: dict[str, str] | None = None) -> str:
        reply = self.client.call(
            "job_submit",
            spec=spec,
            inputs=inputs or {},
            redundancy=1,
            max_price=MAX_PRICE,
            deadline_s=600,
            new=True,  # the same spec again is a new job here (by default: the same job)
        )
        return str(reply["job_id"])

    def submit_many(self, spec: dict[str, Any], count: int) -> list[str]:
        """`count` jobs of `spec`, pipelined on one control connection (a client script
        submitting a burst); one connection per job cost a busy node an event-loop turn
        each, 1.8-3.2 s for 150 jobs."""
        args = dict(
            spec=spec, inputs={}, redundancy=1, max_price=MAX_PRICE, deadline_s=600, new=True
        )
        return [str(r["job_id"]) for r in self.client.call_many("job_submit", [args] * count)]

    def events(self, job_id: str, did: str | None = None) -> list[dict[str, Any]]:
        who = self.client if did is None else self.node(did)
        return list(who.call("job_events", job_id=job_id))

    def status(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.call("job_status", job_id=job_id))

    def settle(self, job_id: str, limit_s: float) -> dict[str, Any]:
        st = _wait(
            lambda: (s := self.status(job_id))["state"] in TERMINAL and s,
            limit_s,
            f"job {job_id} to settle",
        )
        if st["state"] != "settled":
            raise RuntimeError(f"job {job_id} ended {st['state']}")
        return dict(st)


@contextmanager
def swarm(nodes: int, directory: Path, lifecycle: dict[str, Any] | None = None) -> Iterator[Swarm]:
    directory.mkdir(parents=True, exist_ok=True)
    net = directory / f"net-{nodes}"
    started = time.monotonic()
    # testnet.chain funds every account with 1,000 ETH from one anvil dev account that holds
    # 10,000 ETH, so `up` fails from 10 accounts on (9 nodes + client); 100 ETH each is
    # ample (deposit 1 ETH, stake 0.1 ETH) and fits 41 accounts + gas.
    testnet.chain.FUNDING_WEI = 100 * 10**18
    try:
        state = up(
            nodes,
            net,
            lifecycle={i: dict(lifecycle or {}) for i in range(nodes + 1)},  # + the client
            limit_s=60.0 + 15.0 * nodes,
            progress=lambda s: say(f"  {s}"),
        )
        s = Swarm(state)
        # Settled: the client knows every full node's ad (the arbiter advertises too).
        _wait(
            lambda: s.client.call("status")["known_workers"] >= nodes,
            120,
            "the client to know every worker",
            every=0.5,
        )
        # ... and every worker advertises noop (workers price their classes only once
        # their runtime fingerprint is known, seconds after start-up under load).
        _wait(
            lambda: (
                sum(1 for w in s.client.call("caps") if "noop" in w["ad"]["prices"])
                >= len(s.workers)
            ),
            180,
            "every worker to advertise noop",
            every=0.5,
        )
        say(f"{nodes}-node network up in {time.monotonic() - started:.1f} s; load {_load()}")
        # let start-up CPU (imports, fingerprints, staking transactions) die down: wait for
        # a 2 s window with the host at least half idle (bounded)
        quiet_by = time.monotonic() + 180
        while time.monotonic() < quiet_by and idle_fraction(2.0) < 0.5:
            pass
        say(f"  host quiet enough (load {_load()})")
        yield s
    except BaseException as exc:
        say(f"  !! {nodes}-node network: {exc!r}")  # before `down` can mask it
        raise
    finally:
        if (net / "testnet.json").exists():
            try:
                down(net)
            except Exception as exc:  # reported, and the run goes on
                say(f"  !! tearing the {nodes}-node network down: {exc!r}")
            say(f"{nodes}-node network down")


# ------------------------------------------------------------------ dispatch
def bench_dispatch(s: Swarm, rounds: int) -> dict[str, Any]:
    """submit → the worker's own `running` event (its executor child started)."""
    worker_ms: list[float] = []
    client_ms: list[float] = []
    phases: dict[str, list[float]] = {}
    per_sample: list[dict[str, int]] = []
    load0 = _load()
    warmup: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for i in range(-1, rounds):  # round -1: the network's first job, reported apart
        t0 = _now_ms()
        job = s.submit(NOOP)
        try:
            st = s.settle(job, 60)
        except (RuntimeError, AssertionError) as exc:  # recorded; the next round goes on
            failures.append({"round": i, "job_id": job, "error": str(exc)[:200]})
            say(f"  dispatch {i + 1}/{rounds}: {exc}")
            continue
        (did,) = st["workers"]
        w_run = next(e for e in s.events(job, did) if e["state"] == "running")
        c_events = s.events(job)
        c_first = {}
        for e in c_events:
            c_first.setdefault(e["state"], e["timestamp"])
        w_events = {e["state"]: e["timestamp"] for e in s.events(job, did)}
        if i < 0:
            warmup = {"submit_to_worker_running_ms": w_run["timestamp"] - t0, "events": c_events}
            say(f"  first job: {warmup['submit_to_worker_running_ms']} ms (not counted)")
            continue
        worker_ms.append(w_run["timestamp"] - t0)
        if "running" in c_first:
            client_ms.append(c_first["running"] - t0)
        marks = [
            ("submit_to_requested", t0, c_first.get("requested")),
            ("requested_to_bid", c_first.get("requested"), c_first.get("bid")),
            ("bid_to_funded", c_first.get("bid"), c_first.get("funded")),
            ("funded_to_worker_assigned", c_first.get("funded"), w_events.get("assigned")),
            ("worker_assigned_to_running", w_events.get("assigned"), w_events.get("running")),
            ("running_to_settled", w_events.get("running"), c_first.get("settled")),
        ]
        per_sample.append({})
        for name, a, b in marks:
            if a is not None and b is not None:
                phases.setdefault(name, []).append(b - a)
                per_sample[-1][name] = b - a
        say(f"  dispatch {i + 1}/{rounds}: {worker_ms[-1]} ms to the worker's running event")
        time.sleep(0.3)
    return {
        "measure": "submit (bench clock, before the control call) -> earliest worker-side "
        "'running' event (the worker's executor child has been started)",
        "submit_to_worker_running_ms": _summary(worker_ms) if worker_ms else None,
        "submit_to_client_running_ms": _summary(client_ms) if client_ms else None,
        "phases_p50_ms": {k: round(statistics.median(v), 1) for k, v in phases.items()},
        "samples_ms": worker_ms,
        "phases_per_sample_ms": per_sample,
        "first_job_after_start": warmup,
        "failed_rounds": failures,
        "load_avg": [load0, _load()],
    }


# ------------------------------------------------------------------ throughput
def _without_fork_server(s: Swarm) -> list[int]:
    """PIDs of worker processes with no fork server child running (Linux /proc)."""
    parents = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if b"node.executors.forkserver" in cmdline:
            parents.add(int(stat.rsplit(")", 1)[1].split()[1]))
    return [w["pid"] for w in s.workers if w["pid"] not in parents]


def warm_up(s: Swarm) -> int:
    """Noop jobs, run to the end and not counted, until every worker has its fork server
    running (at most 5 rounds of two per worker): a worker starts it when it first bids
    (and keeps it while it has work), and each start is ~0.5 s of CPU, which a burst
    would otherwise measure for every worker that had no offer yet. Returns how many
    settled."""
    settled = 0
    for _ in range(5):
        ids = {s.submit(NOOP) for _ in range(2 * len(s.workers))}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {j["job_id"]: j["state"] for j in s.client.call("jobs", brief=True)}
            if all(states.get(i) in TERMINAL for i in ids):
                break
            time.sleep(0.5)  # pacing of the poll
        settled += sum(1 for j in s.client.call("jobs", brief=True) if j["job_id"] in ids
                       and j["state"] == "settled")  # fmt: skip
        if not _without_fork_server(s):
            break
    cold = _without_fork_server(s)
    if cold:
        say(f"  !! {len(cold)} workers still without a fork server after the warm-up")
    return settled


def _burst(s: Swarm, jobs: int) -> dict[str, Any]:
    """`jobs` noop jobs submitted back to back; first submit → last `settled` event."""
    load0 = _load()
    meter = s.cpu_meter()
    t0 = _now_ms()
    ids = s.submit_many(NOOP, jobs)
    submitted = _now_ms()
    say(f"  {jobs} noop jobs submitted in {submitted - t0} ms")

    # Bounded: give up after STALL_S without a job reaching a terminal state.
    final: list[dict[str, Any]] = []
    done_count, progress_at = 0, time.monotonic()
    while True:
        brief = [j for j in s.client.call("jobs", brief=True) if j["job_id"] in set(ids)]
        done = sum(1 for j in brief if j["state"] in TERMINAL)
        if done == len(ids):
            final = [j for j in s.client.call("jobs") if j["job_id"] in set(ids)]
            break
        if done > done_count:
            done_count, progress_at = done, time.monotonic()
        elif time.monotonic() - progress_at > STALL_S:
            say(f"  stalled: {done}/{len(ids)} terminal, none more for {STALL_S:.0f} s")
            final = [j for j in s.client.call("jobs") if j["job_id"] in set(ids)]
            break
        # Figures come from the nodes' event timestamps; this poll only watches for the
        # end, and asks for states only (the full listing decodes every job's record).
        time.sleep(1.0)
    cpu = meter.read()  # before the event reads below, which cost the nodes CPU too
    states: dict[str, int] = {}
    for j in final:
        states[j["state"]] = states.get(j["state"], 0) + 1
    settled_at = []
    order = ["requested", "bid", "funded", "assigned", "running", "submitted", "verified"]
    phases: dict[str, list[float]] = {}
    for job in ids:
        first: dict[str, int] = {}
        for e in s.events(job):
            first.setdefault(e["state"], e["timestamp"])
        if "settled" in first:
            settled_at.append(first["settled"])
        chain = [x for x in [*order, "settled"] if x in first]
        for a, b in itertools.pairwise(chain):
            phases.setdefault(f"{a}_to_{b}", []).append(first[b] - first[a])
        if "settled" in first:
            phases.setdefault("requested_to_settled", []).append(
                first["settled"] - first["requested"]
            )
    elapsed_s = (max(settled_at) - t0) / 1000 if settled_at else None
    stuck = [j for j in final if j["state"] not in TERMINAL]
    sample = s.events(stuck[0]["job_id"]) if stuck else []
    reasons: dict[str, int] = {}
    for e in sample:
        if e["state"] in ("declined", "failed"):
            why = str((e.get("detail") or {}).get("reason", ""))[:40]
            reasons[why] = reasons.get(why, 0) + 1
    gas = _gas([j for j in final if j["state"] == "settled"])
    release_txs = {j["release_tx"] for j in final if j["release_tx"]}
    return {
        "jobs": jobs,
        "states": states,
        "submit_phase_ms": submitted - t0,
        "first_submit_to_last_settled_s": round(elapsed_s, 2) if elapsed_s else None,
        "jobs_per_s": round(len(settled_at) / elapsed_s, 2) if elapsed_s else 0.0,
        "stuck_job_events_by_reason": reasons,
        "release_transactions": len(release_txs),
        "client_phases_ms": {k: _summary(v) for k, v in phases.items()},
        "gas": gas,
        "load_avg": [load0, _load()],
        # CPU of every process of the network from the first submit until the poll saw the
        # last job end (up to 1 s after it, so it includes the receipts' handling): ms per
        # job in this burst, by process group ("nodes" = the full nodes, "nodes_children" =
        # their fork servers with the job children they reaped); and that CPU over the
        # burst's first submit → last settled, in cores (this host has 2).
        "cpu_ms_per_job": {
            **{group: round(seconds * 1000 / jobs, 2) for group, seconds in sorted(cpu.items())},
            "total": round(sum(cpu.values()) * 1000 / jobs, 2),
        },
        "swarm_cores_used": round(sum(cpu.values()) / elapsed_s, 2) if elapsed_s else None,
    }


def _quiet(limit_s: float = 60.0) -> float:
    """Wait (bounded) until the host is mostly idle again: the last round's payments and
    ads have gone out. Returns the idle share of the last 1 s window."""
    deadline = time.monotonic() + limit_s
    idle = idle_fraction(1.0)
    while idle < 0.8 and time.monotonic() < deadline:
        idle = idle_fraction(1.0)
    return idle


def bench_throughput(s: Swarm, jobs: int, rounds: int = BURST_ROUNDS) -> dict[str, Any]:
    """`rounds` bursts of `jobs` noop jobs on the same network, each after the host is
    quiet again; the headline is the median round (single rounds ranged ±25 % on this
    shared host), and every round is kept."""
    warmed = warm_up(s)
    say(f"  warm-up: {warmed} noop jobs settled (not counted)")
    results = []
    for r in range(rounds):
        idle = _quiet()
        one = _burst(s, jobs)
        one["idle_before"] = round(idle, 2)
        say(
            f"  round {r + 1}: {one['jobs_per_s']} jobs/s, {one['states']}, "
            f"{one['cpu_ms_per_job']['total']} ms of CPU per job"
        )
        results.append(one)
    ranked = sorted(results, key=lambda x: x["jobs_per_s"])
    median = ranked[len(ranked) // 2]
    return {
        **median,
        "rounds_jobs_per_s": [x["jobs_per_s"] for x in results],
        "rounds_cpu_ms_per_job": [x["cpu_ms_per_job"]["total"] for x in results],
        "rounds": results,
    }


def bench_throughput_window(s: Swarm, jobs: int, window: int) -> dict[str, Any]:
    """`jobs` noop jobs with at most `window` unsettled at a time (a client that paces
    itself); first submit → last `settled` event."""
    warmed = warm_up(s)
    say(f"  warm-up: {warmed} noop jobs settled (not counted)")
    load0 = _load()
    t0 = _now_ms()
    ids: list[str] = []
    open_ids: set[str] = set()
    deadline = time.monotonic() + 60 + jobs * 2.0
    final: dict[str, dict[str, Any]] = {}
    while (len(ids) < jobs or open_ids) and time.monotonic() < deadline:
        while len(ids) < jobs and len(open_ids) < window:
            ids.append(s.submit(NOOP))
            open_ids.add(ids[-1])
        time.sleep(0.05)  # a client's pacing; the poll asks for states only (cheap)
        for j in s.client.call("jobs", brief=True):
            if j["job_id"] in open_ids and j["state"] in TERMINAL:
                open_ids.discard(j["job_id"])
                final[j["job_id"]] = s.client.call("job_status", job_id=j["job_id"])
    states: dict[str, int] = {"unfinished": len(open_ids)} if open_ids else {}
    for j in final.values():
        states[j["state"]] = states.get(j["state"], 0) + 1
    settled_at = [
        next(e["timestamp"] for e in s.events(job) if e["state"] == "settled")
        for job, j in final.items()
        if j["state"] == "settled"
    ]
    elapsed_s = (max(settled_at) - t0) / 1000 if settled_at else None
    done = [j for j in final.values() if j["state"] == "settled"]
    return {
        "jobs": jobs,
        "window": window,
        "states": states,
        "first_submit_to_last_settled_s": round(elapsed_s, 2) if elapsed_s else None,
        "jobs_per_s": round(len(settled_at) / elapsed_s, 2) if elapsed_s else 0.0,
        "release_transactions": len({j["release_tx"] for j in done if j["release_tx"]}),
        "gas": _gas(done),
        "load_avg": [load0, _load()],
    }


def _gas(settled: list[dict[str, Any]]) -> dict[str, Any]:
    opens = [j["gas"]["open"] for j in settled if j["gas"]["open"] is not None]
    shares = [j["gas"]["release_share"] for j in settled if j["gas"]["release_share"] is not None]
    totals = [
        j["gas"]["open"] + j["gas"]["release_share"]
        for j in settled
        if j["gas"]["open"] is not None and j["gas"]["release_share"] is not None
    ]
    if not totals:
        return {"jobs": 0}
    return {
        "jobs": len(totals),
        "open_mean": round(statistics.fmean(opens)),
        "release_share_mean": round(statistics.fmean(shares)),
        "per_settled_job_mean": round(statistics.fmean(totals)),
        "per_settled_job_median": round(statistics.median(totals)),
        "per_settled_job_min": min(totals),
    }


# ------------------------------------------------------------------ transcode
def _local_transcode(source: Path, out: Path) -> float:
    from node.executors import ExecutionRequest
    from node.executors.registry import EXECUTORS
    from protocol.identity import Identity
    from protocol.jobs import InputRef, JobTemplate

    ref = InputRef(hashlib.sha256(source.read_bytes()).digest(), source.stat().st_size)
    spec = JobTemplate.from_json(TRANSCODE).bind(
        {"source": ref}, client=Identity.generate().did, nonce=os.urandom(16)
    )
    out.mkdir(parents=True)
    started = time.perf_counter()
    # The executor a worker runs (its child forked from the fork server, as in the swarm).
    result = EXECUTORS[spec.job_class].run(
        ExecutionRequest(spec, inputs={"source": source}, output_dir=out)
    )
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"local transcode failed: {result.manifest.get('error')}")
    return elapsed


def bench_transcode(s: Swarm, work: Path, rounds: int, seconds: float) -> dict[str, Any]:
    from testnet.testdata import make_clip

    load0 = _load()
    local: list[float] = []
    verified: list[float] = []
    settled: list[float] = []
    worker_run: list[float] = []
    for i in range(rounds):  # alternate, so drift in machine load hits both alike
        source = make_clip(work / f"clip-{i}.mp4", seconds=seconds, width=1280, height=720)
        local.append(_local_transcode(source, work / f"local-{i}"))
        t0 = _now_ms()
        job = s.submit(TRANSCODE, {"source": str(source)})
        st = s.settle(job, 600)
        first: dict[str, int] = {}
        for e in s.events(job):
            first.setdefault(e["state"], e["timestamp"])
        verified.append((first["verified"] - t0) / 1000)
        settled.append((first["settled"] - t0) / 1000)
        w = {e["state"]: e for e in s.events(job, st["workers"][0])}
        worker_run.append((w["committed"]["timestamp"] - w["running"]["timestamp"]) / 1000)
        say(
            f"  transcode {i + 1}/{rounds}: local {local[-1]:.2f} s, swarm "
            f"{verified[-1]:.2f} s to verified, {settled[-1]:.2f} s to settled"
        )
    lm = statistics.median(local)
    return {
        "source": f"1280x720 25 fps {seconds:g} s H.264+AAC (a fresh clip per round), "
        "spec/examples/media.transcode.json (360p h264 veryfast, HLS 2 s segments, 1 thread)",
        "local_executor_s": [round(x, 3) for x in local],
        "swarm_submit_to_verified_s": [round(x, 3) for x in verified],
        "swarm_submit_to_settled_s": [round(x, 3) for x in settled],
        "worker_running_to_committed_s": [round(x, 3) for x in worker_run],
        "ratio_settled": round(statistics.median(settled) / lm, 4),
        "ratio_verified": round(statistics.median(verified) / lm, 4),
        "ratio_per_round_settled": [round(a / b, 4) for a, b in zip(settled, local, strict=True)],
        "load_avg": [load0, _load()],
    }


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_swarm")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--skip-40", action="store_true", help="no 40-node network")
    parser.add_argument(
        "--only",
        choices=["dispatch", "throughput", "window", "transcode"],
        nargs="*",
        help="run these parts only, merging into the existing results file",
    )
    parser.add_argument(
        "--settings",
        default="{}",
        help="lifecycle settings (JSON) for every node of the throughput networks, e.g. "
        '\'{"open_max_wait_s": 2, "release_max_wait_s": 3}\'; results go under a key with '
        "this suffix",
    )
    parser.add_argument("--tag", default="", help="suffix for the result keys of this run")
    args = parser.parse_args([] if argv is None else argv)
    extra = json.loads(args.settings)
    tag = f"_{args.tag}" if args.tag else ""
    rounds = 5 if args.quick else 20
    jobs = 40 if args.quick else 150
    tc_rounds, tc_seconds = (1, 10.0) if args.quick else (5, 30.0)
    only = set(args.only or ["dispatch", "throughput", "window", "transcode"])
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            # which build: pyenv's and Debian's 3.11 differ by ~15 % of CPU per job
            "python_executable": os.path.realpath(getattr(sys, "_base_executable", "")),
            "cpus": os.cpu_count(),
            "load_avg_start": _load(),
        },
        "settings": {
            "redundancy": 1,
            "quick": args.quick,
            "lifecycle": "defaults; the 40-node network advertises noop only",
        },
    }

    def part(key: str, fn: Callable[[], dict[str, Any]]) -> None:
        """One part; a failure is recorded and the others still run."""
        try:
            results[key] = fn()
        except Exception as exc:
            say(f"!! {key} failed: {exc!r}")
            results[key] = {"error": repr(exc)[:500]}

    with tempfile.TemporaryDirectory(prefix="c0-bench-swarm-") as tmp:
        work = Path(tmp)

        def ten() -> dict[str, Any]:
            with swarm(10, work) as s:
                if "dispatch" in only:
                    say("dispatch, 10 nodes")
                    part("dispatch_10", lambda: bench_dispatch(s, rounds))
                if "transcode" in only:
                    say("transcode: swarm vs local executor")
                    part("transcode", lambda: bench_transcode(s, work, tc_rounds, tc_seconds))
                if "window" in only:
                    say(f"throughput: {jobs} noop jobs, at most {WINDOW} in flight")
                    part("throughput_window_10", lambda: bench_throughput_window(s, jobs, WINDOW))
            return {"ok": True}

        def burst() -> dict[str, Any]:
            with swarm(10, work / "burst", extra) as s:  # fresh network
                say(f"throughput: {jobs} noop jobs submitted at once")
                return {"lifecycle": extra, **bench_throughput(s, jobs)}

        def forty() -> dict[str, Any]:
            # Only noop advertised: 40 start-up fingerprint children importing PyAV and
            # llama.cpp at once overran their 60 s limit on 2 cores and the nodes exited.
            with swarm(40, work, {"prices": {"noop": 10**12}}) as s:
                say("dispatch, 40 nodes")
                return bench_dispatch(s, rounds)

        if only & {"dispatch", "transcode", "window"}:
            part("network_10", ten)
        if "throughput" in only:
            part("throughput_10" + tag, burst)
        if not args.skip_40 and "dispatch" in only:
            part("dispatch_40", forty)
    d10, d40 = results.get("dispatch_10", {}), results.get("dispatch_40", {})
    if d10.get("submit_to_worker_running_ms") and d40.get("submit_to_worker_running_ms"):
        results["dispatch_40_over_10"] = round(
            d40["submit_to_worker_running_ms"]["p50"] / d10["submit_to_worker_running_ms"]["p50"],
            3,
        )
    results["machine"]["load_avg_end"] = _load()
    if args.only and RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        old.setdefault("partial_runs", []).append(
            {"parts": sorted(only), "machine": results.pop("machine")}
        )
        results = {**old, **results}
    elif RESULTS.exists():
        # A full run replaces the canonical figures, not the tagged runs bench/README.md
        # cites (`<part>__<tag>`) nor the record of partial runs.
        old = json.loads(RESULTS.read_text())
        kept = {k: v for k, v in old.items() if "__" in k or k == "partial_runs"}
        results = {**kept, **results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
