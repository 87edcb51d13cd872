"""The processing stage: a frame feed that runs a user's function on each newest frame of its input,
on a thread of its own, once for every reader (the shared encoders, JPEG, tiers), and gives the
pictures on. Faults stay inside: an exception or a bad return passes the frame on unprocessed (and
is logged, rate-limited, and counted), a call that runs past the time-out lets the pictures through
unprocessed until it returns.

Two modes, chosen by what the calls do (`ProcessingStage.mode`):

- *drawn*: a call returned a picture or drew on the frame it got: the stage's pictures are the
  function's (the video runs at the function's rate);
- *data*: the calls leave the frame as it was (they return data, or nothing): the stage gives each
  picture of its input on at once, at the input's rate and latency, while the function runs beside
  on the newest frame; its data is the stage's newest `Result`.

The first call decides; a call that draws switches to drawn at once, UNDRAWN_TO_DATA calls in a row
that do not switch back to data (a function reloaded, one that draws only some frames)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass

import cv2
import numpy as np

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
#: calls in a row that draw nothing before a drawing stage gives its input's pictures on again (data mode)
UNDRAWN_TO_DATA = 3
#: the longest `last_error` kept (status messages and /api carry it; an exception's line may be any length)
MAX_ERROR = 300
#: the stage's modes (None before the first call decided)
MODES = ("data", "drawn")


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
    #: pictures of the input given on at once, in data mode
    forwarded: int = 0
    #: times the mode changed after the first call decided it
    switches: int = 0


@dataclass(frozen=True)
class _Call:
    """One call's outcome, made on the processing thread."""

    frame: Frame
    outcome: Outcome | None
    error: str | None
    trace: str | None
    seconds: float
    #: whether the call returned a picture or drew on the frame it got
    drew: bool = False


