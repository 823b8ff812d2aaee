"""Lifecycle settings (`<home>/lifecycle.toml`, optional) and the chain a node settles on
(`<home>/chain.json`, written by `c0 testnet up` or by the operator)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import UserError

__all__ = [
    "CHAIN_FILE",
    "SETTINGS_FILE",
    "ChainInfo",
    "LifecycleSettings",
    "load_chain",
    "load_settings",
]

CHAIN_FILE = "chain.json"
SETTINGS_FILE = "lifecycle.toml"


@dataclass(frozen=True)
class LifecycleSettings:
    """Timing, pricing and policy of the job lifecycle; every field has a default."""

    # worker side
    execute: bool = True  # a full node runs jobs; a light node never does
    prices: tuple[tuple[str, int], ...] = (
        ("noop", 10**12),
        ("media.probe", 10**13),
        ("media.thumbnail", 10**13),
        ("media.segment", 10**14),
        ("media.transcode", 10**15),
        ("llm.generate", 10**15),
    )
    max_concurrent: int = 2  # executor children at once
    # Jobs accepted beyond those, waiting for a child slot (heartbeating "queued"): while
    # one job runs, the next is funded and assigned, so the executor is not idle for the
    # ~0.8 s a job spends between its bid and its assignment. The ad advertises
    # max_concurrent + max_queued as the jobs this worker takes at once.
    max_queued: int = 4
    # A job's child runs this much below the node's CPU priority (a nice increment, 0..19):
    # on a busy host the node's own protocol work for every job goes first.
    job_nice: int = 10
    stake_wei: int = 10**17  # staked at start when the node has no stake yet
    # Asked by a client of each worker per job; lost to the client for a wrong result.
    stake_lock_wei: int = 10**14
    # The most a worker lets a client lock per job (it signs no Consent above this).
    max_stake_lock_wei: int = 10**15
    # Arbiters a worker accepts in the terms it signs; empty: only this node's own arbiter
    # (the `arbiter` setting, else the chain file's). Never the client or the worker.
    arbiters: tuple[str, ...] = ()
    # A worker declines an offer whose escrow commit deadline is nearer than this (chain s).
    min_commit_window_s: int = 5
    # Offers a worker keeps per client while they wait for an assignment; an offer not
    # assigned is forgotten after offer_keep_s.
    max_offers_per_client: int = 64
    offer_keep_s: float = 30.0
    heartbeat_s: float = 1.0
    # the behaviour a researcher injects (faults.py): "honest", "wrong_output", "lazy",
    # "copy_commit", "stall", "silent_arbiter"
    behaviour: str = "honest"
    # client side
    offer_fanout: int = 2  # offers sent = redundancy + this
    bid_timeout_s: float = 5.0
    bid_grace_s: float = 0.05  # once K bids are in, how long the other offers may still bid
    heartbeat_timeout_s: float = 10.0
    start_timeout_s: float = 30.0
    max_attempts: int = 3
    deposit_wei: int = 10**18  # topped up to when the free balance cannot cover an open
    release_batch: int = 50
    release_interval_s: float = 0.2
    open_interval_s: float = 0.0  # 0: jobs queued while an open is in flight share the next
    # A batch waits for jobs on their way to it (still bidding / not yet verified), this
    # long; a lone job never waits. An open holds up execution, a release only payment, so
    # releases wait longer: in a 150-job burst, 1 s gave 8-16 releases (~20,000 gas per
    # job for its share), 5 s gives 3-4 (~15,600). See bench/README.md, lifecycle. An
    # open waits about one bidding round (an offer and its bid take ~50-100 ms on a busy
    # host): while it waits, the winners' room at their workers stands idle. 0.5 s gave
    # a 150-job burst 35-41 jobs/s in the harness where 0.15 s gave 40-49, run for run.
    open_max_wait_s: float = 0.15
    release_max_wait_s: float = 5.0
    default_deadline_s: int = 300
    arbiter: str = ""  # Ethereum address named in the terms; default: the chain file's
    reputation_threshold: float = 0.3
    # arbiter side, a test hook: an arbiter waits this long (s) after it has recorded a
    # case before it judges it (a test kills it meanwhile to see the case resumed). 0 in
    # any real deployment.
    arbiter_hold_s: float = 0.0

    @property
    def capacity(self) -> int:
        """Jobs this worker takes at once: running, or accepted and waiting for a slot."""
        return max(1, self.max_concurrent) + max(0, self.max_queued)

    def price(self, job_class: str) -> int:
        return dict(self.prices)[job_class]


@dataclass(frozen=True)
class ChainInfo:
    rpc_url: str
    chain_id: int
    escrow: str
    arbiter: str = ""


def load_settings(home: Path, **overrides: Any) -> LifecycleSettings:
    path = home / SETTINGS_FILE
    values: dict[str, Any] = {}
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: {exc}") from None
    if "prices" in values:
        values["prices"] = tuple(sorted(values["prices"].items()))
    if isinstance(values.get("arbiters"), list):
        values["arbiters"] = tuple(str(a) for a in values["arbiters"])
    known = {f.name for f in dataclasses.fields(LifecycleSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    settings = LifecycleSettings(**{**values, **overrides})
    nice = settings.job_nice
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        raise UserError(f"{path}: job_nice must be a whole number from 0 to 19, not {nice!r}")
    return settings


def load_chain(home: Path) -> ChainInfo | None:
    path = home / CHAIN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return ChainInfo(
            str(data["rpc_url"]),
            int(data["chain_id"]),
            str(data["escrow"]),
            str(data.get("arbiter", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a chain description: {exc}") from None
