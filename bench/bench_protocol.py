"""Sign+encode and verify+decode of a typical Offer, on one core."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

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
        input_providers=(client.peer_id,),
    )


def _rate(fn: object, n: int, rounds: int = 5) -> float:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)  # type: ignore[operator]
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    # One thread in one process: the figure is what one core does.
    client = Identity.generate()
    offer = typical_offer(client)
    n = 2000
    envelopes = [seal(client, offer, now=NOW) for _ in range(n)]
    sign_rate = _rate(lambda i: seal(client, offer, now=NOW), n)
    guard = ReplayGuard(capacity=10 * n)
    verify_rate = _rate(lambda i: open_envelope(envelopes[i], now=NOW), n)
    # With the replay guard on (fresh guard per round so nothing counts as a replay).
    guarded: list[float] = []
    for _ in range(5):
        guard = ReplayGuard(capacity=10 * n)
        start = time.perf_counter()
        for env in envelopes:
            open_envelope(env, now=NOW, replay_guard=guard)
        guarded.append(n / (time.perf_counter() - start))
    result = {
        "offer_envelope_bytes": len(envelopes[0]),
        "sign_encode_per_s": round(sign_rate),
        "verify_decode_per_s": round(verify_rate),
        "verify_decode_with_replay_guard_per_s": round(statistics.median(guarded)),
        "target_verify_per_s": 5000,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
