"""Running a node in the foreground: the control commands and clean shutdown on signals."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from node.app import Node, now_ms
from node.config import CONFIG_FILE, NodeConfig, load_config
from node.control import ControlServer, control_path
from node.home import load_identity
from protocol.envelope import envelope_hash
from protocol.jobs import job_id_from_text, job_id_text
from protocol.messages import JobEvent

__all__ = ["register_control_commands", "run_foreground"]

log = logging.getLogger("c0.runtime")


def register_control_commands(server: ControlServer, node: Node) -> None:
    """The commands the CLI uses; the job lifecycle registers its own beside them."""

    async def status(_: dict[str, Any]) -> Any:
        return node.status()

    async def peers(_: dict[str, Any]) -> Any:
        return node.peers()

    async def caps(_: dict[str, Any]) -> Any:
        return [w.to_json() for w in node.caps.values()]

    async def blob_put(args: dict[str, Any]) -> Any:
        digest = node.blobs.put_file(Path(args["path"]))
        return {"sha256": digest.hex(), "size": node.blobs.store.size(digest)}

    async def blob_has(args: dict[str, Any]) -> Any:
        return node.blobs.has(bytes.fromhex(args["sha256"]))

    async def events(args: dict[str, Any]) -> Any:
        job = job_id_from_text(args["job_id"]) if args.get("job_id") else None
        return [
            {
                "hash": envelope_hash(s.raw).hex(),
                "job_id": job_id_text(s.message.job_id),  # type: ignore[attr-defined]
                "state": s.message.state,  # type: ignore[attr-defined]
                "created": s.header.created,
            }
            for s in node.events.events(job)
        ]

    async def event_append(args: dict[str, Any]) -> Any:
        event = JobEvent(
            job_id=job_id_from_text(args["job_id"]),
            attempt=int(args.get("attempt", 1)),
            state=str(args["state"]),
            worker_did=None,
            artifact_hash=None,
            duration_ms=None,
            exit_code=None,
            timestamp=now_ms(),
            prompt_hash=None,
            prev=bytes(32),
            detail=dict(args.get("detail", {})),
        )
        return {"hash": node.events.append(event).hex()}

    async def republish(_: dict[str, Any]) -> Any:
        if node.light:
            return {"published": False}
        seq = await node.publish_ad()
        return {"published": True, "seq": seq, "at_ms": now_ms()}

    async def penalties(_: dict[str, Any]) -> Any:
        return node.penalties.snapshot(trio.current_time())

    for fn in (status, peers, caps, blob_put, blob_has, events, event_append, republish, penalties):
        server.register(fn.__name__, fn)


async def _main(home: Path, config: NodeConfig, ready_line: bool) -> None:
    from node.lifecycle import Lifecycle
    from node.lifecycle.control import register_job_commands
    from node.lifecycle.settings import load_chain, load_settings

    identity = load_identity(home)
    node = Node(identity, config, home)
    overrides = {"execute": False} if config.light else {}
    lifecycle = Lifecycle(node, load_settings(home, **overrides), load_chain(home))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        server = ControlServer(control_path(node.home, node.config.control.socket))
        register_control_commands(server, node)
        register_job_commands(server, lifecycle)
        async with trio.open_nursery() as nursery:
            await nursery.start(lifecycle.run_with_node, server.run)
            if ready_line:
                addrs = " ".join(node.transport.listen_addrs())
                print(f"c0 node {node.peer_id} listening on {addrs}", flush=True)
            async for signum in signals:
                log.info("signal %s: shutting down", signum)
                nursery.cancel_scope.cancel()
                break


def run_foreground(
    home: Path, config_file: Path | None = None, *, light: bool = False, ready_line: bool = True
) -> int:
    config = load_config(config_file or home / CONFIG_FILE)
    if light:
        config = config.replace(light=True)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for noisy in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    profile_dir = os.environ.get("C0_PROFILE_DIR")
    only = os.environ.get("C0_PROFILE_HOMES")  # comma-separated home folder names
    if not profile_dir or (only and home.name not in only.split(",")):
        trio.run(_main, home, config, ready_line)
        return 0
    # A developer's switch: a deterministic profile of the whole node, written on exit
    # to C0_PROFILE_DIR/<home folder name>.prof (read it with `python -m pstats`);
    # C0_PROFILE_HOMES limits it to some nodes (`client,node-03`).
    import cProfile

    # Wall-clock by default; C0_PROFILE_CLOCK=cpu counts this thread's CPU time only, so
    # time spent preempted (many nodes on few cores) is not charged to what was running.
    clock = time.thread_time if os.environ.get("C0_PROFILE_CLOCK") == "cpu" else time.perf_counter
    profiler = cProfile.Profile(clock)
    try:
        profiler.runcall(trio.run, _main, home, config, ready_line)
    finally:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / f"{home.name}.prof"))
    return 0
