"""The /ws protocol: every malformed message gets an error and harms nobody else."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from camtrack.app import CAMERAS
from camtrack.client import Viewer

from .conftest import eventually

OFFER_NO_VIDEO = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"

BAD_MESSAGES = [
    ("{not json", "invalid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('{"sdp": "x"}', "'type'"),
    ('{"type": "dance"}', "unknown message type"),
    ('{"type": "offer"}', "'sdp' string"),
    ('{"type": "offer", "sdp": 42}', "'sdp' string"),
    ('{"type": "offer", "sdp": "hello"}', "offer"),
    (json.dumps({"type": "offer", "sdp": OFFER_NO_VIDEO}), "no video"),
    ('{"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMLineIndex": 0}',
     "before any offer"),
]


async def expect_error(ws: aiohttp.ClientWebSocketResponse) -> str:
    while True:
        message = await asyncio.wait_for(ws.receive_json(), 10)
        if message["type"] == "error":
            return message["message"]


async def test_hello_then_errors_for_bad_messages(serve):
    url, app = await serve(width=320, height=240)
    watcher = Viewer(url)
    await watcher.connect()
    await watcher.frames(3)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        hello = await ws.receive_json()
        assert hello["type"] == "hello" and hello["codecs"] == ["h264", "vp8"] and hello["iceServers"] == []
        for text, expected in BAD_MESSAGES:
            await ws.send_str(text)
            message = await expect_error(ws)
            assert expected in message, (text, message)
        await ws.send_bytes(b"\x00\x01")
        assert "binary" in await expect_error(ws)
        # still open and usable after all that
        await ws.send_str('{"type": "dance"}')
        assert "unknown" in await expect_error(ws)
    # the other viewer kept watching
    frames = await watcher.frames(10)
    assert len(frames) == 10
    await watcher.close()


async def test_malformed_candidate_after_offer(serve):
    url, _ = await serve(width=320, height=240)
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.ws.send_json({"type": "candidate", "candidate": "candidate:garbage", "sdpMid": "0"})
    assert "malformed candidate" in await expect_error(viewer.ws)
    await viewer.ws.send_json({"type": "candidate", "candidate": 5, "sdpMid": "0"})
    assert "string" in await expect_error(viewer.ws)
    await viewer.frames(3)
    await viewer.close()


async def test_offer_without_the_codec_is_refused(serve):
    """An offer with neither codec the server sends (the camera's VP8, or H.264: tests/test_codecs.py)."""
    url, _ = await serve(width=320, height=240, codec="vp8")
    viewer = Viewer(url)
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"])
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp.replace("VP8/90000", "VP9/90000")})
        assert "no VP8 or H264 codec" in await expect_error(ws)
    await pc.close()
    await viewer.close()


async def test_bye_closes_the_socket(serve):
    url, app = await serve(width=320, height=240)
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(3)
    await viewer.ws.send_json({"type": "bye"})
    message = await asyncio.wait_for(viewer.ws.receive(), 10)
    while message.type == aiohttp.WSMsgType.TEXT:
        message = await asyncio.wait_for(viewer.ws.receive(), 10)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert app[CAMERAS].viewer_count == 0
    await viewer.close(bye=False)


