"""A real RTSP camera with G.711 sound (GStreamer's RTSP server, tests/gst_rtsp_audio_server.py,
writing every audio RTP payload it sends to a log) as camtrack's source: an aiortc viewer whose offer
takes the camera's codec (PCMU, PCMA) gets it, the camera's payload bytes untouched, with no Opus
encoder running; a viewer whose offer has only Opus gets Opus from the one shared encoder; over
/ws, WHEP and from a worker process; the websocket fallback gets Opus (docs/audio.md#g711-passed-through)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bench.listener import Listener
from camtrack.app import CAMERAS
from camtrack.media.audio import AudioFeed
from camtrack.media.packet import MediaKind
from camtrack.media.tiers import Tier
from camtrack.outputs.wsvideo import parse_header

from .conftest import eventually
from .test_audio import opus_rms
from .test_real_rtsp import GstServers, require_gst

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("gst_rtsp_audio_server.py")
#: RTP payload types of G.711 (static: RFC 3551)
PAYLOAD_TYPES = {"pcmu": 0, "pcma": 8}
MIMES = {"pcmu": "audio/PCMU", "pcma": "audio/PCMA", "opus": "audio/opus"}


class Camera:
    """A GStreamer RTSP camera whose audio payloads are logged (`sent()`: by RTSP session)."""

    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log

    def sent(self) -> dict[str, list[bytes]]:
        sessions: dict[str, list[bytes]] = {}
        for line in self.log.read_text().splitlines():
            number, _, payload = line.partition(" ")
            if payload:
                sessions.setdefault(number, []).append(bytes.fromhex(payload))
        return sessions


@pytest.fixture
async def g711_camera() -> AsyncIterator[Callable[[str], Awaitable[Camera]]]:
    require_gst()
    servers = GstServers()
    with tempfile.TemporaryDirectory() as folder:

        async def start(audio: str) -> Camera:
            log = Path(folder) / f"{audio}-{len(servers.running)}.log"
            return Camera((await servers.start(SERVER, audio, str(log)))[1], log)

        yield start
        servers.stop()


def audio_codec_of(answer: str) -> str:
    """The codec (its rtpmap name, lower case) of the answer's audio m-line."""
    lines = answer.split("m=audio", 1)[1].split("m=", 1)[0].splitlines()
    payload_type = lines[0].split()[2]
    rtpmap = next(line for line in lines if line.startswith(f"a=rtpmap:{payload_type} "))
    return rtpmap.split()[1].split("/")[0].lower()


def answered_payload_type(answer: str) -> int:
    """The payload type of the answer's audio m-line's codec."""
    return int(answer.split("m=audio", 1)[1].splitlines()[0].split()[2])


def assert_untouched(camera: Camera, listener: Listener, codec: str) -> None:
    """The listener's audio payloads are a run of one camera session's, byte for byte, in order;
    its RTP timestamps step by each payload's samples (G.711's 8 kHz clock)."""
    got = [payload for _, _, payload in listener.audio_payloads]
    assert {pt for pt, _, _ in listener.audio_payloads} == {PAYLOAD_TYPES[codec]}
    assert all(len(payload) > 0 for payload in got)
    sessions = camera.sent()
    assert any(got[0] in sent for sent in sessions.values()), "the viewer's first payload is none the camera sent"
    # (each session's tone starts alike: the run is looked for in every session, from every start)
    assert any(sent[start:start + len(got)] == got for sent in sessions.values()
               for start, payload in enumerate(sent) if payload == got[0]), "the payloads differ from the camera's"
    stamps = [stamp for _, stamp, _ in listener.audio_payloads]
    steps = {(b - a) % 2**32 for a, b in zip(stamps, stamps[1:], strict=False)}
    assert steps == {len(got[0])}, steps  # (a packet's samples at 8 kHz: no gap, no overlap)


def sound_of(app) -> AudioFeed:
    feed = app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO)
    assert isinstance(feed, AudioFeed)
    return feed


@pytest.mark.parametrize(("codec", "way"), [("pcmu", "ws"), ("pcma", "ws"), ("pcmu", "whep")])
async def test_a_g711_camera_passes_through_to_a_viewer_that_takes_it(serve, g711_camera, codec, way):
    camera = await g711_camera(codec)
    ws, app = await serve(source=camera.url, width=320, height=240)
    feed = sound_of(app)
    listener = Listener(audio_codecs=(MIMES[codec], "audio/opus"))
    try:
        if way == "ws":
            await listener.connect(ws)
        else:
            await listener.connect_whep(ws.replace("/ws", "/whep"))
        assert audio_codec_of(listener.answer_sdp) == codec
        await eventually(lambda: len(listener.audio_payloads) >= 30 and len(listener.video) >= 10, 40)
        assert_untouched(camera, listener, codec)
        # aiortc decodes it: the camera's tone is continuous, nearly every frame is loud
        assert listener.loud() >= len(listener.audio) // 2
        # its sender reports pair the 8 kHz RTP time with the capture time (lip-sync): between two
        # reports the RTP time moves 8000 a second of capture time, and the newest packet maps to now
        await eventually(lambda: len(listener.reports["audio"]) >= 2
                         and listener.reports["audio"][-1][0] - listener.reports["audio"][0][0] >= 1.0, 20)
        (ntp0, rtp0), (ntp1, rtp1) = listener.reports["audio"][0], listener.reports["audio"][-1]
        assert abs(((rtp1 - rtp0) % 2**32) / (ntp1 - ntp0) - 8000) < 400, listener.reports["audio"]
        newest = listener.sent_at("audio", listener.audio_payloads[-1][1], 8000)
        assert newest is not None and abs(newest - time.time()) < 1.0
        # nothing decoded nor encoded: no Opus encoder ran
        assert feed.stats.encoders == 0 and feed.stats.encoded == 0 and feed.stats.passed >= 30
        assert not feed.opus_wanted
        assert feed.own_codec == codec
    finally:
        await listener.close()


