"""The processing stage: a frame feed that runs a user's function on each newest frame of its input,
on a thread of its own, once for every reader (the shared encoders, JPEG, tiers), and gives the
processed pictures on. Faults stay inside: an exception or a bad return passes the frame on
unprocessed (and is logged, rate-limited, and counted), a call that runs past the time-out lets the
pictures through unprocessed until it returns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass

import cv2

from ..media.feeds import FeedClosed, FrameFeed
from ..media.frame import Frame
from ..media.stage import Stage
from .contract import BadReturn, FrameInfo, Outcome, ProcessFunction, Result, interpret
from .loading import FunctionFile, describe_function

logger = logging.getLogger(__name__)

#: seconds a call may run before processing counts as stalled and pictures pass unprocessed
DEFAULT_TIMEOUT = 2.0
#: while the function keeps failing, its error is logged again at most this often (with a count)
ERROR_LOG_INTERVAL = 30.0


class ProcessingClosed(FeedClosed):
    """The processing stage stopped while a reader waited for a picture."""


@dataclass
class ProcessingStats:
    """Counters /metrics shows."""

    #: calls of the function that ended (returned or raised)
    calls: int = 0
    #: of those, the ones that raised or returned something unusable
    errors: int = 0
    #: seconds spent in calls that ended
    seconds: float = 0.0
    #: calls that ran past the time-out
    stalls: int = 0
    #: pictures given on as the function made them, and unprocessed (after a fault, while stalled)
    processed: int = 0
    passed: int = 0


@dataclass(frozen=True)
class _Call:
    """One call's outcome, made on the processing thread."""

    frame: Frame
    outcome: Outcome | None
    error: str | None
    trace: str | None
    seconds: float


