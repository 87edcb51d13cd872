"""JPEG encoders: a camera's pictures as JPEG, one encoder per quality, for MJPEG and snapshots."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import cv2

from .feeds import FrameFeed
from .ring import Read
from .stage import Stage
from .stream import StreamClosed


@dataclass(frozen=True)
class Jpeg:
    seq: int
    data: bytes
    #: capture time of the picture, seconds since the epoch
    captured: float


class JpegEncoder(Stage[FrameFeed, Jpeg]):
    """Encodes a frame feed's pictures as JPEG at one quality, at most `max_fps` a second."""

    def __init__(self, input: FrameFeed, quality: int, max_fps: float) -> None:
        super().__init__(input, f"jpeg {input.name}", lambda: StreamClosed(input.name))
        self.quality = quality
        self.interval = 1.0 / max_fps
        self.encoded = 0
        self._seq = 0

    async def next_jpeg(self, after: int = 0) -> Read[Jpeg]:
        """The newest JPEG above sequence number `after`, waiting for one if needed."""
        return await self.next(after, newest=True)

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        after = 0
        last = 0.0
        while True:
            frame = await self.input.next_frame(after)
            after = frame.seq
            wait = last + self.interval - time.monotonic()
            if wait > 0:  # over the rate cap: wait, then take whatever is newest
                await asyncio.sleep(wait)
                frame = await self.input.next_frame(0)
                after = frame.seq
            last = time.monotonic()
            ok, data = await loop.run_in_executor(executor, cv2.imencode, ".jpg", frame.bgr, params)
            if not ok:
                continue
            self._seq += 1
            self.encoded += 1
            self._publish(Jpeg(self._seq, data.tobytes(), frame.time))


class JpegEncoders(Mapping[int, JpegEncoder]):
    """A feed's JPEG encoders by quality, made on first use (one encode per frame and quality)."""

    def __init__(self, input: FrameFeed, max_fps: float) -> None:
        self.input = input
        self.max_fps = max_fps
        self._by_quality: dict[int, JpegEncoder] = {}

    def at(self, quality: int) -> JpegEncoder:
        encoder = self._by_quality.get(quality)
        if encoder is None:
            encoder = self._by_quality[quality] = JpegEncoder(self.input, quality, self.max_fps)
        return encoder

    def __getitem__(self, quality: int) -> JpegEncoder:
        return self._by_quality[quality]

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._by_quality))

    def __len__(self) -> int:
        return len(self._by_quality)

    @property
    def encoded(self) -> int:
        """JPEGs made, over every quality."""
        return sum(e.encoded for e in self._by_quality.values())

    async def close(self) -> None:
        for encoder in list(self._by_quality.values()):
            await encoder.close()
