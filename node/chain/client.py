"""EscrowClient: the node's side of settlement, one interface over any Chain.

Every state-changing call is simulated first (gas estimation), so a call the contract
would refuse raises SettlementError with the contract's own reason and spends nothing.
A transaction is signed once; after an RPC error the client looks the transaction up by
its hash and re-sends the same signed bytes, so a retry can never pay twice (same nonce,
same hash).
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from node.chain.artifact import escrow_artifact
from node.chain.backends import Chain
from node.chain.events import decode_logs, job_events
from node.chain.rpc import RpcError
from protocol import settlement as S
from protocol.abi import encode as abi_encode
from protocol.settlement import ChainUnavailable, EscrowTerms, SettlementError

GAS_MARGIN = 1.2
GAS_EXTRA = 20_000
PRIORITY_FEE = 10**9  # 1 gwei tip when the node cannot tell us one
TIP_TTL_S = 60.0
_TIPS: dict[int, tuple[float, int]] = {}  # id(chain) -> (when asked, suggested tip)
# RPC answers that mean "this exact transaction already reached the node"
ALREADY_SENT = ("already known", "known transaction", "nonce too low", "already imported")


@dataclass(frozen=True)
class TxResult:
    """A mined transaction: its hash, block and gas, plus the job events it produced.

    After `open`, `opened` holds the batch's terms in the order given, each carrying its
    escrow ref (sequence number and Merkle proof): every later call about a job needs it.
    """

    tx: str
    block: int
    gas_used: int
    events: tuple[dict[str, Any], ...] = ()
    contract_address: str | None = None
    opened: tuple[EscrowTerms, ...] = ()


def revert_reason(exc: BaseException) -> str | None:
    """The contract's revert text from a web3 or eth-tester exception, if it carries one."""
    text = str(getattr(exc, "message", None) or exc)
    marker = "execution reverted"
    if marker not in text:
        return None
    reason = text.split(marker, 1)[1].lstrip(": ").strip().strip("'\"")
    return reason or "reverted without a reason"


