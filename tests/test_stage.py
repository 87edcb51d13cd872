"""Stages: attached to their input with the first reader, stopped after the last; stacked."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time

import numpy as np

from camtrack.media.encoder import EncoderSettings, SharedEncoder
from camtrack.media.feeds import FeedClosed, FrameFeed
from camtrack.media.frame import Frame
from camtrack.media.ring import Ring
from camtrack.media.stage import Stage

from .conftest import eventually


class Closed(FeedClosed):
    pass


class Feed:
    """A frame feed the test drives: it publishes a frame whenever asked, while someone reads."""

    name = "test"

    def __init__(self) -> None:
        self.consumers: set[object] = set()
        self.attaches = 0
        self._ring: Ring[Frame] = Ring(1, Closed)
        self._seq = 0

    def attach(self, reader: object) -> None:
        self.attaches += 1
        self.consumers.add(reader)
        if not self._ring.open:
            self._ring.reopen()

    def detach(self, reader: object) -> None:
        self.consumers.discard(reader)
        if not self.consumers:
            self._ring.close()

    def publish(self, width: int = 64, height: int = 48) -> None:
        self._seq += 1
        bgr = np.full((height, width, 3), self._seq % 256, np.uint8)
        yuv = np.zeros((height * 3 // 2, width), np.uint8)
        self._ring.publish(Frame(self._seq, bgr, yuv, time.time(), time.monotonic()))

    async def next_frame(self, after: int = 0) -> Frame:
        return (await self._ring.next(after, newest=True)).item


class Brighten(Stage[FrameFeed, Frame]):
    """A processing stage: reads frames, makes frames (so it is a frame feed itself)."""

    def __init__(self, input: FrameFeed) -> None:
        super().__init__(input, "brighten", Closed, ring_size=4)
        self.made = 0

    async def next_frame(self, after: int = 0) -> Frame:
        return (await self.next(after, newest=True)).item

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        after = 0
        while True:
            frame = await self.input.next_frame(after)
            after = frame.seq
            self.made += 1
            self._publish(dataclasses.replace(frame, bgr=frame.bgr + 1))


async def test_a_stage_attaches_with_its_first_reader_and_stops_after_its_last() -> None:
    feed = Feed()
    stage = Brighten(feed)
    assert not stage.running and not feed.consumers
    first, second = object(), object()
    stage.attach(first)
    stage.attach(second)
    assert stage.running and feed.consumers == {stage} and feed.attaches == 1  # once, not per reader
    feed.publish()
    frame = await asyncio.wait_for(stage.next_frame(0), 5)
    assert int(frame.bgr[0, 0, 0]) == 2  # made by the stage from the feed's frame 1
    stage.detach(first)
    assert stage.running and feed.consumers == {stage}
    stage.detach(second)
    await eventually(lambda: not stage.running and not feed.consumers, timeout=5)
    # a reader waiting on a stopped stage is told so, not left waiting
    try:
        await asyncio.wait_for(stage.next_frame(frame.seq), 5)
    except FeedClosed:
        pass
    else:
        raise AssertionError("a stopped stage handed out a frame")
    stage.attach(first)  # and it starts again with a new first reader
    assert stage.running and feed.attaches == 2
    await stage.close()


async def test_stages_stack_and_an_in_order_reader_gets_every_item() -> None:
    feed = Feed()
    processing = Brighten(feed)
    encoder = SharedEncoder(processing, EncoderSettings(codec="h264", width=64, height=48, fps=30))
    reader = object()
    encoder.attach(reader)
    # the encoder reads the processing stage, which reads the feed: each attached once
    assert processing.consumers == {encoder} and feed.consumers == {processing}

    async def feed_frames() -> None:
        while True:
            feed.publish()
            await asyncio.sleep(1 / 30)

    feeding = asyncio.ensure_future(feed_frames())
    try:
        first = await asyncio.wait_for(encoder.next_in_order(0), 10)
        assert first.codec.codec == "h264" and first.codec.profile_level_id == "42e01f"
        numbers = [first.seq]
        for _ in range(5):
            numbers.append((await asyncio.wait_for(encoder.next_in_order(numbers[-1]), 10)).seq)
        assert numbers == list(range(numbers[0], numbers[0] + 6))  # every one, in order
    finally:
        feeding.cancel()
    encoder.detach(reader)
    await eventually(lambda: not encoder.running and not processing.running and not feed.consumers, timeout=5)
    assert processing.made > 0
