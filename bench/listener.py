"""An aiortc viewer that asks for video and audio (over /ws or WHEP) and keeps what it decodes:
the test of camtrack's sound (tests/test_audio_webrtc.py) and its benchmark (bench/audio.py)."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpSrPacket
from av import AudioFrame, VideoFrame

#: seconds from the NTP epoch (1900) to the Unix epoch
NTP_UNIX = 2208988800


class _SameTimestamps:
    """In place of aiortc's TimestampMapper: a frame's pts is its RTP timestamp, as sent."""

    def map(self, timestamp: int) -> int:
        return timestamp


def frame_rms(frame: AudioFrame) -> float:
    """The RMS of a decoded audio frame, samples scaled to -1..1."""
    samples = frame.to_ndarray().astype(np.float64)
    if frame.format.name.startswith("s16"):
        samples /= 32768
    return float(np.sqrt(np.mean(samples ** 2)))


class Listener:
    """A receive-only peer with a video and an audio m-line; its tracks drained into `video` and
    `audio` lists of (arrival time, frame) by tasks of its own."""

    def __init__(self, audio: bool = True, audio_codecs: tuple[str, ...] | None = None) -> None:
        """`audio_codecs`: the audio codecs its offer has (MIME types: "audio/PCMU", "audio/opus";
        None: aiortc's every one, Opus first)."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.with_audio = audio
        self.audio_codecs = audio_codecs
        #: the audio RTP packets received, as they came: (payload type, RTP timestamp, payload bytes)
        self.audio_payloads: list[tuple[int, int, bytes]] = []
        #: keep `audio_payloads` (a benchmark does not)
        self.keep_payloads = True
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
        #: the sender reports received, by kind: (NTP seconds since the epoch, RTP timestamp)
        self.reports: dict[str, list[tuple[float, int]]] = {"video": [], "audio": []}
        self.pc.on("track", self._on_track)

    def _watch_reports(self) -> None:
        """Keep each sender report (aiortc's receiver reads them, but tells no one)."""
        for transceiver in self.pc.getTransceivers():
            receiver, kind = transceiver.receiver, transceiver.kind
            handle = receiver._handle_rtcp_packet

            async def keep(packet: Any, handle: Any = handle, kind: str = kind) -> None:
                if isinstance(packet, RtcpSrPacket):
                    info = packet.sender_info
                    ntp = (info.ntp_timestamp >> 32) - NTP_UNIX + (info.ntp_timestamp & 0xFFFFFFFF) / 2**32
                    self.reports[kind].append((ntp, info.rtp_timestamp))
                await handle(packet)

            receiver._handle_rtcp_packet = keep  # type: ignore[method-assign]
            if kind == "audio":
                handle_rtp = receiver._handle_rtp_packet

                async def keep_rtp(packet: Any, arrival_time_ms: int, handle_rtp: Any = handle_rtp) -> None:
                    if self.keep_payloads:
                        self.audio_payloads.append((packet.payload_type, packet.timestamp, bytes(packet.payload)))
                    await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

                receiver._handle_rtp_packet = keep_rtp  # type: ignore[method-assign]
            # decoded frames keep their RTP timestamps (aiortc counts them from its first frame's,
            # which a sender report cannot map)
            receiver._RTCRtpReceiver__timestamp_mapper = _SameTimestamps()  # type: ignore[attr-defined]

    def sent_at(self, kind: str, rtp_timestamp: int, clock_rate: int) -> float | None:
        """The sender's NTP time (seconds since the epoch) of `rtp_timestamp`, from the newest sender
        report of that stream (how a receiver lines streams up); None before any."""
        if not self.reports[kind]:
            return None
        ntp, rtp = self.reports[kind][-1]
        delta = ((rtp_timestamp - rtp + 2**31) % 2**32) - 2**31
        return ntp + delta / clock_rate

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
            transceiver = self.pc.addTransceiver("audio", direction="recvonly")
            if self.audio_codecs is not None:
                wanted = [mime.lower() for mime in self.audio_codecs]
                codecs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() in wanted]
                transceiver.setCodecPreferences(sorted(codecs, key=lambda c: wanted.index(c.mimeType.lower())))
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
        self._watch_reports()
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
        self._watch_reports()

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


