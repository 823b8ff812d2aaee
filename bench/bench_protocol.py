"""Sign+encode and verify+decode of a typical Offer, on one core."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from protocol import codec
from protocol.envelope import ReplayGuard, open_envelope, seal
from protocol.identity import Identity
from protocol.jobs import JobTemplate
from protocol.messages import Offer

RESULTS = Path(__file__).parent / "results" / "protocol.json"
NOW = 1_800_000_000_000


def typical_offer(client: Identity) -> Offer:
    spec = JobTemplate.from_json(
        {
            "job_class": "media.transcode",
            "params": {"height": 720, "video_codec": "h264", "crf": 23},
            "inputs": {"source": {"sha256": "ab" * 32, "size": 50_000_000}},
        }
    ).bind({}, client=client.did, nonce=os.urandom(16))
    return Offer(
        job_id=spec.job_id,
        spec=spec,
        attempt=1,
        redundancy=2,
        max_price=10**15,
        deadline=NOW + 600_000,
        commit_deadline=NOW + 300_000,
        chain_id=31337,
        escrow="0x" + "5f" * 20,
        arbiter="0x" + "a1" * 20,
        client_eth=client.eth_address,
        client_eth_sig=client.eth_binding().eth_sig,
        input_providers=(client.peer_id,),
        stake_lock=10**14,
        escrow_commit_deadline=NOW // 1000 + 300,
        escrow_deadline=NOW // 1000 + 600,
    )


def _rate(fn: object, n: int, rounds: int = 5) -> float:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)  # type: ignore[operator]
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def measure() -> dict[str, float]:
    """The figures of whichever codec implementation this process uses."""
    # One thread in one process: the figure is what one core does.
    client = Identity.generate()
    offer = typical_offer(client)
    n = 2000
    envelopes = [seal(client, offer, now=NOW) for _ in range(n)]
    sign_rate = _rate(lambda i: seal(client, offer, now=NOW), n)
    verify_rate = _rate(lambda i: open_envelope(envelopes[i], now=NOW), n)
    # With the replay guard on (fresh guard per round so nothing counts as a replay).
    guarded: list[float] = []
    for _ in range(5):
        guard = ReplayGuard(capacity=10 * n)
        start = time.perf_counter()
        for env in envelopes:
            open_envelope(env, now=NOW, replay_guard=guard)
        guarded.append(n / (time.perf_counter() - start))
    return {
        "offer_envelope_bytes": len(envelopes[0]),
        "sign_encode_per_s": round(sign_rate),
        "verify_decode_per_s": round(verify_rate),
        "verify_decode_with_replay_guard_per_s": round(statistics.median(guarded)),
    }


def _pure_python_figures() -> dict[str, float]:
    """The same measurement in a child that uses the plain Python codec (the baseline)."""
    env = {**os.environ, "C0_PURE_PYTHON": "1"}
    code = "import json, bench.bench_protocol as b; print(json.dumps(b.measure()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    # The pure-Python baseline and the compiled codec, alternating, three runs each.
    runs: dict[str, list[dict[str, float]]] = {"python": [], codec.IMPLEMENTATION: []}
    for _ in range(3):
        runs[codec.IMPLEMENTATION].append(measure())
        if codec.IMPLEMENTATION != "python":
            runs["python"].append(_pure_python_figures())

    def med(impl: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[impl]))

    result: dict[str, object] = {
        "implementation": codec.IMPLEMENTATION,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "offer_envelope_bytes": runs[codec.IMPLEMENTATION][0]["offer_envelope_bytes"],
        "sign_encode_per_s": med(codec.IMPLEMENTATION, "sign_encode_per_s"),
        "verify_decode_per_s": med(codec.IMPLEMENTATION, "verify_decode_per_s"),
        "verify_decode_with_replay_guard_per_s": med(
            codec.IMPLEMENTATION, "verify_decode_with_replay_guard_per_s"
        ),
        "verify_decode_runs_per_s": [r["verify_decode_per_s"] for r in runs[codec.IMPLEMENTATION]],
        "target_verify_per_s": 5000,
    }
    if runs["python"]:
        result["baseline_pure_python"] = {
            "sign_encode_per_s": med("python", "sign_encode_per_s"),
            "verify_decode_per_s": med("python", "verify_decode_per_s"),
            "verify_decode_runs_per_s": [r["verify_decode_per_s"] for r in runs["python"]],
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
