"""Signed peer records on pubsub RPCs: built once, verified once per distinct record.

Real py-libp2p hosts and records (node/net/pubsub_records.py patches the library's two
helpers); nothing here is mocked.
"""

from __future__ import annotations

import multiaddr
import pytest
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.pubsub import gossipsub, pubsub, utils
from libp2p.pubsub.pb import rpc_pb2

from node.net import pubsub_records

pubsub_records.install()


def _host(seed: int) -> object:
    addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{40000 + seed}")
    return new_host(key_pair=create_new_key_pair(bytes([seed]) * 32), listen_addrs=[addr])


def _rpc(record: bytes) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = record
    return rpc


def test_installed_in_every_pubsub_module() -> None:
    for module in (pubsub, gossipsub):
        assert module.maybe_consume_signed_record is not utils.maybe_consume_signed_record
        assert module.env_to_send_in_RPC.__module__ == pubsub_records.__name__


def test_a_host_sends_one_record_and_the_right_one() -> None:
    a, b = _host(1), _host(2)
    record_a, _ = gossipsub.env_to_send_in_RPC(a)
    assert gossipsub.env_to_send_in_RPC(a)[0] is record_a  # cached, not rebuilt
    record_b, _ = gossipsub.env_to_send_in_RPC(b)
    assert record_b != record_a  # the cache is per host
    assert gossipsub.maybe_consume_signed_record(_rpc(record_a), b, a.get_id())
    assert not gossipsub.maybe_consume_signed_record(_rpc(record_b), a, a.get_id())


def test_receiving_skips_only_records_already_verified() -> None:
    a, b, c = _host(3), _host(4), _host(5)
    record_a, _ = pubsub.env_to_send_in_RPC(a)
    assert pubsub.maybe_consume_signed_record(_rpc(record_a), b, a.get_id())
    assert pubsub.maybe_consume_signed_record(_rpc(record_a), b, a.get_id())  # cache hit
    # A's record claimed by another peer, tampered bytes, garbage: each still verified
    assert not pubsub.maybe_consume_signed_record(_rpc(record_a), b, c.get_id())
    tampered = bytearray(record_a)
    tampered[-1] ^= 1
    assert not pubsub.maybe_consume_signed_record(_rpc(bytes(tampered)), b, a.get_id())
    assert not pubsub.maybe_consume_signed_record(_rpc(b"\x00junk"), b, a.get_id())
    assert pubsub.maybe_consume_signed_record(rpc_pb2.RPC(), b, a.get_id())  # no record
    # and after the failures the good record is still accepted
    assert pubsub.maybe_consume_signed_record(_rpc(record_a), b, a.get_id())


def test_the_receive_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pubsub_records, "_MAX_PEERS", 2)
    hosts = [_host(10 + i) for i in range(3)]
    receiver = _host(20)
    for h in hosts:
        record, _ = pubsub.env_to_send_in_RPC(h)
        assert pubsub.maybe_consume_signed_record(_rpc(record), receiver, h.get_id())
    assert len(receiver._c0_records_seen) == 2  # type: ignore[attr-defined]
