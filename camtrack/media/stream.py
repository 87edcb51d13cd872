"""A camera stream: one source shared by its consumers, open only while someone watches."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from .capture import CaptureThread, Failures
from .feeds import FeedClosed, FrameSource
from .frame import Frame
from .lingering import Lingering
from .ring import Ring

logger = logging.getLogger(__name__)


class StreamClosed(FeedClosed):
    """The stream was closed while a consumer waited for a frame."""


class CameraStream(Lingering):
    """Opens its source when the first consumer attaches and releases it `linger`
    seconds after the last one detaches. Knows nothing of the protocols that read it."""

    def __init__(self, name: str, source_factory: Callable[[], FrameSource], linger: float = 3.0,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(linger)
        self.name = name
        self.source_factory = source_factory
        #: applied on the capture thread to every picture before its I420 and before it is published
        #: (privacy masks: camtrack.processing.masks), so no reader ever sees what it takes out
        self.prepare = prepare
        #: how many times the stream started (opened its source for a first viewer after none)
        self.runs = 0
        #: only the newest frame matters to every reader of pixels: a ring of one
        self._ring: Ring[Frame] = Ring(1, lambda: StreamClosed(name))
        self._seq = 0
        #: captures told to stop whose threads may still be letting go of the device
        self._released: list[CaptureThread] = []
        self._capture: CaptureThread | None = None
        #: the source's failures over the stream's life (made with its first capture)
        self.failures: Failures | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def frames(self) -> int:
        """Frames captured over the stream's life."""
        return self._seq

    @property
    def running(self) -> bool:
        """True while a capture thread is open or still shutting down."""
        return self._capture is not None or any(c.alive for c in self._released)

    @property
    def error(self) -> str | None:
        """The reason of the source's last failure (None before any)."""
        return self.failures.reason if self.failures is not None else None

    @property
    def state(self) -> str:
        """`idle` (closed), `starting`, `up` (giving frames), `retrying` (the source is failing) or
        `stalled` (it stayed connected but gave no picture for a while: being reopened)."""
        return "idle" if self._capture is None else self._capture.state

    @property
    def is_open(self) -> bool:
        return self._capture is not None

    @property
    def latest(self) -> Frame | None:
        """The newest frame, if the stream is open."""
        return self._ring.newest

    async def next_frame(self, after: int = 0) -> Frame:
        """The latest frame newer than sequence number `after`, waiting for one if needed."""
        return (await self._ring.next(after, newest=True)).item

    async def close(self) -> None:
        """Release the source now and wait for the capture thread to end."""
        self.consumers.clear()
        self._cancel_release()
        self._release()
        await asyncio.gather(*(_joined(c) for c in self._released))

    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ring.reopen()
        previous = next((c for c in reversed(self._released) if c.alive), None)
        source = self.source_factory()
        if self.failures is None:
            self.failures = Failures(source.description)
        capture = CaptureThread(source, lambda frame: self._from_thread(capture, frame), previous=previous,
                                failures=self.failures, prepare=self.prepare)
        self._capture = capture
        self.runs += 1
        logger.info("stream %s: opening %s", self.name, capture.source.description)
        capture.start()

    def _release(self) -> None:
        self._release_timer = None
        capture, self._capture = self._capture, None
        if capture is None:
            return
        logger.info("stream %s: no viewers, releasing %s", self.name, capture.source.description)
        capture.stop()
        self._released = [c for c in self._released if c.alive] + [capture]
        self._ring.close()

    def _from_thread(self, capture: CaptureThread, frame: Frame) -> None:
        """Called on the capture thread for every new frame."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._publish, capture, frame)
            except RuntimeError:  # loop closed in between
                pass

    def _publish(self, capture: CaptureThread, frame: Frame) -> None:
        if capture is not self._capture:
            return  # a late frame from a capture being released
        # sequence numbers grow across reopenings, so a consumer never waits on an old number
        self._seq += 1
        self._ring.publish(dataclasses.replace(frame, seq=self._seq))


async def _joined(capture: CaptureThread) -> None:
    """Wait for a capture thread to end without tying up a worker thread."""
    while capture.alive:
        await asyncio.sleep(0.02)
