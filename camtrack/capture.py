"""The capture thread: reads a source off the event loop and keeps only the latest frame."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .sources import FrameSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One captured picture: BGR and I420 pixels, its number and when it was taken."""

    seq: int
    bgr: np.ndarray
    #: the same picture as I420 (yuv420p), converted once for every encoder
    yuv: np.ndarray
    #: capture time, seconds since the epoch
    time: float
    #: capture time on the monotonic clock (for presentation timestamps)
    monotonic: float

    @property
    def width(self) -> int:
        return self.bgr.shape[1]

    @property
    def height(self) -> int:
        return self.bgr.shape[0]


class Capture:
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
    ) -> None:
        self.source = source
        self.on_frame = on_frame
        self.on_state = on_state or (lambda state: None)
        self.retry_max = retry_max
        self.opens = 0
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

    def _run(self) -> None:
        seq = 0
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.source.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                if self.state != "retrying":
                    logger.warning("%s: %s; retrying", self.source.description, exc)
                self._set_state("retrying")
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self.opens += 1
            logger.info("%s opened", self.source.description)
            self._set_state("up")
            try:
                while not self._stop.is_set():
                    image = self.source.read()
                    if image is None:
                        logger.warning("%s stopped giving frames; reopening", self.source.description)
                        self._set_state("retrying")
                        break
                    delay = 0.5
                    seq += 1
                    now, mono = time.time(), time.monotonic()
                    yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
                    self.on_frame(Frame(seq, image, yuv, now, mono))
            except Exception:  # noqa: BLE001
                logger.exception("%s failed; reopening", self.source.description)
                self._set_state("retrying")
            finally:
                self.source.close()
            if not self._stop.is_set():
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max)
        logger.info("%s released", self.source.description)
        self._set_state("idle")
