"""The capture thread: reads a source off the event loop and hands on each frame as it comes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from . import stamp
from .feeds import FrameSource
from .frame import Frame

logger = logging.getLogger(__name__)

#: seconds between "no signal" pictures while a source is retrying
NO_SIGNAL_INTERVAL = 0.2
#: seconds without a picture after which a source that is still connected is stalled: its run is
#: ended and the source opened again. Pictures count, not bytes: a camera can keep its session and
#: socket alive (RTCP, keep-alive answers) while it sends no picture, and no read time-out fires.
#: Every picture counts, not only keyframes, so the camera's keyframe interval does not matter; a
#: real camera sends one at least every second, even at its slowest; and 5 s is also the own RTSP
#: reader's read time-out, so a camera silent in every way and one that only keeps its session
#: alive are both cut after the same time.
STALL_SECONDS = 5.0
#: a run that gave pictures for this long was a success: the back-off starts again from its least
STABLE_SECONDS = 10.0
#: a failure with the same reason as the last one logged is logged again at most this often
REPEAT_LOG_SECONDS = 60.0
#: the longest reason kept (its text may come from the camera: an RTSP reason phrase)
MAX_REASON = 160


def failure_reason(exc: BaseException) -> str:
    """Why a source failed, in a few words (its text comes from the camera: clipped)."""
    if isinstance(exc, TimeoutError):
        return "timed out (the camera sent nothing within the time-out)"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "…"


class Failures:
    """A source's failures over a feed's life: how many, the last one's reason (`reason`: what
    /api/cameras and /healthz show as the camera's `error`), and its log lines: one warning per
    outage, with the reason that began it (later reasons within the outage, a camera that stopped
    and then refuses connections, go to the debug log and to `reason`), "is back" when pictures
    come again; the same reason again is logged at most every REPEAT_LOG_SECONDS, even across
    outages, so a camera that fails over and over does not flood the log."""

    def __init__(self, description: str) -> None:
        self.description = description
        #: the last failure's reason (None before the first)
        self.reason: str | None = None
        self.count = 0
        #: failures that were stalls (STALL_SECONDS without a picture)
        self.stalls = 0
        self._logged: str | None = None
        self._logged_at = 0.0
        self._back_logged = True
        self._outage = False

    def failed(self, reason: str, *, stalled: bool = False, opening: bool = False,
               exc: BaseException | None = None) -> None:
        self.count += 1
        self.stalls += stalled
        self.reason = reason
        now = time.monotonic()
        outage, self._outage = self._outage, True
        # a traceback only for what no camera should cause (a bug), not for a network's failures
        unexpected = exc is not None and not isinstance(exc, (OSError, EOFError, ValueError))
        if outage or (reason == self._logged and now - self._logged_at < REPEAT_LOG_SECONDS):
            logger.debug("%s: %s; %s", self.description, reason, "retrying" if opening else "reopening",
                         exc_info=exc if unexpected else None)
            return
        logger.warning("%s: %s; %s", self.description, reason, "retrying" if opening else "reopening",
                       exc_info=exc if unexpected else None)
        self._logged, self._logged_at, self._back_logged = reason, now, False

    def recovered(self) -> None:
        """Pictures again: said once after a failure that was logged."""
        self._outage = False
        if not self._back_logged:
            logger.info("%s is back", self.description)
            self._back_logged = True


class StallWatch:
    """Interrupts a source that stays connected but gives no picture for `seconds` (see
    STALL_SECONDS), from a thread of its own that looks a few times a second until `stop` is set.
    A source without `interrupt()` (OpenCV's, the pattern) is not watched."""

    def __init__(self, source: object, stop: threading.Event, seconds: float | None = None) -> None:
        self.seconds = STALL_SECONDS if seconds is None else seconds
        self._interrupt: Callable[[], None] | None = getattr(source, "interrupt", None)
        self._stop = stop
        self._lock = threading.Lock()
        self._last: float | None = None
        #: set when the watch interrupted the source (the read it ended was a stall)
        self.fired = False
        if self._interrupt is not None:
            description = getattr(source, "description", "source")
            threading.Thread(target=self._run, name=f"stall watch {description}", daemon=True).start()

    def reading(self) -> None:
        """The source opened: its pictures are due from now on."""
        with self._lock:
            self._last, self.fired = time.monotonic(), False

    def picture(self) -> None:
        self._last = time.monotonic()

    def done(self) -> None:
        """The source is being closed (or opened again): nothing to watch."""
        with self._lock:
            self._last = None

    def _run(self) -> None:
        while not self._stop.wait(min(0.25, self.seconds / 4)):
            with self._lock:
                last = self._last
                if last is not None and time.monotonic() - last > self.seconds and self._interrupt is not None:
                    self.fired, self._last = True, None
                    self._interrupt()


def no_signal_image(width: int, height: int, description: str) -> np.ndarray:
    """A dark picture saying the source is gone, with the time and a latency stamp."""
    image = np.full((height, width, 3), 40, np.uint8)
    scale = max(0.5, height / 320)
    lines = ["NO SIGNAL", description[:60], time.strftime("%H:%M:%S")]
    y = height // 2 - int(40 * scale)
    for i, line in enumerate(lines):
        size = scale * (1.6 if i == 0 else 0.6)
        (w, h), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, size, 2)
        cv2.putText(image, line, ((width - w) // 2, y), cv2.FONT_HERSHEY_SIMPLEX, size, (230, 230, 230), 2, cv2.LINE_AA)
        y += h + int(20 * scale)
    stamp.write_stamp(image, stamp.now_ms())
    return image


class CaptureThread:
    """A thread that opens a source, reads it and hands each new frame to `on_frame`.

    It retries with back-off when the source fails to open, stops giving frames or stalls
    (STALL_SECONDS without one), and logs each failure's reason once (`Failures`).
    """

    def __init__(
        self,
        source: FrameSource,
        on_frame: Callable[[Frame], None],
        on_state: Callable[[str], None] | None = None,
        retry_max: float = 10.0,
        previous: CaptureThread | None = None,
        failures: Failures | None = None,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.source = source
        #: applied to every picture before anything else reads it (privacy masks): returns the picture
        self.prepare = prepare
        self.on_frame = on_frame
        self.on_state = on_state or (lambda state: None)
        self.retry_max = retry_max
        #: a capture of the same device still letting go of it: opened only after it has
        self.previous = previous
        #: times the device was opened (again after each failure)
        self.source_opens = 0
        #: its failures, their count and the last one's reason (shared by the stream's captures)
        self.failures = failures if failures is not None else Failures(source.description)
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

    def _emit(self, seq: int, image: np.ndarray) -> None:
        now, mono = time.time(), time.monotonic()
        if self.prepare is not None:
            image = self.prepare(image)
        yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        self.on_frame(Frame(seq, image, yuv, now, mono))

    def _no_signal(self, seq: int, seconds: float) -> int:
        """Wait `seconds` (or until stopped), showing viewers a "no signal" picture meanwhile."""
        width, height = getattr(self.source, "width", 0), getattr(self.source, "height", 0)
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            if width and height:
                seq += 1
                self._emit(seq, no_signal_image(width, height, self.source.description))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._stop.wait(min(NO_SIGNAL_INTERVAL, left))
        return seq

    def _run(self) -> None:
        previous, self.previous = self.previous, None
        if previous is not None:
            previous.join()
        seq = 0
        delay = 0.5
        failures = self.failures
        watch = StallWatch(self.source, self._stop)
        while not self._stop.is_set():
            try:
                self.source.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                if not self._stop.is_set():
                    failures.failed(failure_reason(exc), opening=True, exc=exc)
                self._set_state("retrying")
                seq = self._no_signal(seq, delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self.source_opens += 1
            if self.state == "starting":
                logger.info("%s opened", self.source.description)
            else:
                logger.debug("%s opened again", self.source.description)
            up_since: float | None = None
            watch.reading()
            try:
                while not self._stop.is_set():
                    image = self.source.read()
                    if image is None:
                        if self._stop.is_set():
                            break
                        if watch.fired:
                            failures.failed(f"no picture for {watch.seconds:g} s", stalled=True)
                            self._set_state("stalled")
                        else:
                            # said once per change of reason: a source that opens but gives nothing stays quiet
                            why = getattr(self.source, "end_reason", None) or "stopped giving frames"
                            failures.failed(why)
                            self._set_state("retrying")
                        break
                    watch.picture()
                    if self.state != "up":
                        failures.recovered()
                        up_since = time.monotonic()
                    self._set_state("up")
                    seq += 1
                    self._emit(seq, image)
            except Exception as exc:  # noqa: BLE001
                if not self._stop.is_set():
                    stalled = watch.fired
                    failures.failed(f"no picture for {watch.seconds:g} s" if stalled else failure_reason(exc),
                                    stalled=stalled, exc=None if stalled else exc)
                    self._set_state("stalled" if stalled else "retrying")
            finally:
                watch.done()
                self.source.close()
            if up_since is not None and time.monotonic() - up_since >= STABLE_SECONDS:
                delay = 0.5  # it worked for a while: a new outage starts the back-off again
            if not self._stop.is_set():
                seq = self._no_signal(seq, delay)
                delay = min(delay * 2, self.retry_max)
        logger.info("%s released", self.source.description)
        self._set_state("idle")
