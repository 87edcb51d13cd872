"""A camera's own second stream as its low tier (--low-source, docs/quality.md): an IP camera's
sub-stream's H.264 passed through to the low tier's viewers, no encoder, opened only while a viewer
reads it; moves main <-> low at the camera's keyframes with the viewer's times growing. Two real
RTSP servers on loopback (tests/rtsp_server.py: the main stream and the sub-stream, each its own
clock and keyframes), real aiortc viewers."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import aiohttp
import pytest

from camtrack import Config
from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media.packet import MediaKind
from camtrack.media.passthrough import PassthroughFeed
from camtrack.media.tiers import Tier
from camtrack.plan import plan_camera

from .conftest import eventually
from .test_passthrough import write_h264
from .test_quality import continuous
from .whep import whep

pytestmark = pytest.mark.slow

LOW = Tier(quality="low")
#: the sub-stream's size: not what the low tier's encoder would make of the main stream (160x120)
SUB = (176, 144)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def camera_streams():
    """The camera's main stream (320x240) and its sub-stream (176x144), a keyframe a second each,
    each served by its own process (`python -m tests.rtsp_server`: camtrack probes a source before
    its event loop serves, as a camera on the network would answer)."""
    processes = []
    urls = []
    try:
        for size, bitrate in (("320x240", 500_000), (f"{SUB[0]}x{SUB[1]}", 150_000)):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.rtsp_server", "--size", size, "--gop", "30", "--bitrate", str(bitrate),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE)
            processes.append(process)
            assert process.stdout is not None
            url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
            assert url.startswith("rtsp://"), url
            urls.append(url)
        yield tuple(urls)
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
                await process.wait()


@pytest.mark.parametrize("mode", ["passthrough", "transcode"])
async def test_a_viewer_asking_for_low_gets_the_sub_streams_own_packets_and_moves_back(serve, camera_streams, mode):
    """Whether the main tier is the camera's main stream passed through or encoded here."""
    main_url, sub_url = camera_streams
    url, app = await serve(source=main_url, mode=mode, width=320, height=240, low_source=sub_url)
    camera = app[CAMERAS].first
    assert camera.pipeline.plan.low_source == sub_url
    low = camera.packets(MediaKind.VIDEO, LOW)
    assert isinstance(low, PassthroughFeed) and low is not camera.feed
    assert not low.running  # opened only for a low tier's viewer
    viewer = Viewer(url)
    try:
        await viewer.connect()
        assert viewer.hello["qualities"] == ["main", "low"]
        frames = await viewer.frames(15)
        assert {(f.width, f.height) for f in frames} == {(320, 240)}
        assert viewer.ws is not None
        await viewer.ws.send_json({"type": "quality", "quality": "low"})
        told = await viewer.receive("quality")
        while told["tier"] != "low":
            told = await viewer.receive("quality")
        assert low.running and low.stats.keyframe_requests == 0  # the camera's keyframes: none asked for
        more = await viewer.frames(30)
        assert (more[-1].width, more[-1].height) == SUB  # the sub-stream's own pictures
        frames += more
        # no encoder made for the low tier, nothing decoded
        assert camera.pipeline.quality_encoders() == {}
        assert list(camera.pipeline.encoders().values()) == ([] if mode == "passthrough" else [camera.encoder])
        assert camera.decoder is None or not camera.decoder.running
        async with aiohttp.ClientSession() as http, http.get(url.replace("/ws", "/metrics")) as r:
            metrics = await r.text()
        assert "camtrack_tier_frames_encoded_total{" not in metrics
        assert 'camtrack_tier_viewers{camera="default",tier="low"} 1' in metrics
        await viewer.ws.send_json({"type": "quality", "quality": "main"})
        while told["tier"] != "main":
            told = await viewer.receive("quality")
        more = await viewer.frames(30)
        assert (more[-1].width, more[-1].height) == (320, 240)
        frames += more
        continuous(frames)  # times keep growing across main -> low -> main (two cameras' clocks)
        await eventually(lambda: not low.running, timeout=15)  # released once no one reads it
    finally:
        await viewer.close()


async def test_a_whep_viewer_of_the_low_tier_starts_on_the_sub_stream(serve, camera_streams):
    main_url, sub_url = camera_streams
    url, app = await serve(source=main_url, mode="passthrough", width=320, height=240, low_source=sub_url)
    camera = app[CAMERAS].first
    pc = None
    try:
        async with aiohttp.ClientSession() as http:
            pc, _, track = await whep(url, http, query="?tier=low")
        video = await asyncio.wait_for(track, 20)
        frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(20)]
        assert {(f.width, f.height) for f in frames} == {SUB}
        assert all(b.pts > a.pts for a, b in zip(frames, frames[1:], strict=False))
        low = camera.packets(MediaKind.VIDEO, LOW)
        assert isinstance(low, PassthroughFeed) and low.running and low.stats.packets >= 20
        assert camera.pipeline.quality_encoders() == {}
        assert not camera.feed.running  # the main stream was never opened for it
    finally:
        if pc is not None:
            await pc.close()


def test_a_sub_stream_that_cannot_pass_through_falls_back_to_encoding_with_a_log_line(tmp_path, caplog):
    main = str(write_h264(tmp_path / "main.mp4", "main", frames=30))
    sub = str(write_h264(tmp_path / "sub.mp4", "high", bf=2, frames=30))
    config = Config(source=main, mode="passthrough", width=320, height=240, low_source=sub)
    with caplog.at_level(logging.INFO, logger="camtrack.plan"):
        plan = plan_camera(config.cameras[0], config)
    assert plan.low_source is None
    assert any("cannot be passed through" in r.getMessage() and "encoding its low tier" in r.getMessage()
               for r in caplog.records), caplog.text
    good = Config(source=main, mode="passthrough", width=320, height=240, low_source=main)
    assert plan_camera(good.cameras[0], good).low_source == main


def test_low_source_is_a_camera_of_its_own_not_every_cameras_default():
    config = Config(source="pattern", low_source="rtsp://127.0.0.1:9/sub")
    assert config.cameras[0].low_source == "rtsp://127.0.0.1:9/sub"
    two = Config(source="pattern", low_source="rtsp://127.0.0.1:9/sub",
                 cameras=[Config().camera("a", "pattern"), Config().camera("b", "pattern", low_source="x.mp4")])
    assert [c.low_source for c in two.cameras] == [None, "x.mp4"]


def test_low_source_in_a_cameras_table(tmp_path):
    from camtrack.cli import config_from_args, parse

    path = tmp_path / "camtrack.toml"
    path.write_text('[cameras.door]\nsource = "pattern"\nlow-source = "rtsp://127.0.0.1:9/sub"\n'
                    '[cameras.yard]\nsource = "pattern"\n')
    config = config_from_args(*parse(["--config", str(path)])[1:])
    assert {c.name: c.low_source for c in config.cameras} == {"door": "rtsp://127.0.0.1:9/sub", "yard": None}
