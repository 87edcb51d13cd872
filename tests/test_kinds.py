"""Feeds by kind and clock rate, and the switch between two packet feeds (issue 19, item 3).

No audio or tier is built yet: these show that the send path, the worker wire and a track take the
media kind and clock rate from the feed's CodecInfo (a fake 48 kHz audio feed), and that
`FeedSwitch` (camtrack.media.switch, which the join bridge uses) moves a viewer between two fake
feeds at the target's keyframe with growing timestamps."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from camtrack.media.packet import CodecInfo, EncodedPacket, MediaKind
from camtrack.media.ring import Read, Ring
from camtrack.media.switch import FeedSwitch, Timeline
from camtrack.outputs.webrtc.fanout import rtp_frame
from camtrack.workers import wire
from camtrack.workers.relay import RelayedFeed

OPUS = CodecInfo("opus", 0, 0, fractions.Fraction(1, 48000), kind=MediaKind.AUDIO, clock_rate=48000)
OPUS_RTP = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
H264 = CodecInfo("h264", 320, 240)


class FakeFeed:
    """A packet feed the test fills (`add`): start packets from its newest keyframe."""

    def __init__(self, name: str, codec: CodecInfo = H264) -> None:
        self.name = name
        self.codec = codec
        self.ring: Ring[EncodedPacket] = Ring(64, RuntimeError)
        self.ring.reopen()
        self.attached: set[object] = set()
        self.keyframes_asked = 0
        self._seq = 0

    @property
    def latest(self) -> EncodedPacket | None:
        return self.ring.newest

    def attach(self, reader: object) -> None:
        self.attached.add(reader)

    def detach(self, reader: object) -> None:
        self.attached.discard(reader)

    def request_keyframe(self) -> None:
        self.keyframes_asked += 1

    def start_packets(self) -> list[EncodedPacket]:
        return self.ring.since(lambda p: p.keyframe)

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]:
        return await self.ring.next(after)

    def add(self, pts: int, keyframe: bool) -> EncodedPacket:
        self._seq += 1
        data: av.Packet[Any] = av.Packet(self.name.encode() + bytes(8))
        data.pts = data.dts = pts
        data.time_base = self.codec.time_base
        packet = EncodedPacket(self._seq, data, keyframe, time.time(), data.size, self.codec)
        self.ring.publish(packet)
        return packet


def test_codec_info_is_video_at_90_khz_unless_it_says_otherwise():
    assert H264.kind is MediaKind.VIDEO and H264.clock_rate == 90000 and H264.kind == "video"
    assert H264.rtp_timestamp(123456) == 123456
    millis = CodecInfo("h264", 320, 240, fractions.Fraction(1, 1000))
    assert millis.rtp_timestamp(1500) == 135000  # (as aiortc's packetizers convert it)
    assert OPUS.kind == "audio" and OPUS.rtp_timestamp(960) == 960
    assert CodecInfo("opus", 0, 0, fractions.Fraction(1, 1000), kind=MediaKind.AUDIO,
                     clock_rate=48000).rtp_timestamp(20) == 960
    assert OPUS.seconds(48000) == 1.0 and H264.seconds(45000) == 0.5


def test_the_send_path_stamps_a_48_khz_feed_at_its_rate():
    """rtp_frame (the fan-out's and a track's) takes the clock from the feed's CodecInfo: a 20 ms
    Opus packet advances the RTP timestamp by 960, not by 90 kHz's 1800."""
    feed = FakeFeed("a", OPUS)
    first, second = feed.add(48000, True), feed.add(48000 + 960, True)
    one, two = rtp_frame(feed, first, OPUS_RTP), rtp_frame(feed, second, OPUS_RTP)  # type: ignore[arg-type]
    assert two.timestamp - one.timestamp == 960 and one.timestamp == 48000
    assert list(one.payloads) == [bytes(first.packet)]
    assert rtp_frame(feed, second, OPUS_RTP, own_pts=100).timestamp == 100  # type: ignore[arg-type]
    # the same feed counting pts in milliseconds: still on the 48 kHz clock
    ms = CodecInfo("opus", 0, 0, fractions.Fraction(1, 1000), kind=MediaKind.AUDIO, clock_rate=48000)
    millis = FakeFeed("m", ms)
    assert rtp_frame(millis, millis.add(20, True), OPUS_RTP).timestamp == 960  # type: ignore[arg-type]


