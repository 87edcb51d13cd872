"""The background reader that makes events of a camera's processing data: the motion detector's
levels (camtrack.events.motion) and a user function's "event" reports (camtrack.events.data).

It reads the processing stage's newest results (`next_result`: newest wins, nothing queues), and
while `keep_running`, attaches to the stage like a viewer, so the camera is read even when nobody
watches it. Its state goes to /healthz as the camera's "events" output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..processing.contract import Result
from .bus import EventBus, TooManyOpen
from .data import BadEvent, DataEvents
from .data import Transition as DataTransition
from .model import MOTION
from .motion import MotionTrigger
from .motion import Transition as MotionTransition

logger = logging.getLogger(__name__)

#: seconds between checks for a quiet gap while no result comes
TICK = 0.25


class Results(Protocol):
    """What the watcher needs of a processing stage (camtrack.processing.ProcessingStage)."""

    def attach(self, reader: object) -> None: ...

    def detach(self, reader: object) -> None: ...

    async def next_result(self, after: int = 0) -> Result: ...


@dataclass(frozen=True)
class MotionSettings:
    """When motion levels make an event (the camera's --motion-event-* options)."""

    threshold: float
    duration: float
    gap: float


class EventWatcher:
    """Events from one camera's processing results, published on `bus` (a BackgroundOutput)."""

    def __init__(self, bus: EventBus, camera: str, results: Results, motion: MotionSettings,
                 keep_running: bool = False, tick: float = TICK) -> None:
        self.bus = bus
        self.camera = camera
        self.results = results
        self.keep_running = keep_running
        self.tick = tick
        self.motion = MotionTrigger(motion.threshold, motion.duration, motion.gap)
        self.data = DataEvents()
        #: results read, and those whose "event" or "motion" was malformed
        self.read = 0
        self.bad = 0
        #: the last malformed one's reason
        self.error: str | None = None
        self._motion_id: str | None = None
        self._regions: Any = []
        self._data_ids: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.keep_running:
            self.results.attach(self)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"events {self.camera}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.keep_running:
            self.results.detach(self)
        self._tick(math.inf)  # (what is open ends: at its last sign of life)

    def describe(self) -> dict[str, object]:
        return {"state": "running" if self._task is not None else "stopped", "keep_running": self.keep_running,
                "results": self.read, "bad": self.bad, "error": self.error,
                "motion": self.motion.active, "active": self.data.active}

    async def _run(self) -> None:
        after = 0
        while True:
            try:
                result = await asyncio.wait_for(self.results.next_result(after), self.tick)
            except TimeoutError:
                self._tick(time.time())
                continue
            after = result.frame
            self.read += 1
            self._feed(result)

    def _feed(self, result: Result) -> None:
        data = result.data
        if isinstance(data, dict) and "motion" in data:
            motion = data["motion"]
            level = motion.get("level") if isinstance(motion, dict) else None
            if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
                self._bad(f"motion must be {{\"level\": 0..1, \"regions\": [...]}}, not {motion!r:.80}")
            else:
                if float(level) >= self.motion.threshold:
                    self._regions = motion.get("regions", [])
                self._motion(self.motion.feed(float(level), result.time))
        try:
            transitions = self.data.feed(data, result.time)
        except BadEvent as exc:
            self._bad(str(exc))
            transitions = self.data.tick(result.time)
        for transition in transitions:
            self._data(transition)

    def _tick(self, now: float) -> None:
        self._motion(self.motion.tick(now))
        for transition in self.data.tick(now):
            self._data(transition)

    def _motion(self, transition: MotionTransition | None) -> None:
        if transition is None:
            return
        if transition.action == "start":
            self._motion_id = self._start(MOTION, transition.at, {"level": round(transition.peak, 4),
                                                                  "regions": self._regions})
        elif self._motion_id is not None:
            self.bus.end(self._motion_id, transition.at, {"peak": round(transition.peak, 4)})
            self._motion_id = None

    def _data(self, transition: DataTransition) -> None:
        if transition.action == "start":
            event_id = self._start(transition.kind, transition.at, transition.details)
            if event_id is not None:
                self._data_ids[transition.kind] = event_id
            return
        event_id = self._data_ids.get(transition.kind)
        if event_id is None:
            return  # (its start was refused)
        if transition.action == "update":
            self.bus.update(event_id, transition.details)
        else:
            del self._data_ids[transition.kind]
            self.bus.end(event_id, transition.at, transition.details)

    def _start(self, kind: str, at: float, details: dict[str, Any]) -> str | None:
        try:
            return self.bus.start(self.camera, kind, source="motion" if kind == MOTION else "processing",
                                  details=details, at=at).id
        except TooManyOpen as exc:
            self._bad(str(exc))
            return None

    def _bad(self, reason: str) -> None:
        self.bad += 1
        if self.error != reason:
            logger.warning("camera %s: no event from the processing data: %s (said once until the reason changes)",
                           self.camera, reason)
        self.error = reason
