"""The Node: wires identity, store, transport, gossip, negotiation and blobs together.

One object per running node; `run` is the structured-concurrency entry point. The job
lifecycle builds on the public methods here (request/send/on, blobs, caps, events).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.blobstore import BlobStore
from node.config import NodeConfig
from node.home import prepare_home
from node.net.blobs import BLOB_PROTOCOL, BlobService
from node.net.caps import CAPS_TOPIC, Action, CapsBook, KnownWorker, Verdict
from node.net.negotiate import NEGOTIATE_PROTOCOL, Handler, Negotiator
from node.net.penalties import PenaltyTable
from node.net.transport import Transport
from node.store import DB_FILE, EventLog, Store
from protocol.envelope import SignedMessage, open_envelope, seal
from protocol.errors import PeerProtocolError
from protocol.identity import Identity
from protocol.messages import CapabilityAd, Message

__all__ = ["Node", "now_ms"]

log = logging.getLogger("c0.node")
_NEW_PEER_CHECK_S = 0.5
_NEW_PEER_DELAY_S = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _default_ad_fields() -> dict[str, Any]:
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        memory_mb = 0
    return {
        "hardware": {"cpu_cores": os.cpu_count() or 1, "memory_mb": memory_mb, "gpu": None},
        "runtimes": {},
        "prices": {},
        "models": (),
        "content": (),
        "load": 0.0,
        "max_concurrent": 1,
        "stake": 0,
    }


@dataclass(frozen=True)
class AdStats:
    published: int
    last_seq: int


class Node:
    """A c0 node. Construct, then `await nursery.start(node.run)`."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig,
        home: Path,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self.home = Path(home)
        prepare_home(self.home)  # owner-only, with its blobs/, work/, results/ folders
        if transport is None:
            from node.net.host import Libp2pTransport  # imports libp2p: only when needed

            transport = Libp2pTransport(identity, config)
        self.transport: Transport = transport
        self.store = Store(self.home / DB_FILE, sync=config.storage.sync)
        self.events = EventLog(self.store, identity)
        pen = config.penalties
        self.penalties = PenaltyTable(
            ban_threshold=pen.ban_threshold, half_life_s=pen.half_life_s, ban_s=pen.ban_s
        )
        g = config.gossip
        self.book = CapsBook(max_ad_size=g.max_ad_size, rate_per_s=g.rate_per_s, burst=g.burst)
        self.negotiator = Negotiator(
            identity, config.negotiate, transport.open_stream, self.penalise
        )
        self.blobs = BlobService(
            BlobStore(self.home / "blobs", self.store),
            config.blobs,
            transport.open_stream,
            self.penalise,
            request_timeout_s=config.negotiate.request_timeout_s,
        )
        self.started_at: float | None = None
        self.ad_fields: dict[str, Any] = _default_ad_fields()
        self.ads_published = 0
        self.on_ad: list[Callable[[KnownWorker], None]] = []  # lifecycle hooks
        self._ad_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._unsaved_ads: dict[str, tuple[KnownWorker, int]] = {}
        self._ads_to_save = trio.Event()
        self._connect_send, self._connect_recv = trio.open_memory_channel[str](64)
        self._dialing: set[str] = set()
        self._restore()
        transport.set_stream_handler(NEGOTIATE_PROTOCOL, self.negotiator.serve_stream)
        transport.set_stream_handler(BLOB_PROTOCOL, self.blobs.serve_stream)
        transport.set_gossip(CAPS_TOPIC, self._validate_gossip)

    # ------------------------------------------------------------ identity
    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def did(self) -> str:
        return self.identity.did

    @property
    def light(self) -> bool:
        return self.config.light

    # ------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; `started` once the node listens and serves."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.transport.run)
                self.started_at = trio.current_time()
                nursery.start_soon(self._connector)
                nursery.start_soon(self._housekeeping)
                nursery.start_soon(self._ad_saver)
                for addr in self.config.network.bootstrap:
                    self._connect_send.send_nowait(addr)
                if not self.light:
                    nursery.start_soon(self._publisher)
                task_status.started()
        finally:
            self._nursery = None
            self._save_ads()
            with trio.CancelScope(shield=True):
                await self.negotiator.aclose()
            self.store.close()

    def uptime_s(self) -> float:
        return 0.0 if self.started_at is None else trio.current_time() - self.started_at

    # ------------------------------------------------------------ negotiation API
    def seal(self, message: Message, *, ttl_ms: int = 60_000) -> bytes:
        """Sign a message as this node."""
        return seal(self.identity, message, now=now_ms(), ttl_ms=ttl_ms)

    def on(self, message_type: str, handler: Handler) -> None:
        """Handle requests of one type: `async handler(signed, peer_id) -> Message | None`."""
        self.negotiator.on(message_type, handler)

    async def request(
        self,
        peer_id: str,
        envelope: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the request API names its limit)
    ) -> SignedMessage | None:
        """Send a signed envelope on /c0/negotiate/1.0.0; return the signed reply."""
        return await self.negotiator.request(peer_id, envelope, timeout=timeout)

    async def send(
        self,
        peer_id: str,
        envelope: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Deliver a signed envelope and wait for the peer's acknowledgement."""
        await self.negotiator.request(peer_id, envelope, timeout=timeout)

    # ------------------------------------------------------------ peers
    def penalise(self, peer_id: str, reason: str) -> None:
        """Record misbehaviour; at the ban threshold, block and disconnect the peer."""
        if peer_id == self.peer_id:
            return
        if self.penalties.penalise(peer_id, reason, trio.current_time()):
            log.warning("banning %s (last: %s)", peer_id, reason)
            self.transport.block(peer_id)
            if self._nursery is not None:
                self._nursery.start_soon(self._drop_peer, peer_id)

    async def _drop_peer(self, peer_id: str) -> None:
        await self.negotiator.forget_peer(peer_id)
        await self.transport.disconnect(peer_id)

    def connect_soon(self, multiaddr: str, *, peer_id: str | None = None) -> None:
        """Dial in the background; with `peer_id`, only while below target_peers."""
        if peer_id is not None:
            busy = set(self.transport.connected_peers()) | self._dialing
            if peer_id in busy or len(busy) >= self.config.network.target_peers:
                return
            self._dialing.add(peer_id)
        try:
            self._connect_send.send_nowait(multiaddr)
        except trio.WouldBlock:
            self._dialing.discard(peer_id or "")

    async def _connector(self) -> None:
        async with trio.open_nursery() as nursery:
            async for addr in self._connect_recv:
                nursery.start_soon(self._connect, addr)

    async def _connect(self, addr: str) -> None:
        try:
            await self._connect_with_retries(addr)
        finally:
            self._dialing.discard(addr.rsplit("/p2p/", 1)[-1])

    async def _connect_with_retries(self, addr: str) -> None:
        delay = 0.2
        for _attempt in range(8):  # bootstrap peers may still be starting
            try:
                peer = await self.transport.connect(addr)
            except trio.BrokenResourceError as exc:
                log.debug("connect %s: %s", addr, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.store.upsert_peer(peer, [addr])
            return
        log.info("giving up on %s", addr)

    # ------------------------------------------------------------ gossip
    @property
    def caps(self) -> dict[str, KnownWorker]:
        """Workers heard through gossip: DID -> latest verified ad (not expired)."""
        return self.book.live(now_ms())

    def _validate_gossip(self, data: bytes, origin: str, forwarder: str) -> Verdict:
        """The topic validator: where a peer's gossip enters the node. An exception nobody
        raised on purpose while checking it rejects the message (`bad_request`, the
        forwarder penalised) instead of reaching the gossip stack; one in what follows an
        accepted ad (storing it, dialling, the `on_ad` hooks) is logged, not penalised."""
        if origin == self.peer_id:
            return Verdict(Action.ACCEPT)  # our own publish
        now = now_ms()
        try:
            verdict = self.book.validate(data, origin, now)
            if verdict.action is Action.ACCEPT:
                assert verdict.signed is not None
                worker = self.book.accept(verdict.signed, now)
        except Exception as exc:  # not trio.Cancelled, not KeyboardInterrupt: BaseException
            name = type(exc).__name__
            log.warning(
                "gossip from %s (origin %s) raised %s", forwarder, origin, name, exc_info=exc
            )
            verdict = Verdict(Action.REJECT, "bad_request", f"checking it raised {name}")
        if verdict.action is Action.REJECT:
            self.penalise(forwarder, verdict.reason)
            return verdict
        if verdict.action is Action.IGNORE:
            return verdict
        try:
            self._on_accepted_ad(worker, now)
        except Exception as exc:
            log.warning("after the ad of %s: %s", worker.did, type(exc).__name__, exc_info=exc)
        return verdict

    def _on_accepted_ad(self, worker: KnownWorker, now: int) -> None:
        ad = worker.ad
        # Ads are soft state (they expire and are re-learnt): written after this returns,
        # in one commit with the others that arrived meanwhile, so no disk sync sits
        # between receiving an ad and forwarding it.
        self._unsaved_ads[worker.did] = (worker, now)
        if self._nursery is not None:
            self._ads_to_save.set()
        else:
            self._save_ads()
        add_addrs = getattr(self.transport, "add_addrs", None)
        if add_addrs is not None:
            add_addrs(ad.peer_id, list(ad.listen_addrs))
        if ad.listen_addrs and ad.peer_id not in self.transport.connected_peers():
            self.connect_soon(ad.listen_addrs[0], peer_id=ad.peer_id)
        for hook in self.on_ad:
            try:
                hook(worker)
            except Exception as exc:  # one hook's failure neither stops the others nor the node
                log.warning("on_ad hook %r raised %s", hook, type(exc).__name__, exc_info=exc)

    async def _ad_saver(self) -> None:
        while True:
            await self._ads_to_save.wait()
            self._ads_to_save = trio.Event()
            self._save_ads()

    def _save_ads(self) -> None:
        """Write the ads accepted since the last call (and their peers), in one commit."""
        if not self._unsaved_ads:
            return
        batch, self._unsaved_ads = self._unsaved_ads, {}
        with self.store.transaction():
            for worker, received in batch.values():
                ad = worker.ad
                self.store.save_ad(
                    worker.did, ad.peer_id, ad.seq, worker.raw, received, worker.expires_ms
                )
                self.store.upsert_peer(ad.peer_id, list(ad.listen_addrs), worker.did)

    def update_ad(self, **fields: Any) -> None:
        """Change what this node advertises (hardware, runtimes, prices, load ...)."""
        self.ad_fields.update(fields)
        self._ad_changed.set()

    def build_ad(self) -> bytes:
        last = int(self.store.get_meta("ad_seq", "0") or 0)
        seq = max(now_ms(), last + 1)  # survives restarts: never reuse a sequence number
        self.store.set_meta("ad_seq", str(seq))
        binding = self.identity.eth_binding()
        ad = CapabilityAd(
            peer_id=self.peer_id,
            listen_addrs=tuple(self.transport.listen_addrs()[:16]),
            eth_address=self.identity.eth_address,
            eth_binding_ed25519_sig=binding.ed25519_sig,
            eth_binding_eth_sig=binding.eth_sig,
            seq=seq,
            ttl_s=self.config.gossip.ad_ttl_s,
            **self.ad_fields,
        )
        return self.seal(ad, ttl_ms=self.config.gossip.ad_ttl_s * 1000)

    async def publish_ad(self) -> int:
        """Publish the ad now; return its sequence number (its creation time in ms)."""
        raw = self.build_ad()
        await self.transport.publish(CAPS_TOPIC, raw)
        self.ads_published += 1
        return int(self.store.get_meta("ad_seq", "0") or 0)

    async def _publisher(self) -> None:
        """Publish at start, on change, when new peers appear, and every ad_interval_s."""
        interval = self.config.gossip.ad_interval_s
        await self.publish_ad()
        last_at = trio.current_time()
        told = set(self.transport.connected_peers())
        while True:
            with trio.move_on_after(_NEW_PEER_CHECK_S):
                await self._ad_changed.wait()
            now = trio.current_time()
            peers = set(self.transport.connected_peers())
            # A new peer joins the GossipSub mesh about a heartbeat after connecting, so
            # republish a little later rather than at once; never more than once a second.
            new_peers = bool(peers - told) and now - last_at >= _NEW_PEER_DELAY_S
            if self._ad_changed.is_set() or new_peers or now - last_at >= interval:
                self._ad_changed = trio.Event()
                told = peers
                await self.publish_ad()
                last_at = now

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(5.0)
            self.book.expire(now_ms())
            if len(self.transport.connected_peers()) < self.config.network.target_peers:
                connected = set(self.transport.connected_peers())
                for worker in list(self.book.live(now_ms()).values()):
                    peer = worker.ad.peer_id
                    if (
                        peer not in connected
                        and worker.ad.listen_addrs
                        and not self.penalties.is_banned(peer, trio.current_time())
                    ):
                        self.connect_soon(worker.ad.listen_addrs[0], peer_id=peer)

    def _restore(self) -> None:
        now = now_ms()
        for did, raw, received, expires in self.store.ads(now):
            try:
                signed = open_envelope(raw, now=now)
            except PeerProtocolError:
                continue
            if isinstance(signed.message, CapabilityAd) and signed.sender == did:
                self.book.restore(KnownWorker(did, signed.message, raw, received, expires))

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "did": self.did,
            "eth_address": self.identity.eth_address,
            "light": self.light,
            "listen_addrs": self.transport.listen_addrs(),
            "connected_peers": len(self.transport.connected_peers()),
            "uptime_s": round(self.uptime_s(), 3),
            "known_workers": len(self.caps),
            "ads_published": self.ads_published,
            "requests_served": self.negotiator.served,
            "round_trips_served": self.negotiator.frames_served,
            "batches_sent": self.negotiator.batches_sent,
            "blobs": self.store.blob_count(),
            "banned_peers": sum(
                1 for v in self.penalties.snapshot(trio.current_time()).values() if v["banned"]
            ),
            "pid": os.getpid(),
        }

    def peers(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        connected = set(self.transport.connected_peers())
        known = {p["peer_id"]: p for p in self.store.peers()}
        scores = self.penalties.snapshot(now)
        out = []
        for peer in sorted(connected | set(scores)):
            entry = known.get(peer, {})
            out.append(
                {
                    "peer_id": peer,
                    "did": entry.get("did"),
                    "addrs": entry.get("addrs", []),
                    "connected": peer in connected,
                    "score": scores.get(peer, {}).get("score", 0.0),
                    "banned": scores.get(peer, {}).get("banned", False),
                }
            )
        return out