def test_the_worker_wire_carries_a_48_khz_feed_as_it_is():
    """The feed announcement (its CodecInfo, kind and clock rate) and a packet cross the worker's
    socket; the worker's relayed feed stamps it at 48 kHz."""

    async def crossed(*frames: bytes) -> list[Any]:
        reader = asyncio.StreamReader()
        for frame in frames:
            reader.feed_data(frame)
        reader.feed_eof()
        return [await wire.read(reader) for _ in frames]

    announced, packet = asyncio.run(crossed(
        wire.control({"t": "feed", "camera": "a", "codec": OPUS, "kind": "encoder", "ring": 8}),
        wire.packet("a", 7, 48000 * 3 + 960, 1.5, True, b"opus!")))
    assert isinstance(announced, dict) and announced["codec"] == OPUS
    assert announced["codec"].kind is MediaKind.AUDIO and announced["codec"].clock_rate == 48000
    relayed = RelayedFeed("a", announced["codec"], "encoder", 8, lambda: None)
    assert isinstance(packet, wire.WirePacket)
    relayed.add(packet)
    encoded = relayed.latest
    assert encoded is not None and encoded.codec.kind is MediaKind.AUDIO
    frame = rtp_frame(relayed, encoded, OPUS_RTP)  # type: ignore[arg-type]
    assert frame.timestamp == 48000 * 3 + 960 and list(frame.payloads) == [b"opus!"]


def test_a_track_of_an_audio_feed_is_an_audio_track():
    from camtrack.outputs.webrtc.tracks import EncodedTrack

    assert EncodedTrack(FakeFeed("v")).kind == "video"  # type: ignore[arg-type]
    assert EncodedTrack(FakeFeed("a", OPUS)).kind == "audio"  # type: ignore[arg-type]


def test_the_timeline_keeps_growing_and_keeps_the_spacing():
    timeline = Timeline()
    assert [timeline.stamp(p) for p in (100, 200)] == [100, 200]
    assert timeline.stamp(50) == 201 and timeline.stamp(150) == 301  # (moved up by 151, spacing kept)


