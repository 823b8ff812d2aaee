"""`c0 chain`: deploy the escrow to a chain and walk a job through it to check the chain."""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import replace
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from node.chain import Chain, EscrowClient, rpc_chain
from node.cli import emit
from protocol import settlement as S
from protocol.errors import UserError

KEY_ENV = "C0_ETH_KEY"


def register(subparsers: Any) -> None:
    chain = subparsers.add_parser("chain", help="escrow contract on an EVM chain")
    sub = chain.add_subparsers(dest="chain_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
        p.add_argument("--chain-id", type=int, help="refuse the endpoint if its chain id differs")
        p.add_argument(
            "--key",
            help=f"hex private key of the sender (default: ${KEY_ENV}, "
            "or the first funded account of a dev chain)",
        )
        p.add_argument("--confirmations", type=int, default=1)
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")

    deploy = sub.add_parser("deploy", help="deploy the escrow contract")
    common(deploy)
    deploy.add_argument(
        "--challenge-period",
        type=int,
        default=3600,
        help="seconds after a job's deadline in which a party may still dispute (default 3600)",
    )
    deploy.add_argument(
        "--ruling-period",
        type=int,
        default=3 * 86400,
        help="seconds the arbiter then has to resolve before a dispute lapses (default 3 days)",
    )
    deploy.set_defaults(func=cmd_deploy)

    selftest = sub.add_parser(
        "selftest", help="deposit, stake, open and release one job with the dev accounts"
    )
    common(selftest)
    selftest.add_argument("--escrow", help="use this deployed escrow instead of a fresh one")
    selftest.set_defaults(func=cmd_selftest)


def _connect(args: argparse.Namespace) -> Chain:
    return rpc_chain(args.rpc, chain_id=args.chain_id)


def _sender(args: argparse.Namespace, chain: Chain) -> LocalAccount:
    key = args.key or os.environ.get(KEY_ENV)
    if key:
        account: LocalAccount = Account.from_key(key)
        return account
    if chain.dev_keys:
        return chain.dev_account(0)
    raise UserError(f"no key for chain {chain.chain_id}: pass --key or set {KEY_ENV}")


def cmd_deploy(args: argparse.Namespace) -> int:
    chain = _connect(args)
    account = _sender(args, chain)
    for name in ("challenge_period", "ruling_period"):
        if not 0 < getattr(args, name) <= 365 * 86400:
            raise UserError(f"--{name.replace('_', '-')} must be 1 s to a year")
    client, tx = EscrowClient.deploy(
        chain,
        account,
        challenge_period=args.challenge_period,
        ruling_period=args.ruling_period,
        confirmations=args.confirmations,
    )
    out = {
        "escrow": client.address,
        "chain_id": chain.chain_id,
        "tx": tx.tx,
        "challenge_period": args.challenge_period,
        "ruling_period": args.ruling_period,
    }
    emit(
        out,
        as_json=args.json,
        text=f"escrow {client.address} on chain {chain.chain_id} (tx {tx.tx})",
    )
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    chain = _connect(args)
    if len(chain.dev_keys) < 4:
        raise UserError("selftest needs a dev chain with funded accounts (anvil: chain id 31337)")
    client_acct, worker_acct, verifier_acct, arbiter_acct = (chain.dev_account(i) for i in range(4))
    steps: list[dict[str, Any]] = []

    def step(name: str, result: Any) -> None:
        steps.append({"step": name, "tx": result.tx, "gas": result.gas_used, "block": result.block})
        if not args.json:
            print(f"{name:<10} gas {result.gas_used:>9,}  tx {result.tx}")

    if args.escrow:
        address = args.escrow
    else:
        deployer, tx = EscrowClient.deploy(chain, client_acct, confirmations=args.confirmations)
        address = deployer.address
        step("deploy", tx)
    client = EscrowClient(chain, address, client_acct, confirmations=args.confirmations)
    worker = EscrowClient(chain, address, worker_acct, confirmations=args.confirmations)
    payout, fee, lock = 10**15, 10**14, 10**14
    step("deposit", client.deposit(payout + fee))
    step("stake", worker.stake(lock))
    now = chain.now()
    terms = S.EscrowTerms(
        job_id=hashlib.sha256(f"c0 selftest {now} {os.urandom(8).hex()}".encode()).digest(),
        common=S.Common(
            client=client_acct.address,
            arbiter=arbiter_acct.address,
            commit_deadline=now + 3600,
            deadline=now + 7200,
            verifier=verifier_acct.address,
            verifier_fee=fee,
        ),
        assignments=(S.Assignment(worker_acct.address, payout, lock),),
    )
    terms = replace(terms, consents=(worker.sign_consent(terms),))
    worker_before = worker.balance()
    opened = client.open([terms])
    step("open", opened)
    (terms,) = opened.opened
    expires = now + 3600
    step("release", worker.release([terms], expires, client.sign_release([terms], expires)))
    if worker.balance() - worker_before != payout or client.job_status(terms) != S.STATUS_SETTLED:
        raise S.SettlementError("selftest: the release did not pay the worker")
    step("withdraw", worker.withdraw(payout))
    out = {
        "escrow": address,
        "chain_id": chain.chain_id,
        "job_id": "0x" + terms.job_id.hex(),
        "steps": steps,
        "ok": True,
    }
    if args.json:
        emit(out, as_json=True)
    else:
        print(f"ok: escrow {address} on chain {chain.chain_id} paid job 0x{terms.job_id.hex()}")
    return 0