@pytest.mark.parametrize("size", [64 * 1024 + 1])
async def test_oversized_message_closes_the_socket(serve, size):
    url, app = await serve(width=320, height=240)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_str("x" * size)
        message = await asyncio.wait_for(ws.receive(), 10)
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await asyncio.wait_for(ws.receive(), 10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_hello_lists_configured_ice_servers(serve):
    # no offer is made: nothing tries to reach these (documentation-range) servers
    url, _ = await serve(ice_servers=["stun:192.0.2.10:3478", "turn:bob:s%40cret@192.0.2.11:3478?transport=tcp"])
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        hello = await ws.receive_json()
    assert hello["iceServers"] == [
        {"urls": "stun:192.0.2.10:3478"},
        {"urls": "turn:192.0.2.11:3478?transport=tcp", "username": "bob", "credential": "s@cret"},
    ]


def test_bad_ice_server_is_refused():
    from camtrack.outputs.webrtc.ice import parse_ice_server

    for bad in ["stun.example.org", "http://x", "turn:192.0.2.1:3478"]:
        with pytest.raises(ValueError):
            parse_ice_server(bad)


class FakePeer:
    """A peer session (camtrack.outputs.webrtc.contract.PeerSession) with no aiortc behind it:
    it answers with a fixed text, records candidates, and changes state when told to."""

    def __init__(self, camera, transport, remote, on_end) -> None:
        self.camera, self.transport, self.remote, self.on_end = camera, transport, remote, on_end
        self.state = "new"
        self.offers: list[str] = []
        self.candidates: list[object] = []
        self.closed = 0
        self._listeners: list = []

    @property
    def negotiating(self) -> bool:
        return self.state in ("new", "connecting")

    def on_state(self, callback) -> None:
        self._listeners.append(callback)

    def set_state(self, state: str) -> None:
        self.state = state
        for callback in self._listeners:
            callback()

    async def answer(self, sdp: str) -> str:
        self.offers.append(sdp)
        return "v=0\r\ns=fake answer\r\n"

    async def add_candidate(self, candidate) -> None:
        self.candidates.append(candidate)

    async def close(self) -> None:
        self.closed += 1

    def choose_quality(self, choice: str) -> None:
        pass

    def quality(self) -> None:
        return None

    def on_quality(self, callback) -> None:
        pass


async def test_signaling_drives_the_peer_factory_the_app_chose(serve):
    """/ws talks to a peer only through the contract, so a fake factory stands in for aiortc: the
    offer reaches its answer(), the answer comes back, trickled candidates reach add_candidate(),
    its "connected" makes the session a viewer, its on_end ends the session, and bye closes it."""
    from camtrack.app import ICE
    from camtrack.media.feeds import Transport

    url, app = await serve(width=320, height=240)
    made: list[FakePeer] = []

    def factory(camera, transport, remote, on_end) -> FakePeer:
        made.append(FakePeer(camera, transport, remote, on_end))
        return made[-1]

    app[ICE].peers = factory
    camera = app[CAMERAS].first
    offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "offer", "sdp": offer})
        answer = await asyncio.wait_for(ws.receive_json(), 10)
        assert answer == {"type": "answer", "sdp": "v=0\r\ns=fake answer\r\n"}
        (peer,) = made
        assert peer.offers == [offer] and peer.camera is camera and peer.transport == Transport.WEBSOCKET
        await ws.send_json({"type": "candidate", "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
                            "sdpMid": "0", "sdpMLineIndex": 0})
        await ws.send_json({"type": "candidate", "candidate": None})
        await eventually(lambda: len(peer.candidates) == 2)
        first, last = peer.candidates
        assert first.ip == "127.0.0.1" and first.port == 9 and first.sdpMid == "0" and last is None
        assert not camera.viewers[Transport.WEBSOCKET]
        peer.set_state("connected")  # a viewer now
        assert len(camera.viewers[Transport.WEBSOCKET]) == 1
        peer.on_end("peer failed")  # the peer ends: so does the session, its socket says bye
        assert (await asyncio.wait_for(ws.receive_json(), 10)) == {"type": "bye"}
        await eventually(lambda: peer.closed >= 1 and not camera.viewers[Transport.WEBSOCKET])
    # a second session's bye closes its peer too
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "offer", "sdp": offer})
        assert (await asyncio.wait_for(ws.receive_json(), 10))["type"] == "answer"
        await ws.send_json({"type": "bye"})
        await eventually(lambda: len(made) == 2 and made[1].closed >= 1)


async def test_an_end_of_candidates_before_any_candidate_does_not_fail_the_peer(serve):
    """Headless Chromium without a camera permission offers no candidate at all and ends its
    candidates about 100 ms after the offer: the peer must still connect from the viewer's own checks
    (peer-reflexive), not fail at once ("no candidate pairs"), which made the page's first WebRTC
    attempt fail now and then and, twice in a row, fall back to the websocket."""
    url, _ = await serve(width=320, height=240)
    async with aiohttp.ClientSession() as session:
        viewer = Viewer(url, session)
        viewer.ws = ws = await session.ws_connect(url)
        assert (await ws.receive_json())["type"] == "hello"
        # (no ICE servers: aiortc's default is Google's STUN server, a DNS look-up in the loop's
        # executor that leaves the machine and, offline, holds the gathering up to its 5 s time-out)
        pc = viewer.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        got: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        viewer.track = got
        pc.on("track", lambda track: got.done() or got.set_result(track))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = "".join(line for line in pc.localDescription.sdp.splitlines(keepends=True)
                        if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        await ws.send_json({"type": "offer", "sdp": offer})
        await ws.send_json({"type": "candidate", "candidate": None})
        answer = await viewer.receive("answer")
        await asyncio.sleep(0.3)  # the end of candidates reached the server's ICE before any check
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await viewer.frames(3)
        await viewer.close()


async def test_an_rsa_certificate_viewer_is_answered_passive_and_plays(serve):
    """Over /ws too: an actpass offer from a viewer with an RSA certificate (as GStreamer's
    webrtcbin's; tests/test_gstreamer.py has the real one) is answered passive and plays."""
    from aiortc import RTCSessionDescription

    from .test_hooks import rsa_viewer

    url, _app = await serve(width=320, height=240, codec="vp8")
    pc = rsa_viewer()
    pc.addTransceiver("video", direction="recvonly")
    track = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert (await asyncio.wait_for(ws.receive_json(), 10))["type"] == "hello"
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
            answer = await asyncio.wait_for(ws.receive_json(), 10)
            assert answer["type"] == "answer" and "a=setup:passive" in answer["sdp"].splitlines()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            video = await asyncio.wait_for(track, 20)
            frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(5)]
            assert (frames[-1].width, frames[-1].height) == (320, 240)
    finally:
        await pc.close()
