"""/c0/negotiate/1.0.0 on memory streams: round trips, and every kind of bad input."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from node.config import NegotiateConfig
from node.net.framing import FrameReader, decode_control, encode_frame, is_control
from node.net.negotiate import Negotiator, RemoteRefused, RequestTimeout
from node.net.streams import ByteStream, TrioByteStream
from protocol import codec
from protocol.envelope import SignedMessage, seal
from protocol.errors import C0Error
from protocol.messages import Batch, Decline, Heartbeat, Message
from tests.net.conftest import JOB_ID, Penalties, heartbeat, ident, now_ms

SERVER, CLIENT, OTHER = ident(1), ident(2), ident(3)


class Pair:
    """A server negotiator and client negotiators that reach it over memory streams."""

    def __init__(self, nursery: trio.Nursery, config: NegotiateConfig | None = None) -> None:
        self.nursery = nursery
        self.config = config or NegotiateConfig()
        self.server_penalties = Penalties()
        self.server = Negotiator(SERVER, self.config, self._no_dial, self.server_penalties)
        self.client_penalties = Penalties()

    async def _no_dial(self, peer: str, protocol: str) -> ByteStream:
        raise trio.BrokenResourceError("the server does not dial")

    def client(self, identity=CLIENT) -> Negotiator:  # type: ignore[no-untyped-def]
        async def dial(peer: str, protocol: str) -> ByteStream:
            return self.raw(identity.peer_id)

        return Negotiator(identity, self.config, dial, self.client_penalties)

    def raw(self, as_peer: str) -> TrioByteStream:
        """A stream into the server, as if from `as_peer`."""
        a, b = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.serve_stream, TrioByteStream(b), as_peer)
        return TrioByteStream(a)


async def decline_handler(signed: SignedMessage, peer: str) -> Message | None:
    return Decline(job_id=JOB_ID, attempt=1, reason="busy", detail=peer[:20])


async def read_reply(stream: ByteStream) -> dict[str, object]:
    payload = await FrameReader(stream, max_size=1 << 20, read_timeout=5).read_frame()
    assert payload is not None
    assert is_control(payload)
    return decode_control(payload)


async def assert_closed(stream: ByteStream) -> None:
    assert await stream.read(100) == b""


async def still_serves(pair: Pair) -> None:
    """The node keeps serving everyone else."""
    reply = await pair.client(OTHER).request(SERVER.peer_id, seal(OTHER, heartbeat(), now=now_ms()))
    assert reply is not None
    assert reply.message.TYPE == "decline"


async def test_round_trip_and_stream_reuse(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    client = pair.client()
    for _ in range(5):
        reply = await client.request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))
        assert reply is not None
        assert reply.sender == SERVER.did
        assert isinstance(reply.message, Decline)
    assert pair.server.served == 5
    assert len(client._idle[SERVER.peer_id]) == 1  # one stream carried all five


async def test_handler_without_reply_acks(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    seen: list[str] = []

    async def record(signed: SignedMessage, peer: str) -> None:
        seen.append(peer)

    pair.server.on("heartbeat", record)
    assert (
        await pair.client().request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms())) is None
    )
    assert seen == [CLIENT.peer_id]


async def test_type_without_handler_is_refused_without_penalty(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))
    assert err.value.reason == "unsupported"
    assert pair.server_penalties.calls == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\x00garbage", "non_canonical"),
        (b"\x84\x41", "truncated"),
        (codec.encode([1, 2, 3]), "malformed"),
        (b"\xa1\x61x\x01", "unexpected_type"),  # a control map where an envelope belongs
    ],
)
async def test_malformed_frames(nursery: trio.Nursery, payload: bytes, reason: str) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    stream = pair.raw(CLIENT.peer_id)
    await stream.write(encode_frame(payload))
    reply = await read_reply(stream)
    assert reply["error"] == reason
    await assert_closed(stream)
    assert pair.server_penalties.reasons(CLIENT.peer_id) == [reason]
    await still_serves(pair)


async def test_oversized_frame(nursery: trio.Nursery) -> None:
    pair = Pair(nursery, NegotiateConfig(max_frame=1000))
    pair.server.on("heartbeat", decline_handler)
    stream = pair.raw(CLIENT.peer_id)
    await stream.write(encode_frame(b"\x84" + b"\x00" * 5000))
    reply = await read_reply(stream)
    assert reply["error"] == "oversized"
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["oversized"]
    await still_serves(pair)


async def test_bad_signature(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    env = bytearray(seal(CLIENT, heartbeat(), now=now_ms()))
    env[-1] ^= 0x01  # flip a bit of the signature
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, bytes(env))
    assert err.value.reason == "bad_signature"
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["bad_signature"]
    await still_serves(pair)


async def test_envelope_signed_by_someone_else(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, seal(OTHER, heartbeat(), now=now_ms()))
    assert err.value.reason == "wrong_signer"


async def test_replayed_message(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    env = seal(CLIENT, heartbeat(), now=now_ms())
    client = pair.client()
    await client.request(SERVER.peer_id, env)
    with pytest.raises(RemoteRefused) as err:
        await client.request(SERVER.peer_id, env)
    assert err.value.reason == "replayed"
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["replayed"]
    await still_serves(pair)


async def test_expired_message(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    env = seal(CLIENT, heartbeat(), now=now_ms() - 120_000, ttl_ms=60_000)
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, env)
    assert err.value.reason == "expired"
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["expired"]
    await still_serves(pair)


async def test_unknown_message_type(nursery: trio.Nursery) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    # A correctly signed envelope whose payload names a type c0 does not know.
    msg = heartbeat()
    fake = dataclasses.make_dataclass("Fake", [], bases=(type(msg),), frozen=True)
    fake.TYPE = "teleport"  # type: ignore[attr-defined]
    env = seal(CLIENT, fake(**dataclasses.asdict(msg)), now=now_ms())
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, env)
    assert err.value.reason == "unknown_type"
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["unknown_type"]
    await still_serves(pair)


async def test_stream_opened_and_never_written(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pair = Pair(nursery, NegotiateConfig(first_frame_timeout_s=3))
    pair.server.on("heartbeat", decline_handler)
    stream = pair.raw(CLIENT.peer_id)
    start = trio.current_time()
    reply = await read_reply(stream)
    assert reply["error"] == "timeout"
    assert trio.current_time() - start == pytest.approx(3)
    await assert_closed(stream)
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["timeout"]
    await still_serves(pair)


async def test_idle_reused_stream_closes_without_penalty(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pair = Pair(nursery, NegotiateConfig(idle_timeout_s=4))
    pair.server.on("heartbeat", decline_handler)
    client = pair.client()
    await client.request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))
    await trio.sleep(10)  # virtual time: the server's idle timeout passes
    assert pair.server_penalties.calls == []
    # the pooled stream is stale; the client opens a fresh one transparently
    assert await client.request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))


async def test_too_many_streams_from_one_peer(nursery: trio.Nursery) -> None:
    pair = Pair(nursery, NegotiateConfig(max_streams_per_peer=2))
    pair.server.on("heartbeat", decline_handler)
    held = [pair.raw(CLIENT.peer_id) for _ in range(2)]
    await trio.testing.wait_all_tasks_blocked()
    third = pair.raw(CLIENT.peer_id)
    reply = await read_reply(third)
    assert reply["error"] == "busy"
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["busy"]
    await still_serves(pair)
    assert held


async def test_request_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pair = Pair(nursery)

    async def slow(signed: SignedMessage, peer: str) -> None:
        await trio.sleep(100)

    pair.server.on("heartbeat", slow)
    with pytest.raises(RequestTimeout):
        await pair.client().request(
            SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()), timeout=2
        )


async def test_bad_reply_penalises_the_server(nursery: trio.Nursery) -> None:
    """The client side checks replies too: a reply signed by another key is refused."""
    pair = Pair(nursery)

    async def forged(signed: SignedMessage, peer: str) -> Message:
        return Decline(job_id=JOB_ID, attempt=1, reason="busy", detail="")

    pair.server.on("heartbeat", forged)
    pair.server.identity = OTHER  # the server signs replies with the wrong key
    with pytest.raises(Exception) as err:
        await pair.client().request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))
    assert getattr(err.value, "reason", "") == "wrong_signer"
    assert pair.client_penalties.reasons(SERVER.peer_id) == ["wrong_signer"]


async def test_requests_queued_behind_those_in_flight_go_as_one_batch(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many requests at once to one peer: two go alone, the rest queue and travel as
    Batches; every caller still gets its own reply (or its own refusal)."""
    from node.net import negotiate
    from node.net.negotiate import PARALLEL_PER_PEER

    # On a loaded machine the held send could pass the stall limit before the check
    # below; the stall rule has its own test.
    monkeypatch.setattr(negotiate, "STALL_S", 600.0)

    pair = Pair(nursery)
    release = trio.Event()
    handled: list[float] = []

    async def echo(signed: SignedMessage, peer: str) -> Message | None:
        hb = signed.message
        assert isinstance(hb, Heartbeat)
        if not release.is_set():
            await release.wait()  # hold the first ones in flight while the rest queue
        handled.append(hb.progress)
        if hb.progress == 0.13:
            raise C0Error("not this one", code="refused_13")
        return Decline(job_id=JOB_ID, attempt=1, reason="echo", detail=str(hb.progress))

    pair.server.on("heartbeat", echo)
    client = pair.client()
    replies: dict[float, str] = {}

    async def ask(i: int) -> None:
        progress = i / 100
        try:
            reply = await client.request(
                SERVER.peer_id, seal(CLIENT, heartbeat(progress), now=now_ms())
            )
        except RemoteRefused as exc:
            replies[progress] = f"refused: {exc.reason}"
            return
        assert reply is not None
        assert isinstance(reply.message, Decline)
        replies[progress] = reply.message.detail

    async with trio.open_nursery() as asks:
        for i in range(30):
            asks.start_soon(ask, i)
        await trio.testing.wait_all_tasks_blocked()
        assert client._lanes[SERVER.peer_id].inflight == PARALLEL_PER_PEER
        release.set()
    assert len(handled) == 30
    assert replies == {
        i / 100: ("refused: refused_13" if i == 13 else str(i / 100)) for i in range(30)
    }
    assert client.batches_sent >= 1
    assert pair.server.served == 30
    assert pair.server_penalties.calls == []


