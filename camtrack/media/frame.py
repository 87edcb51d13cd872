"""A captured picture, and the presentation clock every encoder stamps it with."""

from __future__ import annotations

import fractions
from dataclasses import dataclass

import numpy as np

#: the 90 kHz clock of video RTP: every pts camtrack writes counts in it
VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


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


class PtsClock:
    """Presentation timestamps from capture times: 90 kHz from the first frame, always growing
    (two frames captured within one tick still get different stamps)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._last = -1

    def pts(self, monotonic: float) -> int:
        if self._start is None:
            self._start = monotonic
        pts = max(self._last + 1, round((monotonic - self._start) * VIDEO_CLOCK_RATE))
        self._last = pts
        return pts
