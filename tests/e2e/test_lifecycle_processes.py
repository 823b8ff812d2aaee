"""End to end, the lifecycle's hard cases: real node processes on 127.0.0.1, a real anvil,
the real CLI. The process versions of the scenarios in tests/lifecycle/test_memory_swarm.py
(a client that vanishes, a job nobody can run, a client restarted mid-job, a lazy worker
copying a commitment); each test has a network of its own, since each breaks a node."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from node.chain.backends import rpc_chain
from node.control import ControlClient, control_path
from node.lifecycle.escrow import attempt_chain_id
from node.store import DB_FILE
from protocol.jobs import job_id_from_text
from testnet.invariants import check_testnet
from testnet.local import STATE_FILE, down, restart, up
from tests.e2e.test_swarm_processes import c0, client_home, escrow_view, poll

pytestmark = [pytest.mark.slow, pytest.mark.anvil]
NOOP = 10**12  # the default worker price of noop
TRANSCODE = 10**15  # … and of media.transcode
TERMINAL = ("settled", "refunded", "cancelled")


def _gone(pid: int) -> bool:
    try:
        return b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return True


@contextmanager
def network(
    directory: Path, nodes: int, lifecycle: dict[int, dict[str, Any]] | None = None
) -> Iterator[dict[str, Any]]:
    """A network of its own for one test, always taken down; no node process outlives it
    (restarted nodes included: their pids are in testnet.json), nor the chain."""
    state = up(nodes, directory, lifecycle=lifecycle)
    pids = {n["pid"] for n in state["nodes"]}
    try:
        yield state
        problems = check_testnet(state)  # the money invariants, read from the chain
        assert not problems, problems
    finally:
        down(directory)
        pids |= {n["pid"] for n in json.loads((directory / STATE_FILE).read_text())["nodes"]}
        assert all(_gone(pid) for pid in pids), pids
        assert _gone(state["chain"]["pid"])  # nor its anvil


def node_of(state: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [n for n in state["nodes"] if n["role"] == role]


def control_of(node: dict[str, Any]) -> ControlClient:
    return ControlClient(control_path(Path(node["home"])), timeout=30)


def await_offers(state: dict[str, Any], workers: int) -> None:
    control = control_of(node_of(state, "client")[0])
    poll(
        lambda: sum(1 for w in control.call("caps") if w["ad"]["prices"]) == workers,
        60,
        f"{workers} workers to advertise their prices",
    )


def submit(state: dict[str, Any], tmp_path: Path, spec: dict[str, Any], *args: str) -> str:
    """`c0 job submit` on the client node (returns at once); the job's id."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    done = c0("job", "submit", str(path), "--json", *args, home=client_home(state))
    assert done.returncode == 0, done.stderr[-2000:]
    reply = json.loads(done.stdout)
    assert reply["state"] == "requested"
    return str(reply["job_id"])


def wait_status(control: ControlClient, job: str, states: tuple[str, ...], limit_s: float) -> Any:
    return poll(
        lambda: (s := control.call("job_status", job_id=job))["state"] in states and s,
        limit_s,
        f"job {job} to reach {'/'.join(states)}",
    )


def chain_events(state: dict[str, Any], job: str, attempt: int) -> list[dict[str, Any]]:
    """The escrow's own events for one attempt of a job, read from the chain."""
    key = "0x" + attempt_chain_id(job_id_from_text(job), attempt).hex()
    return [e for e in escrow_view(state).job_events() if e["job_id"].lower() == key]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def sigkill(node: dict[str, Any]) -> None:
    """Kill a node as a crash would (no shutdown code runs) and reap it."""
    os.kill(node["pid"], signal.SIGKILL)
    os.waitpid(node["pid"], 0)  # our child: `up` started it from this process


def gas_spent(state: dict[str, Any], address: str, from_block: int) -> int:
    """Wei `address` paid for gas in the blocks after `from_block`."""
    w3 = rpc_chain(state["rpc_url"], chain_id=state["chain_id"]).w3
    total = 0
    for number in range(from_block + 1, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["from"].lower() == address.lower():
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                total += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return total


def worker_record(node: dict[str, Any], job: str) -> tuple[str, dict[str, Any]]:
    """A worker's own record of a job, read from its database (read-only)."""
    uri = f"file:{Path(node['home']) / DB_FILE}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        row = db.execute(
            "SELECT state, data FROM jobs WHERE job_id=?", (job_id_from_text(job),)
        ).fetchone()
    assert row is not None
    return str(row[0]), json.loads(row[1])


