"""Yamux receive-window credit as go-yamux gives it: in one update once half the window
has been consumed, not after every read.

py-libp2p 0.8.1's `YamuxStream._auto_tune_and_send_window_update` has a branch ("partial
slack") that returns the consumed bytes to the sender after *every* read that leaves the
window short of its target, whatever `PY_YAMUX_RELEASE_ON_READ` says. For the negotiate
protocol (a few hundred bytes each way per request) that is one extra WINDOW_UPDATE frame
per message in each direction: an encrypted Noise frame, a syscall and a wake-up on both
hosts, as many frames again as the messages themselves. `install()` replaces that method
with the go-yamux rule: credit is returned when the consumed bytes reach the grow
threshold (half the target window), together with py-libp2p's auto-tuning of the target.
Wire format and flow-control semantics are unchanged; any yamux peer accepts the larger,
rarer updates (the sender may use at most the window it was granted, as before).
"""

from __future__ import annotations

from typing import Any

from libp2p.stream_muxer.yamux.yamux import YamuxStream

__all__ = ["install"]

ORIGINAL = YamuxStream._auto_tune_and_send_window_update  # tests compare against it


async def _half_window_update(self: Any, *, bytes_read: int = 0) -> None:
    total = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        # recv_window shrinks as frames arrive and grows as credit goes back, so this is
        # what the application has consumed (or what auto-tuning wants added) since the
        # last update.
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta > 0 and delta >= self._grow_threshold():
            total = self._grow_to_delta(buffered)
            total += self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if total > 0:
        await self.send_window_update(total, skip_lock=True)


def install() -> None:
    """Idempotent; every node process calls it before its host starts."""
    YamuxStream._auto_tune_and_send_window_update = _half_window_update  # type: ignore[method-assign]