async def test_a_bad_item_in_a_batch_is_refused_and_penalised_alone(
    nursery: trio.Nursery,
) -> None:
    pair = Pair(nursery)
    pair.server.on("heartbeat", decline_handler)
    client = pair.client()
    good = seal(CLIENT, heartbeat(0.1), now=now_ms())
    foreign = seal(OTHER, heartbeat(0.2), now=now_ms())  # not the batch sender's
    reply = await client.request(
        SERVER.peer_id, seal(CLIENT, Batch(items=(good, foreign, good)), now=now_ms())
    )
    assert reply is not None
    assert isinstance(reply.message, Batch)
    first, second, third = reply.message.items
    assert decode_control(second)["error"] == "wrong_signer"
    # the same envelope twice (items run concurrently): one is served, one is a replay
    assert sorted(is_control(x) for x in (first, third)) == [False, True]
    replay = first if is_control(first) else third
    assert decode_control(replay)["error"] == "replayed"
    assert sorted(pair.server_penalties.reasons(CLIENT.peer_id)) == ["replayed", "wrong_signer"]
    nested = seal(CLIENT, Batch(items=(seal(CLIENT, heartbeat(), now=now_ms()),)), now=now_ms())
    reply = await client.request(SERVER.peer_id, seal(CLIENT, Batch(items=(nested,)), now=now_ms()))
    assert reply is not None
    assert isinstance(reply.message, Batch)
    assert decode_control(reply.message.items[0])["error"] == "malformed"
    await still_serves(pair)


