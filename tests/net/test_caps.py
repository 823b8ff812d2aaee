"""Capability gossip validation rules (sans-IO) and the penalty table."""

from __future__ import annotations

import dataclasses

import pytest

from node.net.caps import Action, CapsBook
from node.net.penalties import PenaltyTable
from protocol.envelope import seal
from protocol.identity import Identity
from protocol.messages import CapabilityAd
from tests.net.conftest import heartbeat, ident, now_ms

W, X = ident(7), ident(8)


def ad(identity: Identity, seq: int = 1, **changes: object) -> CapabilityAd:
    binding = identity.eth_binding()
    fields: dict[str, object] = dict(
        peer_id=identity.peer_id,
        listen_addrs=("/ip4/127.0.0.1/tcp/1",),
        eth_address=identity.eth_address,
        eth_binding_ed25519_sig=binding.ed25519_sig,
        eth_binding_eth_sig=binding.eth_sig,
        seq=seq,
        ttl_s=60,
        hardware={"cpu_cores": 2},
        runtimes={},
        prices={},
        models=(),
        content=(),
        load=0.0,
        max_concurrent=1,
        stake=0,
    )
    fields.update(changes)
    return CapabilityAd(**fields)  # type: ignore[arg-type]


def env(identity: Identity, message: object, **kw: int) -> bytes:
    return seal(identity, message, now=kw.pop("now", now_ms()), **kw)  # type: ignore[arg-type]


def flip_last(data: bytes) -> bytes:
    """Change the last byte (the end of the signature) so it can never equal the original."""
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_accepts_a_good_ad_and_records_it() -> None:
    book = CapsBook()
    now = now_ms()
    verdict = book.validate(env(W, ad(W)), W.peer_id, now)
    assert verdict.action is Action.ACCEPT
    worker = book.accept(verdict.signed, now)  # type: ignore[arg-type]
    assert book.live(now)[W.did] is worker
    assert book.by_peer(W.peer_id) is worker
    assert worker.to_json()["did"] == W.did


def test_sequence_numbers_only_go_up() -> None:
    book = CapsBook()
    now = now_ms()
    book.accept(book.validate(env(W, ad(W, seq=5)), W.peer_id, now).signed, now)  # type: ignore[arg-type]
    for seq in (5, 4):
        verdict = book.validate(env(W, ad(W, seq=seq)), W.peer_id, now)
        assert (verdict.action, verdict.reason) == (Action.IGNORE, "stale_seq")
    assert book.validate(env(W, ad(W, seq=6)), W.peer_id, now).action is Action.ACCEPT


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: flip_last(env(W, ad(W))), "bad_signature"),
        (lambda: env(W, ad(W), now=now_ms() - 120_000, ttl_ms=60_000), "expired"),
        (lambda: env(W, heartbeat()), "unexpected_type"),
        (lambda: env(X, ad(W)), "wrong_signer"),  # X signs an ad naming W's peer id
        (lambda: b"\x84" + b"\x00" * 20_000, "oversized"),
        (lambda: b"\x01\x02", "malformed"),
        (
            lambda: env(W, ad(W, eth_address=X.eth_address)),
            "bad_binding",
        ),
    ],
)
def test_rejections(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    verdict = CapsBook().validate(make(), W.peer_id, now_ms())
    assert verdict.action is Action.REJECT
    assert verdict.reason == reason


def test_origin_must_be_the_signer() -> None:
    verdict = CapsBook().validate(env(W, ad(W)), X.peer_id, now_ms())
    assert (verdict.action, verdict.reason) == (Action.REJECT, "wrong_signer")


def test_flooding_sender_is_rate_limited() -> None:
    book = CapsBook(rate_per_s=1.0, burst=3)
    now = now_ms()
    actions = [book.validate(env(W, ad(W, seq=i)), W.peer_id, now).action for i in range(1, 8)]
    assert actions[:3] == [Action.ACCEPT] * 3  # validate alone does not bump seq
    assert all(a is Action.REJECT for a in actions[3:])
    assert book.validate(env(W, ad(W, seq=9)), W.peer_id, now + 1000).action is Action.ACCEPT


def test_ads_expire_by_ttl() -> None:
    book = CapsBook()
    now = now_ms()
    book.accept(book.validate(env(W, ad(W, ttl_s=2)), W.peer_id, now).signed, now)  # type: ignore[arg-type]
    assert W.did in book.live(now + 1000)
    assert W.did not in book.live(now + 2001)
    assert book.expire(now + 2001) == [W.did]


def test_penalties_decay_and_ban() -> None:
    table = PenaltyTable(ban_threshold=-100, half_life_s=10, ban_s=60)
    assert not table.penalise("p", "bad_signature", now=0)
    assert table.score("p", 0) == -50
    assert table.score("p", 10) == pytest.approx(-25)
    assert table.penalise("p", "bad_signature", now=0) is True  # -100: banned
    assert table.is_banned("p", 59)
    assert not table.is_banned("p", 61)
    assert table.score("other", 0) == 0
    snap = table.snapshot(0)
    assert snap["p"]["banned"] is True
    assert snap["p"]["last_reason"] == "bad_signature"


def test_penalty_table_is_bounded() -> None:
    table = PenaltyTable(capacity=10)
    for i in range(50):
        table.penalise(f"p{i}", "busy", now=0)
    assert len(table.snapshot(0)) <= 10


def test_ad_dataclass_rejects_bad_fields() -> None:
    with pytest.raises(Exception):  # noqa: B017 - the message layer's own error type
        dataclasses.replace(ad(W), load=2.0)
