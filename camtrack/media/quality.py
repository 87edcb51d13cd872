"""One viewer's quality: the tier it watches (camtrack.media.tiers), what it asked for, and its move
from one tier to another at the target's keyframe with its picture continuous.

A viewer asks for "auto" (the server picks from what its link reports: camtrack.outputs.webrtc's
quality control, the websocket stream's own send queue), "main" or "low". `TierReader` reads the
tier it is on like any `PacketReader` (the WebRTC track, the fan-out and the websocket stream read
it so), and `move(quality, reason)` starts a `FeedSwitch` (camtrack.media.switch) to the other tier:
the viewer keeps reading the tier it is on until the target's first keyframe after the move, then
reads the target, on one timeline whose times keep growing (the target's keyframe one capture
interval after the last picture of the tier it left). A move asked while one is under way replaces
it (or, back to the tier it is on, cancels it).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

from .feeds import PacketFeed
from .meters import Meter
from .packet import EncodedPacket, MediaKind
from .packetreader import PacketReader, ReaderClosed
from .switch import FeedSwitch, Timeline
from .tiers import Tier

logger = logging.getLogger(__name__)

#: what a viewer may ask for
CHOICES = ("auto", "main", "low")

#: every open TierReader of this process (camtrack_tier_viewers), and the moves made, by (camera, from,
#: to, why) (camtrack_tier_moves_total)
READERS: weakref.WeakSet[TierReader] = weakref.WeakSet()
MOVES: dict[tuple[str, str, str, str], int] = {}
#: a move's reason's first words -> its kind (the metric's label; the reason itself carries figures)
WHY = (("asked", "asked"), ("loss", "loss"), ("NACKs", "nack"), ("delay", "delay"), ("REMB", "remb"),
       ("send queue", "send_queue"), ("link clear", "probe"))


def why(reason: str) -> str:
    """The kind of a move's reason: asked, loss, nack, delay, remb, send_queue, probe (else other)."""
    return next((kind for prefix, kind in WHY if reason.startswith(prefix)), "other")


