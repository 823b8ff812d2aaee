"""The two chains behind one interface: embedded py-evm (eth-tester) and any JSON-RPC endpoint."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import EthereumTesterProvider, HTTPProvider, Web3

from node.chain.rpc import JsonRpc
from protocol.errors import UserError

# The standard development mnemonic: anvil, hardhat and ganache fund its first accounts.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_CHAIN_ID = 31337
DEV_ACCOUNTS = 10


@dataclass
class Chain:
    """A connected chain: `w3` for calls, plus the dev-only conveniences tests and testnets use."""

    w3: Web3
    kind: str  # "embedded" or "rpc"
    chain_id: int
    url: str | None = None
    dev_keys: Sequence[bytes] = ()
    _tester: Any = field(default=None, repr=False)
    # JSON-RPC chains: the reads made on every job bypass web3 (see node/chain/rpc.py)
    rpc: JsonRpc | None = field(default=None, repr=False)

    def now(self) -> int:
        """Timestamp of the latest block: the clock the contract's deadlines are measured on."""
        if self.rpc is not None:
            return self.rpc.latest_timestamp()
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def eth_call(self, to: str, data: str) -> bytes:
        """The result of calling `to` with calldata `data` (hex) in the latest block."""
        if self.rpc is not None:
            return self.rpc.eth_call(to, data)
        return bytes(self.w3.eth.call({"to": to, "data": data}))  # type: ignore[typeddict-item]

    def eth_call_many(self, to: str, datas: list[str]) -> list[bytes]:
        """`eth_call` of each calldata: one JSON-RPC batch, or one call each in process."""
        if self.rpc is not None:
            return self.rpc.eth_call_many(to, datas)
        return [self.eth_call(to, d) for d in datas]

    def close(self) -> None:
        """Close this thread's JSON-RPC connection: a chain object used for set-up and
        then dropped would otherwise leave its socket to the garbage collector."""
        if self.rpc is not None:
            self.rpc.close()

    def dev_account(self, index: int) -> LocalAccount:
        if index >= len(self.dev_keys):
            raise UserError(f"{self.kind} chain {self.chain_id} has no funded dev account {index}")
        account: LocalAccount = Account.from_key(self.dev_keys[index])
        return account

    def advance_time(self, seconds: int) -> int:
        """Dev chains only: mine a block `seconds` later than the latest one; returns its time."""
        target = self.now() + seconds
        if self._tester is not None:
            self._tester.time_travel(target)
        elif self.dev_keys:
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        else:
            raise UserError("time travel needs a dev chain")
        return self.now()


def embedded_chain() -> Chain:
    """A fresh in-process chain (py-evm through eth-tester) with ten funded accounts."""
    from eth_tester import EthereumTester, PyEVMBackend  # type: ignore[import-untyped]

    tester = EthereumTester(PyEVMBackend())
    w3 = Web3(EthereumTesterProvider(tester))
    keys = [k.to_bytes() for k in tester.backend.account_keys]
    return Chain(
        w3=w3, kind="embedded", chain_id=int(w3.eth.chain_id), dev_keys=keys, _tester=tester
    )


def dev_keys_from_mnemonic(count: int = DEV_ACCOUNTS) -> list[bytes]:
    Account.enable_unaudited_hdwallet_features()
    return [
        bytes(Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key)
        for i in range(count)
    ]


def rpc_chain(
    url: str, *, chain_id: int | None = None, timeout: float = 10.0, dev: bool | None = None
) -> Chain:
    """Connect to a JSON-RPC endpoint; refuse it if it answers with another chain id.

    `dev` (default: chain id 31337) adds the funded accounts of the standard dev mnemonic.
    """
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            actual = int(w3.eth.chain_id)
            break
        except Exception as exc:  # connection refused, timeouts, HTTP errors
            if time.monotonic() > deadline:
                raise UserError(f"no JSON-RPC answer from {url}: {exc}") from exc
            time.sleep(0.2)
    if chain_id is not None and chain_id != actual:
        raise UserError(f"{url} serves chain id {actual}, expected {chain_id}")
    # web3's validation middleware asks the endpoint for its chain id before every call
    # and transaction (one more round trip each). The id was checked just above, and every
    # transaction this node signs names it (EIP-155), so a node on another chain refuses it.
    w3.middleware_onion.remove("validation")
    is_dev = actual == ANVIL_CHAIN_ID if dev is None else dev
    keys = dev_keys_from_mnemonic() if is_dev else []
    return Chain(
        w3=w3,
        kind="rpc",
        chain_id=actual,
        url=url,
        dev_keys=keys,
        rpc=JsonRpc(url, timeout=timeout),
    )
