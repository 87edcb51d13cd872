"""The aiortc video tracks that feed a peer: raw frames (per-viewer encoding) or shared packets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame

from ...media.feeds import FeedClosed, FrameFeed, PacketFeed, Transport
from ...media.frame import VIDEO_TIME_BASE, PtsClock
from ...media.meters import Meter
from ...media.packet import EncodedPacket
from ...media.packetreader import Reading
from ...media.quality import TierReader
from ...media.reader import PacketReader
from ...media.tiers import Tier
from .contract import CameraView
from .fanout import Member, fanout_for, rtp_frame
from .rtpsend import RtpFrame, RtpStream


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
    """A track of pre-encoded packets from a packet feed (of the feed's kind: video today) (the shared encoder, or a camera's
    own), read for this viewer by a `PacketReader` (camtrack.media.reader: where it starts, how it
    keeps up, never a queue), packetized once for every viewer of the feed."""

    kind = "video"

    def __init__(self, encoder: PacketFeed, meter: Meter | None = None, *, reader: Reading | None = None) -> None:
        """A track of `encoder`'s packets, read by `reader` (a reader of `encoder`, or a TierReader
        that starts on it; by default a plain `PacketReader` with `meter`)."""
        super().__init__()
        self.reader: Reading = reader if reader is not None else PacketReader(encoder, meter)
        #: the feed's media kind (video unless its CodecInfo says otherwise)
        self.kind = encoder.codec.kind.value

    @property
    def encoder(self) -> PacketFeed:
        """The feed this track reads (its packets are packetized once for all its readers)."""
        return self.reader.feed

    @property
    def first_packet(self) -> tuple[float, bool] | None:
        """Seconds from attaching to the first packet handed out, and whether it was a keyframe."""
        return self.reader.first_packet

    @property
    def skipped(self) -> int:
        return self.reader.skipped

    def request_keyframe(self) -> None:
        """The remote peer asked for a keyframe (PLI or FIR)."""
        self.reader.request_keyframe()

    async def next_encoded(self) -> tuple[EncodedPacket, int | None]:
        """The next packet this viewer sends, and its own presentation time when it is not the
        packet's (a squeezed start run, a join bridge), else None."""
        if self.readyState != "live":
            raise MediaStreamError
        try:
            got = await self.reader.next()
        except FeedClosed:
            self.stop()
            raise MediaStreamError from None
        if self.readyState != "live":
            raise MediaStreamError
        return got

    async def recv(self) -> av.Packet[Any]:
        encoded, pts = await self.next_encoded()
        if pts is not None:
            return restamped(encoded.packet, pts)
        return encoded.packet

    async def next_rtp_frame(self, codec: RTCRtpCodecParameters) -> RtpFrame:
        """The next packet as RTP payloads (packetized once for every viewer of the feed), its
        RTP timestamp (on the feed's `CodecInfo.clock_rate`) and capture time: what camtrack's RTP
        sending loop (rtpsend.send_rtp_once) sends."""
        encoded, own_pts = await self.next_encoded()
        return rtp_frame(self.encoder, encoded, codec, own_pts)

    def join_fanout(self, stream: RtpStream,
                    on_sent: Callable[[float, float, float], None] | None) -> Awaitable[None] | None:
        """Hand `stream` to the feed's fan-out when this viewer is in step with the feed and has
        its newest packet (what to await until it is handed back), else None (see fanout.py)."""
        latest = self.encoder.latest
        if (self.readyState != "live" or latest is None or self.reader.seq != latest.seq
                or not self.reader.in_step()):
            return None
        fanout = fanout_for(self.encoder, stream.codec.mimeType)
        return fanout.serve(Member(self.reader, stream, on_sent))

    def stop(self) -> None:
        self.reader.close()
        super().stop()


def restamped(packet: av.Packet[Any], pts: int) -> av.Packet[Any]:
    """A copy of a shared packet with this viewer's own presentation time."""
    copy = av.Packet(bytes(packet))
    copy.pts = copy.dts = pts
    copy.time_base = packet.time_base
    return copy


#: the video codecs a viewer can get: the camera's own, else the other one (see camera_codecs)
VIDEO_CODECS = ("h264", "vp8")


def own_codec(camera: CameraView) -> str:
    """The codec `camera` sends in: its packet feed's (the shared encoder's, a passed-through
    camera's own H.264), or with --encoder per-viewer its setting."""
    feed = camera.packets()
    return feed.codec.codec if feed is not None else camera.settings.codec


def camera_codecs(camera: CameraView) -> tuple[str, ...]:
    """The codecs a WebRTC viewer of `camera` may get, the camera's own first: the other video codec
    comes from a tier of the camera (camtrack.media.tiers: encoded once for every viewer who needs
    it), or with --encoder per-viewer from aiortc's encoder for that viewer."""
    own = own_codec(camera)
    if own not in VIDEO_CODECS:
        return (own,)
    return (own, *(c for c in VIDEO_CODECS if c != own))


def tier_reader(camera: CameraView, transport: Transport, codec: str | None = None,
                choice: str = "auto") -> TierReader:
    """A viewer's reader of `camera`'s tiers in `codec` (None: the camera's own), starting on the
    low tier when it asks for it (`choice`, camtrack.media.quality.CHOICES; ValueError for a quality
    the camera lacks), else on the main one (docs/quality.md)."""
    qualities = camera.qualities()
    if choice != "auto" and choice not in qualities:
        raise ValueError(f"this camera has no {choice} tier (it has {', '.join(qualities)})")
    tier = Tier(codec=codec, quality=None if choice in ("auto", "main") else choice)
    return TierReader(camera.reader(transport, tier), tier, camera.packets, qualities, camera.meters[transport],
                      choice=choice, reason="asked" if choice != "auto" else "start", camera=camera.name)


def make_track(camera: CameraView, transport: Transport, codec: str | None = None,
               quality: str = "auto") -> EncodedTrack | CameraTrack:
    """A new track of `camera` for one WebRTC peer, in `codec` (one of camera_codecs; None: the
    camera's own) at `quality` (auto, main, low: tier_reader): the shared encoder's packets, the
    camera's own (bridged while joining), a tier's of another codec or quality, or (with --encoder
    per-viewer) its raw frames for aiortc to encode."""
    if camera.packets() is not None:
        reader = tier_reader(camera, transport, codec, quality)
        return EncodedTrack(reader.feed, reader=reader)
    return CameraTrack(camera.frames, camera.meters[transport])
