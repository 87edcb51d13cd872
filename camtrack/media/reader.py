"""One viewer's reading of a packet feed: where it starts, how it keeps up (a `PacketReader`,
camtrack.media.packetreader), and, for a camera's own packets, the bridge that shows a newcomer the
live picture (`BridgedReader`). Every way of watching encoded packets reads through one of these: a
WebRTC track (camtrack.outputs.webrtc.tracks) and the websocket stream (camtrack.outputs.wsvideo)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

from .feeds import FeedClosed, PacketFeed
from .meters import Meter
from .packet import EncodedPacket
from .packetreader import PacketReader as PacketReader
from .packetreader import ReaderClosed as ReaderClosed
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
        if (switch := self._switch) is not None:
            try:
                bridged = await switch.before()
            except FeedClosed:
                if self.closed:
                    raise ReaderClosed() from None
                logger.debug("join bridge closed: starting from the camera's keyframe run instead")
                bridged = None
            if bridged is not None:
                self.bridged += 1
                self._count(bridged[0])
                return bridged
            # past the camera's own keyframe, newer than the join (from here on its own packets,
            # the switch handed them to this reader), or the bridge closed
            self._stop_bridge()
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
        # the switch hands the camera back to this reader (it reads it already) at its keyframe,
        # and keeps the bridge running a while for the next joiner (before this reader lets go of
        # it: the bridge never stops in between)
        self._switch = FeedSwitch(bridge, self.feed, self._timeline, after=run[-1].seq, line_up=True,
                                  reader=self, on_leave=linger)

    def _stop_bridge(self) -> None:
        switch, self._switch = self._switch, None
        if switch is not None:
            self.switched = switch.switched
            switch.close()

    def close(self) -> None:
        self._stop_bridge()
        super().close()
