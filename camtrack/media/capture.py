"""The capture thread: reads a source off the event loop and hands on each frame as it comes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from . import stamp
from .feeds import FrameSource
from .frame import Frame

logger = logging.getLogger(__name__)

#: seconds between "no signal" pictures while a source is retrying
NO_SIGNAL_INTERVAL = 0.2


def no_signal_image(width: int, height: int, description: str) -> np.ndarray:
    """A dark picture saying the source is gone, with the time and a latency stamp."""
    image = np.full((height, width, 3), 40, np.uint8)
    scale = max(0.5, height / 320)
    lines = ["NO SIGNAL", description[:60], time.strftime("%H:%M:%S")]
    y = height // 2 - int(40 * scale)
    for i, line in enumerate(lines):
        size = scale * (1.6 if i == 0 else 0.6)
        (w, h), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, size, 2)
        cv2.putText(image, line, ((width - w) // 2, y), cv2.FONT_HERSHEY_SIMPLEX, size, (230, 230, 230), 2, cv2.LINE_AA)
        y += h + int(20 * scale)
    stamp.write_stamp(image, stamp.now_ms())
    return image


class CaptureThread:
    """A thread that opens a source, reads it and hands each new frame to `on_frame`.

    It retries with back-off when the source fails to open or stops giving frames,
    and logs each change of state once.
    """

    def __init__(
        self,
        source: FrameSource,
        on_frame: Callable[[Frame], None],
        on_state: Callable[[str], None] | None = None,
        retry_max: float = 10.0,
        previous: CaptureThread | None = None,
    ) -> None:
        self.source = source
        self.on_frame = on_frame
        self.on_state = on_state or (lambda state: None)
        self.retry_max = retry_max
        #: a capture of the same device still letting go of it: opened only after it has
        self.previous = previous
        #: times the device was opened (again after each failure)
        self.source_opens = 0
        self.state = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture {source.description}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; `join()` waits for it."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state)

    def _emit(self, seq: int, image: np.ndarray) -> None:
        now, mono = time.time(), time.monotonic()
        yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        self.on_frame(Frame(seq, image, yuv, now, mono))

    def _no_signal(self, seq: int, seconds: float) -> int:
        """Wait `seconds` (or until stopped), showing viewers a "no signal" picture meanwhile."""
        width, height = getattr(self.source, "width", 0), getattr(self.source, "height", 0)
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            if width and height:
                seq += 1
                self._emit(seq, no_signal_image(width, height, self.source.description))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._stop.wait(min(NO_SIGNAL_INTERVAL, left))
        return seq

    def _run(self) -> None:
        previous, self.previous = self.previous, None
        if previous is not None:
            previous.join()
        seq = 0
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.source.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                if self.state != "retrying":
                    logger.warning("%s: %s; retrying", self.source.description, exc)
                self._set_state("retrying")
                seq = self._no_signal(seq, delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self.source_opens += 1
            if self.state == "retrying":
                logger.debug("%s opened again", self.source.description)
            else:
                logger.info("%s opened", self.source.description)
            try:
                while not self._stop.is_set():
                    image = self.source.read()
                    if image is None:
                        # said once per outage: a source that opens but gives nothing stays quiet
                        if self.state == "up":
                            logger.warning("%s stopped giving frames; reopening", self.source.description)
                        self._set_state("retrying")
                        break
                    if self.state == "retrying":
                        logger.info("%s is back", self.source.description)
                    self._set_state("up")
                    delay = 0.5
                    seq += 1
                    self._emit(seq, image)
            except Exception:  # noqa: BLE001
                if self.state == "up":
                    logger.exception("%s failed; reopening", self.source.description)
                self._set_state("retrying")
            finally:
                self.source.close()
            if not self._stop.is_set():
                seq = self._no_signal(seq, delay)
                delay = min(delay * 2, self.retry_max)
        logger.info("%s released", self.source.description)
        self._set_state("idle")