class TierReader:
    """A viewer's reader of its camera's tiers (see the module's docstring). `first` reads the tier
    it starts on (`camera.reader(transport, tier)`: bridged on a camera's own packets);
    `packets(tier)` is the camera's feed of a tier; `meter` counts what it sends."""

    def __init__(self, first: PacketReader, tier: Tier, packets: Callable[[MediaKind, Tier], PacketFeed | None],
                 available: tuple[str, ...], meter: Meter | None = None, *, choice: str = "auto",
                 reason: str = "start", camera: str = "") -> None:
        self.current = first
        #: the camera's name (for metrics)
        self.camera = camera
        self.tier = tier
        self.packets = packets
        #: the qualities the camera has ("main", "low")
        self.available = available
        self.meter = meter
        #: what the viewer asked for (CHOICES), the quality it is on and why
        self.choice = choice
        self.reason = reason
        #: moves made (counted when the viewer is on the target), by (from, to, reason)
        self.moves: dict[tuple[str, str, str], int] = {}
        #: called as on_move(from, to, reason) when the viewer is on another tier now
        self.on_move: Callable[[str, str, str], None] | None = None
        self.timeline = Timeline()
        self._switch: FeedSwitch | None = None
        self._target: tuple[Tier, str] | None = None
        self._wanted: tuple[Tier, str] | None = None
        self._closed = False
        #: what the readers and switches it is done with skipped and resynced
        self._skipped = 0
        self._resyncs = 0
        #: when the last move was asked, and when the viewer got on the target (monotonic)
        self.asked_at = 0.0
        self.moved_at = 0.0
        READERS.add(self)

    # -- what every reader has -------------------------------------------------------------
    @property
    def feed(self) -> PacketFeed:
        """The feed whose packets the viewer gets now (the tier it is on, until a move is taken)."""
        return self.current.feed

    @property
    def seq(self) -> int:
        return self.current.seq

    @property
    def first_packet(self) -> tuple[float, bool] | None:
        return self.current.first_packet

    @property
    def skipped(self) -> int:
        """Pictures skipped over by falling behind, on every tier it read and during its moves."""
        switch = self._switch
        return self._skipped + self.current.skipped + (switch.skipped if switch is not None else 0)

    @property
    def resyncs(self) -> int:
        """Times it fell behind and waited for a keyframe, on every tier it read and during its
        moves (a move itself is none: the viewer's feed changes, `feed`)."""
        switch = self._switch
        return self._resyncs + self.current.resyncs + (switch.resyncs if switch is not None else 0)

    def _leave_current(self) -> None:
        """The viewer's reader of the tier it is on is done with: its counts are kept."""
        self._skipped += self.current.skipped
        self._resyncs += self.current.resyncs

    @property
    def quality(self) -> str:
        """The quality the viewer is on ("main", "low")."""
        return self.tier.quality_name

    @property
    def moving_to(self) -> str | None:
        """The quality a move under way goes to, else None."""
        target = self._target or self._wanted
        return target[0].quality_name if target is not None else None

    def request_keyframe(self) -> None:
        if self._switch is not None:
            self._switch.source.request_keyframe()
        else:
            self.current.request_keyframe()

    def in_step(self) -> bool:
        return self._switch is None and self._wanted is None and self.current.in_step()

    def step(self, encoded: EncodedPacket) -> int | None:
        return self._stamp(encoded, self.current.step(encoded))

    def _stamp(self, encoded: EncodedPacket, own: int | None) -> int | None:
        """The viewer's presentation time of `encoded` (None: the packet's own, as on a viewer's
        first tier: then a fan-out sends every such viewer the same RTP frame)."""
        pts = encoded.packet.pts or 0
        stamped = self.timeline.stamp(own if own is not None else pts)
        return None if own is None and stamped == pts else stamped

    async def next(self) -> tuple[EncodedPacket, int | None]:
        while True:
            if self._closed:
                raise ReaderClosed()
            if self._wanted is not None and self._switch is None and self.current.in_step():
                self._start_switch()
            if (switch := self._switch) is not None:
                got = await switch.before()
                if got is not None:
                    encoded, pts = got
                    if self.meter is not None:
                        self.meter.sent(encoded.size)
                    return encoded, pts
                self._took_switch(switch)
                continue
            encoded, own = await self.current.next()
            return encoded, self._stamp(encoded, own)

    # -- moving ------------------------------------------------------------------------------
    def choose(self, choice: str) -> None:
        """The viewer asks for `choice` (CHOICES): "main" or "low" moves it there now (a quality the
        camera lacks: ValueError); "auto" leaves it where it is until the server moves it."""
        if choice not in CHOICES:
            raise ValueError(f"quality must be one of {', '.join(CHOICES)}, not {choice!r}")
        if choice != "auto" and choice not in self.available:
            raise ValueError(f"this camera has no {choice} tier (it has {', '.join(self.available)})")
        self.choice = choice
        if choice != "auto" and not self.move(choice, "asked") and self.quality == choice:
            self.reason = "asked"

    def move(self, quality: str, reason: str) -> bool:
        """Move the viewer to `quality` ("main", "low") at that tier's next keyframe; False if it is
        there or on its way there already (or the camera lacks it). A move asked while another is
        under way follows it."""
        if quality not in self.available:
            return False
        tier = Tier(self.tier.codec, None if quality == "main" else quality)
        heading = self._wanted or self._target or (self.tier, self.reason)
        if heading[0] == tier:
            return False
        self.asked_at = time.monotonic()
        if self._switch is None and self.current.first_packet is None and not self._closed:
            # nothing read yet (a viewer that asked before its first picture): it starts there
            target = self.packets(MediaKind.VIDEO, tier)
            if target is not None:
                self.current.close()
                self._leave_current()
                self.current, self.tier, self.reason, self._wanted = PacketReader(target, self.meter), tier, reason, None
                return True
        on = self._target[0] if self._target is not None else self.tier
        self._wanted = None if tier == on else (tier, reason)
        return True

    def _start_switch(self) -> None:
        assert self._wanted is not None
        tier, reason = self._wanted
        self._wanted = None
        target = self.packets(MediaKind.VIDEO, tier) if tier != self.tier else None
        if target is None:
            return
        # the target's reader attaches now: a tier's encoder starts running for the move
        reader = PacketReader(target, self.meter)
        self._switch = FeedSwitch(self.current.feed, target, self.timeline, reader=reader,
                                  source_seq=self.current.seq, continuous=True)
        self._target = (tier, reason)
        # the switch reads the tier the viewer is on from here on: its reader lets go of it (and
        # still says which feed and packet the viewer is at)
        self.current.close()
        if target.makes_keyframes:  # (a camera's own stream's keyframes come when it sends them)
            target.request_keyframe()

    def _took_switch(self, switch: FeedSwitch) -> None:
        assert switch.reader is not None and self._target is not None
        tier, reason = self._target
        before = self.tier.quality_name
        self._leave_current()
        self._skipped += switch.skipped
        self._resyncs += switch.resyncs
        self.current, self.tier, self.reason = switch.reader, tier, reason
        self._switch, self._target = None, None
        self.moved_at = time.monotonic()
        key = (before, tier.quality_name, reason)
        self.moves[key] = self.moves.get(key, 0) + 1
        counted = (self.camera, before, tier.quality_name, why(reason))
        MOVES[counted] = MOVES.get(counted, 0) + 1
        logger.info("a viewer moved from the %s tier to the %s tier (%s) in %.2f s", before, tier.quality_name,
                    reason, self.moved_at - self.asked_at)
        if self.on_move is not None:
            self.on_move(*key)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            READERS.discard(self)
            switch, self._switch = self._switch, None
            if switch is not None:
                if switch.reader is not None:
                    switch.reader.close()
                switch.close()
            self.current.close()


