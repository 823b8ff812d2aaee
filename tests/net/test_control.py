"""The control socket (node/control.py): one request per line, answered in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from node.control import ControlClient, ControlServer
from protocol.errors import C0Error, UserError


async def test_pipelined_calls_are_answered_in_order_and_stop_at_an_error(
    tmp_path: Path,
) -> None:
    server = ControlServer(tmp_path / "control.sock")
    seen: list[int] = []

    async def double(args: dict[str, Any]) -> Any:
        seen.append(args["n"])
        return {"n": args["n"] * 2}

    async def refuse_three(args: dict[str, Any]) -> Any:
        if args["n"] == 3:
            raise UserError("three is refused")
        return args["n"]

    server.register("double", double)
    server.register("refuse_three", refuse_three)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        client = ControlClient(server.path, timeout=10)
        many = [{"n": i} for i in range(100)]
        out = await trio.to_thread.run_sync(lambda: client.call_many("double", many, window=7))
        assert out == [{"n": 2 * i} for i in range(100)]
        assert seen == list(range(100))  # one connection, handled in order
        assert await trio.to_thread.run_sync(lambda: client.call("double", n=21)) == {"n": 42}
        with pytest.raises(C0Error, match="three is refused"):
            await trio.to_thread.run_sync(
                lambda: client.call_many("refuse_three", [{"n": i} for i in range(6)])
            )
        nursery.cancel_scope.cancel()