def test_client_vanishes_after_funding_and_workers_claim(tmp_path: Path) -> None:
    with network(tmp_path / "net", 3) as state:
        (client,) = node_of(state, "client")
        workers = node_of(state, "worker")
        control = control_of(client)
        view = escrow_view(state)
        await_offers(state, 2)
        before = {w["did"]: view.balance(w["eth_address"]) for w in workers}
        job = submit(
            state,
            tmp_path,
            {"job_class": "noop", "params": {"duration_ms": 3000}},
            "--redundancy",
            "2",
            "--max-price",
            str(NOOP),
            "--deadline",
            "20",
        )
        status = wait_status(control, job, ("running",), 60)
        assert sorted(status["workers"]) == sorted(before)
        funded = view.balance(client["eth_address"])  # the escrow is open: paid out of this
        assert kinds(chain_events(state, job, 1)) == ["opened"]
        sigkill(client)  # the client disappears with the escrow funded

        claimed = poll(
            lambda: [e for e in chain_events(state, job, 1) if e["event"] == "claimed"],
            90,
            "a worker to claim on chain",
        )
        events = chain_events(state, job, 1)
        assert claimed[0]["paid"] == 2 * NOOP
        committed = {e["worker"].lower() for e in events if e["event"] == "committed"}
        revealed = {e["worker"].lower() for e in events if e["event"] == "revealed"}
        assert committed == revealed == {w["eth_address"].lower() for w in workers}
        assert "released" not in kinds(events)
        assert "refunded" not in kinds(events)
        assert {w["did"]: view.balance(w["eth_address"]) - before[w["did"]] for w in workers} == {
            w["did"]: NOOP for w in workers
        }
        assert view.balance(client["eth_address"]) == funded  # no wei of it back to the client

        # Each worker's own record: both went the chain's way; exactly one claim landed.
        finals = [
            wait_status(control_of(w), job, ("claimed", "claim_failed", "settled_by_claim"), 30)[
                "state"
            ]
            for w in workers
        ]
        assert finals.count("claimed") == 1  # the other was refused, or saw it settled
        claimer = workers[finals.index("claimed")]
        w3 = rpc_chain(state["rpc_url"], chain_id=state["chain_id"]).w3
        assert w3.eth.get_transaction(claimed[0]["tx"])["from"] == claimer["eth_address"]
        for w in workers:
            phases = [
                e["detail"].get("phase") for e in control_of(w).call("job_events", job_id=job)
            ]
            assert "client_unreachable" in phases
            assert "committed_on_chain" in phases
            assert "revealed_on_chain" in phases


def test_no_worker_can_run_it_so_the_client_is_refunded(tmp_path: Path) -> None:
    not_media = tmp_path / "notes.txt"
    not_media.write_text("this is not a video\n" * 50)
    with network(tmp_path / "net", 3, lifecycle={3: {"max_attempts": 2}}) as state:
        (client,) = node_of(state, "client")
        control = control_of(client)
        view = escrow_view(state)
        chain = rpc_chain(state["rpc_url"], chain_id=state["chain_id"])
        await_offers(state, 2)
        start_block = chain.w3.eth.block_number
        wallet = chain.w3.eth.get_balance(client["eth_address"])
        whole = wallet + view.balance(client["eth_address"])
        job = submit(
            state,
            tmp_path,
            {"job_class": "media.transcode", "params": {"height": 72}},
            "--input",
            f"source={not_media}",
            "--redundancy",
            "2",
            "--max-price",
            str(10**16),
            "--deadline",
            "12",
        )
        poll(lambda: control.call("job_status", job_id=job)["escrow_tx"], 30, "the escrow")
        after_open = view.balance(client["eth_address"])
        (opened,) = chain_events(state, job, 1)
        assert opened["event"] == "opened"
        assert opened["escrowed"] == 2 * TRANSCODE

        final = wait_status(control, job, TERMINAL, 90)
        assert final["state"] == "refunded"
        states = [e["state"] for e in control.call("job_events", job_id=job)]
        assert "failed" in states
        assert states[-1] == "refunded"
        events = chain_events(state, job, 1)
        assert kinds(events) == ["opened", "refunded"]
        assert events[1]["client"].lower() == client["eth_address"].lower()
        assert events[1]["amount"] == 2 * TRANSCODE
        assert chain_events(state, job, 2) == []  # no worker was left to try: never funded
        assert view.balance(client["eth_address"]) == after_open + 2 * TRANSCODE  # every wei
        spent = gas_spent(state, client["eth_address"], start_block)
        assert spent > 0
        now = chain.w3.eth.get_balance(client["eth_address"]) + view.balance(client["eth_address"])
        assert now == whole - spent  # whole again, less the gas of deposit, open and refund
        report = c0("reconcile", "--json", home=Path(client["home"]))
        assert report.returncode == 0, report.stdout
        assert json.loads(report.stdout)["mismatches"] == []


