"""Motion events from motion levels: a pure state machine fed (level, time) samples.

The built-in motion detector gives, per processed frame, `{"motion": {"level": 0..1, "regions":
[[x, y, w, h], ...]}}`; `camtrack.events.watcher` feeds its levels here. An event starts once the
level has stayed at or above `threshold` for `duration` seconds (its start is when it first rose),
and ends once it has stayed below for `gap` seconds (its end is the last sample at or above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Transition:
    """Motion started or ended, at `at` (seconds, the samples' clock); `peak`: the highest level seen
    in the event so far."""

    action: Literal["start", "end"]
    at: float
    peak: float


class MotionTrigger:
    """Turns motion levels into starts and ends (see the module's docstring)."""

    def __init__(self, threshold: float, duration: float, gap: float) -> None:
        self.threshold = threshold
        self.duration = duration
        self.gap = gap
        #: whether an event is open
        self.active = False
        #: the highest level of the open event (or of the current run above the threshold)
        self.peak = 0.0
        self._rose: float | None = None
        self._last_above: float | None = None

    def feed(self, level: float, at: float) -> Transition | None:
        """One sample: the transition it makes, if any."""
        if level >= self.threshold:
            if self._rose is None:
                self._rose, self.peak = at, 0.0
            self._last_above = at
            self.peak = max(self.peak, level)
            if not self.active and at - self._rose >= self.duration:
                self.active = True
                return Transition("start", self._rose, self.peak)
            return None
        if not self.active:
            self._rose = None  # (a run too short to count)
            return None
        return self.tick(at)

    def tick(self, now: float) -> Transition | None:
        """Time passed without motion (or without samples at all: the camera stopped): the end, if
        the gap has passed since the last motion."""
        if self.active and self._last_above is not None and now - self._last_above >= self.gap:
            ended = Transition("end", self._last_above, self.peak)
            self.active, self._rose, self._last_above = False, None, None
            return ended
        return None