__all__ = ["CHOICES", "TierReader"]


#: bad samples in a row (half a second each for a WebRTC viewer) that move a viewer down (one
#: during a try of the tier above: PROBE_GRACE)
DOWN_AFTER = 2
#: seconds a viewer moved down stays there with its link clear before it tries the tier above (the
#: first time; doubled after each try that went bad at once, up to HOLD_MAX; back to HOLD_MIN once
#: a move up held for PROBE_GRACE)
HOLD_MIN = 15.0
HOLD_MAX = 120.0
#: a move up that goes bad within this many seconds was a failed try
PROBE_GRACE = 10.0


class AutoQuality:
    """The server's choice of a viewer's tier when the viewer asked for "auto", from samples of its
    link (about one a second): `observe(bad)` with `bad` the reason the link cannot carry the tier
    it is on ("loss 35%", "delay +240 ms", "send queue 1.2 s") or None when it carries it.

    Down after DOWN_AFTER bad samples in a row (one, during a try); up again (a try: nothing tells how much more a link
    carries than what it is sent) after `hold` seconds of clear samples, `hold` doubling after each
    try that went bad within PROBE_GRACE (so a link that stays narrow is tried less and less
    often), and back to HOLD_MIN once a try held."""

    def __init__(self, reader: TierReader, clock: Callable[[], float] = time.monotonic) -> None:
        self.reader = reader
        self.clock = clock
        self.hold = HOLD_MIN
        #: the last sample's verdict (None: clear), for the page's statistics and tests
        self.last: str | None = None
        self._bad = 0
        self._clear_since: float | None = None
        self._tried_at: float | None = None

    def observe(self, bad: str | None) -> None:
        reader = self.reader
        self.last = bad
        now = self.clock()
        if reader.choice != "auto" or reader.moving_to is not None or reader.closed:
            self._bad, self._clear_since = 0, None
            return
        if bad is not None:
            self._clear_since = None
            self._bad += 1
            # a try of the tier above that goes bad moves back at the first bad sample: every half
            # second more of a tier the link cannot carry fills its queue and the viewer's buffers
            trying = self._tried_at is not None and now - self._tried_at < PROBE_GRACE
            if (self._bad >= DOWN_AFTER or trying) and reader.quality == "main" and "low" in reader.available:
                if trying:
                    self.hold = min(HOLD_MAX, self.hold * 2)
                self._tried_at = None
                self._bad = 0
                reader.move("low", bad)
            return
        self._bad = 0
        if self._clear_since is None:
            self._clear_since = now
        if reader.quality != "main" and now - self._clear_since >= self.hold:
            self._clear_since = None
            self._tried_at = now
            reader.move("main", f"link clear for {self.hold:g} s")
        elif self._tried_at is not None and now - self._tried_at >= PROBE_GRACE:
            self._tried_at = None
            self.hold = HOLD_MIN
