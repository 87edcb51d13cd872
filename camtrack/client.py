"""A viewer that speaks the /ws protocol with aiortc: for tests, benchmarks and scripts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame


class Viewer:
    """One receive-only WebRTC viewer connected over a camtrack websocket."""

    def __init__(self, url: str, session: aiohttp.ClientSession | None = None, hello_servers: bool = False,
                 codecs: Sequence[str] | None = None, data: bool = False) -> None:
        self.url = url
        #: open a data channel before the offer, as the page does: the camera's processing results
        #: come on it (camtrack.outputs.results), kept in `messages`, parsed, newest last
        self.data = data
        self.messages: list[dict[str, Any]] = []
        self.channel: RTCDataChannel | None = None
        #: the video codecs its offer has ("h264", "vp8"; None: every one aiortc has), as a browser
        #: without H.264 offers VP8 only
        self.codecs = codecs
        #: use the STUN/TURN servers the hello names, as the page does (else none: loopback tests)
        self.hello_servers = hello_servers
        self._own_session = session is None
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pc: RTCPeerConnection | None = None
        self.hello: dict[str, Any] = {}
        self.answer_sdp = ""
        #: the answer message (its "quality" too, docs/quality.md)
        self.answer: dict[str, Any] = {}
        self.track: asyncio.Future[MediaStreamTrack] | None = None
        #: loop time when the websocket opened
        self.opened_at: float | None = None

    async def connect(self, timeout: float = 20.0,
                      before_answer: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Open the socket, offer, and apply the answer (after `before_answer(answer_sdp)`, if given)."""
        if self.session is None:
            self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url)
        self.opened_at = asyncio.get_running_loop().time()
        self.hello = await self.receive("hello", timeout)
        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                   for s in self.hello.get("iceServers", [])] if self.hello_servers else []
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.track = asyncio.get_running_loop().create_future()
        track_future = self.track

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if not track_future.done():
                track_future.set_result(track)

        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        if self.data:
            channel = self.channel = self.pc.createDataChannel("camtrack")
            channel.on("message", lambda text: self.messages.append(json.loads(text)) if isinstance(text, str) else None)
        if self.codecs is not None:
            wanted = {f"video/{c}".lower() for c in self.codecs}
            transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                             if c.mimeType.lower() in wanted])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send_json({"type": "offer", "sdp": self.pc.localDescription.sdp})
        answer = self.answer = await self.receive("answer", timeout)
        self.answer_sdp = answer["sdp"]
        if before_answer is not None:
            await before_answer(self.answer_sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def receive(self, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next message of type `kind`; raises on an error message or a closed socket."""
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"socket closed while waiting for {kind!r}: {message.type}")
                data: dict[str, Any] = json.loads(message.data)
                if data.get("type") == kind:
                    return data
                if data.get("type") == "error":
                    raise RuntimeError(f"server error: {data.get('message')}")

    async def frames(self, count: int, timeout: float = 30.0) -> list[VideoFrame]:
        """Receive `count` decoded frames."""
        assert self.track is not None
        async with asyncio.timeout(timeout):
            track = await self.track
            frames = []
            for _ in range(count):
                frame = await track.recv()
                assert isinstance(frame, VideoFrame)
                frames.append(frame)
            return frames

    async def close(self, bye: bool = True) -> None:
        if self.ws is not None and not self.ws.closed:
            if bye:
                await self.ws.send_json({"type": "bye"})
            await self.ws.close()
        if self.pc is not None:
            await self.pc.close()
        if self._own_session and self.session is not None:
            await self.session.close()
