"""The /ws protocol: every malformed message gets an error and harms nobody else."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from camtrack.app import CAMERAS
from camtrack.client import Viewer

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
        assert hello["type"] == "hello" and hello["codecs"] == ["h264"] and hello["iceServers"] == []
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
    url, _ = await serve(width=320, height=240, codec="vp8")
    viewer = Viewer(url)
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"])
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
        assert "no VP8 codec" in await expect_error(ws)
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
