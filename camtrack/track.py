"""The aiortc video track that feeds a peer from a camera stream."""

from __future__ import annotations

from av import VideoFrame
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from .stream import CameraStream, StreamClosed


class CameraTrack(MediaStreamTrack):
    """A video track showing the latest frame of a camera stream.

    Each `recv()` returns a frame newer than the last one returned (never a repeat,
    never a backlog), stamped with a 90 kHz pts taken from its capture time.
    """

    kind = "video"

    def __init__(self, stream: CameraStream) -> None:
        super().__init__()
        self.stream = stream
        self._seq = 0
        self._start: float | None = None
        self._pts = -1
        stream.attach(self)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self.stream.next_frame(self._seq)
        except StreamClosed:
            self.stop()
            raise MediaStreamError from None
        if self.readyState != "live":
            raise MediaStreamError
        self._seq = frame.seq
        if self._start is None:
            self._start = frame.monotonic
        pts = int(round((frame.monotonic - self._start) * VIDEO_CLOCK_RATE))
        self._pts = max(pts, self._pts + 1)
        video_frame = VideoFrame.from_ndarray(frame.yuv, format="yuv420p")
        video_frame.pts = self._pts
        video_frame.time_base = VIDEO_TIME_BASE
        return video_frame

    def stop(self) -> None:
        if self.readyState == "live":
            self.stream.detach(self)
        super().stop()
