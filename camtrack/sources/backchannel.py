"""Talking to a camera: its RTSP back-channel (ONVIF Profile T, the two-way audio cameras implement).

`BackChannel` opens a session of its own on the camera (camtrack's RTSP connection: Basic and Digest),
asks for the back-channel (`Require: www.onvif.org/ver20/backchannel` on DESCRIBE, SETUP and PLAY),
sets up the audio stream the camera marks `a=sendonly` (what it takes from the client), and sends it
sound as RTP interleaved in the RTSP connection: G.711 µ-law or A-law at 8 kHz, 20 ms a packet,
encoded here from 48 kHz PCM. Blocking: called on a thread of its own, never on the event loop.

The building block of push-to-talk (docs/audio.md: the page's button and the WebRTC side are not
done yet).
"""

from __future__ import annotations

import random
import re
import struct
import time
from dataclasses import dataclass

import av
import numpy as np

from .rtsp import RtspConnection, RtspUnsupported, _resolve

#: what asks an ONVIF camera for its back-channel
REQUIRE = {"Require": "www.onvif.org/ver20/backchannel"}
#: the codecs camtrack sends back, by their RTP names, with their static payload types and encoders
CODECS = {"PCMU": (0, "pcm_mulaw"), "PCMA": (8, "pcm_alaw")}
#: samples (8 kHz) in one packet: 20 ms
PACKET_SAMPLES = 160


@dataclass(frozen=True)
class BackChannelTrack:
    """The camera's back-channel stream as its SDP describes it."""

    control: str
    payload_type: int
    codec: str
    clock_rate: int


def find_backchannel(sdp: str, base: str) -> BackChannelTrack:
    """The first `a=sendonly` audio stream of `sdp` in a codec camtrack sends (RtspUnsupported if none)."""
    found = []
    for block in re.split(r"\r?\n(?=m=)", sdp):
        if not block.startswith("m=audio") or not re.search(r"^a=sendonly\s*$", block, re.M):
            continue
        control = re.search(r"^a=control:(\S+)", block, re.M)
        for payload, name, rate in re.findall(r"^a=rtpmap:(\d+) ([\w-]+)/(\d+)", block, re.M):
            found.append(name)
            if name.upper() in CODECS and control is not None:
                return BackChannelTrack(_resolve(base, control.group(1)), int(payload), name.upper(), int(rate))
        if not re.search(r"^a=rtpmap:", block, re.M):  # static payload types without rtpmap
            formats = block.split("\n", 1)[0].split()[3:]
            for name, (payload, _) in CODECS.items():
                if str(payload) in formats and control is not None:
                    return BackChannelTrack(_resolve(base, control.group(1)), payload, name, 8000)
    if found:
        raise RtspUnsupported(f"the camera's back-channel takes {', '.join(found)}; camtrack sends PCMU or PCMA")
    raise RtspUnsupported("the camera has no back-channel (no sendonly audio stream when asked with "
                          "Require: www.onvif.org/ver20/backchannel)")


class BackChannel:
    """One talk session to a camera's back-channel: `open()`, `send(pcm)` as the sound comes,
    `close()`."""

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0) -> None:
        self.connection = RtspConnection(url, open_timeout=open_timeout, read_timeout=read_timeout)
        self.track: BackChannelTrack | None = None
        self._channel = 0
        self._sequence = random.randrange(1 << 16)
        self._timestamp = random.randrange(1 << 32)
        self._ssrc = random.randrange(1 << 32)
        self._encoder: av.AudioCodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        self._pending = np.zeros(0, np.int16)
        self._first = True
        #: packets sent
        self.packets = 0
        self._keepalive_at = 0.0

    def open(self) -> None:
        """Set up and play the back-channel (RtspError, RtspUnsupported when the camera has none)."""
        connection = self.connection
        connection.connect()
        described = connection.request("DESCRIBE", connection.url, {"Accept": "application/sdp", **REQUIRE})
        base = described.header("content-base") or described.header("content-location") or connection.url
        track = find_backchannel(described.body.decode("utf-8", "replace"), base)
        setup = connection.request("SETUP", track.control,
                                   {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1", **REQUIRE})
        connection.keep_session(setup)
        interleaved = re.search(r"interleaved\s*=\s*(\d+)", setup.header("transport"))
        self._channel = int(interleaved.group(1)) if interleaved else 0
        connection.request("PLAY", base, {"Range": "npt=0.000-", **REQUIRE})
        self.track = track
        encoder = av.CodecContext.create(CODECS[track.codec][1], "w")
        assert isinstance(encoder, av.AudioCodecContext)
        encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
        encoder.open()
        self._encoder = encoder
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
        self._keepalive_at = time.monotonic() + connection.session_timeout / 2

    def send(self, frame: av.AudioFrame) -> None:
        """Sound (any rate and layout PyAV resamples) to the camera: encoded, 20 ms a packet."""
        assert self._resampler is not None and self._encoder is not None and self.track is not None
        for resampled in self._resampler.resample(frame):
            self._pending = np.concatenate([self._pending, resampled.to_ndarray().reshape(-1).astype(np.int16)])
        while len(self._pending) >= PACKET_SAMPLES:
            chunk, self._pending = self._pending[:PACKET_SAMPLES], self._pending[PACKET_SAMPLES:]
            pcm = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            pcm.sample_rate = 8000
            payload = b"".join(bytes(p) for p in self._encoder.encode(pcm))
            self._send_rtp(payload)
        if time.monotonic() > self._keepalive_at:  # the session stays alive while we talk
            self.connection.send_only("GET_PARAMETER", self.connection.url)
            self._keepalive_at = time.monotonic() + self.connection.session_timeout / 2

    def _send_rtp(self, payload: bytes) -> None:
        assert self.track is not None
        header = struct.pack("!BBHII", 0x80, (0x80 if self._first else 0) | self.track.payload_type,
                             self._sequence, self._timestamp, self._ssrc)
        self._first = False
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + PACKET_SAMPLES) & 0xFFFFFFFF
        packet = header + payload
        self.connection.send_interleaved(self._channel, packet)
        self.packets += 1

    def close(self) -> None:
        try:
            if self.connection.session:
                self.connection.send_only("TEARDOWN", self.connection.url)
        except OSError:
            pass
        self.connection.close()