class ProcessingStage(Stage[FrameFeed, Frame]):
    """Runs `function(frame_bgr, info)` on the newest frame of `input` (camtrack.processing.contract)
    and is a frame feed of the results. A function slower than the camera is given the newest frame
    each time (nothing queues): in drawn mode the stage's rate is then the function's, in data mode
    it is the input's (see the module's docstring).

    `fps`: the function is called at most that many times a second (None: on every frame it keeps
    up with). `shown`: whether the stage's pictures are what viewers see; False where they are not
    (a passed-through camera: the function reads pictures decoded for it alone), which a drawing
    function is told once in the log."""

    def __init__(self, input: FrameFeed, camera: str, function: ProcessFunction,
                 timeout: float = DEFAULT_TIMEOUT, fps: float | None = None, shown: bool = True) -> None:
        super().__init__(input, f"process {camera}", lambda: ProcessingClosed(camera))
        self.camera = camera
        self.function = function
        self.timeout = timeout
        self.fps = fps
        self.shown = shown
        #: "data" or "drawn" (MODES) once a call decided it, else None; kept across the stage's runs
        self.mode: str | None = None
        self._undrawn = 0
        self._told_unshown = False
        #: closed (shutdown) and not attached since: `next_result` ends
        self._closed = False
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
        #: the thread the function runs on, the stage's whole life (`_executor`)
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

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
        return {"function": self.description, "state": self.state, "mode": self.mode, "fps": self.fps,
                "shown": self.shown, "error": self.last_error,
                "reload_error": self.reload_error, "calls": stats.calls, "errors": stats.errors,
                "stalls": stats.stalls, "result_frame": self.result.frame if self.result else None}

    async def next_result(self, after: int = 0) -> Result:
        """The newest result of a frame above number `after`, waiting for one: newest wins, a
        reader slower than the function skips to the newest (nothing queues per reader). A reader
        keeps the stage running by attaching to it (`attach`) like a reader of its pictures.

        ProcessingClosed (a FeedClosed) when the stage is closed (shutdown) or stopped with readers
        still attached (its camera closed), at once or while waiting: an attached reader never
        hangs. A reader that did not attach (one that only follows what viewers run, such as the
        events watcher) waits across the stage's idle spells, which are not an end."""
        while True:
            result = self.result
            if result is not None and result.frame > after:
                return result
            if self._closed or (self.consumers and not self.running):
                raise ProcessingClosed(self.camera)
            await self._new_result.wait()

    def attach(self, reader: object) -> None:
        self._closed = False
        super().attach(reader)

    def _executor(self) -> tuple[concurrent.futures.Executor, bool]:
        """One thread for the stage's whole life (shut down by `close`): the function never runs on
        two threads at once, and a call that hangs past its run (its readers left, others came) holds
        that one thread: the next run's calls wait behind it (and the stage says stalled), no thread
        is left behind per run."""
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
        return self._thread, False

    async def close(self) -> None:
        self._closed = True
        await super().close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False, cancel_futures=True)  # (a call in progress ends when it returns)
        self._wake_readers()

    def _wake_readers(self) -> None:
        woken, self._new_result = self._new_result, asyncio.Event()
        woken.set()

    async def next_frame(self, after: int = 0) -> Frame:
        """The newest processed picture above number `after` (the input's numbers), waiting for one."""
        return (await self.next(after, newest=True)).item

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        watching = isinstance(self.function, FunctionFile)
        if isinstance(self.function, FunctionFile):
            self.function.watch()
        # the input's pictures given on at once in data mode (and while a call is stalled)
        forward = asyncio.ensure_future(self._forward())
        call: asyncio.Future[_Call] | None = None
        try:
            after, began = 0, None
            while True:
                if self.fps and began is not None and (wait := began + 1.0 / self.fps - loop.time()) > 0:
                    await asyncio.sleep(wait)
                frame = await self.input.next_frame(after)
                after, began = frame.seq, loop.time()
                call = loop.run_in_executor(executor, self._call, frame)
                done, _ = await asyncio.wait({call}, timeout=self.timeout)
                if not done:
                    await self._stall(call, frame)
                self._finish(call.result())
                call = None
        finally:
            if call is not None:
                call.cancel()  # (one not begun is dropped: a stopped run leaves nothing queued on the thread)
            forward.cancel()
            self._stalled = False
            if watching and isinstance(self.function, FunctionFile):
                self.function.unwatch()

    async def _forward(self) -> None:
        """Read every newest picture of the input; give it on at once in data mode or while a call
        is stalled (in drawn mode the pictures are the function's)."""
        after = 0
        try:
            while True:
                frame = await self.input.next_frame(after)
                after = frame.seq
                if self._stalled:
                    self._give(frame, processed=False)
                elif self.mode == "data":
                    self._give(frame, processed=False, forwarded=True)
        except FeedClosed:
            pass  # (the stage's own loop ends on it too)

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
        # untouched (0.09 ms a 640x480 picture, 0.5 ms 1920x1080): the input's picture, as it is
        if outcome.picture is None and np.array_equal(picture, frame.bgr):
            return _Call(frame, outcome, None, None, seconds, drew=False)
        if not self.shown:
            return _Call(frame, outcome, None, None, seconds, drew=True)  # (nobody sees it: not converted)
        made = picture if outcome.picture is None else outcome.picture
        yuv = cv2.cvtColor(made, cv2.COLOR_BGR2YUV_I420)
        return _Call(dataclasses.replace(frame, bgr=made, yuv=yuv), outcome, None, None, seconds, drew=True)

    async def _stall(self, call: asyncio.Future[_Call], frame: Frame) -> None:
        """A call ran past the time-out: the input's pictures pass on unprocessed (`_forward`) until it returns."""
        self._stalled = True
        self.stats.stalls += 1
        self.last_error = _shortened(f"{self.description} has run for more than {self.timeout:g} s (frame {frame.seq})")
        began = time.monotonic() - self.timeout
        logger.warning("camera %s: processing stalled: %s; pictures pass unprocessed until it returns",
                       self.camera, self.last_error)
        try:
            await asyncio.wait({call})
        finally:
            self._stalled = False
        logger.info("camera %s: processing resumed: %s returned after %.1f s", self.camera, self.description,
                    time.monotonic() - began)

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
        self._decide(call.drew)
        outcome = call.outcome
        if outcome is not None and outcome.has_data and (self.result is None or call.frame.seq > self.result.frame):
            self.result = Result(call.frame.seq, call.frame.time, outcome.data, outcome.text)
            self._wake_readers()
        # (in data mode the input's picture, given on already unless the call was quicker than `_forward`)
        self._give(call.frame, processed=self.mode == "drawn", forwarded=self.mode == "data")

    def _decide(self, drew: bool) -> None:
        """The mode after a call that drew (drawn, at once) or did not (data, the first call, or
        UNDRAWN_TO_DATA in a row)."""
        before = self.mode
        if drew:
            self._undrawn = 0
            self.mode = "drawn"
            if not self.shown and not self._told_unshown:
                self._told_unshown = True
                logger.warning("camera %s: %s draws on its pictures, but the camera's own H.264 is passed through "
                               "(--mode passthrough): what it draws is not shown, its data is (--mode transcode "
                               "shows the drawing)", self.camera, self.description)
        elif before is None:
            self.mode = "data"
        elif before == "drawn":
            self._undrawn += 1
            if self._undrawn >= UNDRAWN_TO_DATA:
                self.mode, self._undrawn = "data", 0
        if before is not None and self.mode != before:
            self.stats.switches += 1
            logger.info("camera %s: %s %s: %s", self.camera, self.description,
                        "draws again" if self.mode == "drawn" else "draws no more",
                        "the video is its pictures" if self.mode == "drawn"
                        else "the video is the camera's, its data beside")

    def _fault(self, error: str, trace: str | None) -> None:
        """Log a fault: the first of a run with its traceback, then at most every ERROR_LOG_INTERVAL s."""
        now = time.monotonic()
        first = not self._failing
        self._failing = True
        self.last_error = _shortened(error)
        if not first and now - self._logged_at < ERROR_LOG_INTERVAL:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more errors since the last logged)" if self._unlogged else ""
        self._logged_at, self._unlogged = now, 0
        logger.error("camera %s: processing failed, the picture passes unprocessed: %s%s%s", self.camera, error, more,
                     f"\n{trace.rstrip()}" if trace else "")

    def _give(self, frame: Frame, processed: bool, forwarded: bool = False) -> None:
        if frame.seq <= self._published:
            return  # (a call that returned after a stall, or in data mode: newer pictures went on meanwhile)
        self._published = frame.seq
        if processed:
            self.stats.processed += 1
        elif forwarded:
            self.stats.forwarded += 1
        else:
            self.stats.passed += 1
        self._publish(frame)

    def _stopped(self) -> None:
        self._published = 0
        # (a reader of the next run gets that run's results, not one from before it stopped)
        self.result = None
        self._wake_readers()  # (`next_result` ends: the stage is not running)


def _shortened(error: str) -> str:
    """`error`, at most MAX_ERROR characters (the log has it whole)."""
    return error if len(error) <= MAX_ERROR else error[:MAX_ERROR - 1] + "…"
