"""Bad input on /ws: each gets a clear error (or a clean close), and nobody else notices."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media.reader import PacketReader

from .conftest import eventually

NO_VIDEO = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host"


async def make_offer(kind: str = "video", direction: str = "recvonly") -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def next_reply(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> aiohttp.WSMessage:
    """The next message that is not an answer (answers are expected, not replies to bad input)."""
    while True:
        message = await asyncio.wait_for(ws.receive(), timeout)
        if message.type == aiohttp.WSMsgType.TEXT and json.loads(message.data)["type"] == "answer":
            continue
        return message


async def expect(ws, expected: str) -> None:
    message = await next_reply(ws)
    if expected.startswith("close:"):
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await next_reply(ws)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        code = int(expected.split(":")[1])
        sent = message.data if message.type == aiohttp.WSMsgType.CLOSE else ws.close_code
        assert sent == code, (sent, code)
        return
    assert message.type == aiohttp.WSMsgType.TEXT, message
    data = json.loads(message.data)
    assert data["type"] == "error", data
    assert expected.lower() in data["message"].lower(), (expected, data["message"])


# (what is sent before, the bad message, what the server must answer: error text or close:code)
CASES = [
    ("invalid JSON", [], "{not json", "invalid JSON"),
    ("not an object", [], "[1, 2]", "JSON object"),
    ("a string", [], '"offer"', "JSON object"),
    ("no type", [], '{"sdp": "x"}', "'type'"),
    ("type not a string", [], '{"type": 7}', "'type'"),
    ("unknown type", [], '{"type": "dance"}', "unknown message type"),
    ("offer without sdp", [], '{"type": "offer"}', "'sdp' string"),
    ("sdp of the wrong type", [], '{"type": "offer", "sdp": ["v=0"]}', "'sdp' string"),
    ("sdp that does not parse", [], '{"type": "offer", "sdp": "hello"}', "offer"),
    ("no video m-line", [], json.dumps({"type": "offer", "sdp": NO_VIDEO}), "no video"),
    ("audio only", [], "AUDIO_OFFER", "no video"),
    ("video sendonly", [], "SENDONLY_OFFER", "must be recvonly or sendrecv"),
    ("candidate before offer", [], json.dumps({"type": "candidate", "candidate": CANDIDATE, "sdpMid": "0"}),
     "before any offer"),
    ("malformed candidate", ["OFFER"], json.dumps({"type": "candidate", "candidate": "candidate:x", "sdpMid": "0"}),
     "malformed candidate"),
    ("candidate of the wrong type", ["OFFER"], json.dumps({"type": "candidate", "candidate": 5, "sdpMid": "0"}),
     "string or null"),
    ("sdpMid of the wrong type", ["OFFER"], json.dumps({"type": "candidate", "candidate": CANDIDATE, "sdpMid": 0}),
     "'sdpMid'"),
    ("sdpMLineIndex of the wrong type", ["OFFER"],
     json.dumps({"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": "0"}), "'sdpMLineIndex'"),
    ("second offer while negotiating", ["OFFER"], "OFFER", "still being negotiated"),
    ("binary frame", [], b"\x00\x01\x02", "binary"),
    ("over 64 KiB", [], "x" * (64 * 1024 + 1), "close:1009"),
    ("a flood", [], "FLOOD", "too many messages"),
]


async def run_case(url: str, before: list[str], bad, expected: str) -> None:
    offers = {"OFFER": None, "AUDIO_OFFER": ("audio", "recvonly"), "SENDONLY_OFFER": ("video", "sendonly")}

    async def resolve(text):
        if isinstance(text, str) and text in offers:
            kind, direction = offers[text] or ("video", "recvonly")
            return json.dumps({"type": "offer", "sdp": await make_offer(kind, direction)})
        return text

    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        for text in before:
            await ws.send_str(await resolve(text))
        if bad == "FLOOD":
            for _ in range(200):
                await ws.send_str('{"type": "dance"}')
            while True:  # the unknown-type errors first, then the flood verdict and a close
                message = await next_reply(ws)
                if message.type != aiohttp.WSMsgType.TEXT or "too many" in message.data:
                    break
            assert message.type == aiohttp.WSMsgType.TEXT and "too many messages" in message.data
            await expect(ws, "close:1008")
            return
        bad = await resolve(bad)
        if isinstance(bad, bytes):
            await ws.send_bytes(bad)
        else:
            await ws.send_str(bad)
        await expect(ws, expected)
        if not expected.startswith("close:"):
            # the socket is still usable after the error
            await ws.send_str('{"type": "dance"}')
            await expect(ws, "unknown message type")


@pytest.mark.timeout(300)
async def test_bad_input_table(serve):
    url, app = await serve(width=320, height=240)
    watcher = Viewer(url)
    await watcher.connect()
    await watcher.frames(5)
    watcher_track = next(t for t in app[CAMERAS].first.encoder.consumers if isinstance(t, PacketReader))
    for name, before, bad, expected in CASES:
        try:
            await run_case(url, before, bad, expected)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc
        # the watcher keeps watching, without a dropped frame
        await watcher.frames(2)
        assert watcher_track.skipped == 0, f"case {name!r} made the watcher drop frames"
    await eventually(lambda: app[CAMERAS].viewer_count == 1)
    await watcher.close()


async def test_silent_client_is_closed(serve):
    url, app = await serve(width=320, height=240, idle_timeout=0.5)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await expect(ws, "no offer within")
        await expect(ws, "close:1000")
    await eventually(lambda: app[CAMERAS].viewer_count == 0)


async def test_negotiation_that_never_completes_is_closed(serve):
    url, app = await serve(width=320, height=240, negotiation_timeout=1)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "offer", "sdp": await make_offer()})
        await expect(ws, "not established within 1 s")
        await expect(ws, "close:1000")
    await eventually(lambda: app[CAMERAS].viewer_count == 0 and not app[CAMERAS].first.encoder.consumers)


async def test_max_viewers(serve):
    url, app = await serve(width=320, height=240, max_viewers=2)
    first, second = Viewer(url), Viewer(url)
    await first.connect()
    await second.connect()
    # a viewer is a peer that connected (an answered offer is only pending)
    await eventually(lambda: app[CAMERAS].viewer_count == 2)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert await ws.receive_json() == {"type": "error", "message": "server full"}
        await expect(ws, "close:1013")
    await first.frames(3)
    await first.close()
    await eventually(lambda: app[CAMERAS].viewer_count == 1)
    third = Viewer(url)
    await third.connect()
    await third.frames(3)
    await asyncio.gather(second.close(), third.close())
