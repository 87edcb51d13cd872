"""A processing function's results to one viewer, on the viewer's own connection, stamped with the
picture they describe as that viewer got it.

Every viewer reads the processing stage's newest result (`ProcessingStage.next_result`: newest wins,
nothing queues per viewer) and sends it as one JSON text message:

    {"type": "data", "camera": "default", "frame": 1234, "time": 1733400000.123,
     "rtp": 2873311, "data": {...}}

`frame` and `time` are the frame's number and capture time; the identity field names the picture
as this viewer's player sees it: `rtp` (the RTP timestamp the viewer's WebRTC sender gave that
picture, random origin included: what `requestVideoFrameCallback`'s `metadata.rtpTimestamp` says
in the browser) or, on the websocket fallback, `pts` (the 90 kHz presentation time in that
picture's binary header). The picture is found by its capture time: every packet carries its
frame's (`EncodedPacket.captured`), and each viewer's sender keeps the timestamps of the pictures it
sent lately by it (`SentPictures`). A result whose picture is not sent yet waits for it (at most
PICTURE_WAIT, replaced meanwhile by any newer result); one whose picture this viewer never got
(it skipped ahead) is not sent. A result is skipped when the connection has more than a little
unsent (`busy()`).

About once a second, and whatever the results, a status message:

    {"type": "processing", "camera": ..., "function": ..., "state": "ok" | "failing" | "stalled" | "idle",
     "error": ..., "calls": ..., "errors": ..., "stalls": ..., "rate": calls a second,
     "ms": ms per call, "frame": the newest result's frame, "age": seconds since its capture}
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ..media.feeds import FeedClosed
from ..processing.contract import Result

logger = logging.getLogger(__name__)

#: the longest a result waits for its picture to be sent to the viewer
PICTURE_WAIT = 1.0
#: seconds between status messages
STATUS_INTERVAL = 1.0


class CallCounts(Protocol):
    """A processing function's calls so far and the seconds they took (ProcessingStats)."""

    @property
    def calls(self) -> int: ...

    @property
    def seconds(self) -> float: ...


class ResultFeed(Protocol):
    """Where a viewer's results come from: a camera's processing stage (camtrack.processing), or in
    a worker process the main process's relayed (camtrack.workers)."""

    @property
    def camera(self) -> str: ...

    @property
    def result(self) -> Result | None:
        """The newest result (None before any)."""

    @property
    def stats(self) -> CallCounts: ...

    async def next_result(self, after: int = 0) -> Result:
        """The newest result of a frame above number `after`, waiting for one."""

    def attach(self, reader: object) -> None:
        """`reader` reads results (the first one starts the stage)."""

    def detach(self, reader: object) -> None: ...

    def describe(self) -> dict[str, object]:
        """The processing's function, state, error and counts (ProcessingStage.describe)."""

    def result_age(self, now: float | None = None) -> float | None:
        """Seconds since the newest result's frame was captured."""


class SentPictures:
    """The timestamps (a WebRTC viewer's RTP timestamps, random origin included; a websocket
    viewer's presentation times) of the pictures sent to one viewer lately, by capture time
    (`EncodedPacket.captured`, the frame's `Frame.time`): how the data a processing function
    returned for a frame finds the picture the viewer got of it. Bounded: the newest `size`."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._by_capture: OrderedDict[float, int] = OrderedDict()
        #: capture time of the newest picture sent (0: none yet)
        self.newest = 0.0
        #: set (then dropped) when a picture is sent, only while someone waits
        self._changed: asyncio.Event | None = None

    def add(self, captured: float, timestamp: int) -> None:
        """A picture captured at `captured` went out with `timestamp`."""
        pictures = self._by_capture
        pictures[captured] = timestamp
        if len(pictures) > self.size:
            pictures.popitem(last=False)
        if captured > self.newest:
            self.newest = captured
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def get(self, captured: float) -> int | None:
        """The timestamp of the picture captured at `captured`, if it was sent lately."""
        return self._by_capture.get(captured)

    async def changed(self) -> None:
        """Until the next picture is sent."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()


def data_message(camera: str, result: Result, field: str, timestamp: int | None) -> str:
    """The data message of `result` for a viewer whose picture of it has `timestamp` in `field`."""
    return (f'{{"type":"data","camera":{json.dumps(camera)},"frame":{result.frame},'
            f'"time":{json.dumps(result.time)},"{field}":{"null" if timestamp is None else timestamp},'
            f'"data":{result.text}}}')  # (made once, on the processing thread)


