"""A viewer's move from one packet feed to another, at the other's keyframe, with its presentation
times continuous: what the join bridge does (a newcomer reads a transcode of the camera until the
camera's own keyframe, camtrack.media.reader.BridgedReader) and what quality tiers will do (a viewer
moves from one tier's encoder to another's).

A picture between keyframes can only be decoded with what came since the last one, so a viewer can
only move to a feed at one of its keyframes: until then it reads the feed it is on. And a player
drops or stalls on presentation times that go back: the viewer's times come from one `Timeline`,
which keeps them growing whichever feed's packets it stamps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .feeds import FeedClosed, PacketFeed
from .packet import EncodedPacket
from .packetreader import PacketReader


class Timeline:
    """One viewer's presentation times across the feeds it reads in turn: a feed's pts plus an
    offset, always growing (when a packet's would not, the offset moves up so that it does: the
    spacing of what follows is kept). Every feed a viewer reads counts pts in one time base."""

    def __init__(self) -> None:
        #: the feed's pts + this = the viewer's
        self.offset = 0
        #: the last presentation time handed out (-1: none yet)
        self.last = -1

    def stamp(self, pts: int) -> int:
        """The viewer's presentation time of a packet whose pts (in the feed it reads) is `pts`."""
        out = pts + self.offset
        if out <= self.last:
            self.offset = self.last + 1 - pts
            out = self.last + 1
        self.last = out
        return out


