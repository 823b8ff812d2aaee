"""The lean JSON-RPC read path (node/chain/rpc.py) against a real anvil: the same answers
web3 gives, errors typed, kept-alive connections re-opened when the server drops them."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from eth_utils.address import to_checksum_address

from node.chain import rpc_chain
from node.chain.rpc import JsonRpc, RpcError
from tests.settlement.conftest import Parties

pytestmark = pytest.mark.anvil


@pytest.fixture
def rpc(anvil_url: str) -> JsonRpc:
    return JsonRpc(anvil_url, timeout=10)


def test_reads_match_web3(anvil_url: str, rpc: JsonRpc) -> None:
    chain = rpc_chain(anvil_url)
    assert chain.rpc is not None  # a JSON-RPC chain reads through it
    assert rpc.latest_timestamp() == int(chain.w3.eth.get_block("latest")["timestamp"])
    assert chain.now() == rpc.latest_timestamp()
    assert int(rpc.call("eth_chainId", []), 16) == chain.chain_id


@pytest.mark.parametrize("chain", [pytest.param("anvil", marks=pytest.mark.anvil)], indirect=True)
def test_escrow_views_go_through_it(parties: Parties) -> None:
    client = parties.client
    assert client.chain.rpc is not None
    data = client.encode_call("balances", to_checksum_address(client.account.address))
    via_web3 = bytes(client.w3.eth.call({"to": client.address, "data": data}))  # type: ignore[typeddict-item]
    assert client.chain.rpc.eth_call(client.address, data) == via_web3
    assert client.balance() == int.from_bytes(via_web3, "big")


def test_an_rpc_error_is_typed(rpc: JsonRpc) -> None:
    with pytest.raises(RpcError) as err:
        rpc.call("eth_noSuchMethod", [])
    assert err.value.code is not None
    with pytest.raises(RpcError):
        rpc.eth_call("0x" + "00" * 19 + "01", "0xzz")  # not hex: the node refuses it


def test_a_dropped_connection_is_reopened(rpc: JsonRpc) -> None:
    before = rpc.latest_timestamp()
    conn = rpc._connection()
    conn.sock.close()  # type: ignore[union-attr]  # as a server closing an idle keep-alive
    assert rpc.latest_timestamp() >= before
    assert rpc._connection() is not conn


def test_close_closes_the_connection_and_a_later_call_reopens_it(anvil_url: str) -> None:
    chain = rpc_chain(anvil_url)
    assert chain.rpc is not None
    before = chain.now()
    conn = chain.rpc._connection()
    assert conn.sock is not None  # kept alive after the call
    chain.close()
    assert conn.sock is None  # closed now, not left to the garbage collector
    assert chain.now() >= before
    assert chain.rpc._connection() is not conn


def test_each_thread_has_its_own_connection(rpc: JsonRpc) -> None:
    seen: list[object] = []

    def read() -> None:
        rpc.latest_timestamp()
        seen.append(rpc._connection())

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 4


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # the http.server API names it
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/auth":
            ok = self.headers.get("Authorization") == "Basic dXNlcjpwQHNz"  # user:p@ss
            status, body = (200, b'{"jsonrpc":"2.0","id":1,"result":"0x1"}') if ok else (401, b"")
        else:
            status, body = (200, b"not json") if self.path == "/text" else (503, b"down")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def garbage_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_json_rpc(garbage_server: str) -> None:
    with pytest.raises(RpcError, match="not JSON"):
        JsonRpc(garbage_server + "/text").latest_timestamp()
    with pytest.raises(RpcError, match="HTTP 503"):
        JsonRpc(garbage_server + "/down").latest_timestamp()
    with pytest.raises(ValueError):
        JsonRpc("ws://127.0.0.1:1")


def test_credentials_in_the_url_are_sent(garbage_server: str) -> None:
    """An endpoint URL with user:key@ (hosted RPC providers) authenticates as web3 would."""
    authed = garbage_server.replace("http://", "http://user:p%40ss@") + "/auth"
    assert JsonRpc(authed).call("eth_chainId", []) == "0x1"
    with pytest.raises(RpcError, match="HTTP 401"):
        JsonRpc(garbage_server + "/auth").call("eth_chainId", [])


def test_a_batch_answers_each_call_in_its_place(anvil_url: str, rpc: JsonRpc) -> None:
    chain = rpc_chain(anvil_url)
    chain_id, refused, height = rpc.call_many(
        [("eth_chainId", []), ("eth_noSuchMethod", []), ("eth_blockNumber", [])]
    )
    assert int(chain_id, 16) == chain.chain_id
    assert isinstance(refused, RpcError)
    assert refused.code is not None
    assert int(height, 16) == chain.w3.eth.block_number
    assert rpc.call_many([]) == []


@pytest.mark.parametrize("chain", [pytest.param("anvil", marks=pytest.mark.anvil)], indirect=True)
def test_escrow_statuses_read_in_one_batch_match_one_by_one(parties: Parties) -> None:
    """`job_statuses` (one JSON-RPC batch) gives what `job_status` gives for each terms,
    unopened and mislocated ones included; AsyncEscrow.status folds the reads asked for
    at once into one such batch."""
    import dataclasses
    import hashlib
    import os

    import trio

    from node.lifecycle.escrow import AsyncEscrow
    from protocol import settlement as S

    p = parties
    batch = [p.terms(hashlib.sha256(os.urandom(16)).digest(), workers=1, lock=0) for _ in range(3)]
    opened = list(p.client.open(batch).opened)
    swapped = dataclasses.replace(opened[0], ref=opened[1].ref)
    unopened = p.terms(hashlib.sha256(os.urandom(16)).digest())
    asked = [*opened, swapped, unopened]
    one_by_one = [p.client.job_status(t) for t in asked]
    assert one_by_one == [S.STATUS_OPEN] * 3 + [S.STATUS_UNKNOWN] * 2
    assert p.client.job_statuses(asked) == one_by_one

    batches: list[int] = []
    real = p.client.job_statuses

    def counted(terms: list[S.EscrowTerms]) -> list[int]:
        batches.append(len(terms))
        return real(terms)

    p.client.job_statuses = counted  # type: ignore[method-assign]
    escrow = AsyncEscrow(p.client)
    got: dict[int, int] = {}

    async def main() -> None:
        async def one(i: int) -> None:
            got[i] = await escrow.status(asked[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(asked)):
                nursery.start_soon(one, i)
        assert await escrow.status(opened[2]) == S.STATUS_OPEN  # alone: a batch of one

    trio.run(main)
    assert [got[i] for i in range(len(asked))] == one_by_one
    assert batches == [len(asked), 1]
