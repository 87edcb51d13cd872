"""Quality tiers (camtrack.media.tiers, docs/quality.md): a camera's low tier, smaller and at a
lower bitrate (and maybe frame rate), encoded once for all of its viewers by a shared encoder of the
camera's pictures (a passed-through camera's: its decoder, shared with JPEG), scaled on the
encoder's thread, running only while read. Real encoders and decoders, in-process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import av
import pytest

from camtrack import Config
from camtrack.app import CAMERAS
from camtrack.cameras import Cameras
from camtrack.client import Viewer
from camtrack.media.encoder import SharedEncoder
from camtrack.media.feeds import Transport
from camtrack.media.packet import MediaKind
from camtrack.media.quality import TierReader
from camtrack.media.reader import PacketReader
from camtrack.media.tiers import MAIN, Tier

from .conftest import eventually
from .test_passthrough import write_h264
from .whep import SDP, make_offer, whep, whep_url

LOW = Tier(quality="low")


async def decoded(reader: PacketReader, count: int) -> list[tuple[str, int, int, int]]:
    """(codec, width, height, bytes) of `count` pictures the reader gives, decoded."""
    pictures: list[tuple[str, int, int, int]] = []
    decoder: Any = None
    while len(pictures) < count:
        encoded, _ = await reader.next()
        if decoder is None:
            assert encoded.keyframe
            decoder = av.CodecContext.create(encoded.codec.codec, "r")
        for frame in decoder.decode(av.Packet(bytes(encoded.packet))):
            pictures.append((encoded.codec.codec, frame.width, frame.height, encoded.size))
            assert (frame.width, frame.height) == (encoded.codec.width, encoded.codec.height)
    return pictures


def test_tier_names_go_and_come_back():
    for tier in (MAIN, Tier("vp8"), LOW, Tier("vp8", "low"), Tier("h264", "low")):
        assert Tier.parse(str(tier)) == tier
    assert str(LOW) == "low" and str(Tier("vp8", "low")) == "low-vp8" and str(MAIN) == "main"
    with pytest.raises(ValueError):
        Tier.parse("")


async def test_the_low_tier_is_half_the_size_at_a_quarter_of_the_bitrate_shared_and_only_while_read():
    cameras = Cameras(Config(source="pattern", width=640, height=480, fps=30, bitrate=800_000, linger=0.2))
    camera = cameras.first
    try:
        first = camera.reader(Transport.WEBSOCKET, LOW)
        second = camera.reader(Transport.WHEP, LOW)
        low = camera.packets(MediaKind.VIDEO, LOW)
        assert isinstance(low, SharedEncoder) and low is not camera.feed
        assert first.feed is low and second.feed is low and low.input is camera.stream
        assert low.settings.bitrate == 200_000 and low.settings.codec == "h264"
        pictures = await decoded(first, 60)
        assert {p[:3] for p in pictures} == {("h264", 320, 240)}
        await decoded(second, 5)
        assert low.stats.runs == 1 and low.consumers == {first, second}
        # a VP8 low tier is another encoder (a VP8 viewer of the low tier)
        assert camera.packets(MediaKind.VIDEO, Tier("vp8", "low")) is not low
        # the main feed was not asked for: it did not run
        assert camera.encoder is not None and camera.encoder.stats.runs == 0
        main = camera.reader(Transport.WEBSOCKET, MAIN)
        main_pictures = await decoded(main, 60)
        assert {p[:3] for p in main_pictures} == {("h264", 640, 480)}
        main.close()
        # a quarter of the bitrate: well under half of the main tier's bytes per picture
        low_bytes = sum(p[3] for p in pictures[1:]) / (len(pictures) - 1)
        main_bytes = sum(p[3] for p in main_pictures[1:]) / (len(main_pictures) - 1)
        assert low_bytes < 0.5 * main_bytes, (low_bytes, main_bytes)
        first.close()
        second.close()
        await eventually(lambda: not low.running and not camera.stream.is_open)
    finally:
        await cameras.close()
    assert not low.running


async def test_the_low_tier_at_a_lower_frame_rate_and_size_as_configured():
    cameras = Cameras(Config(source="pattern", width=640, height=480, fps=30, low_scale=0.25,
                             low_bitrate=100_000, low_fps=10, linger=0.2))
    camera = cameras.first
    try:
        reader = camera.reader(Transport.WEBSOCKET, LOW)
        pictures = await decoded(reader, 2)
        began = time.monotonic()
        for _ in range(20):
            await reader.next()
        took = time.monotonic() - began
        assert {p[:3] for p in pictures} == {("h264", 160, 120)}
        # 20 pictures at 10 a second: about 2 s (at the camera's 30, 0.67 s)
        assert 1.5 < took < 3.5, took
        reader.close()
    finally:
        await cameras.close()


async def test_no_low_tier_when_its_scale_is_zero():
    cameras = Cameras(Config(source="pattern", width=320, height=240, low_scale=0))
    try:
        with pytest.raises(ValueError, match="no low tier"):
            cameras.first.reader(Transport.WEBSOCKET, LOW)
        assert cameras.first.pipeline.tiers.available() == ("main",)
    finally:
        await cameras.close()


async def test_the_low_tier_of_a_passed_through_camera_reads_its_decoder(tmp_path):
    source = str(write_h264(tmp_path / "cam.mp4", "main", frames=90))
    cameras = Cameras(Config(source=source, mode="passthrough", width=640, height=480, linger=0.2))
    camera = cameras.first
    try:
        reader = camera.reader(Transport.WEBSOCKET, LOW)
        low = camera.packets(MediaKind.VIDEO, LOW)
        assert isinstance(low, SharedEncoder) and low.input is camera.decoder
        # half the file's own 320x240 (the configured size is not the camera's)
        assert {p[:3] for p in await decoded(reader, 10)} == {("h264", 160, 120)}
        # the decoder is the one JPEG reads: one decode of the camera for both
        assert camera.pipeline.jpeg is not None
        reader.close()
        assert camera.decoder is not None
        await eventually(lambda: not low.running and not camera.decoder.running)
    finally:
        await cameras.close()


def tier_reader(camera: Any, quality: str = "main", transport: Transport = Transport.WEBSOCKET) -> TierReader:
    tier = Tier(None, None if quality == "main" else quality)
    return TierReader(camera.reader(transport, tier), tier, camera.packets,
                      camera.pipeline.tiers.available(), camera.meters[transport])


async def test_a_viewer_moves_between_tiers_at_a_keyframe_with_its_times_growing():
    """main -> low -> main: one decoder decodes it all, sizes change only at keyframes, presentation
    times keep growing by about a frame (no gap over two frame intervals), and the tier it left
    stops when no one else reads it."""
    cameras = Cameras(Config(source="pattern", width=640, height=480, fps=30, linger=0.2))
    camera = cameras.first
    reader = tier_reader(camera)
    decoder = av.CodecContext.create("h264", "r")
    seen: list[tuple[int, int, int, bool]] = []  # (pts, width, height, keyframe)

    async def read(count: int) -> None:
        for _ in range(count):
            encoded, own = await reader.next()
            pts = own if own is not None else encoded.packet.pts or 0
            for frame in decoder.decode(av.Packet(bytes(encoded.packet))):
                seen.append((pts, frame.width, frame.height, encoded.keyframe))

    try:
        await read(20)
        assert reader.quality == "main" and {s[1:3] for s in seen} == {(640, 480)}
        assert reader.move("low", "test") and not reader.move("low", "again")
        await read(30)
        assert reader.quality == "low" and reader.reason == "test" and reader.moves == {("main", "low", "test"): 1}
        low = camera.packets(MediaKind.VIDEO, LOW)
        assert seen[-1][1:3] == (320, 240)
        reader.choose("main")
        await read(30)
        assert reader.quality == "main" and reader.reason == "asked" and seen[-1][1:3] == (640, 480)
        await eventually(lambda: not low.running)
        switches = 0
        for before, after in zip(seen, seen[1:], strict=False):
            assert after[0] > before[0], "presentation times went back"
            if before[1:3] != after[1:3]:
                switches += 1
                assert after[3], "the size changed on a picture that is not a keyframe"
                # at most two frame intervals apart (by capture times: a busy machine's capture
                # jitter is the slack)
                assert after[0] - before[0] <= 2 * 3000 + SLACK, (before, after)
        assert switches == 2
        with pytest.raises(ValueError):
            reader.choose("high")
    finally:
        reader.close()
        await cameras.close()


#: 90 kHz ticks a busy machine's capture may be late by (the pattern's own jitter, not the switch's)
SLACK = 1500


def continuous(frames: list[Any], fps: float = 30.0) -> None:
    """Decoded frames' times keep growing, and where the size changes (a move between tiers) the
    two pictures are at most two frame intervals apart (90 kHz)."""
    switches = 0
    for before, after in zip(frames, frames[1:], strict=False):
        assert after.pts > before.pts, "presentation times went back"
        if (before.width, before.height) != (after.width, after.height):
            switches += 1
            assert after.pts - before.pts <= 2 * 90000 / fps + SLACK, (before.pts, after.pts)
    assert switches >= 2


async def test_a_websocket_viewer_asks_for_low_and_main_and_its_picture_stays_continuous(serve):
    url, app = await serve(width=640, height=480, fps=30)
    camera = app[CAMERAS].first
    viewer = Viewer(url)
    try:
        await viewer.connect()
        assert viewer.hello["qualities"] == ["main", "low"]
        assert viewer.answer_sdp
        told = viewer.answer["quality"]
        assert told["tier"] == "main" and told["choice"] == "auto" and told["qualities"] == ["main", "low"]
        frames = await viewer.frames(15)
        assert {(f.width, f.height) for f in frames} == {(640, 480)}
        assert viewer.ws is not None
        await viewer.ws.send_json({"type": "quality", "quality": "low"})
        told = await viewer.receive("quality")
        assert (told["tier"], told["choice"], told["moving_to"]) == ("main", "low", "low")
        told = await viewer.receive("quality")
        assert (told["tier"], told["choice"], told["reason"], told["moving_to"]) == ("low", "low", "asked", None)
        more = await viewer.frames(30)
        assert more[-1].width == 320 and more[-1].height == 240
        frames += more
        low = camera.packets(MediaKind.VIDEO, LOW)
        assert isinstance(low, SharedEncoder) and low.running
        await viewer.ws.send_json({"type": "quality", "quality": "main"})
        while told["tier"] != "main":
            told = await viewer.receive("quality")
        more = await viewer.frames(30)
        assert (more[-1].width, more[-1].height) == (640, 480)
        frames += more
        continuous(frames)
        await eventually(lambda: not low.running)
        await viewer.ws.send_json({"type": "quality", "quality": "high"})
        with pytest.raises(RuntimeError, match="quality"):
            await viewer.receive("nothing")
    finally:
        await viewer.close()


async def test_a_whep_viewer_asks_for_the_low_tier(serve):
    url, app = await serve(width=640, height=480, fps=30)
    camera = app[CAMERAS].first
    pc = None
    try:
        async with aiohttp.ClientSession() as http:
            offer_pc, sdp = await make_offer()
            await offer_pc.close()
            async with http.post(whep_url(url, "?tier=middle"), data=sdp, headers=SDP) as r:
                assert r.status == 400 and "low" in await r.text()
            pc, _, track = await whep(url, http, query="?tier=low")
            video = await asyncio.wait_for(track, 20)
            frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(20)]
            # it started on the low tier: its very first picture is the low one
            assert {(f.width, f.height) for f in frames} == {(320, 240)}
            # and the main encoder was not kept running for it
            assert camera.encoder is not None
            await eventually(lambda: not camera.encoder.running)
    finally:
        if pc is not None:
            await pc.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tiers:
    """The part of a TierReader AutoQuality drives (a move takes effect at once here)."""

    def __init__(self) -> None:
        self.choice, self.quality, self.reason, self.closed = "auto", "main", "start", False
        self.available = ("main", "low")
        self.moving_to = None
        self.moves: list[tuple[str, str]] = []

    def move(self, quality: str, reason: str) -> bool:
        self.moves.append((quality, reason))
        self.quality, self.reason = quality, reason
        return True


def test_auto_quality_moves_down_on_bad_samples_and_tries_up_with_a_growing_hold():
    from camtrack.media.quality import HOLD_MAX, HOLD_MIN, PROBE_GRACE, AutoQuality

    clock, reader = Clock(), Tiers()
    auto = AutoQuality(reader, clock)  # type: ignore[arg-type]

    def samples(bad: str | None, count: int, every: float = 0.5) -> None:
        for _ in range(count):
            clock.now += every
            auto.observe(bad)

    samples(None, 20)
    samples("loss 30%", 1)
    assert reader.moves == []  # one bad sample is not enough
    samples(None, 1)
    samples("loss 30%", 2)
    assert reader.moves == [("low", "loss 30%")]
    # clear for the hold: it tries main again
    samples(None, int(HOLD_MIN / 0.5) - 1)
    assert reader.quality == "low"
    samples(None, 2)
    assert reader.moves[-1] == ("main", f"link clear for {HOLD_MIN:g} s")
    # the try goes bad at once: back down at its first bad sample, and the next try waits twice as long
    samples("delay +250 ms", 1)
    assert reader.quality == "low" and auto.hold == 2 * HOLD_MIN
    samples(None, int(HOLD_MIN / 0.5) + 2)
    assert reader.quality == "low"
    samples(None, int(HOLD_MIN / 0.5) + 2)
    assert reader.quality == "main"
    # ... up to HOLD_MAX
    for _ in range(6):
        samples("delay +250 ms", 2)
        samples(None, int(auto.hold / 0.5) + 2)
    assert auto.hold == HOLD_MAX
    # a try that holds for PROBE_GRACE brings the hold back
    samples(None, int(PROBE_GRACE / 0.5) + 2)
    assert reader.quality == "main" and auto.hold == HOLD_MIN
    # a viewer that asked for a tier is left there
    reader.choice = "main"
    samples("loss 50%", 10)
    assert reader.quality == "main"
