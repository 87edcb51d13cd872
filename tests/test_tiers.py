"""Tiers (camtrack.media.tiers): a camera's packets in another codec, encoded from its pictures by
one shared encoder per camera and codec, made at the first viewer's need, shared by every viewer
of the tier, running only while read, closed with the camera. Real encoders and decoders, in-process."""

from __future__ import annotations

from typing import Any

import av
import pytest

from camtrack import Config
from camtrack.cameras import Cameras
from camtrack.media.encoder import SharedEncoder
from camtrack.media.feeds import Transport
from camtrack.media.packet import MediaKind
from camtrack.media.passthrough import PassthroughFeed
from camtrack.media.reader import PacketReader
from camtrack.media.tiers import MAIN, Tier

from .conftest import eventually
from .test_passthrough import write_h264

VP8 = Tier(codec="vp8")


async def decoded(reader: PacketReader, count: int) -> list[tuple[str, int, int]]:
    """The codec and size of `count` pictures the reader gives, decoded by a decoder of the codec
    the packets say they are."""
    pictures: list[tuple[str, int, int]] = []
    decoder: Any = None
    while len(pictures) < count:
        encoded, _ = await reader.next()
        if decoder is None:
            assert encoded.keyframe  # a reader starts on a keyframe
            decoder = av.CodecContext.create(encoded.codec.codec, "r")
        for frame in decoder.decode(av.Packet(bytes(encoded.packet))):
            pictures.append((encoded.codec.codec, frame.width, frame.height))
            assert (frame.width, frame.height) == (encoded.codec.width, encoded.codec.height)
    return pictures


async def test_a_vp8_tier_of_an_h264_camera_gives_vp8_shared_and_only_while_read():
    cameras = Cameras(Config(source="pattern", codec="h264", width=320, height=240, fps=30, linger=0.2))
    camera = cameras.first
    try:
        assert camera.packets(MediaKind.VIDEO, MAIN) is camera.feed
        # the camera's own codec is its main feed: no second encoder of it
        assert camera.packets(MediaKind.VIDEO, Tier(codec="h264")) is camera.feed
        # (sound is a feed of its own kind, not a tier: the pattern's test tone)
        assert camera.packets(MediaKind.AUDIO, MAIN) is not camera.feed
        first = camera.reader(Transport.WEBSOCKET, VP8)
        second = camera.reader(Transport.WHEP, VP8)
        tier = camera.packets(MediaKind.VIDEO, VP8)
        assert isinstance(tier, SharedEncoder) and tier is not camera.feed
        # one encoder for the camera's VP8 viewers, reading the camera's pictures
        assert first.feed is tier and second.feed is tier and tier.input is camera.stream
        assert await decoded(first, 10) == [("vp8", 320, 240)] * 10
        assert await decoded(second, 5) == [("vp8", 320, 240)] * 5
        assert tier.stats.runs == 1 and tier.consumers == {first, second}
        # the main feed was not asked for: it did not run
        assert camera.encoder is not None and camera.encoder.stats.runs == 0
        first.close()
        assert tier.running
        second.close()
        # no one reads it: it stops, and the camera's source is released
        await eventually(lambda: not tier.running and not camera.stream.is_open)
        # and starts again for the next viewer, the same encoder
        third = camera.reader(Transport.WEBSOCKET, VP8)
        assert third.feed is tier
        assert await decoded(third, 3) == [("vp8", 320, 240)] * 3
        assert tier.stats.runs == 2
        third.close()
    finally:
        await cameras.close()
    assert not tier.running


async def test_a_vp8_tier_of_a_passed_through_h264_file_gives_vp8_at_its_own_size(tmp_path):
    source = str(write_h264(tmp_path / "cam.mp4", "main", frames=90))
    # (the configured size is not the file's: the tier encodes at the size the camera sends)
    cameras = Cameras(Config(source=source, mode="passthrough", width=640, height=480, linger=0.2))
    camera = cameras.first
    try:
        assert isinstance(camera.feed, PassthroughFeed)
        assert camera.packets(MediaKind.VIDEO, Tier(codec="h264")) is camera.feed
        first = camera.reader(Transport.WEBSOCKET, VP8)
        second = camera.reader(Transport.WS_VIDEO, VP8)
        tier = camera.packets(MediaKind.VIDEO, VP8)
        assert isinstance(tier, SharedEncoder) and first.feed is tier and second.feed is tier
        # its pictures are the camera's own, decoded
        assert tier.input is camera.decoder
        assert await decoded(first, 10) == [("vp8", 320, 240)] * 10
        assert await decoded(second, 5) == [("vp8", 320, 240)] * 5
        assert tier.stats.runs == 1 and tier.codec.codec == "vp8"
        first.close()
        second.close()
        assert camera.decoder is not None
        await eventually(lambda: not tier.running and not camera.decoder.running and not camera.feed.running)
    finally:
        await cameras.close()


async def test_a_tier_of_an_unknown_codec_is_refused():
    cameras = Cameras(Config(source="pattern", width=320, height=240))
    try:
        with pytest.raises(ValueError, match="av1"):
            cameras.first.reader(Transport.WEBSOCKET, Tier(codec="av1"))
    finally:
        await cameras.close()


async def test_a_tiers_encoder_is_counted_under_its_codec():
    """/metrics reads a camera's encoders by codec (camtrack.pipeline.Pipeline.encoders): its main
    H.264 encoder's series as before, and a VP8 tier's under "vp8" once it exists."""
    from camtrack.outputs.metrics import CameraCollector

    cameras = Cameras(Config(source="pattern", codec="h264", width=320, height=240, linger=0.2))
    camera = cameras.first

    def encoded() -> dict[str, float]:
        return {s.labels["codec"]: s.value for family in CameraCollector(cameras).collect()
                for s in family.samples if s.name == "camtrack_frames_encoded_total"}

    try:
        assert set(encoded()) == {"jpeg", "h264"}
        reader = camera.reader(Transport.WEBSOCKET, VP8)
        await decoded(reader, 3)
        counts = encoded()
        assert set(counts) == {"jpeg", "h264", "vp8"} and counts["vp8"] >= 3 and counts["h264"] == 0
        reader.close()
    finally:
        await cameras.close()
