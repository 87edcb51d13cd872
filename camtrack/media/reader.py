"""One viewer's reading of a packet feed: where it starts, how it keeps up, and, for a camera's own
packets, the bridge that shows a newcomer the live picture. Every way of watching encoded packets
reads through one of these: a WebRTC track (camtrack.outputs.webrtc.tracks) and the websocket
stream (camtrack.outputs.wsvideo)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable

from .feeds import FeedClosed, PacketFeed
from .meters import Meter
from .packet import EncodedPacket
from .switch import FeedSwitch, Timeline

logger = logging.getLogger(__name__)

#: a viewer joining this long (seconds of pictures) after the camera's keyframe or later is bridged;
#: sooner, the squeezed run since the keyframe shows a picture at most this old for a moment (a camera
#: that just opened for its first viewer needs no decoder and encoder started for that)
BRIDGE_AFTER = 0.25
#: a join bridge keeps running this long after a joiner let go of it: joins that follow each other
#: (a page reloaded, many viewers arriving, a client joining and leaving in a loop) share its decoded
#: state instead of each decoding the camera's run since its keyframe again (tests/test_amplifiers.py)
BRIDGE_LINGER = 2.0


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


class _BridgeHold:
    """Keeps a join bridge attached until BRIDGE_LINGER seconds after the last joiner let go of it."""

    def __init__(self, bridge: PacketFeed) -> None:
        self.bridge = bridge
        self._timer: asyncio.TimerHandle | None = None

    def renew(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # (no loop: nothing keeps it)
        if self._timer is None:
            self.bridge.attach(self)
        else:
            self._timer.cancel()
        self._timer = loop.call_later(BRIDGE_LINGER, self._release)

    def _release(self) -> None:
        self._timer = None
        self.bridge.detach(self)


#: the hold of each join bridge that one kept (by the bridge, which it does not keep alive)
_holds: weakref.WeakKeyDictionary[PacketFeed, _BridgeHold] = weakref.WeakKeyDictionary()


def linger(bridge: PacketFeed) -> None:
    """Keep `bridge` running BRIDGE_LINGER seconds more (a joiner is letting go of it)."""
    hold = _holds.get(bridge)
    if hold is None:
        hold = _holds[bridge] = _BridgeHold(bridge)
    hold.renew()


class BridgedReader(PacketReader):
    """A `PacketReader` of a passed-through camera, for a viewer who may join between its keyframes.

    A camera's keyframes come seconds apart (4 s and more) and cannot be asked for, and a picture in
    between can only be decoded with everything since the last keyframe. Sent that run squeezed, a
    newcomer sees a picture at once, but its first pictures may be old ones. The bridge gives the
    live picture instead: the camera's packets decoded from its newest keyframe (all at once, so the
    first picture out is the newest) and encoded again by a shared encoder (`Camera.join_bridge`)
    that starts with a keyframe of that picture. The newcomer reads the bridge until the camera's
    next keyframe, then switches to the camera's own packets (presentation times kept growing) and
    lets go of the bridge, which stops BRIDGE_LINGER seconds after no newcomer needs it: decoding
    and encoding happen only while someone is joining, and joins in a row share one run of it.
    The move from the bridge to the camera is a `FeedSwitch` (camtrack.media.switch), the bridge's
    clock lined up with the camera's.
    """

    def __init__(self, feed: PacketFeed, bridge: Callable[[], PacketFeed | None], meter: Meter | None = None) -> None:
        super().__init__(feed, meter)
        self._make_bridge = bridge
        #: the move from the bridge to the camera's own packets, while this viewer reads the bridge
        self._switch: FeedSwitch | None = None
        #: bridge packets this viewer got, and whether it has switched to the camera's own packets
        self.bridged = 0
        self.switched = False
        self._decided = False
        #: the viewer's presentation times (the camera's pts + its offset, kept always growing)
        self._timeline = Timeline()

    @property
    def bridge(self) -> PacketFeed | None:
        """The bridge while this viewer reads it."""
        return self._switch.source if self._switch is not None else None

    def request_keyframe(self) -> None:
        if self._switch is not None:
            self._switch.source.request_keyframe()
        else:
            super().request_keyframe()

    async def next(self) -> tuple[EncodedPacket, int | None]:
        if not self._decided:
            self._decided = True
            self._start_bridge()
        while (switch := self._switch) is not None:
            if self.closed:
                raise ReaderClosed()
            run = switch.due()
            if run is not None:
                # the camera's own keyframe, newer than the join: from here on its own packets
                self._switch_to(run)
                break
            try:
                bridged = await switch.next_source()
            except FeedClosed:
                if self.closed:
                    raise
                logger.debug("join bridge closed: starting from the camera's keyframe run instead")
                self._stop_bridge()
                break
            if bridged is not None:
                self.bridged += 1
                self._count(bridged[0])
                return bridged
        encoded, squeezed = await super().next()
        return encoded, self._own_pts(encoded, squeezed)

    def _own_pts(self, encoded: EncodedPacket, squeezed: int | None) -> int | None:
        """The camera's packet's presentation time here: kept growing past the bridge's."""
        timeline = self._timeline
        out = timeline.stamp(squeezed if squeezed is not None else encoded.packet.pts or 0)
        return out if timeline.offset or squeezed is not None else None

    def in_step(self) -> bool:
        return self._switch is None and self._decided and super().in_step()

    def step(self, encoded: EncodedPacket) -> int | None:
        super().step(encoded)
        return self._own_pts(encoded, None)

    def _start_bridge(self) -> None:
        run = self.feed.start_packets()
        if len(run) <= 1 or run[-1].codec.seconds((run[-1].packet.pts or 0) - (run[0].packet.pts or 0)) < BRIDGE_AFTER:
            return  # at (or just after) the camera's keyframe: its squeezed run is as good as live
        bridge = self._make_bridge()
        if bridge is None:
            return
        self._switch = FeedSwitch(bridge, self.feed, self._timeline, after=run[-1].seq, line_up=True)

    def _switch_to(self, run: list[EncodedPacket]) -> None:
        """From the bridge to the camera's own packets, at the camera's keyframe `run[0]`."""
        self._stop_bridge()
        self.switched = True
        self._pending = deque(run)
        self._seq = run[-1].seq
        self._synced = True
        self._try_start = False

    def _stop_bridge(self) -> None:
        switch, self._switch = self._switch, None
        if switch is not None:
            linger(switch.source)  # (before this reader lets go: the bridge never stops in between)
            switch.close()

    def close(self) -> None:
        self._stop_bridge()
        super().close()
