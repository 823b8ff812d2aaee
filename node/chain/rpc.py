"""A lean JSON-RPC client for the reads a node makes on every job.

web3's request path (middleware onion, request formatters, `requests` and urllib3, result
formatters; a whole block formatted to read its timestamp) cost a worker more CPU per job
than anything else it did: one escrow-status read before it accepts an assignment and
one or more while it waits to be paid. These reads go over `http.client` instead, one
kept-alive connection per thread, and return raw results. A client's batch transactions
(open, release) go over it too (node/chain/client.py `_Sender`: gas, fees and nonce in
one batch, the raw transaction, the receipt polls); web3 is left for the embedded chain,
the constructor data of a deployment and log queries.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["JsonRpc", "RpcError"]


class RpcError(Exception):
    """The endpoint answered with a JSON-RPC error (`code`, `message`), or not JSON-RPC."""

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class JsonRpc:
    """Thread-safe: each thread that calls gets its own persistent connection."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) JSON-RPC url: {url}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:  # https://user:key@host/...: HTTP basic auth
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        self._local = threading.local()
        self._ids = itertools.count(1)

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the calling thread's connection (the next call opens a new one). Other
        threads' connections close with their threads."""
        self._drop()

    def call(self, method: str, params: list[Any]) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        ).encode()
        return _result(self._post(body), self.url)

    def call_many(self, calls: list[tuple[str, list[Any]]]) -> list[Any | RpcError]:
        """Several calls in one JSON-RPC batch (one HTTP round trip); each result in the
        calls' order, or the RpcError its call got. A reply that does not answer every
        call raises RpcError."""
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        body = json.dumps(
            [
                {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                for i, (method, params) in zip(ids, calls, strict=True)
            ]
        ).encode()
        replies = self._post(body)
        if not isinstance(replies, list):
            raise RpcError(f"not a JSON-RPC batch reply from {self.url}")
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        if set(by_id) != set(ids):
            raise RpcError(f"the batch reply from {self.url} does not answer every call")
        out: list[Any | RpcError] = []
        for i in ids:
            try:
                out.append(_result(by_id[i], self.url))
            except RpcError as exc:
                out.append(exc)
        return out

    def _post(self, body: bytes) -> Any:
        for attempt in range(2):  # a kept-alive connection the server closed: one redo
            conn = self._connection()
            try:
                conn.request("POST", self._path, body, self._headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.HTTPException, OSError):
                self._drop()
                if attempt:
                    raise
                continue
            if response.status != 200:
                self._drop()
                raise RpcError(f"HTTP {response.status} from {self.url}")
            break
        try:
            return json.loads(raw)
        except ValueError:
            raise RpcError(f"not JSON from {self.url}") from None

    def eth_call(self, to: str, data: str, block: str = "latest") -> bytes:
        return _call_bytes(self.call("eth_call", [{"to": to, "data": data}, block]))

    def eth_call_many(self, to: str, datas: list[str], block: str = "latest") -> list[bytes]:
        """`eth_call` of each calldata in one batch; the first failed call raises."""
        results = self.call_many([("eth_call", [{"to": to, "data": d}, block]) for d in datas])
        out = []
        for result in results:
            if isinstance(result, RpcError):
                raise result
            out.append(_call_bytes(result))
        return out

    def latest_timestamp(self) -> int:
        block = self.call("eth_getBlockByNumber", ["latest", False])
        if not isinstance(block, dict) or not isinstance(block.get("timestamp"), str):
            raise RpcError(f"eth_getBlockByNumber returned {block!r}")
        return int(block["timestamp"], 16)


def _result(reply: Any, url: str) -> Any:
    if not isinstance(reply, dict):
        raise RpcError(f"not a JSON-RPC reply from {url}")
    error = reply.get("error")
    if error is not None:
        if isinstance(error, dict):
            raise RpcError(str(error.get("message")), error.get("code"), error.get("data"))
        raise RpcError(str(error))
    return reply.get("result")


def _call_bytes(result: Any) -> bytes:
    if not isinstance(result, str) or not result.startswith("0x"):
        raise RpcError(f"eth_call returned {result!r}")
    return bytes.fromhex(result[2:])
