"""End to end: real node processes on 127.0.0.1, a real anvil, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.chain.backends import rpc_chain
from node.chain.client import EscrowClient
from node.control import ControlClient, control_path
from testnet.invariants import check_testnet
from testnet.local import down, up
from testnet.testdata import make_clip, make_tiny_gguf

pytestmark = [pytest.mark.slow, pytest.mark.anvil]
ROOT = Path(__file__).resolve().parents[2]
PRICE = 10**15  # the default worker price of noop is 10**12, of transcode/llm 10**15


def c0(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def client_home(state: dict[str, Any]) -> Path:
    return Path(next(n["home"] for n in state["nodes"] if n["role"] == "client"))


def escrow_view(state: dict[str, Any]) -> EscrowClient:
    chain = rpc_chain(state["rpc_url"], chain_id=state["chain_id"])
    return EscrowClient(chain, state["escrow"], chain.dev_account(9))


def poll(cond: Any, limit_s: float, what: str) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)  # polling other processes' state, bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("swarm")
    state = up(4, directory)
    try:
        yield state
        problems = check_testnet(state)  # the money invariants, after every test here
        assert not problems, problems
    finally:
        down(directory)
    for node in state["nodes"]:  # nothing left behind
        assert (
            not Path(f"/proc/{node['pid']}").exists()
            or b"zombie" in Path(f"/proc/{node['pid']}/status").read_bytes().lower()
        )


def test_transcode_and_inference_settle_and_reconcile(
    swarm: dict[str, Any], tmp_path: Path
) -> None:
    home = client_home(swarm)
    clip = make_clip(tmp_path / "clip.mp4", seconds=3.0, width=320, height=180)
    model = make_tiny_gguf(tmp_path / "tiny.gguf")
    results = {}
    for spec, binding in (
        ("media.transcode", f"source={clip}"),
        ("llm.generate", f"model={model}"),
    ):
        done = c0(
            "job",
            "submit",
            str(ROOT / f"spec/examples/{spec}.json"),
            "--input",
            binding,
            "--redundancy",
            "2",
            "--deadline",
            "120",
            "--wait",
            "--json",
            home=home,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results[spec] = json.loads(done.stdout)
        assert results[spec]["state"] == "settled"
        assert list(results[spec]["verdicts"].values()) == [True, True]
    fetched = c0(
        "job",
        "fetch",
        results["media.transcode"]["job_id"],
        "--output",
        str(tmp_path / "out"),
        "--json",
        home=home,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert any(f["name"].endswith(".m3u8") for f in json.loads(fetched.stdout))
    report = c0("reconcile", "--json", home=home)
    assert report.returncode == 0, report.stdout
    assert json.loads(report.stdout)["mismatches"] == []
    events = json.loads(
        c0("job", "events", results["llm.generate"]["job_id"], "--json", home=home).stdout
    )
    assert all(e["prompt_hash"] for e in events)
    assert "Once upon" not in json.dumps(events)


@pytest.mark.parametrize(
    ("spec", "args", "fragment"),
    [
        ({"job_class": "mine.bitcoin"}, [], "unknown job class"),
        ({"job_class": "media.transcode", "params": {"height": 99999}}, [], "above 2160"),
        ({"job_class": "noop"}, ["--deadline", "0"], "deadline has already passed"),
        ({"job_class": "noop"}, ["--max-price", "1"], "under every bid"),
        (
            {"job_class": "media.probe", "inputs": {"source": {"sha256": "ab" * 32, "size": 3}}},
            ["--input", "source=SELF"],
            "does not match",
        ),
    ],
)
def test_bad_jobs_fail_before_any_money_moves(
    swarm: dict[str, Any], tmp_path: Path, spec: dict[str, Any], args: list[str], fragment: str
) -> None:
    home = client_home(swarm)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    args = [a.replace("SELF", str(path)) for a in args]
    client_eth = next(n["eth_address"] for n in swarm["nodes"] if n["role"] == "client")
    view = escrow_view(swarm)
    before = (view.balance(client_eth), view.contract_balance())
    done = c0("job", "submit", str(path), *args, home=home)
    assert done.returncode != 0
    assert fragment in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (view.balance(client_eth), view.contract_balance()) == before


def test_worker_killed_mid_job_is_replaced_nobody_paid_twice(swarm: dict[str, Any]) -> None:
    home = client_home(swarm)
    control = ControlClient(control_path(home), timeout=60)
    view = escrow_view(swarm)
    workers = [n for n in swarm["nodes"] if n["role"] == "worker"]
    before = {n["did"]: view.balance(n["eth_address"]) for n in workers}
    spec = json.loads((ROOT / "spec/examples/noop.json").read_text())
    spec["params"] = {"duration_ms": 6000}
    job = control.call(
        "job_submit", spec=spec, inputs={}, redundancy=2, max_price=PRICE, deadline_s=180
    )["job_id"]
    status = poll(
        lambda: (s := control.call("job_status", job_id=job))["state"] == "running" and s,
        60,
        "the job to run",
    )
    victim = next(n for n in workers if n["did"] == status["workers"][0])
    os.kill(victim["pid"], signal.SIGKILL)
    final = poll(
        lambda: (
            (s := control.call("job_status", job_id=job))["state"] in ("settled", "refunded") and s
        ),
        150,
        "the job to finish",
    )
    assert final["state"] == "settled"
    assert final["attempt"] == 2
    assert victim["did"] not in final["workers"]
    paid = {n["did"]: view.balance(n["eth_address"]) - before[n["did"]] for n in workers}
    assert paid[victim["did"]] == 0
    assert sorted(paid.values()) == [0, 10**12, 10**12]


def test_wrong_output_disputed_arbiter_pays_honest_and_slashes(tmp_path: Path) -> None:
    """Separate network: an arbiter, two workers (one corrupts its results), a client."""
    state = up(3, tmp_path / "net", lifecycle={2: {"behaviour": "wrong_output"}})
    try:
        home = client_home(state)
        control = ControlClient(control_path(home), timeout=60)
        view = escrow_view(state)
        honest, wrong = (n for n in state["nodes"] if n["role"] == "worker")
        assert Path(wrong["home"]).name == "node-02"
        balances = {n["did"]: view.balance(n["eth_address"]) for n in (honest, wrong)}
        stake = view.stake_of(wrong["eth_address"])
        poll(
            lambda: sum(1 for w in control.call("caps") if w["ad"]["prices"]) == 2,
            60,
            "both workers to advertise",
        )
        spec = json.loads((ROOT / "spec/examples/noop.json").read_text())
        job = control.call(
            "job_submit", spec=spec, inputs={}, redundancy=2, max_price=PRICE, deadline_s=120
        )["job_id"]
        final = poll(
            lambda: (
                (s := control.call("job_status", job_id=job))["state"] in ("settled", "refunded")
                and s
            ),
            120,
            "the arbiter's ruling",
        )
        assert final["state"] == "settled"
        assert final["verdicts"] == {honest["did"]: True, wrong["did"]: False}
        assert view.balance(honest["eth_address"]) - balances[honest["did"]] == 10**12
        assert view.balance(wrong["eth_address"]) == balances[wrong["did"]]
        assert view.stake_of(wrong["eth_address"]) < stake  # its stake lock was slashed
        states = [e["state"] for e in control.call("job_events", job_id=job)]
        assert "disputed" in states
        assert states[-1] == "settled"
        reps = {r["worker"]: r for r in control.call("reputation") if r["job_class"] == "noop"}
        assert reps[wrong["did"]]["score"] < reps[honest["did"]]["score"]
        problems = check_testnet(state)
        assert not problems, problems
    finally:
        down(tmp_path / "net")


def test_submit_without_a_running_node_uses_an_ephemeral_light_node(
    swarm: dict[str, Any], tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    from node.config import CONFIG_FILE, load_config, render_config

    source = client_home(swarm)
    home = tmp_path / "visitor"
    home.mkdir()
    config = load_config(source / CONFIG_FILE)
    network = {f.name: getattr(config.network, f.name) for f in dataclasses.fields(config.network)}
    network["listen"] = ("/ip4/127.0.0.1/tcp/0",)
    (home / CONFIG_FILE).write_text(render_config(config.replace(network=network)))
    shutil.copy(source / "chain.json", home / "chain.json")
    created = c0("identity", "new", "--json", home=home)
    assert created.returncode == 0, created.stderr
    swarm.setdefault("visitors", []).append(str(home))  # its money counts in the checks
    chain = rpc_chain(swarm["rpc_url"], chain_id=swarm["chain_id"])
    funder = chain.dev_account(3)  # a visitor brings its own money
    tx = funder.sign_transaction(
        {
            "to": json.loads(created.stdout)["eth_address"],
            "value": 10**19,
            "gas": 21_000,
            "nonce": chain.w3.eth.get_transaction_count(funder.address),
            "chainId": chain.chain_id,
            "maxFeePerGas": 50 * 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    chain.w3.eth.wait_for_transaction_receipt(chain.w3.eth.send_raw_transaction(tx.raw_transaction))
    done = c0(
        "job",
        "submit",
        str(ROOT / "spec/examples/noop.json"),
        "--redundancy",
        "1",
        "--deadline",
        "120",
        "--json",
        home=home,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout)
    assert status["state"] == "settled"
    assert len(status["workers"]) == 1
    assert not control_path(home).exists()  # it ran for this job only
