"""What a recorder needs of the events: a start and an end per event of its camera, in order.

The recorder (clips with pre-roll) is its own part; `RecordingTrigger` is the one small adapter
between it and the bus, a BackgroundOutput of the camera like the recorder itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any, Protocol

from .bus import EventBus, Subscription

logger = logging.getLogger(__name__)


class Recorder(Protocol):
    """A recorder of one camera: a clip from before `at` of `start` to after `at` of `end`
    (either may return an awaitable: it is awaited before the next change)."""

    def start(self, event_id: str, at: float) -> Any: ...

    def end(self, event_id: str, at: float) -> Any: ...


class RecordingTrigger:
    """Calls `recorder.start` and `recorder.end` for every event of `camera` (a BackgroundOutput)."""

    def __init__(self, bus: EventBus, camera: str, recorder: Recorder) -> None:
        self.bus = bus
        self.camera = camera
        self.recorder = recorder
        self.calls = 0
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._subscription = self.bus.subscribe("recorder", camera=self.camera)
        self._task = asyncio.get_running_loop().create_task(self._run(self._subscription),
                                                            name=f"recording trigger {self.camera}")

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()  # (what is queued, the ends of a stopping server, still goes)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 2.0)  # (cancelled after that)
            self._task = None

    def describe(self) -> dict[str, object]:
        subscription = self._subscription
        return {"state": "running" if self._task is not None else "stopped", "calls": self.calls,
                "lost": subscription.dropped if subscription is not None else 0}

    async def _run(self, subscription: Subscription) -> None:
        async for change in subscription:
            event = change.event
            try:
                if change.action == "start":
                    done = self.recorder.start(change.id, float(event["start"]))
                elif change.action == "end":
                    done = self.recorder.end(change.id, float(event["end"]))
                else:
                    continue
                if inspect.isawaitable(done):
                    await done
                self.calls += 1
            except Exception:
                logger.exception("camera %s: the recorder failed on %s of event %s", self.camera, change.action,
                                 change.id)
