"""The replay guard's memory is per sender: no sender, nor any set of senders, can get
another sender's fresh message refused; memory stays bounded; replays stay refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.envelope import MAX_TTL_MS, ReplayGuard, open_envelope, seal
from protocol.errors import PeerProtocolError
from tests.protocol.vectors import NOW, identities, sample_offer

DAY = MAX_TTL_MS
_counter = itertools.count()


def nonce() -> bytes:
    return next(_counter).to_bytes(16, "big")


class Sender:
    """A well-behaved sender: its `created` only grows."""

    def __init__(self, name: str) -> None:
        self.did = f"did:key:z6Mk{name}"
        self.last = 0

    def message(self, now: int, ttl: int) -> tuple[str, bytes, int, int]:
        created = max(now, self.last + 1)
        self.last = created
        return (self.did, nonce(), created, created + ttl)


def offer(guard: ReplayGuard, msg: tuple[str, bytes, int, int], now: int) -> None:
    sender, n, created, expires = msg
    guard.check_and_remember(sender, n, expires, now, created=created)
    assert len(guard) <= guard.capacity
    assert guard.senders <= guard.max_senders


def refused(guard: ReplayGuard, msg: tuple[str, bytes, int, int], now: int) -> bool:
    try:
        offer(guard, msg, now)
    except PeerProtocolError as exc:
        reason = exc.reason
    else:
        return False
    assert reason == "replayed"
    return True


def test_one_sender_flooding_does_not_get_another_senders_fresh_message_refused() -> None:
    """(a) r1's attack: one sender sends far more long-lived messages than the guard
    holds. Only its own memory shrinks; an honest sender's next message is accepted,
    and its replays (old and new) are still refused."""
    guard = ReplayGuard(capacity=1_000, per_sender=200, max_senders=50)
    honest, attacker = Sender("honest"), Sender("attacker")
    now = NOW
    before = honest.message(now, 60_000)
    offer(guard, before, now)
    flood = [attacker.message(now, DAY) for _ in range(20_000)]
    for msg in flood:
        offer(guard, msg, now)
    now += 1_000
    fresh = honest.message(now, 10_000)  # even a shorter lifetime than the flood's
    offer(guard, fresh, now)  # r1 refused this: its floor was past `expires`
    assert refused(guard, fresh, now)
    assert refused(guard, before, now)
    # the attacker's forgotten messages stay refused (its own floor), as do its recent
    assert refused(guard, flood[0], now)
    assert refused(guard, flood[-1], now)
    assert guard.forgotten == 0


def test_a_flood_spread_over_many_senders_does_not_refuse_fresh_messages() -> None:
    """(a), spread: the flood comes from as many identities as the guard tracks, so the
    global bound (not the per-sender one) does the forgetting."""
    guard = ReplayGuard(capacity=1_000, per_sender=1_000, max_senders=64)
    honest = Sender("honest")
    attackers = [Sender(f"attacker{i}") for i in range(60)]
    now = NOW
    sent = []
    for round_ in range(100):
        for attacker in attackers:
            offer(guard, attacker.message(now, DAY), now)
        msg = honest.message(now, (10_000, 60_000, 300_000)[round_ % 3])
        offer(guard, msg, now)  # fresh: always accepted
        sent.append(msg)
        now += 50
    for msg in sent:  # every one, remembered or below the honest sender's own floor
        assert refused(guard, msg, now)
    assert guard.forgotten == 0


def test_more_senders_than_tracked_never_refuse_a_fresh_message() -> None:
    """(b) Many more senders than `max_senders`, all with day-long messages: no fresh
    message of anyone is refused, an honest sender's latest replay is refused, and an
    honest newcomer after the flood is accepted (and its replay refused)."""
    guard = ReplayGuard(capacity=500, max_senders=16)
    honest = Sender("honest")
    now = NOW
    for i in range(400):
        attacker = Sender(f"sybil{i}")
        for _ in range(3):
            offer(guard, attacker.message(now, DAY), now)
        msg = honest.message(now, 60_000 if i % 2 else 10_000)
        offer(guard, msg, now)
        assert refused(guard, msg, now)
        now += 10
    assert guard.forgotten > 0  # the bound on senders was reached, many times
    newcomer = Sender("newcomer")
    msg = newcomer.message(now, 60_000)
    offer(guard, msg, now)
    assert refused(guard, msg, now)


def test_memory_is_bounded_by_capacity_and_max_senders() -> None:
    """(c) However many messages and senders, the guard holds at most `capacity` nonces
    and `max_senders` senders (asserted after every call by `offer`)."""
    guard = ReplayGuard(capacity=300, per_sender=50, max_senders=20)
    senders = [Sender(f"s{i}") for i in range(100)]
    now = NOW
    for i in range(5_000):
        offer(guard, senders[(i * 7) % 100].message(now, DAY), now)
        now += 1
    assert len(guard) <= 300
    assert guard.senders <= 20


def test_expired_messages_free_their_memory() -> None:
    guard = ReplayGuard(capacity=100)
    sender = Sender("a")
    for i in range(1_000):  # ten times the capacity, each expiring before the next
        offer(guard, sender.message(NOW + i * 2_000, 1_000), NOW + i * 2_000)
    assert len(guard) == 1
    assert guard.floor > NOW  # what was dropped stays refused if the clock stepped back


def test_a_sender_mixing_lifetimes_is_not_refused_after_its_own_overflow() -> None:
    """The floor orders by `created` first: a short-lived message sent after a long-lived
    one that was forgotten is still fresh (a floor on `expires` would refuse it)."""
    guard = ReplayGuard(capacity=10, per_sender=2)
    sender = Sender("mixed")
    now = NOW
    sent = []
    for i in range(50):
        msg = sender.message(now, (300_000, DAY, 10_000)[i % 3])
        offer(guard, msg, now)
        sent.append(msg)
        now += 5
    assert all(refused(guard, msg, now) for msg in sent)


def test_bad_lifetimes_are_refused_by_the_guard_too() -> None:
    guard = ReplayGuard()
    with pytest.raises(PeerProtocolError, match="expired"):
        guard.check_and_remember("did:key:x", nonce(), NOW, NOW, created=NOW)
    with pytest.raises(PeerProtocolError, match="expired"):
        guard.check_and_remember("did:key:x", nonce(), NOW + DAY + 1, NOW, created=NOW)


def test_through_open_envelope_a_flood_of_signed_messages() -> None:
    """(a) end to end: signed envelopes, opened with the guard as a node opens them."""
    alice, mallory = identities()[0], identities()[1]
    guard = ReplayGuard(capacity=100, per_sender=50, max_senders=8)
    first = seal(alice, sample_offer(alice), now=NOW)
    open_envelope(first, now=NOW, replay_guard=guard)
    flood = [
        seal(mallory, sample_offer(mallory), now=NOW - 400 + i, ttl_ms=DAY) for i in range(400)
    ]
    for env in flood:
        open_envelope(env, now=NOW, replay_guard=guard)
    fresh = seal(alice, sample_offer(alice), now=NOW + 1)
    open_envelope(fresh, now=NOW + 1, replay_guard=guard)
    for env in (first, fresh, flood[0], flood[-1]):
        with pytest.raises(PeerProtocolError, match="replayed"):
            open_envelope(env, now=NOW + 2, replay_guard=guard)
    assert len(guard) <= 100


_TTLS = (1_000, 10_000, 60_000, 300_000, DAY)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # sender
            st.sampled_from(_TTLS),
            st.integers(0, 3_000),  # ms the clock moves first
            st.one_of(st.none(), st.integers(0, 10_000)),  # replay an earlier message
        ),
        max_size=400,
    ),
    st.integers(2, 40),
    st.integers(1, 20),
)
def test_property_fresh_accepted_replays_refused_memory_bounded(
    ops: list[tuple[int, int, int, int | None]], capacity: int, per_sender: int
) -> None:
    """With every sender tracked (no more senders than `max_senders`), for any traffic:
    every fresh message is accepted, every replay before `expires` is refused, and the
    memory bound holds."""
    guard = ReplayGuard(capacity=capacity, per_sender=per_sender, max_senders=6)
    senders = [Sender(f"p{i}") for i in range(6)]
    now = NOW
    sent: list[tuple[str, bytes, int, int]] = []
    for who, ttl, step, replay in ops:
        now += step
        if replay is not None and sent:
            old = sent[replay % len(sent)]
            if old[3] > now:
                assert refused(guard, old, now)
            continue
        msg = senders[who].message(now, ttl)
        offer(guard, msg, now)
        sent.append(msg)
    assert guard.forgotten == 0
