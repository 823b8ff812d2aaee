"""An ephemeral light node for `c0 job submit` when no node runs in the home: it joins
the network, submits one job, follows it to a terminal state, and leaves."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import trio

from node.app import Node
from node.config import CONFIG_FILE, load_config
from node.home import KEY_FILE, create_identity, load_identity
from node.lifecycle.control import job_summary
from node.lifecycle.service import Lifecycle
from node.lifecycle.settings import load_chain, load_settings
from protocol.errors import C0Error, UserError
from protocol.jobs import job_id_from_text
from protocol.state import TERMINAL, State

__all__ = ["run_one_job"]

_DISCOVERY_S = 30.0


def run_one_job(home: Path, request: dict[str, Any], *, progress: bool) -> dict[str, Any]:
    chain = load_chain(home)
    if chain is None:
        raise UserError(f"no node runs in {home} and it has no chain.json to settle on")
    config = load_config(home / CONFIG_FILE).replace(light=True)
    if not config.network.bootstrap:
        raise UserError(f"no node runs in {home} and its config names no bootstrap peers")
    identity = load_identity(home) if (home / KEY_FILE).exists() else create_identity(home)
    return trio.run(_run, home, config, identity, chain, request, progress)


async def _run(
    home: Path, config: Any, identity: Any, chain: Any, request: dict[str, Any], progress: bool
) -> dict[str, Any]:
    node = Node(identity, config, home)
    lc = Lifecycle(node, load_settings(home, execute=False), chain)
    async with trio.open_nursery() as nursery:
        await nursery.start(lc.run_with_node)
        with trio.move_on_after(_DISCOVERY_S):
            while sum(1 for w in node.caps.values() if w.ad.prices) < int(request["redundancy"]):
                await lc.wait_for_ads(_DISCOVERY_S)
        # The same job again (a run of this command that stopped, say) is the same job:
        # the node's restart already picked it up (reading the chain first); `submit_job`
        # starts nothing new. `new` asks for a new one.
        done = lc.client.submit_job(
            request["spec"],
            request["inputs"],
            redundancy=int(request["redundancy"]),
            max_price=int(request["max_price"]),
            deadline_s=int(request["deadline_s"]),
            new=bool(request.get("new", False)),
        )
        text = done.job_id
        if progress:
            how = f"submitted before ({done.state}):" if done.existing else "submitted"
            print(f"{how} {text} from an ephemeral light node", file=sys.stderr, flush=True)
        job_id = job_id_from_text(text)
        with trio.move_on_after(max(0.0, done.deadline_ms / 1000 - time.time()) + 60):
            while True:
                rec = node.store.get_job(job_id)
                if rec is not None and State(rec.state) in TERMINAL:
                    break
                await lc.jobs_changed.wait()
        rec = node.store.get_job(job_id)
        if rec is None:
            raise C0Error("the job record vanished", code="internal")
        nursery.cancel_scope.cancel()
        return job_summary(rec)
