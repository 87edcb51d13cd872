"""An aiortc viewer that asks for video and audio (over /ws or WHEP) and keeps what it decodes:
the test of camtrack's sound (tests/test_audio_webrtc.py) and its benchmark (bench/audio.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame


def frame_rms(frame: AudioFrame) -> float:
    """The RMS of a decoded audio frame, samples scaled to -1..1."""
    samples = frame.to_ndarray().astype(np.float64)
    if frame.format.name.startswith("s16"):
        samples /= 32768
    return float(np.sqrt(np.mean(samples ** 2)))


class Listener:
    """A receive-only peer with a video and an audio m-line; its tracks drained into `video` and
    `audio` lists of (arrival time, frame) by tasks of its own."""

    def __init__(self, audio: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.with_audio = audio
        self.video: list[tuple[float, VideoFrame]] = []
        self.audio: list[tuple[float, AudioFrame]] = []
        self.kinds: list[str] = []
        self.answer_sdp = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        #: keep decoded frames (False: count them only, for a benchmark)
        self.keep = True
        self.counts = {"video": 0, "audio": 0}
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.kinds.append(track.kind)
        self._tasks.append(asyncio.ensure_future(self._drain(track)))

    async def _drain(self, track: MediaStreamTrack) -> None:
        into: list[Any] = self.audio if track.kind == "audio" else self.video
        try:
            while True:
                frame = await track.recv()
                self.counts[track.kind] += 1
                if self.keep:
                    into.append((time.time(), frame))
        except MediaStreamError:
            pass

    async def offer(self) -> str:
        self.pc.addTransceiver("video", direction="recvonly")
        if self.with_audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def connect(self, ws_url: str) -> None:
        """Negotiate over camtrack's /ws."""
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url)
        while (await self._ws.receive_json()).get("type") != "hello":
            pass
        await self._ws.send_json({"type": "offer", "sdp": await self.offer()})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), 20)
            if message.get("type") == "answer":
                break
            if message.get("type") == "error":
                raise RuntimeError(message.get("message"))
        self.answer_sdp = message["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
        self._tasks.append(asyncio.ensure_future(self._read_socket()))

    async def _read_socket(self) -> None:
        """Read (and drop) what the server sends, so that its pings are answered."""
        assert self._ws is not None
        async for _ in self._ws:
            pass

    async def connect_whep(self, whep_url: str) -> None:
        """Negotiate with WHEP (one POST)."""
        self._session = aiohttp.ClientSession()
        sdp = await self.offer()
        async with self._session.post(whep_url, data=sdp, headers={"Content-Type": "application/sdp"}) as response:
            assert response.status == 201, await response.text()
            self.answer_sdp = await response.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))

    def loud(self, threshold: float = 0.05) -> int:
        """Audio frames received with sound in them."""
        return sum(frame_rms(frame) > threshold for _, frame in self.audio)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