class ProcessingStage(Stage[FrameFeed, Frame]):
    """Runs `function(frame_bgr, info)` on the newest frame of `input` (camtrack.processing.contract)
    and is a frame feed of the results. A function slower than the camera is given the newest frame
    each time (nothing queues): the stage's rate is then the function's."""

    def __init__(self, input: FrameFeed, camera: str, function: ProcessFunction,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(input, f"process {camera}", lambda: ProcessingClosed(camera))
        self.camera = camera
        self.function = function
        self.timeout = timeout
        self.stats = ProcessingStats()
        #: the newest data the function returned, with the frame it belongs to
        self.result: Result | None = None
        #: the last error (an exception's last line, a bad return, a stall) while it lasts, else None
        self.last_error: str | None = None
        self._failing = False
        self._stalled = False
        self._logged_at = 0.0
        self._unlogged = 0
        self._published = 0
        #: set (and replaced) each time a newer result is kept: what `next_result` waits on
        self._new_result = asyncio.Event()

    @property
    def description(self) -> str:
        return describe_function(self.function)

    @property
    def state(self) -> str:
        """`idle` (not running), `ok`, `failing` (the last call raised or returned something
        unusable) or `stalled` (a call runs past the time-out)."""
        if self._stalled:
            return "stalled"
        if not self.running:
            return "idle"
        return "failing" if self._failing else "ok"

    @property
    def reload_error(self) -> str | None:
        """Why the function's file failed to load again (the previous version runs), else None."""
        return self.function.reload_error if isinstance(self.function, FunctionFile) else None

    def result_age(self, now: float | None = None) -> float | None:
        """Seconds since the frame of the newest result was captured (None before any)."""
        result = self.result
        return None if result is None else max(0.0, (time.time() if now is None else now) - result.time)

    def describe(self) -> dict[str, object]:
        """The processing as /api/cameras and /healthz show it."""
        stats = self.stats
        return {"function": self.description, "state": self.state, "error": self.last_error,
                "reload_error": self.reload_error, "calls": stats.calls, "errors": stats.errors,
                "stalls": stats.stalls, "result_frame": self.result.frame if self.result else None}

    async def next_result(self, after: int = 0) -> Result:
        """The newest result of a frame above number `after`, waiting for one: newest wins, a
        reader slower than the function skips to the newest (nothing queues per reader). A reader
        keeps the stage running by attaching to it (`attach`) like a reader of its pictures."""
        while True:
            result = self.result
            if result is not None and result.frame > after:
                return result
            await self._new_result.wait()

    async def next_frame(self, after: int = 0) -> Frame:
        """The newest processed picture above number `after` (the input's numbers), waiting for one."""
        return (await self.next(after, newest=True)).item

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        watching = isinstance(self.function, FunctionFile)
        if isinstance(self.function, FunctionFile):
            self.function.watch()
        try:
            after = 0
            while True:
                frame = await self.input.next_frame(after)
                after = frame.seq
                call = loop.run_in_executor(executor, self._call, frame)
                done, _ = await asyncio.wait({call}, timeout=self.timeout)
                if not done:
                    after = await self._stall(call, frame, after)
                self._finish(call.result())
        finally:
            self._stalled = False
            if watching and isinstance(self.function, FunctionFile):
                self.function.unwatch()

    def _call(self, frame: Frame) -> _Call:
        """Runs on the processing thread: the function on a copy of the picture, and the I420 of what
        it made."""
        picture = frame.bgr.copy()
        began = time.perf_counter()
        try:
            outcome = interpret(self.function(picture, FrameInfo(self.camera, frame.seq, frame.time)), picture.shape)
        except BadReturn as exc:
            return _Call(frame, None, f"{self.description} {exc}", None, time.perf_counter() - began)
        except BaseException as exc:  # noqa: BLE001 - a user's function may raise anything
            trace = "".join(traceback.format_exception(exc))
            line = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
            return _Call(frame, None, f"{self.description} raised {line}", trace, time.perf_counter() - began)
        seconds = time.perf_counter() - began
        made = picture if outcome.picture is None else outcome.picture
        yuv = cv2.cvtColor(made, cv2.COLOR_BGR2YUV_I420)
        return _Call(dataclasses.replace(frame, bgr=made, yuv=yuv), outcome, None, None, seconds)

    async def _stall(self, call: asyncio.Future[_Call], frame: Frame, after: int) -> int:
        """A call ran past the time-out: pass the input's pictures on unprocessed until it returns."""
        self._stalled = True
        self.stats.stalls += 1
        self.last_error = f"{self.description} has run for more than {self.timeout:g} s (frame {frame.seq})"
        began = time.monotonic() - self.timeout
        logger.warning("camera %s: processing stalled: %s; pictures pass unprocessed until it returns",
                       self.camera, self.last_error)
        while not call.done():
            newer = asyncio.ensure_future(self.input.next_frame(after))
            waiting: set[asyncio.Future[object]] = {call, newer}  # type: ignore[arg-type]
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not newer.done():
                    newer.cancel()
            if newer.done() and not newer.cancelled():
                passing = newer.result()  # (FeedClosed ends the stage, as elsewhere)
                after = passing.seq
                self._give(passing, processed=False)
        self._stalled = False
        logger.info("camera %s: processing resumed: %s returned after %.1f s", self.camera, self.description,
                    time.monotonic() - began)
        return after

    def _finish(self, call: _Call) -> None:
        """On the event loop: count, log and give on what a call made."""
        stats = self.stats
        stats.calls += 1
        stats.seconds += call.seconds
        if call.error is not None:
            stats.errors += 1
            self._fault(call.error, call.trace)
            self._give(call.frame, processed=False)
            return
        if self._failing:
            logger.info("camera %s: %s works again", self.camera, self.description)
        self._failing = False
        self.last_error = None
        outcome = call.outcome
        if outcome is not None and outcome.has_data and (self.result is None or call.frame.seq > self.result.frame):
            self.result = Result(call.frame.seq, call.frame.time, outcome.data)
            woken, self._new_result = self._new_result, asyncio.Event()
            woken.set()
        self._give(call.frame, processed=True)

    def _fault(self, error: str, trace: str | None) -> None:
        """Log a fault: the first of a run with its traceback, then at most every ERROR_LOG_INTERVAL s."""
        now = time.monotonic()
        first = not self._failing
        self._failing = True
        self.last_error = error
        if not first and now - self._logged_at < ERROR_LOG_INTERVAL:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more errors since the last logged)" if self._unlogged else ""
        self._logged_at, self._unlogged = now, 0
        logger.error("camera %s: processing failed, the picture passes unprocessed: %s%s%s", self.camera, error, more,
                     f"\n{trace.rstrip()}" if trace else "")

    def _give(self, frame: Frame, processed: bool) -> None:
        if frame.seq <= self._published:
            return  # (a call that returned after a stall: newer pictures went on meanwhile)
        self._published = frame.seq
        if processed:
            self.stats.processed += 1
        else:
            self.stats.passed += 1
        self._publish(frame)

    def _stopped(self) -> None:
        self._published = 0
