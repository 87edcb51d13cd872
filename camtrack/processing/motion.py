"""Motion detection: a small, cheap detector on a down-scaled grey copy of each frame.

Each frame is shrunk to `width` pixels wide (160 by default), made grey and blurred, and compared
with a running average of the previous ones (the background): pixels that differ by more than
`threshold` grey levels moved. What it gives, for every frame (`MotionDetector.detect`):

    {"level": 0.0123, "regions": [[x, y, w, h], ...]}

- `level`: the share of the picture that moved, 0..1 (rounded to 4 places; 0 on the first frame);
- `regions`: boxes around the moving areas (neighbouring moving pixels joined), in pixels of the
  full frame, the largest first, at most `max_regions`, none smaller than `min_area` of the picture.

As a processing function (`--motion`, or `MotionDetector()` called with `(frame, info)`) it returns
`{"motion": {...}}` as data and draws nothing. This output is what motion events (issue 22) read:
its keys and meaning stay as documented here.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .contract import FrameInfo


class MotionDetector:
    """Frame against a running average, on a `width`-pixel-wide grey copy (see the module's docstring).
    One detector per camera: it keeps that camera's background."""

    def __init__(self, width: int = 160, threshold: int = 25, alpha: float = 0.2, min_area: float = 0.0005,
                 max_regions: int = 16) -> None:
        if not (16 <= width <= 1920 and 1 <= threshold <= 255 and 0 < alpha <= 1 and 0 <= min_area < 1
                and max_regions >= 0):
            raise ValueError("MotionDetector: width 16..1920, threshold 1..255, alpha in (0, 1], min_area in "
                             "[0, 1), max_regions >= 0")
        self.width = width
        self.threshold = threshold
        self.alpha = alpha
        self.min_area = min_area
        self.max_regions = max_regions
        self._background: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._kernel = np.ones((3, 3), np.uint8)

    def reset(self) -> None:
        """Forget the background (the next frame starts a new one)."""
        self._background = None

    def _small(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        small_w = min(self.width, width)
        small_h = max(1, round(height * small_w / width))
        small = cv2.resize(frame, (small_w, small_h), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return cv2.GaussianBlur(grey, (5, 5), 0)

    def detect(self, frame: np.ndarray) -> dict[str, Any]:
        """The motion in `frame` (BGR or grey) against the frames before it: {"level", "regions"}."""
        grey = self._small(frame)
        if self._background is None or self._shape != frame.shape:
            self._background, self._shape = grey.astype(np.float32), frame.shape
            return {"level": 0.0, "regions": []}
        background = self._background
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(background))
        _, moving = cv2.threshold(diff, self.threshold, 255, cv2.THRESH_BINARY)
        cv2.accumulateWeighted(grey, background, self.alpha)
        level = cv2.countNonZero(moving) / moving.size
        return {"level": round(level, 4), "regions": self._regions(moving, frame.shape) if level else []}

    def _regions(self, moving: np.ndarray, shape: tuple[int, ...]) -> list[list[int]]:
        if not self.max_regions:
            return []
        joined = cv2.dilate(moving, self._kernel, iterations=2)
        count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        small_h, small_w = moving.shape
        height, width = shape[:2]
        sx, sy = width / small_w, height / small_h
        least = self.min_area * small_w * small_h
        found = sorted((stats[i] for i in range(1, count) if stats[i][cv2.CC_STAT_AREA] >= least),
                       key=lambda s: -int(s[cv2.CC_STAT_AREA]))
        regions = []
        for x, y, w, h, _area in found[: self.max_regions]:
            left, top = int(x * sx), int(y * sy)
            right, bottom = min(width, math.ceil((x + w) * sx)), min(height, math.ceil((y + h) * sy))
            regions.append([left, top, right - left, bottom - top])
        return regions

    def __call__(self, frame: np.ndarray, info: FrameInfo | None = None) -> dict[str, Any]:
        return {"motion": self.detect(frame)}