class ResultSender:
    """Sends a processing stage's results (and its status) to one viewer: `run()` until cancelled,
    `send` raises ConnectionError or the stage stops under it (FeedClosed). A message `send` refuses
    with ValueError (too long for the connection) is skipped.

    `send(text)` hands one message to the viewer's connection; `busy()` says it holds too much
    unsent (the result is skipped: newest wins); `pictures` are the pictures sent to this viewer
    (None: not known, as with per-viewer encoding: `field` is then null); `field` names their
    timestamps ("rtp", "pts")."""

    def __init__(self, stage: ResultFeed, send: Callable[[str], None], busy: Callable[[], bool],
                 pictures: SentPictures | None, field: str) -> None:
        self.stage = stage
        self.send = send
        self.busy = busy
        self.pictures = pictures
        self.field = field
        #: results sent, skipped (the connection busy), and not sent (their picture never came)
        self.sent = 0
        self.skipped = 0
        self.unmatched = 0
        #: messages the connection refused (ValueError from `send`: too long for it), skipped
        self.refused = 0
        self._last_calls = 0
        self._last_seconds = 0.0
        self._last_at = 0.0

    async def run(self) -> None:
        stage = self.stage
        loop = asyncio.get_running_loop()
        stage.attach(self)
        try:
            after = 0
            status_due = loop.time()
            while True:
                if loop.time() >= status_due:
                    self.send_status()
                    status_due = loop.time() + STATUS_INTERVAL
                try:
                    result = await asyncio.wait_for(stage.next_result(after), max(0.0, status_due - loop.time()))
                except TimeoutError:
                    continue
                after = await self.deliver(result)
        except ConnectionError:
            pass  # the viewer's connection closed: `send` says so
        except FeedClosed:
            # the stage stopped under its readers (its camera closed, the server shuts down): this
            # viewer's results end here (its video ends with the camera; a viewer that comes back
            # gets a sender of its own)
            logger.debug("camera %s: processing stopped; results to this viewer end", stage.camera)
        finally:
            stage.detach(self)

    async def deliver(self, result: Result) -> int:
        """Send `result` (or a newer one that came while it waited for its picture) once its
        picture was sent to the viewer; the frame number handled."""
        pictures = self.pictures
        if pictures is None:
            self._send_data(result, None)
            return result.frame
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PICTURE_WAIT
        while True:
            newest = self.stage.result
            if newest is not None and newest.frame > result.frame:
                result = newest  # newest wins
            timestamp = pictures.get(result.time)
            if timestamp is not None:
                self._send_data(result, timestamp)
                return result.frame
            left = deadline - loop.time()
            if pictures.newest > result.time or left <= 0:
                self.unmatched += 1  # this viewer never got (or did not get in time) its picture
                return result.frame
            try:
                await asyncio.wait_for(pictures.changed(), left)
            except TimeoutError:
                pass

    def _send_data(self, result: Result, timestamp: int | None) -> None:
        if self.busy():
            self.skipped += 1
            return
        if self._send(data_message(self.stage.camera, result, self.field, timestamp)):
            self.sent += 1

    def _send(self, text: str) -> bool:
        """Hand `text` to the connection; False when it refused that one message (ValueError: longer
        than the viewer takes, as a data channel's remote max-message-size): skipped, the next goes."""
        try:
            self.send(text)
        except ValueError as exc:
            self.refused += 1
            logger.debug("camera %s: a message of %d characters not sent: %s", self.stage.camera, len(text), exc)
            return False
        return True

    def send_status(self) -> None:
        """The processing's state and rates since the last status message."""
        stage = self.stage
        if self.busy():
            return
        stats = stage.stats
        now = time.monotonic()
        calls, seconds = stats.calls - self._last_calls, stats.seconds - self._last_seconds
        interval = now - self._last_at if self._last_at else 0.0
        self._last_calls, self._last_seconds, self._last_at = stats.calls, stats.seconds, now
        message: dict[str, object] = dict(stage.describe())
        age = stage.result_age()
        message.update({
            "type": "processing", "camera": stage.camera,
            "rate": round(calls / interval, 2) if interval > 0 else None,
            "ms": round(1000 * seconds / calls, 2) if calls else None,
            "frame": message.pop("result_frame", None),
            "age": round(age, 3) if age is not None else None,
        })
        self._send(json.dumps(message, separators=(",", ":")))