def test_client_restarted_mid_job_resumes(tmp_path: Path) -> None:
    with network(tmp_path / "net", 3) as state:
        (client,) = node_of(state, "client")
        workers = node_of(state, "worker")
        view = escrow_view(state)
        await_offers(state, 2)
        before = {w["did"]: view.balance(w["eth_address"]) for w in workers}
        job = submit(
            state,
            tmp_path,
            {"job_class": "noop", "params": {"duration_ms": 6000}},
            "--redundancy",
            "2",
            "--max-price",
            str(NOOP),
            "--deadline",
            "120",
        )
        wait_status(control_of(client), job, ("running",), 60)
        sigkill(client)
        index = state["nodes"].index(client)
        restarted = restart(tmp_path / "net", index)  # same home, same database, same port
        assert restarted["pid"] != client["pid"]
        control = control_of(restarted)
        final = wait_status(control, job, TERMINAL, 90)
        assert final["state"] == "settled"
        assert final["attempt"] == 1  # the same attempt carried on, none started afresh
        assert list(final["verdicts"].values()) == [True, True]
        states = [e["state"] for e in control.call("job_events", job_id=job)]
        assert "resumed" in states
        assert states.index("running") < states.index("resumed")
        assert states[-1] == "settled"
        assert kinds(chain_events(state, job, 1)) == ["opened", "released"]  # paid once
        assert chain_events(state, job, 2) == []
        paid = {w["did"]: view.balance(w["eth_address"]) - before[w["did"]] for w in workers}
        assert paid == {w["did"]: NOOP for w in workers}
        report = c0("reconcile", "--json", home=Path(restarted["home"]))
        assert report.returncode == 0, report.stdout
        assert json.loads(report.stdout)["mismatches"] == []


def test_lazy_worker_copying_a_commitment_cannot_reveal_it(tmp_path: Path) -> None:
    """node-01 does no work, underbids to be chosen, and copies an honest worker's
    commitment on chain; node-00 is the arbiter, node-04 the client."""
    cheap = {"noop": NOOP // 10}
    lifecycle = {
        1: {"behaviour": "copy_commit", "prices": cheap},
        4: {"heartbeat_timeout_s": 3.0, "offer_fanout": 0},
    }
    with network(tmp_path / "net", 4, lifecycle=lifecycle) as state:
        (client,) = node_of(state, "client")
        control = control_of(client)
        lazy = state["nodes"][1]
        honest = [w for w in node_of(state, "worker") if w is not lazy]
        assert len(honest) == 2
        view = escrow_view(state)
        await_offers(state, 3)
        before = {w["did"]: view.balance(w["eth_address"]) for w in (lazy, *honest)}
        job = submit(
            state,
            tmp_path,
            {"job_class": "noop", "params": {}},
            "--redundancy",
            "2",
            "--max-price",
            str(NOOP),
            "--deadline",
            "20",
        )
        final = wait_status(control, job, TERMINAL, 90)
        assert final["state"] == "settled"
        assert final["attempt"] == 2  # attempt 1 failed: the lazy worker never delivered
        assert lazy["did"] not in final["workers"]
        events = control.call("job_events", job_id=job)
        first = next(e for e in events if e["attempt"] == 1 and e["state"] == "assigned")
        assert lazy["did"] in first["detail"]["workers"]
        (partner,) = [w for w in honest if w["did"] in first["detail"]["workers"]]

        # On chain, attempt 1: the lazy worker committed the honest one's commitment and
        # was refused its reveal; nobody reached quorum, so the client got it back.
        lazy_state = wait_status(control_of(lazy), job, ("claim_failed",), 60)["state"]
        assert lazy_state == "claim_failed"
        state_, record = worker_record(lazy, job)
        assert state_ == "claim_failed"
        assert record["reason"] == "reveal does not match commitment"
        commits = {
            e["worker"].lower(): e["commitment"]
            for e in chain_events(state, job, 1)
            if e["event"] == "committed"
        }
        assert commits[lazy["eth_address"].lower()] == commits[partner["eth_address"].lower()]
        assert record["copied"] == commits[partner["eth_address"].lower()].removeprefix("0x")
        poll(
            lambda: "refunded" in kinds(chain_events(state, job, 1)),
            60,
            "the client's refund of attempt 1",
        )
        first_events = chain_events(state, job, 1)
        revealed = [e["worker"].lower() for e in first_events if e["event"] == "revealed"]
        assert revealed == [partner["eth_address"].lower()]  # the lazy reveal never landed
        assert "claimed" not in kinds(first_events)
        assert kinds(chain_events(state, job, 2)) == ["opened", "released"]

        paid = {
            w["did"]: view.balance(w["eth_address"]) - before[w["did"]] for w in (lazy, *honest)
        }
        assert paid == {lazy["did"]: 0, **{w["did"]: NOOP for w in honest}}
        report = c0("reconcile", "--json", home=Path(client["home"]))
        assert report.returncode == 0, report.stdout
        assert json.loads(report.stdout)["mismatches"] == []
