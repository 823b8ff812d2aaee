"""/c0/negotiate/1.0.0: signed request/response over length-framed COSE envelopes.

A client writes one envelope frame per request and reads exactly one reply frame: an
envelope (the handler's signed reply), `{"ok": true}` (handled, nothing to say) or
`{"error": reason, "detail": text}` after which the server closes the stream. Streams
are reused for later requests, one request at a time, to save the stream set-up.

Requests to one peer are coalesced: at most `PARALLEL_PER_PEER` (one) is in flight; those
queued behind it go together as one Batch envelope (its items the requests' own
envelopes), answered by one Batch of replies in the same order. A lone request goes as
itself. A burst of jobs then costs a worker one round trip per batch, not per job: the
transport (yamux, Noise, trio) was ~0.9 ms of CPU per side per round trip.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from node.config import NegotiateConfig
from node.net.framing import (
    FrameReader,
    decode_control,
    encode_control,
    encode_frame,
    error_frame,
    is_control,
)
from node.net.streams import ByteStream
from protocol import codec
from protocol.envelope import ReplayGuard, SignedMessage, open_envelope, seal
from protocol.errors import C0Error, PeerProtocolError
from protocol.identity import Identity, peer_id_from_public, public_from_did
from protocol.messages import MAX_BATCH_ITEMS, MESSAGE_TYPES, Batch, Message

__all__ = [
    "NEGOTIATE_PROTOCOL",
    "Handler",
    "Negotiator",
    "OpenStream",
    "Penalise",
    "RemoteRefused",
    "RequestTimeout",
    "refusal_for",
]

NEGOTIATE_PROTOCOL = "/c0/negotiate/1.0.0"
log = logging.getLogger("c0.negotiate")

Handler = Callable[[SignedMessage, str], Awaitable[Message | None]]
OpenStream = Callable[[str, str], Awaitable[ByteStream]]  # (peer_id, protocol) -> stream
Penalise = Callable[[str, str], None]  # (peer_id, reason)


class RemoteRefused(C0Error):
    """The peer answered a request with an error frame; `reason` is its code."""

    code = "remote_refused"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"peer refused: {reason}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.detail = detail


class RequestTimeout(C0Error):
    """No reply within the request's time limit."""

    code = "timeout"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# The node's own I/O failing while it handles a request (a disk, a stream to another
# peer): not the asking peer's fault, so no penalty.
_LOCAL_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def refusal_for(exc: Exception, peer_id: str, what: str) -> C0Error:
    """The typed refusal for an exception nobody raised on purpose while this node handled
    `what` from `peer_id`: a bug, or input no check foresaw. Logged here at warning level
    with its traceback; the peer is told the exception's type only.

    `bad_request` (a PeerProtocolError: the caller penalises the peer) for anything but
    the node's own I/O failing, which is `internal_error` (a C0Error: no penalty).
    Exceptions that are not `Exception` (trio.Cancelled, KeyboardInterrupt) never get here.
    """
    name = type(exc).__name__
    log.warning("%s from %s raised %s", what, peer_id, name, exc_info=exc)
    if isinstance(exc, _LOCAL_FAILURES):
        return C0Error(f"{what} failed on this node ({name})", code="internal_error")
    return PeerProtocolError("bad_request", f"{what} raised {name}")


def signer_peer(signed: SignedMessage) -> str:
    return peer_id_from_public(public_from_did(signed.sender))


# Requests (single or batched) in flight to one peer at once. One: everything queued
# behind it goes in the next batch. The 10-node burst: 37 jobs/s unbatched, 47 with
# two in flight, 47-53 with one (bench/README.md); a request waits at most for one.
PARALLEL_PER_PEER = 1
# ... unless the oldest send has waited this long: then one more may go (up to
# MAX_PARALLEL_PER_PEER), so one slow handler (a worker approving a new client's stake
# on a slow chain, say) holds the others up by about this much, not for its whole time.
STALL_S = 1.0
MAX_PARALLEL_PER_PEER = 8
_BATCH_BYTES = 192 * 1024  # item bytes per batch, under the peer's 256 KiB frame limit


@dataclass(eq=False)
class _Waiting:
    """One caller's request in a peer's lane: sent alone or in a batch, by whichever
    caller finds the lane free (its send is shielded from its own cancellation)."""

    envelope: bytes
    limit_at: float  # trio time after which its caller gives up
    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False
    result: SignedMessage | None = None
    error: BaseException | None = None