class FeedSwitch:
    """A viewer reading packet feed `source` until `target` has a keyframe newer than the switch.

    It reads `source` (attached while it does) from a keyframe on, resyncing at the next keyframe
    when it falls behind, and stamps its packets on the viewer's `timeline`: at `source`'s own
    times when it runs on the target's clock (two encoders of one camera), or, with `line_up`,
    on a clock of its own lined up with the target's newest packet at the first one (a transcode
    started just now). `due()` is the target's run from its first keyframe after packet `after`
    (by default its newest when the switch was made), once there is one: from there the viewer
    reads the target, stamped on the same timeline (continuing the offset it had on the target's
    clock, moved up as needed), and not one packet of the source any more.

    The target is read by a `PacketReader` (camtrack.media.packetreader, the loop every viewer
    reads packets with: waiting on the feed's ring, resyncing when behind, counting): `reader`,
    one that reads the target already (BridgedReader is one, and reads on from the switch itself),
    or one the switch makes at the switch (and closes with it).

    A reader that reads the target itself (BridgedReader) reads `before()` until it says None, then
    its own packets; `next()` does it all for a caller that reads nothing else. Whoever may ask the
    target for a keyframe (a shared encoder can make one; a camera cannot) does so.
    """

    def __init__(self, source: PacketFeed, target: PacketFeed, timeline: Timeline | None = None, *,
                 after: int | None = None, line_up: bool = False, reader: PacketReader | None = None,
                 on_leave: Callable[[PacketFeed], None] | None = None, source_seq: int | None = None,
                 continuous: bool = False) -> None:
        """`source_seq`: the viewer reads `source` already and has its packets up to this number (a
        quality tier's viewer moving to another tier): the switch goes on from there, in sync,
        instead of from the source's keyframe. `continuous`: the target runs on a clock of its own
        (another encoder's): its keyframe is stamped one capture interval after the last packet of
        the source (by their capture times, at least one tick), and what follows at its own spacing."""
        self.source = source
        self.target = target
        self.timeline = timeline if timeline is not None else Timeline()
        latest = target.latest
        self.after = after if after is not None else latest.seq if latest is not None else 0
        #: packets of the source handed out, and whether the viewer is on the target now
        self.from_source = 0
        #: packets of the source skipped over by falling behind, and the times that made it wait for
        #: the source's next keyframe (what a viewer's reader counts as its own: TierReader)
        self.skipped = 0
        self.resyncs = 0
        self.switched = False
        self.closed = False
        #: the target's reader (None: made at the switch), and whether the switch made it
        self.reader = reader
        self._own_reader = reader is None
        self._line_up = line_up
        self._on_leave = on_leave
        #: the target's offset on the timeline, kept while the source is read
        self._target_offset = self.timeline.offset
        #: the source's (None: lined up at its first packet)
        self._source_offset: int | None = None if line_up else self.timeline.offset
        self._seq = 0
        self._synced = False
        self._continuous = continuous
        #: the capture time of the source's last packet handed out (continuous)
        self._last_captured: float | None = None
        source.attach(self)
        self._on_source = True
        if source_seq is not None:
            self._pending: deque[EncodedPacket] = deque()
            self._seq, self._synced = source_seq, True
        else:
            self._pending = deque(source.start_packets())

    def due(self) -> list[EncodedPacket] | None:
        """The target's run from its keyframe when it has one newer than the switch, else None."""
        if self.switched:
            return None
        run = self.target.start_packets()
        if run and run[0].keyframe and run[0].seq > self.after:
            return run
        return None

    async def next_source(self) -> tuple[EncodedPacket, int] | None:
        """The source's next packet for the viewer (from a keyframe on) and its presentation time,
        or None (a packet skipped while waiting for a keyframe: look at `due()` again first).
        FeedClosed when the source closed."""
        source = self.source
        if self._pending:
            encoded = self._pending.popleft()
        else:
            read = await source.next_packet(self._seq)
            encoded = read.item
            if read.skipped and self._synced:
                self.skipped += read.skipped
                self.resyncs += 1
                self._synced = False
                source.request_keyframe()
        self._seq = encoded.seq
        if not self._synced:
            if not encoded.keyframe:
                return None
            self._synced = True
        pts = encoded.packet.pts or 0
        timeline = self.timeline
        if self._source_offset is None:
            latest = self.target.latest
            self._source_offset = (latest.packet.pts or 0 if latest is not None else 0) - pts
        timeline.offset = self._source_offset
        out = timeline.stamp(pts)
        self._source_offset = timeline.offset
        timeline.offset = self._target_offset
        self.from_source += 1
        self._last_captured = encoded.captured
        return encoded, out

    def leave(self) -> None:
        """Stop reading the source (at the switch, or when the viewer gives up on it), after
        `on_leave(source)` (BridgedReader's keeps the join bridge running a while)."""
        self._pending.clear()
        if self._on_source:
            self._on_source = False
            if self._on_leave is not None:
                self._on_leave(self.source)
            self.source.detach(self)

    def take(self, run: list[EncodedPacket]) -> None:
        """The viewer is on the target from `run` (what `due()` gave) on: its reader goes on from there."""
        self.leave()
        self.switched = True
        if self._continuous and run:
            first = run[0]
            codec = first.codec
            ticks = 1
            if self._last_captured is not None:
                ticks = max(1, round((first.captured - self._last_captured) / float(codec.time_base)))
            self.timeline.offset = self.timeline.last + ticks - (first.packet.pts or 0)
        if self.reader is None:
            self.reader = PacketReader(self.target)
        self.reader.resume(run)

    async def before(self) -> tuple[EncodedPacket, int] | None:
        """The source's next packet for the viewer and its presentation time while the switch is not
        due; None once it is (taken: the target's reader goes on from its keyframe). FeedClosed when
        the source or the switch closed."""
        while not self.switched:
            if self.closed:
                raise FeedClosed()
            run = self.due()
            if run is not None:
                self.take(run)
                break
            got = await self.next_source()
            if got is not None:
                return got
        return None

    async def next(self) -> tuple[EncodedPacket, int]:
        """The viewer's next packet, the source's until the switch is due, the target's from its
        keyframe on, and its presentation time. FeedClosed when the feed read closed."""
        got = await self.before()
        if got is not None:
            return got
        if self.closed or self.reader is None:
            raise FeedClosed()
        encoded, squeezed = await self.reader.next()
        return encoded, self.timeline.stamp(squeezed if squeezed is not None else encoded.packet.pts or 0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.leave()
            if self.reader is not None and self._own_reader:
                self.reader.close()
