"""The aiortc video tracks that feed a peer: raw frames (per-viewer encoding) or shared packets."""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame

from ...cameras import Camera
from ...media.feeds import FeedClosed, FrameFeed, PacketFeed, Transport
from ...media.frame import VIDEO_TIME_BASE, PtsClock
from ...media.meters import Meter
from ...media.packet import EncodedPacket
from ...media.passthrough import PassthroughFeed
from .hooks import RtpFrame

logger = logging.getLogger(__name__)


class CameraTrack(MediaStreamTrack):
    """A video track showing the latest frame of a camera stream.

    Each `recv()` returns a frame newer than the last one returned (never a repeat,
    never a backlog), stamped with a 90 kHz pts taken from its capture time.
    """

    kind = "video"

    def __init__(self, stream: FrameFeed, meter: Meter | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.meter = meter
        self._seq = 0
        self._clock = PtsClock()
        stream.attach(self)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self.stream.next_frame(self._seq)
        except FeedClosed:
            self.stop()
            raise MediaStreamError from None
        if self.readyState != "live":
            raise MediaStreamError
        self._seq = frame.seq
        video_frame = VideoFrame.from_ndarray(frame.yuv, format="yuv420p")
        video_frame.pts = self._clock.pts(frame.monotonic)
        video_frame.time_base = VIDEO_TIME_BASE
        if self.meter is not None:
            self.meter.sent(None)  # encoded by aiortc: its size is not known here
        return video_frame

    def stop(self) -> None:
        if self.readyState == "live":
            self.stream.detach(self)
        super().stop()


class EncodedTrack(MediaStreamTrack):
    """A video track of pre-encoded packets from a packet feed (the shared encoder).

    It starts on a keyframe and never queues: a viewer a few packets behind catches up from the
    feed's ring; one that fell further behind (the packets it needs are gone) drops what it
    missed and waits for the next keyframe, asking for one. Memory per viewer is a reference to
    one packet (plus, at the start, the few packets since a keyframe forced moments ago).
    """

    kind = "video"

    def __init__(self, encoder: PacketFeed, meter: Meter | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.meter = meter
        self.started = time.monotonic()
        #: seconds from attaching to the first packet handed out, and whether it was a keyframe
        self.first_packet: tuple[float, bool] | None = None
        self.skipped = 0
        self._pending: deque[EncodedPacket] | None = None  # set at the first recv()
        #: when not in sync (at the start, after falling behind), try the feed's start run once
        #: more at the next packet: a run may have come since (a camera just opened)
        self._try_start = True
        #: the start run's presentation times, squeezed (see `_start_run`), by sequence number
        self._squeezed: dict[int, int] = {}
        self._seq = 0
        self._synced = False
        encoder.attach(self)

    def request_keyframe(self) -> None:
        """The remote peer asked for a keyframe (PLI or FIR)."""
        self.encoder.request_keyframe()

    async def next_encoded(self) -> tuple[EncodedPacket, int | None]:
        """The next packet this viewer sends, and its own presentation time when it is part of a
        squeezed start run (else None: the packet's own)."""
        if self._pending is None:
            # the sender starts reading once the peer is connected: start from a keyframe now
            self._pending = deque(self._start_run(self.encoder.start_packets()))
            self._synced = bool(self._pending)
            if self._pending:
                self._seq = self._pending[-1].seq
            elif self.encoder.latest is not None:
                self._seq = self.encoder.latest.seq
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._pending:
                encoded = self._pending.popleft()
            else:
                try:
                    read = await self.encoder.next_packet(self._seq)
                except FeedClosed:
                    self.stop()
                    raise MediaStreamError from None
                encoded = read.item
                if self._synced and read.skipped:
                    # fell behind: what was missed is needed to decode this, so resync
                    self.skipped += read.skipped
                    self._synced = False
                    self._try_start = True
                    self.encoder.request_keyframe()
                self._seq = encoded.seq
                if not self._synced:
                    if not encoded.keyframe and self._try_start:
                        # start again from the feed's newest keyframe and what followed it, squeezed
                        # (a camera cannot be asked for a keyframe; a shared encoder may have one)
                        self._try_start = False
                        run = self._start_run(self.encoder.start_packets())
                        if run and run[-1].seq >= encoded.seq:
                            self._pending = deque(run)
                            self._seq = run[-1].seq
                            self._synced = True
                            continue
                    if not encoded.keyframe:
                        continue
                    self._synced = True
            if self.readyState != "live":
                raise MediaStreamError
            if self.first_packet is None:
                self.first_packet = (time.monotonic() - self.started, encoded.keyframe)
            if self.meter is not None:
                self.meter.sent(encoded.size)
            return encoded, self._squeezed.pop(encoded.seq, None)

    async def recv(self) -> av.Packet[Any]:
        encoded, squeezed = await self.next_encoded()
        if squeezed is not None:
            return restamped(encoded.packet, squeezed)
        return encoded.packet

    async def next_rtp_frame(self, codec: RTCRtpCodecParameters) -> RtpFrame:
        """The next packet as RTP payloads (packetized once for every viewer of the feed), its
        90 kHz timestamp and capture time: what camtrack's RTP sending loop (hooks.send_rtp_once) sends."""
        encoded, squeezed = await self.next_encoded()
        payloads = encoded.shared.get(codec.mimeType)
        if payloads is None:
            payloads = encoded.shared[codec.mimeType] = _packer(self.encoder, codec).pack(encoded.packet)[0]
        pts = squeezed if squeezed is not None else encoded.packet.pts or 0
        time_base = encoded.codec.time_base  # the packet's own (a new Fraction at every read)
        if time_base != VIDEO_TIME_BASE:
            pts = int(pts * time_base / VIDEO_TIME_BASE)  # as aiortc's packetizers convert it
        return RtpFrame(payloads, pts, encoded.captured)

    def _start_run(self, run: list[EncodedPacket]) -> list[EncodedPacket]:
        """Where this viewer starts: the feed's run from its newest keyframe to its newest packet,
        with presentation times squeezed to one tick apart, ending at the newest packet's.

        A camera's keyframes come every few seconds and cannot be asked for; sent at their own
        times, the packets since the last one would play as old video (the viewer would stay that
        far behind). Squeezed, the browser decodes them at once and shows the newest picture: the
        viewer sees the picture on its first packets and is live from then on.
        """
        if len(run) > 1:
            newest = run[-1].packet.pts or 0
            self._squeezed = {p.seq: newest - (len(run) - 1 - i) for i, p in enumerate(run)}
        return run

    def stop(self) -> None:
        if self.readyState == "live":
            self.encoder.detach(self)
        super().stop()


#: a viewer joining this long (seconds of pictures) after the camera's keyframe or later is bridged;
#: sooner, the squeezed run since the keyframe shows a picture at most this old for a moment (a camera
#: that just opened for its first viewer needs no decoder and encoder started for that)
BRIDGE_AFTER = 0.25


class BridgedTrack(EncodedTrack):
    """An `EncodedTrack` of a passed-through camera, for a viewer who may join between its keyframes.

    A camera's keyframes come seconds apart (4 s and more) and cannot be asked for, and a picture in
    between can only be decoded with everything since the last keyframe. Sent that run squeezed
    (`EncodedTrack._start_run`), a newcomer sees a picture at once, but its first pictures are old
    ones. The bridge gives the live picture instead: the camera's packets decoded from its newest
    keyframe (all at once, so the first picture out is the newest) and encoded again by a shared
    encoder (`Camera.join_bridge`) that starts with a keyframe of that picture. The newcomer watches
    the bridge until the camera's next keyframe, then switches to the camera's own packets and lets
    go of the bridge, which stops when no newcomer needs it: decoding and encoding happen only while
    someone is joining.
    """

    def __init__(self, feed: PacketFeed, bridge: Callable[[], PacketFeed | None], meter: Meter | None = None) -> None:
        super().__init__(feed, meter)
        self._make_bridge = bridge
        #: the bridge while this viewer watches it
        self.bridge: PacketFeed | None = None
        #: bridge packets this viewer got, and whether it has switched to the camera's own packets
        self.bridged = 0
        self.switched = False
        self._decided = False
        self._join_seq = 0
        self._bridge_seq = 0
        self._bridge_synced = False
        self._bridge_pending: deque[EncodedPacket] = deque()
        #: bridge pts + this = the viewer's pts (set at its first bridge packet)
        self._bridge_offset: int | None = None
        #: the camera's pts + this = the viewer's pts, after the bridge (kept always growing)
        self._offset = 0
        self._last_pts = -1

    def request_keyframe(self) -> None:
        if self.bridge is not None:
            self.bridge.request_keyframe()
        else:
            super().request_keyframe()

    async def next_encoded(self) -> tuple[EncodedPacket, int | None]:
        if not self._decided:
            self._decided = True
            self._start_bridge()
        while self.bridge is not None:
            if self.readyState != "live":
                raise MediaStreamError
            run = self.encoder.start_packets()
            if run and run[0].seq > self._join_seq:
                # the camera's own keyframe, newer than the join: from here on its own packets
                self._switch(run)
                break
            try:
                bridged = await self._next_bridge_packet()
            except FeedClosed:
                logger.debug("join bridge closed: starting from the camera's keyframe run instead")
                self._stop_bridge()
                break
            if bridged is not None:
                return bridged
        encoded, squeezed = await super().next_encoded()
        pts = squeezed if squeezed is not None else encoded.packet.pts or 0
        if pts + self._offset <= self._last_pts:
            self._offset = self._last_pts + 1 - pts  # (the bridge ran ahead of the camera's clock)
        self._last_pts = pts + self._offset
        return encoded, (self._last_pts if self._offset or squeezed is not None else None)

    def _start_bridge(self) -> None:
        run = self.encoder.start_packets()
        if len(run) <= 1 or ((run[-1].packet.pts or 0) - (run[0].packet.pts or 0)) * VIDEO_TIME_BASE < BRIDGE_AFTER:
            return  # at (or just after) the camera's keyframe: its squeezed run is as good as live
        bridge = self._make_bridge()
        if bridge is None:
            return
        self._join_seq = run[-1].seq
        self.bridge = bridge
        bridge.attach(self)
        self._bridge_pending = deque(bridge.start_packets())

    async def _next_bridge_packet(self) -> tuple[EncodedPacket, int] | None:
        """The bridge's next packet for this viewer (from a keyframe on) and its presentation time
        here, or None to look again for the camera's keyframe first."""
        bridge = self.bridge
        assert bridge is not None
        if self._bridge_pending:
            encoded = self._bridge_pending.popleft()
        else:
            read = await bridge.next_packet(self._bridge_seq)
            encoded = read.item
            if read.skipped and self._bridge_synced:
                self._bridge_synced = False
                bridge.request_keyframe()
        self._bridge_seq = encoded.seq
        if not self._bridge_synced:
            if not encoded.keyframe:
                return None
            self._bridge_synced = True
        pts = encoded.packet.pts or 0
        if self._bridge_offset is None:
            # the bridge's clock is its own: line its first picture up with the camera's newest
            latest = self.encoder.latest
            self._bridge_offset = (latest.packet.pts or 0 if latest is not None else 0) - pts
        out = max(self._last_pts + 1, pts + self._bridge_offset)
        self._last_pts = out
        self.bridged += 1
        if self.first_packet is None:
            self.first_packet = (time.monotonic() - self.started, True)
        if self.meter is not None:
            self.meter.sent(encoded.size)
        return encoded, out

    def _switch(self, run: list[EncodedPacket]) -> None:
        """From the bridge to the camera's own packets, at the camera's keyframe `run[0]`."""
        self._stop_bridge()
        self.switched = True
        self._pending = deque(run)
        self._seq = run[-1].seq
        self._synced = True
        self._try_start = False

    def _stop_bridge(self) -> None:
        bridge, self.bridge = self.bridge, None
        if bridge is not None:
            bridge.detach(self)
        self._bridge_pending.clear()

    def stop(self) -> None:
        self._stop_bridge()
        super().stop()


#: one aiortc packetizer per feed and codec, shared by its viewers: VP8's carries the picture
#: id, which must grow by one from picture to picture of a stream whoever packs it
_PACKERS: weakref.WeakKeyDictionary[PacketFeed, dict[str, Encoder]] = weakref.WeakKeyDictionary()


def _packer(feed: PacketFeed, codec: RTCRtpCodecParameters) -> Encoder:
    packers = _PACKERS.setdefault(feed, {})
    packer = packers.get(codec.mimeType)
    if packer is None:
        packer = packers[codec.mimeType] = get_encoder(codec)
    return packer


def restamped(packet: av.Packet[Any], pts: int) -> av.Packet[Any]:
    """A copy of a shared packet with this viewer's own presentation time."""
    copy = av.Packet(bytes(packet))
    copy.pts = copy.dts = pts
    copy.time_base = packet.time_base
    return copy


def make_track(camera: Camera, transport: Transport) -> EncodedTrack | CameraTrack:
    """A new video track of `camera` for one WebRTC peer: the shared encoder's packets, the
    camera's own (bridged while joining), or (with --encoder per-viewer) its raw frames for aiortc
    to encode."""
    if isinstance(camera.feed, PassthroughFeed):
        return BridgedTrack(camera.feed, camera.join_bridge, camera.meters[transport])
    if camera.feed is not None:
        return EncodedTrack(camera.feed, camera.meters[transport])
    return CameraTrack(camera.stream, camera.meters[transport])
