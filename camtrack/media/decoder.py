"""Pixels from a packet feed, only while someone needs them (MJPEG, snapshots of a camera whose
H.264 is passed through): a stage that decodes on a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

import av
import cv2

from .feeds import FeedClosed, PacketFeed
from .frame import Frame
from .packet import EncodedPacket
from .ring import Read
from .sizes import MAX_PIXELS
from .stage import Stage

logger = logging.getLogger(__name__)


#: packets decoded in one go at most (a decoder far behind catches up in steps, between pictures)
MAX_BATCH = 60


class DecoderClosed(FeedClosed):
    """The decoder stopped while a reader waited for a picture."""


class PacketDecoder(Stage[PacketFeed, Frame]):
    """Decodes a packet feed into frames (a frame feed), attached to it only while it has readers.

    It starts at the feed's newest keyframe (decoding the packets since then at once, so the first
    picture is the newest one) and decodes every packet after it, in order; a decoder that fell
    behind further than the feed holds starts again at a keyframe.
    """

    def __init__(self, input: PacketFeed, name: str) -> None:
        super().__init__(input, f"decoder {name}", lambda: DecoderClosed(name))
        self.frames = 0
        self._seq = 0

    async def next_frame(self, after: int = 0) -> Frame:
        """The newest picture above number `after`, waiting for one if needed."""
        return (await self.next(after, newest=True)).item

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        codec = av.CodecContext.create(self.input.codec.codec, "r")
        codec.thread_type = "SLICE"  # frame threads would hold pictures back, one per thread
        # FFmpeg's own bound: a picture larger than a camera may send is refused, not allocated
        # (a parameter set the source did not check, or one that disagrees with it)
        codec.options = {"max_pixels": str(MAX_PIXELS)}
        start = self.input.start_packets()
        after = start[-1].seq if start else 0
        pending = list(start)
        synced = bool(start)
        while True:
            if pending:
                packets, pending = pending, []
            else:
                # the next packet, and every one already there after it: decoded in one go, and
                # only the last picture converted (MJPEG wants the newest, never a backlog)
                packets = []
                while not packets or (self.input.latest is not None and self.input.latest.seq > after):
                    read: Read[EncodedPacket] = await self.input.next_packet(after)
                    after = read.item.seq
                    if read.skipped:
                        # what was missed is needed to decode what follows: start again at the
                        # feed's newest keyframe
                        packets, synced = self.input.start_packets(), True
                        if not packets:
                            packets, synced = [read.item], False
                        after = packets[-1].seq
                        break
                    packets.append(read.item)
                    if len(packets) >= MAX_BATCH:
                        break
            after = packets[-1].seq
            if not synced:
                packets = packets[next((i for i, p in enumerate(packets) if p.keyframe), len(packets)):]
                if not packets:
                    continue
                synced = True
            frame, decoded = await loop.run_in_executor(executor, self._decode, codec, packets)
            self.frames += decoded  # counted here, on the loop: the thread may outlive the stage
            if frame is not None:
                self._seq += 1
                self._publish(Frame(self._seq, *frame))

    def _decode(self, codec: Any, packets: list[EncodedPacket]) -> tuple[tuple[Any, Any, float, float] | None, int]:
        """Runs on the decoder's thread: the last picture of `packets`, as BGR and I420, and how
        many pictures were decoded."""
        picture, count = None, 0
        for encoded in packets:
            try:
                for decoded in codec.decode(av.Packet(bytes(encoded.packet))):
                    picture = decoded
                    count += 1
            except av.FFmpegError as exc:
                logger.debug("%s: %s", self.name, exc)
        if picture is None:
            return None, count
        bgr = picture.to_ndarray(format="bgr24")
        return (bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), packets[-1].captured, time.monotonic()), count