async def test_an_opus_only_offer_gets_opus_from_the_one_encoder_beside_g711_listeners(serve, g711_camera):
    camera = await g711_camera("pcmu")
    ws, app = await serve(source=camera.url, width=320, height=240)
    feed = sound_of(app)
    passed = [Listener(audio_codecs=("audio/PCMU", "audio/opus")) for _ in range(2)]
    opus = [Listener(audio_codecs=("audio/opus",)) for _ in range(3)]
    try:
        await asyncio.gather(*(listener.connect(ws) for listener in passed))
        await eventually(lambda: all(len(listener.audio_payloads) >= 10 for listener in passed), 40)
        assert feed.stats.encoders == 0
        await asyncio.gather(*(listener.connect(ws) for listener in opus))
        assert {audio_codec_of(listener.answer_sdp) for listener in opus} == {"opus"}
        assert {audio_codec_of(listener.answer_sdp) for listener in passed} == {"pcmu"}
        await eventually(lambda: all(len(listener.audio) >= 50 for listener in opus), 40)
        assert all(listener.loud() >= len(listener.audio) // 2 for listener in opus)
        for listener in opus:  # (Opus's payload type is the offer's)
            assert {pt for pt, _, _ in listener.audio_payloads} == {answered_payload_type(listener.answer_sdp)}
        # one encoder for the three of them, fed by the same reading of the camera
        assert feed.stats.encoders == 1 and feed.stats.runs == 1
        for listener in passed:
            assert_untouched(camera, listener, "pcmu")
        # the Opus listeners leave: the encoder stops, the G.711 listeners go on untouched
        await asyncio.gather(*(listener.close() for listener in opus))
        await eventually(lambda: not feed.opus_wanted, 10)
        await asyncio.sleep(0.5)
        encoded = feed.stats.encoded
        heard = [len(listener.audio_payloads) for listener in passed]
        await eventually(lambda: all(len(listener.audio_payloads) >= n + 10
                                     for listener, n in zip(passed, heard, strict=True)), 20)
        assert feed.stats.encoded == encoded
    finally:
        await asyncio.gather(*(listener.close() for listener in passed + opus))


async def test_listeners_in_worker_processes_get_the_g711_relayed(serve, g711_camera):
    """--workers 2: the camera's G.711 relayed to the workers (`camera/audio/pcmu`), untouched."""
    camera = await g711_camera("pcmu")
    ws, app = await serve(source=camera.url, width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    feed = sound_of(app)
    listeners = [Listener(audio_codecs=("audio/PCMU", "audio/opus")) for _ in range(3)]
    try:
        await asyncio.gather(*(listener.connect(ws) for listener in listeners))
        assert {audio_codec_of(listener.answer_sdp) for listener in listeners} == {"pcmu"}
        await eventually(lambda: all(len(listener.audio_payloads) >= 30 for listener in listeners), 45)
        for listener in listeners:
            assert_untouched(camera, listener, "pcmu")
        assert feed.stats.encoders == 0
        passed = app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO, Tier(codec="pcmu"))
        assert passed is not None and 1 <= len(passed.consumers) <= 2  # a reader per worker
    finally:
        await asyncio.gather(*(listener.close() for listener in listeners))


async def test_the_websocket_fallback_gets_a_g711_cameras_sound_in_opus(serve, g711_camera):
    """The websocket stream keeps Opus: a G.711 camera's sound decoded and encoded once for it."""
    camera = await g711_camera("pcmu")
    ws_url, app = await serve(source=camera.url, width=320, height=240)
    feed = sound_of(app)
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        hello = await ws.receive_json()
        assert hello["type"] == "hello" and hello["audio"] is True
        await ws.send_json({"type": "stream", "audio": True})
        sound: list[dict] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(sound) < 60 and asyncio.get_running_loop().time() < deadline:
            got = await ws.receive(timeout=10)
            if got.type == aiohttp.WSMsgType.BINARY and (message := parse_header(got.data))["audio"]:
                sound.append(message)
    assert len(sound) >= 60
    assert sound[0]["codec"] == {"codec": "opus", "sampleRate": 48000, "numberOfChannels": 1}
    levels = opus_rms([m["payload"] for m in sound])
    assert sum(level > 0.05 for level in levels) >= len(levels) // 2  # (the camera's tone is continuous)
    assert feed.stats.encoders == 1