async def test_the_switch_moves_at_the_targets_keyframe_with_growing_timestamps():
    """Two feeds of one camera (one clock, 30 fps, keyframes every 10 and 15 pictures): a viewer on
    `low` switched to `high` gets low's packets until high's first keyframe after the switch, then
    high's from that keyframe on, and never low's again; timestamps strictly grow."""
    low, high = FakeFeed("low"), FakeFeed("high")
    pts = 0
    for i in range(12):  # both running; high's newest keyframe is older than the switch
        pts += 3000
        low.add(pts, i % 10 == 0)
        high.add(pts, i % 15 == 0)
    switch = FeedSwitch(low, high)  # type: ignore[arg-type]
    assert switch.after == high.latest.seq and switch.due() is None  # type: ignore[union-attr]
    assert low.attached == {switch} and not high.attached
    got: list[tuple[str, EncodedPacket, int]] = []

    async def read() -> None:
        while len(got) < 40:
            encoded, stamp = await switch.next()
            got.append((bytes(encoded.packet)[:4].decode().strip("\0"), encoded, stamp))

    reading = asyncio.ensure_future(read())
    for i in range(12, 60):
        await asyncio.sleep(0.001)
        pts += 3000
        low.add(pts, i % 10 == 0)
        high.add(pts, i % 15 == 0)
    await asyncio.wait_for(reading, 5)
    names = [name for name, _, _ in got]
    first_high = names.index("high")
    assert names[:first_high] == ["low"] * first_high and first_high > 0  # from low's keyframe...
    assert got[0][1].keyframe and got[0][1].seq == 11  # (low's newest keyframe when it started)
    assert set(names[first_high:]) == {"high"}  # ...and never low's after the switch
    switched_at = got[first_high][1]
    assert switched_at.keyframe and switched_at.seq > switch.after and switched_at.seq == 16  # (i == 15)
    stamps = [stamp for _, _, stamp in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    # one clock: low's times as they are, high's too, or one tick later when low's picture of the
    # same time went out before the switch (never a picture's time again)
    moved = [stamp - (encoded.packet.pts or 0) for _, encoded, stamp in got]
    assert set(moved[:first_high]) == {0} and len(set(moved[first_high:])) == 1 and moved[-1] in (0, 1)
    assert switch.switched and switch.from_source == first_high
    assert not low.attached and high.attached == {switch.reader}  # (the switch reads high through its PacketReader)
    switch.close()
    assert not high.attached


async def test_a_switch_from_a_feed_of_its_own_clock_lines_it_up_and_keeps_growing():
    """The join bridge's case: the source (a transcode started now) counts from 0; lined up, its
    first picture takes the target's newest time, and the target's packets after the switch keep
    growing past the source's even when the target's clock is behind."""
    bridge, camera = FakeFeed("bridge"), FakeFeed("camera")
    camera.add(900_000, True)
    camera.add(903_000, False)
    for i in range(5):
        bridge.add(i * 6000, i == 0)  # (its clock runs ahead of the camera's)
    timeline = Timeline()
    switch = FeedSwitch(bridge, camera, timeline, line_up=True)  # type: ignore[arg-type]
    stamps = []
    for _ in range(5):
        got = await switch.next_source()
        assert got is not None
        stamps.append(got[1])
    assert stamps == [903_000 + i * 6000 for i in range(5)]
    assert timeline.offset == 0  # the target's offset, kept while the source is read
    camera.add(906_000, True)
    run = switch.due()
    assert run is not None and run[0].seq == 3
    switch.take(run)
    assert not bridge.attached
    encoded, stamp = await switch.next()
    assert encoded is run[0] and stamp == stamps[-1] + 1  # (moved up past the bridge's last)
    camera.add(909_000, False)
    assert (await switch.next())[1] == stamp + 3000  # the camera's spacing from there on


async def test_a_source_fallen_behind_resyncs_at_its_next_keyframe():
    source, target = FakeFeed("s"), FakeFeed("t")
    target.add(0, True)
    switch = FeedSwitch(source, target)  # type: ignore[arg-type]
    source.add(0, True)
    assert (await switch.next())[0].seq == 1
    for i in range(1, 80):  # more than its ring holds: the switch fell behind
        source.add(i * 3000, False)
    assert await switch.next_source() is None and source.keyframes_asked == 1
    source.add(80 * 3000, False)
    source.add(81 * 3000, True)
    got = await asyncio.wait_for(switch.next(), 5)
    assert got[0].keyframe and got[0].seq == 82


async def test_signaling_takes_the_media_kind_from_the_codec():
    """The offer checks and codec preferences look for the codec's kind of m-line: video for
    h264/vp8 as before, audio for an Opus feed."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from camtrack.outputs.webrtc.peer import OfferError, check_offer, codec_preferences

    async def offer(kind: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver(kind, direction="recvonly")
            return (await pc.createOffer()).sdp
        finally:
            await pc.close()

    audio, video = await offer("audio"), await offer("video")
    check_offer(audio, "opus")
    check_offer(video, "vp8")
    for sdp, codec, message in ((video, "opus", "no audio m-line"), (audio, "h264", "no video m-line")):
        try:
            check_offer(sdp, codec)
        except OfferError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{codec} accepted an offer without its m-line")
    assert [c.mimeType for c in codec_preferences("opus")] == ["audio/opus"]
    assert {c.mimeType for c in codec_preferences("vp8")} == {"video/VP8", "video/rtx"}
