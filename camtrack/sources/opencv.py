"""Cameras, files and stream URLs read through OpenCV's VideoCapture."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import cv2
import numpy as np

from ..media.feeds import SourceError
from .pattern import Pacer
from .urls import redact

logger = logging.getLogger(__name__)


class OpenCvSource:
    """A camera, video file or stream URL read through `cv2.VideoCapture`."""

    def __init__(self, target: int | str, kind: str, width: int, height: int, fps: float) -> None:
        self.target, self.kind = target, kind
        self.width, self.height, self.fps = width, height, fps
        self.description = f"{kind} {redact(str(target))}"
        self.capture: cv2.VideoCapture | None = None
        self.pacer: Pacer | None = None

    def open(self) -> None:
        with quiet_opencv():
            capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.description}")
        if self.kind == "camera":
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            capture.set(cv2.CAP_PROP_FPS, self.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif self.kind == "file":
            file_fps = capture.get(cv2.CAP_PROP_FPS)
            self.pacer = Pacer(file_fps if 0 < file_fps <= 240 else self.fps)
        self.capture = capture

    def read(self) -> np.ndarray | None:
        if self.capture is None:
            return None
        if self.pacer is not None:
            self.pacer.wait()
        ok, image = self.capture.read()
        if not ok and self.kind == "file":
            # end of file: loop
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.capture.read()
        if not ok or image is None:
            return None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return image

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Hush OpenCV's own warnings (a missing camera is said once, in our log, instead)."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(level)