def onsets(times: list[tuple[float, bool]], gap: float = 0.5, seen_start: bool = False) -> list[float]:
    """The times where a run of true values starts (after at least `gap` s of false ones). With
    `seen_start`, only runs whose start was seen: a run the values begin in (a stream joined in the
    middle of a beep or a mark) has no onset, not one at its first value."""
    found: list[float] = []
    last_on: float | None = None
    previous = True  # (before the first value: unknown, taken as on)
    for at, on in sorted(times):
        if on:
            if (last_on is None or at - last_on > gap) and (not seen_start or not previous):
                found.append(at)
            last_on = at
        previous = on
    return found


def lip_sync(listener: Listener, threshold: float = 0.05) -> dict[str, Any]:
    """The test pattern's beeps against its picture's marks in what `listener` decoded, each on its
    sender's clock as its sender reports map it (what a browser lines up): for each beep, its onset
    minus the onset of the mark nearest to it (positive: the sound comes late), in ms."""
    from camtrack.sources.pattern import shows_mark

    video = [(at, shows_mark(frame.to_ndarray(format="bgr24"))) for _, frame in listener.video
             if frame.pts is not None and (at := listener.sent_at("video", frame.pts, 90000)) is not None]
    # (a frame's pts is on its RTP clock: 48 kHz for Opus, 8 kHz for G.711 passed through)
    audio = [(at, frame_rms(frame) > threshold) for _, frame in listener.audio
             if frame.pts is not None
             and (at := listener.sent_at("audio", frame.pts, frame.sample_rate or 48000)) is not None]
    # (a listener joins the pattern anywhere: a beep or a mark it joined in the middle of is left out,
    # else it reads as one starting at its first frame, up to 100 ms late: seen in a loaded run)
    marks, beeps = onsets(video, seen_start=True), onsets(audio, seen_start=True)
    offsets = []
    for beep in beeps:
        nearest = min(marks, key=lambda mark: abs(mark - beep), default=None)
        if nearest is not None and abs(nearest - beep) < 0.5:
            offsets.append((beep - nearest) * 1000)
    return {"marks": len(marks), "beeps": len(beeps), "offsets_ms": offsets,
            # (each on its own: how far past the whole second, where both start, its onset came)
            "mark_after_second_ms": [(m % 1.0) * 1000 for m in marks],
            "beep_after_second_ms": [(b % 1.0) * 1000 for b in beeps]}


def tone_frame_48k(start: int, samples: int = 960, loud: bool = True) -> AudioFrame:
    """20 ms of a 1 kHz tone (or silence) at 48 kHz, from sample `start`."""
    t = (start + np.arange(samples)) / 48000
    wave = (np.sin(2 * np.pi * 1000 * t) * 0.5 * 32767 * loud).astype(np.int16)
    frame = AudioFrame.from_ndarray(wave[None, :], format="s16", layout="mono")
    frame.sample_rate = 48000
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


class ToneTrack:
    """A viewer's microphone: silence, then (once `loud` is set) a 1 kHz tone, 20 ms frames in real time."""

    def __new__(cls):  # (an aiortc AudioStreamTrack subclass, made when first needed)
        from aiortc.mediastreams import AudioStreamTrack

        class _Tone(AudioStreamTrack):
            def __init__(self) -> None:
                super().__init__()
                self.loud_at: float | None = None
                self.samples = 0
                self.began: float | None = None

            async def recv(self):
                if self.began is None:
                    self.began = time.monotonic()
                wait = self.began + self.samples / 48000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                frame = tone_frame_48k(self.samples, loud=self.loud_at is not None and time.time() >= self.loud_at)
                frame.pts = self.samples
                self.samples += 960
                return frame

        return _Tone()


async def talker(url: str) -> tuple[object, object, object]:
    """A viewer over /ws whose offer sends its sound (a tone track): (session, ws, its tone track)."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url)
    while (await ws.receive_json())["type"] != "hello":
        pass
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    track = ToneTrack()
    pc.addTransceiver(track, direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
    answer = await reply(ws, "answer")
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return (session, ws, pc), ws, track


async def reply(ws, kind: str) -> dict:
    """The next message of `kind` (or an error)."""
    while True:
        message = await asyncio.wait_for(ws.receive_json(), 20)
        if message["type"] in (kind, "error"):
            return message


