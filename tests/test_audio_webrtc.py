"""A camera's sound over WebRTC (camtrack.outputs.webrtc.audio, docs/audio.md): real aiortc viewers
that ask for audio get an Opus track with the test tone's beeps in it, over /ws and WHEP, one
encoder for all of them; viewers that do not ask get none and start nothing."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from bench.listener import Listener, lip_sync
from camtrack.app import CAMERAS
from camtrack.media.packet import MediaKind
from camtrack.outputs.wsvideo import parse_header

from .conftest import eventually
from .test_audio import opus_rms

# each listens to a few seconds of real-time sound
pytestmark = pytest.mark.slow

AUDIO_LINE = re.compile(r"^m=audio (\d+) ", re.M)


def audio_feed(app):
    return app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO)


async def test_a_viewer_asking_for_audio_hears_the_tone_beside_the_picture(serve):
    url, app = await serve(width=320, height=240, fps=15)
    feed = audio_feed(app)
    listener = Listener()
    try:
        await listener.connect(url)
        assert "opus/48000" in listener.answer_sdp.lower()
        assert AUDIO_LINE.search(listener.answer_sdp).group(1) != "0"
        await eventually(lambda: len(listener.audio) >= 120 and len(listener.video) >= 10, 30)
        assert sorted(listener.kinds) == ["audio", "video"]
        # a beep of 100 ms each second: loud frames, and silence between them
        assert 3 <= listener.loud() <= len(listener.audio) // 2
        assert feed.stats.encoders == 1 and feed.running
    finally:
        await listener.close()
    await eventually(lambda: not feed.running, 10)


async def test_a_viewer_that_does_not_ask_gets_no_audio_and_starts_no_encoder(serve):
    url, app = await serve(width=320, height=240, fps=15)
    listener = Listener(audio=False)
    try:
        await listener.connect(url)
        assert "m=audio" not in listener.answer_sdp
        await eventually(lambda: len(listener.video) >= 10, 30)
        assert audio_feed(app).stats.runs == 0
    finally:
        await listener.close()


async def test_audio_off_answers_the_audio_m_line_without_sending(serve):
    url, app = await serve(width=320, height=240, fps=15, audio="off")
    assert audio_feed(app) is None
    listener = Listener()
    try:
        await listener.connect(url)
        await eventually(lambda: len(listener.video) >= 10, 30)
        await asyncio.sleep(0.5)
        assert listener.audio == []
    finally:
        await listener.close()


async def test_whep_viewers_hear_it_too(serve):
    url, app = await serve(width=320, height=240, fps=15)
    listener = Listener()
    try:
        await listener.connect_whep(url.removesuffix("/ws") + "/whep")
        await eventually(lambda: len(listener.audio) >= 100, 30)
        assert listener.loud() >= 2
    finally:
        await listener.close()


async def test_sixteen_listeners_share_one_opus_encoder(serve):
    url, app = await serve(width=160, height=120, fps=10)
    feed = audio_feed(app)
    listeners = [Listener() for _ in range(16)]
    for listener in listeners:
        listener.keep = False
    try:
        await asyncio.gather(*(listener.connect(url) for listener in listeners))
        await eventually(lambda: all(listener.counts["audio"] >= 50 for listener in listeners), 45)
        encoded = feed.stats.encoded
        await asyncio.sleep(1.0)
        # one encoder, one encode per 20 ms (about 50 a second) whatever the number of listeners
        assert feed.stats.encoders == 1 and feed.stats.runs == 1
        assert feed.stats.encoded - encoded < 80
    finally:
        await asyncio.gather(*(listener.close() for listener in listeners))


async def test_lip_sync_of_the_tones_beeps_and_the_pictures_marks_within_80_ms(serve):
    """Each stream's times as its sender reports map them (what a browser lines up): the beep at each
    whole second and the picture's mark at the same second come within 80 ms of each other."""
    url, app = await serve(width=320, height=240, fps=30)
    listener = Listener()
    try:
        await listener.connect(url)
        await eventually(lambda: len(listener.audio) >= 300 and listener.reports["audio"]
                         and listener.reports["video"], 40)
        sync = lip_sync(listener)
    finally:
        await listener.close()
    print("lip-sync", sync)
    assert sync["beeps"] >= 4 and len(sync["offsets_ms"]) >= 4, sync
    assert all(abs(offset) <= 80 for offset in sync["offsets_ms"]), sync
    # and each on its own is at its whole second (the capture time), not later
    assert all(ms < 80 or ms > 950 for ms in sync["mark_after_second_ms"] + sync["beep_after_second_ms"]), sync


async def test_the_websocket_stream_carries_the_sound_when_asked(serve):
    """{"type": "stream", "audio": true}: the pictures and, interleaved, the sound's Opus packets
    (flag 8, 48 kHz ticks, a codec block first); without it, the pictures only."""
    url, app = await serve(width=320, height=240, fps=15)
    async with aiohttp.ClientSession() as session:
        for asked in (True, False):
            async with session.ws_connect(url) as ws:
                hello = await ws.receive_json()
                assert hello["type"] == "hello" and hello["audio"] is True
                await ws.send_json({"type": "stream", "audio": asked} if asked else {"type": "stream"})
                messages = []
                deadline = asyncio.get_running_loop().time() + 2.5
                while asyncio.get_running_loop().time() < deadline:
                    got = await ws.receive(timeout=5)
                    if got.type == aiohttp.WSMsgType.BINARY:
                        messages.append(parse_header(got.data))
            sound = [m for m in messages if m["audio"]]
            pictures = [m for m in messages if not m["audio"]]
            assert len(pictures) >= 20
            if not asked:
                assert sound == []
                continue
            assert len(sound) >= 90, len(sound)
            assert sound[0]["codec"] == {"codec": "opus", "sampleRate": 48000, "numberOfChannels": 1}
            assert all(m["codec"] is None for m in sound[1:])
            assert {b["pts"] - a["pts"] for a, b in zip(sound, sound[1:], strict=False)} == {960}
            levels = opus_rms([m["payload"] for m in sound])
            assert 2 <= sum(level > 0.05 for level in levels) <= len(levels) // 2


async def test_viewers_in_worker_processes_hear_it_relayed_once(serve):
    """--workers 2: each worker gets the camera's sound relayed once (the one encoder is the main
    process's), and its listeners hear the beeps."""
    url, app = await serve(width=320, height=240, fps=15, workers=2, ice_addresses=["127.0.0.1"])
    feed = audio_feed(app)
    listeners = [Listener() for _ in range(4)]
    try:
        await asyncio.gather(*(listener.connect(url) for listener in listeners))
        await eventually(lambda: all(len(listener.audio) >= 100 for listener in listeners), 45)
        assert all(listener.loud() >= 2 for listener in listeners)
        assert feed.stats.encoders == 1
        # every listener is a worker's, each worker's sound one reader of the feed
        assert 1 <= len(feed.consumers) <= 2
    finally:
        await asyncio.gather(*(listener.close() for listener in listeners))