@dataclass
class _Lane:
    queue: list[_Waiting] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # trio times of the sends in flight
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def inflight(self) -> int:
        return len(self.started)

    def pulse(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def may_send(self) -> bool:
        if self.inflight < PARALLEL_PER_PEER:
            return True
        stalled = trio.current_time() - min(self.started) >= STALL_S
        return stalled and self.inflight < MAX_PARALLEL_PER_PEER

    def until_stalled(self) -> float:
        """How long until `may_send` can turn true without a send ending."""
        if not self.started or self.inflight >= MAX_PARALLEL_PER_PEER:
            return math.inf
        return max(0.0, min(self.started) + STALL_S - trio.current_time())


@dataclass
class _Conn:
    stream: ByteStream
    reader: FrameReader
    idle_since: float = 0.0


@dataclass
class Negotiator:
    """Both halves of the negotiate protocol for one node."""

    identity: Identity
    config: NegotiateConfig
    open_stream: OpenStream
    penalise: Penalise
    replay_guard: ReplayGuard = field(default_factory=ReplayGuard)
    handlers: dict[str, Handler] = field(default_factory=dict)
    _active: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    _idle: defaultdict[str, list[_Conn]] = field(default_factory=lambda: defaultdict(list))
    _slots: dict[str, trio.Semaphore] = field(default_factory=dict)
    _lanes: dict[str, _Lane] = field(default_factory=dict)
    served: int = 0  # requests answered (each item of a batch counts)
    frames_served: int = 0  # round trips answered (a batch counts once)
    batches_sent: int = 0  # requests that went as a Batch of several

    def on(self, message_type: str, handler: Handler) -> None:
        """Register the handler for one message type (one handler per type)."""
        if message_type not in MESSAGE_TYPES:
            raise ValueError(f"unknown message type {message_type!r}")
        self.handlers[message_type] = handler

    # ------------------------------------------------------------ server
    async def serve_stream(self, stream: ByteStream, peer_id: str) -> None:
        """Serve requests on one inbound stream until the peer closes it or misbehaves."""
        cfg = self.config
        if self._active[peer_id] >= cfg.max_streams_per_peer:
            self.penalise(peer_id, "busy")
            await _send_quietly(stream, error_frame("busy", "too many streams from this peer"))
            await stream.reset()
            return
        self._active[peer_id] += 1
        try:
            await self._serve(stream, peer_id)
        finally:
            self._active[peer_id] -= 1
            if not self._active[peer_id]:
                del self._active[peer_id]

    async def _serve(self, stream: ByteStream, peer_id: str) -> None:
        cfg = self.config
        reader = FrameReader(stream, max_size=cfg.max_frame, read_timeout=cfg.read_timeout_s)
        first = True
        while True:
            try:
                wait = cfg.first_frame_timeout_s if first else cfg.idle_timeout_s
                payload = await reader.read_frame(first_timeout=wait)
                if payload is None:
                    break
                reply = await self._handle(payload, peer_id)
            except PeerProtocolError as exc:
                if exc.reason == "timeout" and not first and not reader._buf:
                    break  # an idle reused stream: close politely, nobody is at fault
                log.info("negotiate: %s from %s: %s", exc.reason, peer_id, exc.detail)
                self.penalise(peer_id, exc.reason)
                await _send_quietly(stream, error_frame(exc.reason, exc.detail))
                break
            except C0Error as exc:  # the handler refused the request on purpose
                self.served += 1  # answered, as a refused item of a batch is
                self.frames_served += 1
                await _send_quietly(stream, error_frame(exc.code, exc.message))
                break
            self.served += 1  # handled (counted before the write: the reply may land
            self.frames_served += 1  # before this task runs again)
            try:
                await stream.write(reply)
            except trio.BrokenResourceError:
                break
            first = False
        await stream.close()

    async def _handle(self, payload: bytes, peer_id: str) -> bytes:
        """The reply frame to one request; every failure is a C0Error (PeerProtocolError:
        the peer is at fault), so that one peer's request never stops the node."""
        try:
            return await self._handle_request(payload, peer_id)
        except C0Error:
            raise
        except Exception as exc:  # not trio.Cancelled, not KeyboardInterrupt: BaseException
            raise refusal_for(exc, peer_id, "a request") from None

    async def _handle_request(self, payload: bytes, peer_id: str) -> bytes:
        if is_control(payload):
            raise PeerProtocolError("unexpected_type", "a request must be an envelope")
        signed = self._open_from(payload, peer_id, "the envelope is not signed by this peer")
        if isinstance(signed.message, Batch):
            items = await self._handle_batch(signed.message, peer_id)
            return encode_frame(seal(self.identity, Batch(items=items), now=_now_ms()))
        handler = self.handlers.get(signed.message.TYPE)
        if handler is None:
            raise C0Error(f"no handler for {signed.message.TYPE}", code="unsupported")
        try:
            with trio.fail_after(self.config.handler_timeout_s):
                reply = await handler(signed, peer_id)
        except trio.TooSlowError:
            raise C0Error("handler took too long", code="handler_timeout") from None
        if reply is None:
            return encode_control({"ok": True})
        return encode_frame(seal(self.identity, reply, now=_now_ms()))

    def _open_from(self, payload: bytes, peer_id: str, wrong_signer: str) -> SignedMessage:
        """Open an envelope (every check of envelope.md, the replay guard included) that
        `peer_id` must have signed: a node speaks only for itself."""
        signed = open_envelope(
            payload, now=_now_ms(), replay_guard=self.replay_guard, max_size=self.config.max_frame
        )
        if signer_peer(signed) != peer_id:
            raise PeerProtocolError("wrong_signer", wrong_signer)
        return signed

    async def _handle_batch(self, batch: Batch, peer_id: str) -> tuple[bytes, ...]:
        """Each item as if it came alone (concurrently); replies in the items' order. A bad
        item is answered with an error and penalised; the others are served."""
        replies = [b""] * len(batch.items)

        async def one(index: int, item: bytes) -> None:
            replies[index] = await self._handle_item(item, peer_id)

        async with trio.open_nursery() as nursery:
            for index, item in enumerate(batch.items):
                nursery.start_soon(one, index, item)
        self.served += len(batch.items) - 1  # the batch itself counts once in `_serve`
        return tuple(replies)

    async def _handle_item(self, item: bytes, peer_id: str) -> bytes:
        try:
            try:
                return await self._handle_item_request(item, peer_id)
            except (C0Error, trio.TooSlowError):
                raise
            except Exception as exc:  # as in `_handle`: a refusal for this item alone
                raise refusal_for(exc, peer_id, "a batch item") from None
        except PeerProtocolError as exc:
            log.info("negotiate: %s in a batch from %s: %s", exc.reason, peer_id, exc.detail)
            self.penalise(peer_id, exc.reason)
            return codec.encode({"error": exc.reason, "detail": exc.detail[:200]})
        except trio.TooSlowError:
            return codec.encode({"error": "handler_timeout", "detail": "handler took too long"})
        except C0Error as exc:
            return codec.encode({"error": exc.code, "detail": exc.message[:200]})

    async def _handle_item_request(self, item: bytes, peer_id: str) -> bytes:
        if is_control(item):
            raise PeerProtocolError("unexpected_type", "a batch item must be an envelope")
        signed = self._open_from(item, peer_id, "a batch item is not signed by this peer")
        if isinstance(signed.message, Batch):
            raise PeerProtocolError("malformed", "batches do not nest")
        handler = self.handlers.get(signed.message.TYPE)
        if handler is None:
            raise C0Error(f"no handler for {signed.message.TYPE}", code="unsupported")
        with trio.fail_after(self.config.handler_timeout_s):
            reply = await handler(signed, peer_id)
        if reply is None:
            return codec.encode({"ok": True})
        return seal(self.identity, reply, now=_now_ms())

    # ------------------------------------------------------------ client
    async def request(
        self,
        peer_id: str,
        envelope: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SignedMessage | None:
        """Send one envelope; return the signed reply (None for a plain ack).

        Raises RemoteRefused (an error frame), PeerProtocolError (a bad reply; the peer
        is penalised), RequestTimeout, or trio.BrokenResourceError (peer unreachable).
        Requests queued behind `PARALLEL_PER_PEER` in flight go as one Batch.
        """
        limit = self.config.request_timeout_s if timeout is None else timeout
        lane = self._lanes.get(peer_id)
        if lane is None:
            lane = self._lanes[peer_id] = _Lane()
        waiting = _Waiting(envelope, trio.current_time() + limit)
        lane.queue.append(waiting)
        try:
            with trio.fail_after(limit):
                while not waiting.done.is_set():
                    if not waiting.taken and lane.may_send():
                        batch = self._take(lane, waiting)
                        started = trio.current_time()
                        lane.started.append(started)
                        try:
                            with trio.CancelScope(shield=True):  # others wait on this send
                                await self._send(peer_id, batch)
                        finally:
                            lane.started.remove(started)
                            lane.pulse()
                    else:
                        with trio.move_on_after(lane.until_stalled()):
                            await lane.changed.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no reply from {peer_id} within {limit:g} s") from None
        finally:
            if not waiting.taken:
                lane.queue.remove(waiting)
        if waiting.error is not None:
            raise waiting.error
        return waiting.result

    def _take(self, lane: _Lane, first: _Waiting) -> list[_Waiting]:
        """`first` and the requests queued after it, as many as one batch holds."""
        batch, size = [first], len(first.envelope)
        first.taken = True
        for waiting in lane.queue:
            if len(batch) >= MAX_BATCH_ITEMS:
                break
            if waiting.taken:
                continue
            if size + len(waiting.envelope) > _BATCH_BYTES:
                break
            waiting.taken = True
            size += len(waiting.envelope)
            batch.append(waiting)
        lane.queue = [w for w in lane.queue if not w.taken]
        return batch

    async def _send(self, peer_id: str, batch: list[_Waiting]) -> None:
        """Deliver `batch` (alone, or as one Batch) and hand each caller its outcome."""
        # Never hold more requests to one peer than half its inbound stream limit: a burst
        # of our own jobs must queue here, not trip the peer's flood protection.
        slots = self._slots.get(peer_id)
        if slots is None:
            slots = self._slots[peer_id] = trio.Semaphore(
                max(1, self.config.max_streams_per_peer // 2)
            )
        limit = max(w.limit_at for w in batch) - trio.current_time()
        try:
            with trio.move_on_after(max(0.0, limit)) as scope:
                async with slots:
                    if len(batch) == 1:
                        batch[0].result = await self._request(peer_id, batch[0].envelope)
                    else:
                        await self._send_batch(peer_id, batch)
            if scope.cancelled_caught:
                for w in batch:
                    w.error = RequestTimeout(f"no reply from {peer_id} within {limit:.3g} s")
        except (C0Error, trio.BrokenResourceError, OSError) as exc:
            for w in batch:
                if w.result is None and w.error is None:
                    w.error = exc
        except BaseException as exc:  # a bug: no caller may take it for an ack
            for w in batch:
                if w.result is None and w.error is None:
                    w.error = exc
            raise
        finally:
            for w in batch:
                w.done.set()

    async def _send_batch(self, peer_id: str, batch: list[_Waiting]) -> None:
        outer = seal(self.identity, Batch(items=tuple(w.envelope for w in batch)), now=_now_ms())
        reply = await self._request(peer_id, outer)
        self.batches_sent += 1
        items = (
            reply.message.items if reply is not None and isinstance(reply.message, Batch) else ()
        )
        if len(items) != len(batch):
            self.penalise(peer_id, "malformed")
            raise PeerProtocolError("malformed", "the batch reply does not match the batch")
        for waiting, item in zip(batch, items, strict=True):
            try:
                waiting.result = self._reply(item, peer_id)
            except (RemoteRefused, PeerProtocolError) as exc:
                waiting.error = exc

    async def _request(self, peer_id: str, envelope: bytes) -> SignedMessage | None:
        frame = encode_frame(envelope)
        for _attempt in range(2):
            conn, reused = await self._checkout(peer_id)
            try:
                await conn.stream.write(frame)
                # the caller's deadline bounds the wait for the reply (handlers may be slow)
                payload = await conn.reader.read_frame(first_timeout=math.inf)
            except trio.BrokenResourceError:
                await conn.stream.reset()
                if reused:
                    continue  # the peer closed an idle stream; try a fresh one
                raise
            except BaseException:
                await conn.stream.reset()
                raise
            if payload is None:
                await conn.stream.reset()
                if reused:
                    continue
                raise trio.BrokenResourceError(f"{peer_id} closed the stream without a reply")
            try:
                result = self._reply(payload, peer_id)
            except BaseException:
                await conn.stream.reset()
                raise
            conn.idle_since = trio.current_time()
            self._idle[peer_id].append(conn)
            return result
        raise trio.BrokenResourceError(f"{peer_id} keeps closing streams")

    def _reply(self, payload: bytes, peer_id: str) -> SignedMessage | None:
        try:
            if is_control(payload):
                ctl = decode_control(payload)
                if ctl.get("ok") is True:
                    return None
                if isinstance(ctl.get("error"), str):
                    raise RemoteRefused(ctl["error"], str(ctl.get("detail", "")))
                raise PeerProtocolError("malformed", "unknown control frame")
            signed = self._open_from(payload, peer_id, "reply not signed by the peer asked")
        except PeerProtocolError as exc:
            self.penalise(peer_id, exc.reason)
            raise
        return signed

    async def _checkout(self, peer_id: str) -> tuple[_Conn, bool]:
        idle = self._idle.get(peer_id)
        max_idle = self.config.idle_timeout_s / 2  # leave before the server's idle timeout
        while idle:
            conn = idle.pop()
            if trio.current_time() - conn.idle_since < max_idle:
                return conn, True
            await conn.stream.close()
        stream = await self.open_stream(peer_id, NEGOTIATE_PROTOCOL)
        reader = FrameReader(
            stream, max_size=self.config.max_frame, read_timeout=self.config.read_timeout_s
        )
        return _Conn(stream, reader), False

    async def forget_peer(self, peer_id: str) -> None:
        """Drop pooled streams to a peer (it disconnected or was banned)."""
        for conn in self._idle.pop(peer_id, []):
            await conn.stream.reset()

    async def aclose(self) -> None:
        for peer in list(self._idle):
            await self.forget_peer(peer)


async def _send_quietly(stream: ByteStream, data: bytes) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.write(data)
        except trio.BrokenResourceError:
            pass
