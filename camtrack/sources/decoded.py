"""Pictures decoded from a camera's own encoded stream, for the shared encoder when its packets
cannot go to viewers as they are (B-frames, H.265, MJPEG, or `--mode transcode`).

Why not OpenCV's reader for these: it adds FFmpeg's parser delay and buffering (a frame interval
or more) on top of decoding; reading the packets with camtrack's own RTSP reader (or PyAV) and
decoding them here keeps a transcoded camera within a few milliseconds of a passed-through one.
Decoding runs on the capture thread, never on the event loop.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import av
import cv2
import numpy as np

from ..media.packet import CodecInfo
from ..media.passthrough import SourcePacket
from ..media.sizes import MAX_PIXELS

logger = logging.getLogger(__name__)


class DecodablePackets(Protocol):
    """A packet source (`camtrack.media.passthrough.PacketSource`) that says what a decoder needs."""

    description: str

    @property
    def codec(self) -> CodecInfo: ...

    @property
    def extradata(self) -> bytes | None: ...

    def open(self) -> None: ...

    def read(self) -> SourcePacket | None: ...

    def close(self) -> None: ...


class DecodedSource:
    """A `FrameSource` of the pictures a packet source carries, decoded as they come, at the
    configured size."""

    def __init__(self, packets: DecodablePackets, width: int, height: int) -> None:
        self.packets = packets
        self.width, self.height = width, height
        self.description = packets.description
        self._decoder: Any = None
        self.errors = 0

    def open(self) -> None:
        self.packets.open()
        try:
            decoder = av.CodecContext.create(self.packets.codec.codec, "r")
            extradata = self.packets.extradata
            if extradata:
                decoder.extradata = extradata
            # slice threads only: frame threads would hold each picture back by one per thread
            decoder.thread_type = "SLICE"
            decoder.options = {"max_pixels": str(MAX_PIXELS)}  # FFmpeg's own bound (camtrack.media.sizes)
        except BaseException:
            self.packets.close()
            raise
        self._decoder = decoder

    def read(self) -> np.ndarray | None:
        decoder = self._decoder
        if decoder is None:
            return None
        while True:
            packet = self.packets.read()
            if packet is None:
                return None
            try:
                frames = decoder.decode(av.Packet(packet.data))
            except av.error.FFmpegError as exc:
                # a damaged picture: the next keyframe repairs what follows it
                self.errors += 1
                logger.debug("%s: cannot decode a packet (%s)", self.description, exc)
                continue
            if not frames:
                continue  # a decoder holding pictures back for reordering (B-frames)
            image: np.ndarray = frames[-1].to_ndarray(format="bgr24")
            if image.shape[1] != self.width or image.shape[0] != self.height:
                image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
            return image

    def close(self) -> None:
        self._decoder = None
        self.packets.close()

    def interrupt(self) -> None:
        """End a wait for packets (from any thread): the capture's stall watch calls it."""
        interrupt = getattr(self.packets, "interrupt", None)
        if interrupt is not None:
            interrupt()

    @property
    def end_reason(self) -> str | None:
        """Why the packets ended, if their source says."""
        reason = getattr(self.packets, "end_reason", None)
        return reason if isinstance(reason, str) else None