async def test_a_slow_request_holds_the_next_ones_up_only_until_it_counts_as_stalled(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request in flight per peer, but a handler that takes long (a stake approval
    on a slow chain) must not hold every later request to that peer for all its time:
    past `STALL_S` another send may go."""
    from node.net import negotiate

    monkeypatch.setattr(negotiate, "STALL_S", 0.05)
    pair = Pair(nursery)
    slow_done = trio.Event()

    async def handler(signed: SignedMessage, peer: str) -> Message | None:
        hb = signed.message
        assert isinstance(hb, Heartbeat)
        if hb.progress == 0.9:
            await slow_done.wait()
        return Decline(job_id=JOB_ID, attempt=1, reason="echo", detail=str(hb.progress))

    pair.server.on("heartbeat", handler)
    client = pair.client()
    answers: list[str] = []

    async def slow() -> None:
        reply = await client.request(SERVER.peer_id, seal(CLIENT, heartbeat(0.9), now=now_ms()))
        assert reply is not None
        answers.append("slow")

    async with trio.open_nursery() as inner:
        inner.start_soon(slow)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):  # without the stall rule this waits for the slow one
            reply = await client.request(SERVER.peer_id, seal(CLIENT, heartbeat(0.1), now=now_ms()))
        assert reply is not None
        assert isinstance(reply.message, Decline)
        assert reply.message.detail == "0.1"
        assert answers == []  # the slow one is still in flight
        slow_done.set()
    assert answers == ["slow"]


# ---------------------------------------------------------------- unexpected exceptions
UNEXPECTED = [
    TypeError("unsupported operand"),
    KeyError("job"),
    ValueError("bad value"),
    AttributeError("no attribute"),
    IndexError("list index out of range"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    OverflowError("too big"),
    AssertionError("invariant"),
    ExceptionGroup("a handler's nursery", [ValueError("x")]),
]


def raising_for(peer_id: str, exc: Exception):  # type: ignore[no-untyped-def]
    """A handler that fails with `exc` on `peer_id`'s requests and serves the others."""

    async def handler(signed: SignedMessage, peer: str) -> Message | None:
        if peer == peer_id:
            raise exc
        return await decline_handler(signed, peer)

    return handler


@pytest.mark.parametrize("exc", UNEXPECTED, ids=lambda e: type(e).__name__)
async def test_a_handler_raising_is_a_bad_request_for_that_peer_alone(
    nursery: trio.Nursery, exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception nobody raised on purpose, on one peer's request: that peer gets a
    typed refusal (the type's name, no traceback) and a penalty, its stream is closed,
    the traceback is logged here, and the node goes on serving the others."""
    pair = Pair(nursery)
    pair.server.on("heartbeat", raising_for(CLIENT.peer_id, exc))
    stream = pair.raw(CLIENT.peer_id)
    await stream.write(encode_frame(seal(CLIENT, heartbeat(), now=now_ms())))
    reply = await read_reply(stream)
    assert reply["error"] == "bad_request"
    detail = str(reply["detail"])
    assert type(exc).__name__ in detail
    assert "Traceback" not in detail
    assert ".py" not in detail
    await assert_closed(stream)
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["bad_request"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.exc_info]
    assert warnings
    assert warnings[0].exc_info is not None
    assert warnings[0].exc_info[1] is exc
    # the same client, through the request API: a RemoteRefused it can act on
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))
    assert err.value.reason == "bad_request"
    await still_serves(pair)
    assert pair.server_penalties.reasons(OTHER.peer_id) == []


async def test_a_batch_item_whose_handler_raises_is_refused_alone(nursery: trio.Nursery) -> None:
    """In a batch, the item whose handler raised gets a `bad_request` item and a penalty;
    the other items are served, and another peer is served afterwards."""
    pair = Pair(nursery)

    async def handler(signed: SignedMessage, peer: str) -> Message | None:
        hb = signed.message
        assert isinstance(hb, Heartbeat)
        if hb.progress == 0.2:
            raise TypeError("'NoneType' object is not subscriptable")
        return Decline(job_id=JOB_ID, attempt=1, reason="echo", detail=str(hb.progress))

    pair.server.on("heartbeat", handler)
    client = pair.client()
    items = tuple(seal(CLIENT, heartbeat(p), now=now_ms()) for p in (0.1, 0.2, 0.3))
    reply = await client.request(SERVER.peer_id, seal(CLIENT, Batch(items=items), now=now_ms()))
    assert reply is not None
    assert isinstance(reply.message, Batch)
    first, second, third = reply.message.items
    refusal = decode_control(second)
    assert refusal["error"] == "bad_request"
    assert "TypeError" in str(refusal["detail"])
    assert not is_control(first)
    assert not is_control(third)
    assert pair.server_penalties.reasons(CLIENT.peer_id) == ["bad_request"]
    # the stream stays usable for this client, as after any bad item
    assert await client.request(SERVER.peer_id, seal(CLIENT, heartbeat(0.4), now=now_ms()))
    await still_serves(pair)


async def test_the_nodes_own_io_failing_in_a_handler_is_not_the_peers_fault(
    nursery: trio.Nursery,
) -> None:
    """OSError (a disk, a socket) or a broken stream to someone else inside a handler:
    refused as `internal_error`, not penalised."""
    pair = Pair(nursery)
    pair.server.on("heartbeat", raising_for(CLIENT.peer_id, OSError(28, "No space left")))
    with pytest.raises(RemoteRefused) as err:
        await pair.client().request(SERVER.peer_id, seal(CLIENT, heartbeat(), now=now_ms()))
    assert err.value.reason == "internal_error"
    assert "OSError" in err.value.detail
    assert pair.server_penalties.calls == []
    await still_serves(pair)


async def test_base_exceptions_from_a_handler_are_not_swallowed(nursery: trio.Nursery) -> None:
    """KeyboardInterrupt (and trio.Cancelled) are not Exceptions: they go on up."""
    pair = Pair(nursery)

    async def interrupted(signed: SignedMessage, peer: str) -> None:
        raise KeyboardInterrupt

    pair.server.on("heartbeat", interrupted)
    client_side, server_side = trio.testing.memory_stream_pair()
    await client_side.send_all(encode_frame(seal(CLIENT, heartbeat(), now=now_ms())))
    with pytest.raises(KeyboardInterrupt):
        await pair.server.serve_stream(TrioByteStream(server_side), CLIENT.peer_id)
    assert pair.server_penalties.calls == []


async def test_cancelling_a_handler_is_not_a_refusal(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    pair = Pair(nursery)

    async def forever(signed: SignedMessage, peer: str) -> None:
        await trio.sleep_forever()

    pair.server.on("heartbeat", forever)
    client_side, server_side = trio.testing.memory_stream_pair()
    await client_side.send_all(encode_frame(seal(CLIENT, heartbeat(), now=now_ms())))
    with trio.move_on_after(1) as scope:
        await pair.server.serve_stream(TrioByteStream(server_side), CLIENT.peer_id)
    assert scope.cancelled_caught  # trio.Cancelled reached its scope
    assert pair.server_penalties.calls == []
    received = b"(nothing)"
    with trio.move_on_after(1):
        received = await client_side.receive_some(100)
    assert received == b"(nothing)"  # no error frame written, no refusal
