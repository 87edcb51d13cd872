"""A real RTSP camera with sound (GStreamer's RTSP server, tests/gst_rtsp_audio_server.py) as
camtrack's source: its AAC decoded and encoded to Opus once, its Opus and G.711 passed through, and
an aiortc viewer that asks for audio hears the camera's tone beside its picture."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bench.listener import Listener
from camtrack.app import CAMERAS
from camtrack.media.packet import MediaKind

from .conftest import eventually
from .test_real_rtsp import GstServers, require_gst

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("gst_rtsp_audio_server.py")


@pytest.fixture
async def rtsp_camera() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    require_gst()
    servers = GstServers()

    async def start(audio: str) -> str:
        return (await servers.start(SERVER, audio))[1]

    yield start
    servers.stop()


@pytest.mark.parametrize("audio", ["aac", "pcmu", "pcma", "opus"])
async def test_a_real_rtsp_cameras_sound_reaches_a_webrtc_viewer(serve, rtsp_camera, audio):
    url = await rtsp_camera(audio)
    ws, app = await serve(source=url, width=320, height=240)
    feed = app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO)
    assert feed is not None
    listener = Listener()
    try:
        await listener.connect(ws)
        await eventually(lambda: len(listener.audio) >= 100 and len(listener.video) >= 10, 40)
        # the camera's tone is continuous: nearly every frame is loud
        assert listener.loud() >= len(listener.audio) // 2, audio
        if audio in ("opus", "pcmu", "pcma"):
            # passed through untouched (aiortc's offer has Opus, PCMU and PCMA: test_audio_g711.py)
            assert feed.stats.encoders == 0 and feed.stats.passed > 0
        else:
            assert feed.stats.encoders == 1 and feed.stats.encoded > 0  # decoded and encoded once
    finally:
        await listener.close()
