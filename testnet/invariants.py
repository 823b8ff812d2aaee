"""The money invariants of a whole swarm, read from the chain (issue 18).

Run at the end of every lifecycle and end-to-end test (tests/lifecycle/conftest.py,
tests/e2e): given the escrow, the accounts of the swarm and the terms of every escrow its
clients opened (from their job records), it checks

1. **conservation**: the contract's ether = Σ free balances + Σ free stakes of the swarm's
   accounts + Σ escrowed amounts and stake locks of the escrows still open or disputed
   (money of nobody the swarm knows, or an escrow no client recorded, breaks it);
2. **no double pay**: at most one attempt of a job was paid (released, claimed, or resolved
   with something to the workers), and no escrow closed twice;
3. **no theft**: every `Slashed` comes in the transaction of a `Claimed` or a `Resolved`
   (a failed quorum or an arbiter's ruling), never alone;
4. **nothing frozen**: no escrow is open or disputed past its deadline + the challenge
   period + the ruling period (+ `slack_s` for the keeper's pacing).

`check_money` returns the violations as lines (empty: all hold); `check_testnet` runs it
on a testnet of real processes (testnet/local.py), reading every node's database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node.chain.client import EscrowClient
from protocol.settlement import STATUS_DISPUTED, STATUS_OPEN, EscrowTerms

__all__ = ["check_money", "check_testnet", "terms_of_records"]

_PAID = ("released", "claimed")
_CLOSING = ("released", "claimed", "refunded", "resolved", "lapsed")


def terms_of_records(records: Iterable[Any]) -> dict[bytes, list[EscrowTerms]]:
    """The opened terms of every attempt in client job records: job id -> terms."""
    from node.lifecycle.escrow import terms_from_json

    out: dict[bytes, list[EscrowTerms]] = defaultdict(list)
    for rec in records:
        if rec.role != "client":
            continue
        for info in rec.data.get("attempts", {}).values():
            terms = info.get("terms", {})
            if "escrow" in terms:
                out[rec.job_id].append(terms_from_json(terms))
    return dict(out)


def check_money(
    escrow: EscrowClient,
    accounts: Iterable[str],
    jobs: dict[bytes, list[EscrowTerms]],
    *,
    slack_s: int = 30,
) -> list[str]:
    problems: list[str] = []
    challenge, ruling = escrow.periods()
    now = escrow.chain.now()
    held = escrow.contract_balance()
    free = sum(escrow.balance(a) + escrow.stake_of(a) for a in set(accounts))
    locked = 0
    events = escrow.job_events()
    by_chain_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_tx: dict[str, set[str]] = defaultdict(set)
    for e in events:
        by_chain_id[str(e.get("job_id", "")).lower()].append(e)
        by_tx[str(e.get("tx"))].add(str(e["event"]))
    for job_id, attempts in jobs.items():
        paid = []
        for terms in attempts:
            status = escrow.job_status(terms)
            key = "0x" + terms.job_id.hex()
            evs = by_chain_id.get(key, [])
            if status in (STATUS_OPEN, STATUS_DISPUTED):
                locked += terms.escrowed + sum(a.stake_lock for a in terms.assignments)
                limit = terms.common.deadline + challenge + ruling + slack_s
                if now > limit:
                    problems.append(f"escrow {key[:14]} still locked {now - limit} s past its end")
            closings = [e for e in evs if e["event"] in _CLOSING]
            if len(closings) > 1:
                problems.append(f"escrow {key[:14]} closed {len(closings)} times")
            for e in closings:
                if e["event"] in _PAID or (
                    e["event"] == "resolved" and int(e.get("to_workers", 0)) > 0
                ):
                    paid.append(key)
        if len(set(paid)) > 1:
            problems.append(f"job {job_id.hex()[:16]} paid in {len(set(paid))} attempts")
    if held != free + locked:
        problems.append(
            f"conservation: contract holds {held}, accounts + open escrows hold {free + locked}"
        )
    for e in events:
        if e["event"] == "slashed" and not by_tx[str(e["tx"])] & {"claimed", "resolved"}:
            problems.append(f"slash without a claim or a ruling in tx {e['tx']}")
    return problems


def check_testnet(state: dict[str, Any]) -> list[str]:
    """`check_money` on a running testnet (`testnet.local.up`'s state): its escrow, the
    address of every node, every dev account and every visitor (homes listed under
    `state["visitors"]`: an ephemeral node a test ran), and the terms in all their job
    records (read from their databases while they run)."""
    from node.chain.backends import rpc_chain
    from node.home import load_identity
    from node.store import DB_FILE, Store

    chain = rpc_chain(state["rpc_url"], chain_id=state["chain_id"])
    escrow = EscrowClient(chain, state["escrow"], chain.dev_account(0))
    accounts = [n["eth_address"] for n in state["nodes"]]
    accounts += [chain.dev_account(i).address for i in range(len(chain.dev_keys))]
    visitors = [Path(home) for home in state.get("visitors", [])]
    accounts += [load_identity(home).eth_address for home in visitors]
    records = []
    for home in [Path(node["home"]) for node in state["nodes"]] + visitors:
        store = Store(home / DB_FILE)
        try:
            records += store.jobs()
        finally:
            store.close()
    return check_money(escrow, accounts, terms_of_records(records))
