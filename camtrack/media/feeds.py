"""The contracts between stages and outputs: where pictures come from, a feed of frames, a feed of
packets, and a viewer. Every source, stage and way out implements one of these, so they stack
without knowing each other (stream → encoders, JPEG, processing → WebRTC, MJPEG, Janus)."""

from __future__ import annotations

import enum
from typing import Protocol

import numpy as np

from .frame import Frame
from .packet import CodecInfo, EncodedPacket
from .ring import Read


class FeedClosed(Exception):
    """A feed closed (its run ended) while a reader waited for its next item."""


class Transport(enum.StrEnum):
    """The ways a viewer watches (and the Janus publisher, which is one upstream viewer).

    A string enum: a member is equal to (and hashes as) its value, so JSON and metric labels
    take it as it is."""

    #: WebRTC negotiated over `/ws`
    WEBSOCKET = "websocket"
    #: the packets themselves over `/ws` (the fallback when WebRTC cannot connect)
    WS_VIDEO = "ws-video"
    WHEP = "whep"
    MJPEG = "mjpeg"
    #: the packets as RTP from the RTSP server (camtrack.outputs.rtsp), TCP interleaved or UDP
    RTSP = "rtsp"
    JANUS = "janus"


#: the transports of viewers proper (the Janus publisher is counted apart)
VIEWER_TRANSPORTS = (Transport.WEBSOCKET, Transport.WS_VIDEO, Transport.WHEP, Transport.MJPEG, Transport.RTSP)


class SourceError(Exception):
    """A source cannot be opened or understood."""


class FrameSource(Protocol):
    """Where pictures come from: blocking and single-threaded, called only by the capture thread:
    `open()`, then `read()` BGR frames of a fixed size until it returns None, then `close()`."""

    description: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class Feed(Protocol):
    """Something readers attach to (a stage, a track, a client: anything, compared by identity);
    it runs, and runs its inputs, only while it has any."""

    name: str

    def attach(self, reader: object) -> None: ...

    def detach(self, reader: object) -> None: ...


class FrameFeed(Feed, Protocol):
    """A feed of pictures (a camera stream, a processing stage)."""

    async def next_frame(self, after: int = 0) -> Frame: ...


class PacketFeed(Feed, Protocol):
    """A feed of encoded pictures (a shared encoder; later a camera's own H.264)."""

    @property
    def codec(self) -> CodecInfo: ...

    @property
    def makes_keyframes(self) -> bool:
        """Whether `request_keyframe()` makes one (an encoder) or is only counted (a camera's own
        packets, whose keyframes come when the camera sends them)."""

    @property
    def latest(self) -> EncodedPacket | None:
        """The newest packet, while the feed runs."""

    def start_packets(self) -> list[EncodedPacket]: ...

    def request_keyframe(self) -> None: ...

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]: ...


class Viewer(Protocol):
    """One viewer, whichever way it watches: shutdown, limits and metrics see only this."""

    @property
    def transport(self) -> Transport: ...

    @property
    def remote(self) -> str: ...

    @property
    def reason(self) -> str | None:
        """Why it ended, once it has."""

    def end(self, reason: str) -> None:
        """Hang up (once; safe from any callback); `closed()` waits until it is done."""

    async def closed(self) -> None: ...


class BackgroundOutput(Protocol):
    """Something that runs beside a camera's viewers for as long as the server runs (the Janus
    publisher today; a recorder, motion detection next): started once, stopped at shutdown, and
    described (a JSON object: /healthz shows it; its `state`, and its counters, say how it does)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, object]: ...