class EscrowClient:
    """Talks to one escrow contract as one account. Thread-safe: one nonce sequence per client."""

    def __init__(
        self,
        chain: Chain,
        address: str,
        account: LocalAccount,
        *,
        confirmations: int = 1,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        self.chain = chain
        self.w3 = chain.w3
        self.address = to_checksum_address(address)
        self.account = account
        self.confirmations = max(1, confirmations)
        self.timeout = timeout
        self.retries = retries
        self.contract = self.w3.eth.contract(address=self.address, abi=escrow_artifact()["abi"])
        self._functions = _functions(escrow_artifact()["abi"])
        self._nonce: int | None = None
        self._periods: tuple[int, int] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ deployment

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        account: LocalAccount,
        *,
        challenge_period: int = S.DEV_CHALLENGE_PERIOD,
        ruling_period: int = S.DEV_RULING_PERIOD,
        **kwargs: Any,
    ) -> tuple[EscrowClient, TxResult]:
        """Deploy a fresh escrow (native ether) and return a client for it. The periods
        (seconds) default to the short ones of a local testnet (spec/settlement.md)."""
        art = escrow_artifact()
        factory = chain.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        data = factory.constructor(
            S.ZERO_ADDRESS, challenge_period, ruling_period
        ).data_in_transaction
        sender = _Sender(chain, account, timeout=kwargs.get("timeout", 60.0))
        result = sender.transact(to=None, data=data, value=0)
        assert result.contract_address is not None
        return cls(chain, result.contract_address, account, **kwargs), result

    # ------------------------------------------------------------ views

    def balance(self, who: str | None = None) -> int:
        return self._view_uint("balances", to_checksum_address(who or self.account.address))

    def stake_of(self, who: str | None = None) -> int:
        return self._view_uint("stakes", to_checksum_address(who or self.account.address))

    def job_status(self, terms: EscrowTerms) -> int:
        """STATUS_* of the escrow `terms.ref` points at, or STATUS_UNKNOWN if it does not hold
        exactly these terms."""
        if terms.ref is None:
            return S.STATUS_UNKNOWN
        selector, _ = self._functions["job_status"]
        return self._read_uint("0x" + (selector + S.job_args_encoding(terms)).hex())

    def job_statuses(self, batch: list[EscrowTerms]) -> list[int]:
        """`job_status` of each terms, read in one batch."""
        selector, _ = self._functions["job_status"]
        located = [t for t in batch if t.ref is not None]
        datas = ["0x" + (selector + S.job_args_encoding(t)).hex() for t in located]
        words = iter(self.chain.eth_call_many(self.address, datas))
        return [
            S.STATUS_UNKNOWN if t.ref is None else int(abi_decode(["uint256"], next(words))[0])
            for t in batch
        ]

    def periods(self) -> tuple[int, int]:
        """(CHALLENGE_PERIOD, RULING_PERIOD) of this escrow, in seconds; read once."""
        if self._periods is None:
            self._periods = (
                self._view_uint("CHALLENGE_PERIOD"),
                self._view_uint("RULING_PERIOD"),
            )
        return self._periods

    def top_votes(self, seq: int) -> int:
        """The most reveals any one result has on the escrow numbered `seq`."""
        return self._view_uint("top_votes", seq)

    def status(self, seq: int) -> int:
        """STATUS_* of the escrow numbered `seq`."""
        return self._view_uint("status", seq)

    def contract_balance(self) -> int:
        return int(self.w3.eth.get_balance(self.address))

    # ------------------------------------------------------------ money in and out

    def deposit(self, amount: int) -> TxResult:
        return self._call("deposit", value=amount)

    def withdraw(self, amount: int) -> TxResult:
        return self._call("withdraw", amount)

    def stake(self, amount: int) -> TxResult:
        return self._call("stake", value=amount)

    def unstake(self, amount: int) -> TxResult:
        return self._call("unstake", amount)

    # ------------------------------------------------------------ job escrow

    def open(self, batch: Sequence[EscrowTerms]) -> TxResult:
        """Fund every job of `batch` in one transaction; `result.opened` is the batch with
        each job's escrow ref, in the order given."""
        now = self.chain.now()
        for terms in batch:
            S.validate_terms(terms, now=now)
            if terms.common.client.lower() != self.account.address.lower():
                raise SettlementError("only the client opens its jobs")
        ordered = sorted(batch, key=lambda t: t.job_id)  # the contract wants ascending IDs
        for a, b in itertools.pairwise(ordered):
            if a.job_id == b.job_id:
                raise SettlementError("duplicate job id")
        result = self._call("open", *S.open_args(ordered))
        opened = [e for e in result.events if e["event"] == "opened"]
        if not opened:
            raise SettlementError("open mined without an Opened event", result.tx)
        located = {t.job_id: t for t in S.locate_batch(ordered, int(opened[0]["first"]))}
        return replace(result, opened=tuple(located[t.job_id] for t in batch))

    def sign_consent(self, terms: EscrowTerms, index: int = -1) -> bytes:
        """This account's consent to `terms` as the worker of `assignments[index]` (its own
        assignment when `index` is -1)."""
        if index < 0:
            mine = [
                i
                for i, a in enumerate(terms.assignments)
                if a.worker.lower() == self.account.address.lower()
            ]
            if len(mine) != 1:
                raise SettlementError("not an assigned worker")
            index = mine[0]
        return S.sign_consent(
            self.account.key, self.chain.chain_id, self.address, S.consent_for(terms, index)
        )

    def sign_release(self, batch: Sequence[EscrowTerms], expires: int) -> bytes:
        """The client's receipt for `batch`, valid on this chain and contract until `expires`."""
        seqs = [t.located().seq for t in batch]
        return S.sign_release(self.account.key, self.chain.chain_id, self.address, seqs, expires)

    def release(self, batch: Sequence[EscrowTerms], expires: int, signature: bytes) -> TxResult:
        """Submit a client's signed receipt (any account may); pays every job of `batch`."""
        seqs = [t.located().seq for t in batch]
        signer = S.recover_release_signer(
            signature, self.chain.chain_id, self.address, seqs, expires
        )
        if any(t.common.client.lower() != signer.lower() for t in batch):
            raise SettlementError("receipt not signed by the client")
        commons, jobs = S.group_terms(batch)
        refs = [t.located().as_abi() for t in batch]
        return self._call("release", commons, jobs, refs, expires, signature)

    def commit(self, terms: EscrowTerms, commitment: bytes) -> TxResult:
        return self._call("commit", *_job_args(terms), commitment)

    def reveal(self, terms: EscrowTerms, result_hash: bytes, salt: bytes) -> TxResult:
        return self._call("reveal", *_job_args(terms), result_hash, salt)

    def claim(self, terms: EscrowTerms, result_hash: bytes) -> TxResult:
        return self._call("claim", *_job_args(terms), result_hash)

    def refund(self, terms: EscrowTerms) -> TxResult:
        return self._call("refund", *_job_args(terms))

    def dispute(self, terms: EscrowTerms) -> TxResult:
        return self._call("dispute", *_job_args(terms))

    def lapse(self, terms: EscrowTerms) -> TxResult:
        """Close a dispute its arbiter left past the ruling deadline (anyone may)."""
        return self._call("lapse", *_job_args(terms))

    def resolve(
        self,
        terms: EscrowTerms,
        worker_pay: Sequence[int],
        slash: Sequence[int],
        verifier_pay: int = 0,
    ) -> TxResult:
        S.validate_split(terms, worker_pay, slash, verifier_pay)
        return self._call(
            "resolve",
            *_job_args(terms),
            list(worker_pay),
            list(slash),
            verifier_pay,
        )

    # ------------------------------------------------------------ events

    def job_events(
        self, from_block: int = 0, to_block: int | str = "latest"
    ) -> list[dict[str, Any]]:
        logs = self.w3.eth.get_logs(
            {"address": self.address, "fromBlock": from_block, "toBlock": to_block}  # type: ignore[typeddict-item]
        )
        return job_events(self.contract, logs)

    # ------------------------------------------------------------ plumbing

    def encode_call(self, fn_name: str, *args: Any) -> str:
        """Calldata of `fn_name(*args)`, hex. The ABI is encoded with eth_abi directly:
        web3's contract layer re-normalises every argument on each call, which made it
        the largest CPU cost of a worker's job (one status read per job at least)."""
        selector, types = self._functions[fn_name]
        return "0x" + (selector + abi_encode(types, args)).hex()

    def _view_uint(self, fn_name: str, *args: Any) -> int:
        return self._read_uint(self.encode_call(fn_name, *args))

    def _read_uint(self, calldata: str) -> int:
        return int(abi_decode(["uint256"], self.chain.eth_call(self.address, calldata))[0])

    def _call(self, fn_name: str, *args: Any, value: int = 0) -> TxResult:
        data = self.encode_call(fn_name, *args)
        with self._lock:
            sender = self._sender()
            try:
                result = sender.transact(to=self.address, data=data, value=value)
            finally:
                # A transaction mined with a revert still used its nonce: keep counting.
                self._nonce = sender.nonce
        logs = sender.receipt["logs"]
        return TxResult(
            tx=result.tx,
            block=result.block,
            gas_used=result.gas_used,
            events=tuple(job_events(self.contract, logs)),
        )

    def _sender(self) -> _Sender:
        return _Sender(
            self.chain,
            self.account,
            nonce=self._nonce,
            timeout=self.timeout,
            retries=self.retries,
            confirmations=self.confirmations,
        )

    def decode_receipt_logs(self, tx: str) -> list[dict[str, Any]]:
        logs = self.w3.eth.get_transaction_receipt(HexBytes(tx))["logs"]
        return decode_logs(self.contract, logs)


