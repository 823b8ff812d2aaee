"""Signed peer records on GossipSub RPCs, made cheap (py-libp2p 0.8.1).

py-libp2p attaches the host's signed peer record to every pubsub RPC it sends, and on
every RPC it receives verifies the record's Ed25519 signature twice (once in
`Pubsub.continuously_read_stream`, again in `GossipSub.handle_rpc`). Building the record
re-derives the host's addresses from its transports each time. On a 20-process network
on 2 cores, that work was the largest single cost of forwarding an ad (profiled:
one third of a node's pubsub CPU).

The wire stays the same: the record is still sent with every RPC (a py-libp2p peer
ignores an RPC whose record field is present but empty) and still verified once per
distinct record a peer sends. What changes:

- sending: the record of a host is built at most once per `_SEND_TTL_S`;
- receiving: a record byte-for-byte equal to the last one this peer sent us, and
  verified less than `_RECEIVE_TTL_S` ago, is not verified again.

`install()` replaces the two helpers in the pubsub modules that imported them; it is
idempotent and checks that the library still has the names it replaces.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

__all__ = ["install"]

_SEND_TTL_S = 5.0  # a changed listen address reaches peers' records within this
_RECEIVE_TTL_S = 60.0  # re-verified (and the peerstore refreshed) at least this often
_MAX_PEERS = 4096
_MODULES = ("libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub", "libp2p.pubsub.floodsub")

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    import importlib

    from libp2p.peer import peerstore
    from libp2p.pubsub import utils

    original_env = peerstore.env_to_send_in_RPC
    original_consume = utils.maybe_consume_signed_record

    # Both caches live on the host object, so they go with it (tests run many hosts).
    def env_to_send_in_rpc(host: Any) -> tuple[bytes, bool]:
        now = time.monotonic()
        hit: tuple[float, bytes] | None = getattr(host, "_c0_record_sent", None)
        if hit is not None and now - hit[0] < _SEND_TTL_S:
            return hit[1], False
        envelope, fresh = original_env(host)
        host._c0_record_sent = (now, envelope)
        return envelope, fresh

    def maybe_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        record = msg.senderRecord
        consumed: OrderedDict[Any, tuple[float, bytes]] | None
        consumed = getattr(host, "_c0_records_seen", None)
        if consumed is None:
            consumed = host._c0_records_seen = OrderedDict()
        now = time.monotonic()
        hit = consumed.get(peer_id)
        if hit is not None and hit[1] == record and now - hit[0] < _RECEIVE_TTL_S:
            return True
        ok = bool(original_consume(msg, host, peer_id))
        if ok:
            consumed[peer_id] = (now, record)
            consumed.move_to_end(peer_id)
            while len(consumed) > _MAX_PEERS:
                consumed.popitem(last=False)
        return ok

    for name in _MODULES:
        module = importlib.import_module(name)
        for attr, replacement in (
            ("env_to_send_in_RPC", env_to_send_in_rpc),
            ("maybe_consume_signed_record", maybe_consume_signed_record),
        ):
            if not hasattr(module, attr):
                raise RuntimeError(f"{name}.{attr} is gone: review node/net/pubsub_records.py")
            setattr(module, attr, replacement)
    _installed = True
