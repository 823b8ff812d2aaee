"""A contract that re-enters the escrow when it receives ether cannot take more than it owns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import vyper
from vyper.compiler.settings import Settings

from tests.settlement.conftest import ETH, Parties

ATTACKER = Path(__file__).with_name("attacker.vy")


@pytest.fixture(scope="module")
def attacker_code() -> dict[str, object]:
    out = vyper.compile_code(
        ATTACKER.read_text(),
        output_formats=["abi", "bytecode"],
        settings=Settings(evm_version="prague"),
    )
    return dict(out)


@pytest.mark.parametrize("mode", [1, 2])
def test_reentrant_withdraw_cannot_drain(
    parties: Parties, attacker_code: dict[str, object], mode: int
) -> None:
    """mode 1 re-enters withdraw and lets the failure revert; mode 2 swallows it."""
    p = parties
    w3 = p.chain.w3
    me = p.outsider.account.address
    factory = w3.eth.contract(abi=attacker_code["abi"], bytecode=attacker_code["bytecode"])

    def mined(tx: Any) -> Any:
        # A JSON-RPC chain may answer eth_sendTransaction before the receipt is readable.
        return w3.eth.wait_for_transaction_receipt(tx, timeout=30, poll_latency=0.01)

    tx = factory.constructor(p.escrow).transact({"from": me})
    address = mined(tx)["contractAddress"]
    attacker = w3.eth.contract(address=address, abi=attacker_code["abi"])
    mined(attacker.functions.fund().transact({"from": me, "value": ETH // 100}))
    assert p.client.balance(address) == ETH // 100
    held = p.held()
    if mode == 1:
        # the inner withdraw reverts on the lock, so the whole payout reverts
        with pytest.raises(Exception):  # noqa: B017 - web3 and eth-tester raise different types
            attacker.functions.attack(ETH // 100, mode).transact({"from": me})
        assert p.client.balance(address) == ETH // 100
        assert p.held() == held
    else:
        mined(attacker.functions.attack(ETH // 100, mode).transact({"from": me}))
        # it got its own money once; the re-entry did nothing
        assert attacker.functions.reentered().call() is True
        assert attacker.functions.inner_ok().call() is False
        assert p.client.balance(address) == 0
        assert p.held() == held - ETH // 100
        assert w3.eth.get_balance(address) == ETH // 100