class _Sender:
    """Signs, sends, retries and confirms one account's transactions."""

    def __init__(
        self,
        chain: Chain,
        account: LocalAccount,
        *,
        nonce: int | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        confirmations: int = 1,
    ) -> None:
        self.chain = chain
        self.w3 = chain.w3
        self.account = account
        self.nonce = nonce
        self.timeout = timeout
        self.retries = retries
        self.confirmations = confirmations
        self.receipt: Any = None  # the last transaction's receipt
        # JSON-RPC chains: transactions go over the lean client too (node/chain/rpc.py)
        self.rpc = chain.rpc

    def transact(self, *, to: str | None, data: str | bytes, value: int) -> TxResult:
        tx: dict[str, Any] = {
            "from": self.account.address,
            "data": HexBytes(data),
            "value": value,
            "chainId": self.chain.chain_id,
        }
        if to is not None:
            tx["to"] = to
        if self.rpc is not None:
            self._prepare_rpc(tx)
        else:
            latest = self.w3.eth.get_block("latest")  # one read for the gas limit and fees
            tx["gas"] = self._estimate(tx, int(latest["gasLimit"]))
            tx.update(self._fees(latest))
            if self.nonce is None:
                self.nonce = int(self.w3.eth.get_transaction_count(self.account.address, "pending"))
        assert self.nonce is not None
        tx["nonce"] = self.nonce
        del tx["from"]
        signed = self.account.sign_transaction(tx)
        raw = bytes(signed.raw_transaction)
        tx_hash = "0x" + keccak(raw).hex()
        self._broadcast(raw, tx_hash)
        self.nonce += 1  # the chain has this nonce now, mined or pending
        receipt = self._wait(tx_hash)
        if receipt["status"] != 1:
            raise SettlementError(self._replay_reason(tx, receipt), f"tx {tx_hash}")
        self.receipt = receipt
        address = receipt.get("contractAddress")
        return TxResult(
            tx=tx_hash,
            block=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            contract_address=str(address) if address else None,
        )

    def _prepare_rpc(self, tx: dict[str, Any]) -> None:
        """Gas, fees and (if not yet known) the nonce of `tx`, from one JSON-RPC batch: the
        latest block, the estimate in the pending block, the pending nonce and the
        suggested tip. web3 made these four reads (and the receipt polls) the dearest part
        of a client's batch transaction: ~2 ms of CPU each, ~0.2 ms here."""
        assert self.rpc is not None
        data = "0x" + bytes(tx["data"]).hex()
        call = {"from": tx["from"], "data": data, "value": hex(tx["value"])}
        if "to" in tx:
            call["to"] = tx["to"]
        calls: list[tuple[str, list[Any]]] = [
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_estimateGas", [call, "pending"]),  # why pending: see _estimate
        ]
        if self.nonce is None:
            calls.append(("eth_getTransactionCount", [tx["from"], "pending"]))
        tip = _cached_tip(self.chain)
        if tip is None:
            calls.append(("eth_maxPriorityFeePerGas", []))
        try:
            replies = self._rpc(lambda: self._batch(calls))
        except (RpcError, OSError, http.client.HTTPException) as exc:
            raise ChainUnavailable(str(exc)) from exc
        block, estimate = replies[0], replies[1]
        if isinstance(estimate, RpcError):
            raise _refusal(estimate)
        if isinstance(block, RpcError) or not isinstance(block, dict):
            raise ChainUnavailable(f"latest block: {block}")
        extra = replies[2:]
        if self.nonce is None:
            nonce, extra = extra[0], extra[1:]
            if isinstance(nonce, RpcError):
                raise ChainUnavailable(f"nonce: {nonce}")
            self.nonce = int(nonce, 16)
        if tip is None:
            asked = extra[0]
            # not every node implements eth_maxPriorityFeePerGas
            tip = PRIORITY_FEE if isinstance(asked, RpcError) else int(asked, 16)
            _TIPS[id(self.chain)] = (time.monotonic(), tip)
        tx["gas"] = _gas_limit(int(estimate, 16), int(block["gasLimit"], 16))
        base = block.get("baseFeePerGas")
        if base is None:
            try:
                tx["gasPrice"] = int(self._rpc(lambda: self._one("eth_gasPrice", [])), 16)
            except (RpcError, OSError, http.client.HTTPException) as exc:
                raise ChainUnavailable(str(exc)) from exc
        else:
            tx.update(_fee_caps(int(base, 16), tip))

    def _batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        assert self.rpc is not None
        return self.rpc.call_many(calls)

    def _one(self, method: str, params: list[Any]) -> Any:
        assert self.rpc is not None
        return self.rpc.call(method, params)

    def _estimate(self, tx: dict[str, Any], limit: int) -> int:
        # Estimate in the pending block, the one the transaction joins: by default an RPC
        # node (anvil) uses the latest block, whose timestamp lags the clock on an idle
        # chain, so a reveal, claim or refund due by now would be refused as too early.
        # The embedded chain (eth-tester) has no pending estimate: its default stays.
        block = None if self.chain.kind == "embedded" else "pending"
        try:
            estimate = int(self._rpc(lambda: self.w3.eth.estimate_gas(tx, block)))  # type: ignore[arg-type]
        except SettlementError:
            raise
        except Exception as exc:
            raise _refusal(exc) from exc
        return _gas_limit(estimate, limit)

    def _fees(self, latest: Any) -> dict[str, int]:
        base = latest.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": int(self.w3.eth.gas_price)}
        return _fee_caps(int(base), self._tip())

    def _tip(self) -> int:
        """The node's suggested priority fee, asked once a minute per chain (it moves slowly)."""
        now = time.monotonic()
        cached = _cached_tip(self.chain)
        if cached is not None:
            return cached
        try:
            tip = int(self.w3.eth.max_priority_fee)
        except Exception:  # not every node implements eth_maxPriorityFeePerGas
            tip = PRIORITY_FEE
        _TIPS[id(self.chain)] = (now, tip)
        return tip

    def _known(self, tx_hash: str) -> bool:
        if self.rpc is not None:
            return self._one("eth_getTransactionByHash", [tx_hash]) is not None
        try:
            self.w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            return False
        return True

    def _broadcast(self, raw: bytes, tx_hash: str) -> None:
        """Send `raw` until the chain knows `tx_hash`; never sign anything new on a retry."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if self.rpc is not None:
                    self._one("eth_sendRawTransaction", ["0x" + raw.hex()])
                else:
                    self.w3.eth.send_raw_transaction(raw)
                return
            except Exception as exc:
                text = str(exc).lower()
                if any(m in text for m in ALREADY_SENT) and self._known_safely(tx_hash):
                    return
                reason = revert_reason(exc)
                if reason is not None:
                    self.nonce = None  # not accepted: the nonce is still free
                    raise SettlementError(reason) from exc
                if isinstance(exc, Web3RPCError | RpcError) and not _transient(exc):
                    self.nonce = None
                    raise SettlementError("transaction rejected", str(exc)) from exc
                last = exc
                if self._known_safely(tx_hash):
                    return
                time.sleep(min(0.1 * 2**attempt, 2.0))
        self.nonce = None
        raise ChainUnavailable(f"{tx_hash} not sent: {last}")

    def _known_safely(self, tx_hash: str) -> bool:
        try:
            return self._known(tx_hash)
        except Exception:
            return False

    def _wait(self, tx_hash: str) -> Any:
        deadline = time.monotonic() + self.timeout
        poll = 0.01
        while True:
            try:
                receipt = self._receipt(tx_hash)  # None: not mined yet
                if receipt is not None and (
                    self.confirmations == 1  # a receipt means it is in a block
                    or self._block_number() >= receipt["blockNumber"] + self.confirmations - 1
                ):
                    return receipt
            except TransactionNotFound:
                pass
            except Exception as exc:  # transient RPC trouble while waiting
                if time.monotonic() > deadline:
                    raise ChainUnavailable(str(exc)) from exc
            if time.monotonic() > deadline:
                raise SettlementError("transaction not confirmed in time", tx_hash)
            time.sleep(poll)
            poll = min(poll * 2, 0.5)

    def _receipt(self, tx_hash: str) -> Any:
        """The transaction's receipt, or None while it is not mined."""
        if self.rpc is not None:
            raw = self._one("eth_getTransactionReceipt", [tx_hash])
            return None if raw is None else _receipt_from_rpc(raw)
        return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))

    def _block_number(self) -> int:
        if self.rpc is not None:
            return int(self._one("eth_blockNumber", []), 16)
        return int(self.w3.eth.block_number)

    def _replay_reason(self, tx: dict[str, Any], receipt: Any) -> str:
        call = {k: v for k, v in tx.items() if k in ("to", "data", "value")}
        call["from"] = self.account.address
        try:
            self.w3.eth.call(call, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except Exception as exc:
            return revert_reason(exc) or "transaction reverted"
        return "transaction reverted (out of gas?)"

    def _rpc(self, fn: Callable[[], Any]) -> Any:
        """Run a read-only RPC call, retrying on transport errors (safe: reads move no money)."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (ContractLogicError, SettlementError):
                raise
            except Exception as exc:
                if revert_reason(exc) is not None or attempt == self.retries:
                    raise
                if isinstance(exc, Web3RPCError | RpcError) and not _transient(exc):
                    raise
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")


def _gas_limit(estimate: int, block_limit: int) -> int:
    """The gas a transaction is sent with: the estimate with a margin, within the block."""
    return min(int(estimate * GAS_MARGIN) + GAS_EXTRA, block_limit)


def _fee_caps(base_fee: int, tip: int) -> dict[str, int]:
    """EIP-1559 fees: room for the base fee to double, plus the tip."""
    return {"maxFeePerGas": 2 * base_fee + tip, "maxPriorityFeePerGas": tip}


def _refusal(exc: BaseException) -> SettlementError:
    """A failed gas estimate as the error to raise: the contract's reason when it gave one."""
    reason = revert_reason(exc)
    if reason is None:
        return SettlementError("transaction rejected", str(exc))
    return SettlementError(reason)


def _cached_tip(chain: Chain) -> int | None:
    cached = _TIPS.get(id(chain))
    if cached is not None and time.monotonic() - cached[0] < TIP_TTL_S:
        return cached[1]
    return None


def _receipt_from_rpc(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw JSON-RPC receipt with the fields the sender reads as web3 types them."""
    address = raw.get("contractAddress")
    return {
        **raw,
        "status": int(raw["status"], 16),
        "blockNumber": int(raw["blockNumber"], 16),
        "gasUsed": int(raw["gasUsed"], 16),
        "contractAddress": to_checksum_address(address) if address else None,
    }


def _functions(abi: list[dict[str, Any]]) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (4-byte selector, input types) of every function (Vyper has no overloads)."""
    out: dict[str, tuple[bytes, list[str]]] = {}
    for entry in abi:
        if entry.get("type") == "function":
            out[entry["name"]] = (
                function_abi_to_4byte_selector(entry),  # type: ignore[arg-type]
                list(get_abi_input_types(entry)),  # type: ignore[arg-type]
            )
    return out


def _job_args(terms: EscrowTerms) -> tuple[Any, ...]:
    """The `(c, job, ref)` arguments of the single-job calls."""
    return (terms.common.as_abi(), S.job_abi(terms), terms.located().as_abi())


def _transient(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        w in text for w in ("timeout", "timed out", "temporarily", "rate", "busy", "connection")
    )
