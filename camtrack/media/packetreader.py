"""One viewer's reading of a packet feed: where it starts and how it keeps up. Every way of watching
encoded packets reads through one of these (camtrack.media.reader: a `PacketReader`, or a
`BridgedReader` for a camera's own packets), and so does a `FeedSwitch` once it is on its target
(camtrack.media.switch): one loop reads packets everywhere."""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from .feeds import FeedClosed, PacketFeed
from .meters import Meter
from .packet import EncodedPacket


class Reading(Protocol):
    """What a way out reads a viewer's packets with: a `PacketReader`, or a reader that moves the
    viewer between a camera's tiers (camtrack.media.quality.TierReader)."""

    @property
    def feed(self) -> PacketFeed:
        """The feed whose packets the viewer gets now."""
        ...

    @property
    def seq(self) -> int: ...

    @property
    def first_packet(self) -> tuple[float, bool] | None: ...

    @property
    def skipped(self) -> int: ...

    @property
    def resyncs(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def request_keyframe(self) -> None: ...

    def in_step(self) -> bool: ...

    def step(self, encoded: EncodedPacket) -> int | None: ...

    async def next(self) -> tuple[EncodedPacket, int | None]: ...

    def close(self) -> None: ...


class ReaderClosed(FeedClosed):
    """The reader was closed while it waited."""


class PacketReader:
    """A viewer's reading of a packet feed (the shared encoder, a camera's own packets).

    It starts on a keyframe and never queues: a viewer a few packets behind catches up from the
    feed's ring; one that fell further behind (the packets it needs are gone) drops what it
    missed and waits for the next keyframe, asking for one. Memory per viewer is a reference to
    one packet (plus, at the start, the few packets since a keyframe). It attaches to the feed at
    once (so that the feed is running by the time the viewer can take packets).
    """

    def __init__(self, feed: PacketFeed, meter: Meter | None = None) -> None:
        self.feed = feed
        self.meter = meter
        self.started = time.monotonic()
        #: seconds from attaching to the first packet handed out, and whether it was a keyframe
        self.first_packet: tuple[float, bool] | None = None
        #: when (time.monotonic()) the viewer first asked for a packet: for a WebRTC viewer, once
        #: its peer is connected (ICE and DTLS done), which `first_packet` counts in
        self.first_read: float | None = None
        #: packets skipped over by falling behind, and the times that made it wait for a keyframe
        self.skipped = 0
        self.resyncs = 0
        self.closed = False
        self._pending: deque[EncodedPacket] | None = None  # set at the first next()
        #: when not in sync (at the start, after falling behind), try the feed's start run once
        #: more at the next packet: a run may have come since (a camera just opened)
        self._try_start = True
        #: the start run's presentation times, squeezed (see `_start_run`), by sequence number
        self._squeezed: dict[int, int] = {}
        self._seq = 0
        self._synced = False
        feed.attach(self)

    def request_keyframe(self) -> None:
        """The viewer asked for a keyframe (PLI or FIR)."""
        self.feed.request_keyframe()

    @property
    def seq(self) -> int:
        """The number of the last packet handed out (0 before the first)."""
        return self._seq

    def in_step(self) -> bool:
        """Whether this reader's next packet is simply the feed's next one, as it is (synced, no
        start run or bridge of its own left): then a fan-out may hand it packets with `step()`
        instead of its viewer waiting on `next()` (camtrack.outputs.webrtc.fanout)."""
        if self._squeezed and max(self._squeezed) <= self._seq:
            self._squeezed.clear()  # (what is left of a start run given up for a newer one)
        return self._synced and not self._pending and not self._squeezed and not self.closed

    def step(self, encoded: EncodedPacket) -> int | None:
        """Hand out `encoded`, the feed's packet right after the last one handed out, for a reader
        `in_step()`; returns its presentation time here as `next()` would (None: the packet's)."""
        self._seq = encoded.seq
        self._count(encoded)
        return None

    async def next(self) -> tuple[EncodedPacket, int | None]:
        """The next packet for this viewer, and its own presentation time when it is not the
        packet's (a squeezed start run), else None. FeedClosed when the feed or the reader closed."""
        if self._pending is None:
            # the viewer takes its first packet: start from a keyframe now
            self.first_read = time.monotonic()
            self._pending = deque(self._start_run(self.feed.start_packets()))
            self._synced = bool(self._pending)
            if self._pending:
                self._seq = self._pending[-1].seq
            elif self.feed.latest is not None:
                self._seq = self.feed.latest.seq
        while True:
            if self.closed:
                raise ReaderClosed()
            if self._pending:
                encoded = self._pending.popleft()
            else:
                read = await self.feed.next_packet(self._seq)
                encoded = read.item
                if self._synced and read.skipped:
                    # fell behind: what was missed is needed to decode this, so resync
                    self.skipped += read.skipped
                    self.resyncs += 1
                    self._synced = False
                    self._try_start = True
                    self.feed.request_keyframe()
                self._seq = encoded.seq
                if not self._synced:
                    if not encoded.keyframe and self._try_start:
                        # start again from the feed's newest keyframe and what followed it, squeezed
                        # (a camera cannot be asked for a keyframe; a shared encoder may have one)
                        self._try_start = False
                        run = self._start_run(self.feed.start_packets())
                        if run and run[-1].seq >= encoded.seq:
                            self._pending = deque(run)
                            self._seq = run[-1].seq
                            self._synced = True
                            continue
                    if not encoded.keyframe:
                        continue
                    self._synced = True
            if self.closed:
                raise ReaderClosed()
            self._count(encoded)
            return encoded, self._squeezed.pop(encoded.seq, None)

    def resume(self, run: list[EncodedPacket]) -> None:
        """Go on from `run`, a keyframe and what followed it (a switch's target run, see
        camtrack.media.switch.FeedSwitch.take), in sync: its packets next, at their own times."""
        self._pending = deque(run)
        self._seq = run[-1].seq
        self._synced = True
        self._try_start = False

    def _count(self, encoded: EncodedPacket) -> None:
        if self.first_packet is None:
            self.first_packet = (time.monotonic() - self.started, encoded.keyframe)
        if self.meter is not None:
            self.meter.sent(encoded.size)

    def _start_run(self, run: list[EncodedPacket]) -> list[EncodedPacket]:
        """Where this viewer starts: the feed's run from its newest keyframe to its newest packet,
        with presentation times squeezed to one tick apart, ending at the newest packet's.

        A camera's keyframes come every few seconds and cannot be asked for; sent at their own
        times, the packets since the last one would play as old video (the viewer would stay that
        far behind). Squeezed, the player decodes them at once and shows the newest picture: the
        viewer sees the picture on its first packets and is live from then on.
        """
        if len(run) > 1:
            newest = run[-1].packet.pts or 0
            self._squeezed = {p.seq: newest - (len(run) - 1 - i) for i, p in enumerate(run)}
        return run

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed.detach(self)
