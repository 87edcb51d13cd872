"""A camera's own encoded video handed to every viewer as it comes: no decode, no encode.

A `PacketSource` (blocking, read by a thread of the feed's own) gives Annex-B H.264 access units;
the `PassthroughFeed` numbers them, restamps them on the 90 kHz clock and publishes them into a
ring that holds the newest GOP, so a new viewer can start from the camera's newest IDR at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import av

from .capture import STABLE_SECONDS, Failures, StallWatch, failure_reason, no_signal_image
from .feeds import FeedClosed
from .frame import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE
from .lingering import ThreadFed
from .packet import CodecInfo, EncodedPacket
from .ring import Read, Ring
from .sizes import FALLBACK_SIZE, SizeRefused, within_limits

logger = logging.getLogger(__name__)

#: seconds `close()` waits for a reader thread stuck in the network before leaving it behind
CLOSE_WAIT = 1.0
#: seconds between "no signal" pictures while the source is retrying
NO_SIGNAL_INTERVAL = 0.2
#: packets the ring holds: the newest GOP of most cameras (4 s at 30 fps is 120; 10 s at 30 is 300)
RING_PACKETS = 300
#: bytes the ring holds at most: a 10 s GOP at 24 Mbit/s (a 4K camera's), whatever the camera sends
RING_BYTES = 32 * 1024 * 1024
#: an access unit larger than this is dropped (a 4K IDR at a high bitrate is 1-2 MB)
MAX_PACKET_BYTES = 4 * 1024 * 1024
#: H.264 filler data: bytes that carry nothing, stripped before an access unit is stored
NAL_FILLER = 12
#: a jump of the source's timestamps larger than this (seconds) is a discontinuity, not time passing
MAX_TIMESTAMP_JUMP = 5.0
#: a step back smaller than this (seconds) is jitter (the stamp is nudged forward), larger a discontinuity
MAX_TIMESTAMP_JITTER = 0.1


class PassthroughClosed(FeedClosed):
    """The passthrough feed stopped while a reader waited for a packet."""


@dataclass(frozen=True)
class SourcePacket:
    """One access unit as a packet source gives it."""

    #: Annex-B NAL units (for H.264, the parameter sets in front of every IDR)
    data: bytes
    #: presentation time in `time_base` (never None: a source without timestamps makes them up)
    pts: int
    time_base: fractions.Fraction
    #: True for an IDR (a picture a decoder can start from)
    keyframe: bool


class PacketSource(Protocol):
    """Where encoded pictures come from: blocking and single-threaded like a FrameSource, called
    only by the feed's reader thread: `open()`, then `read()` until it returns None (the stream
    ended), then `close()`. `interrupt()` may be called from any thread to end a wait early."""

    description: str

    @property
    def codec(self) -> CodecInfo:
        """What the source carries (valid after `open()`)."""

    @property
    def passthrough(self) -> bool:
        """Whether its packets can go to viewers as they are (H.264 without B-frames)."""

    def open(self) -> None: ...

    def read(self) -> SourcePacket | None: ...

    def close(self) -> None: ...

    def interrupt(self) -> None: ...


@dataclass
class PassthroughStats:
    """Counters an operator (and the tests) can read."""

    packets: int = 0
    keyframes: int = 0
    bytes: int = 0
    #: times the source was opened (the first and every reopening after a failure or an end)
    opens: int = 0
    #: times it had to be opened again within one run (failures, ends of stream)
    reopenings: int = 0
    #: times the feed started (its first reader came after none)
    runs: int = 0
    #: keyframes asked for, which a camera cannot be made to send: counted and otherwise ignored
    keyframe_requests: int = 0
    #: times the source's timestamps jumped (backwards, or further than MAX_TIMESTAMP_JUMP)
    discontinuities: int = 0
    #: times the camera's stream was refused for its size (camtrack.media.sizes)
    refused: int = 0
    #: access units dropped for being larger than MAX_PACKET_BYTES
    oversize: int = 0
    #: bytes of filler data stripped from access units
    filler_bytes: int = 0
    #: times the source failed to open, failed, ended or stalled (then opened again)
    failures: int = 0
    #: of those, times it stayed connected but gave no picture for STALL_SECONDS
    stalls: int = 0


class Restamper:
    """The source's timestamps on the 90 kHz clock: following the source's own spacing, always
    growing, continuing across reopenings and jumps (bridged with the wall clock's time)."""

    def __init__(self) -> None:
        self._base_pts: int | None = None
        self._base_out = 0
        self._last_out = -1
        self._last_wall = 0.0
        self.discontinuities = 0

    def restart(self) -> None:
        """The source was opened again: its next timestamp starts a new span."""
        self._base_pts = None

    def stamp(self, pts: int, time_base: fractions.Fraction, wall: float) -> int:
        if self._base_pts is not None:
            out = self._base_out + round((pts - self._base_pts) * time_base * VIDEO_CLOCK_RATE)
            jump = out - self._last_out
            if jump > MAX_TIMESTAMP_JUMP * VIDEO_CLOCK_RATE or jump < -MAX_TIMESTAMP_JITTER * VIDEO_CLOCK_RATE:
                self.discontinuities += 1  # a new span, bridged with the wall clock
                self._base_pts = None
            elif jump <= 0:
                out = self._last_out + 1  # a repeated or slightly late stamp: keep growing
        if self._base_pts is None:
            # a new span continues from the last stamp, plus the wall-clock time since it
            gap = round((wall - self._last_wall) * VIDEO_CLOCK_RATE) if self._last_out >= 0 else 0
            self._base_pts = pts
            self._base_out = self._last_out + max(1, gap) if self._last_out >= 0 else 0
            out = self._base_out
        self._last_out, self._last_wall = out, wall
        return out


class PassthroughFeed(ThreadFed["_Run"]):
    """A packet feed of a camera's own H.264 (the same interface as the shared encoder).

    Its source is opened by a reader thread when the first reader attaches and released `linger`
    seconds after the last one detaches. The thread retries with back-off when the source fails
    or ends (said once per outage). `start_packets()` is the run from the newest IDR the ring
    holds, so a viewer starts at once without asking the camera for anything.
    """

    #: the camera's keyframes come when it sends them
    makes_keyframes = False

    _releasing = "passthrough %s: no readers, releasing %s"

    def __init__(self, name: str, source_factory: Callable[[], PacketSource], *, linger: float = 3.0,
                 ring_size: int = RING_PACKETS, ring_bytes: int = RING_BYTES, retry_max: float = 10.0,
                 size: tuple[int, int] = FALLBACK_SIZE) -> None:
        super().__init__(linger)
        self.name = name
        self.source_factory = source_factory
        self.retry_max = retry_max
        self.stats = PassthroughStats()
        #: `idle`, `starting`, `up` (giving packets), `retrying` or `stalled` (connected, but no picture
        #: for STALL_SECONDS: being opened again)
        self.state = "idle"
        #: the reason of the source's last failure (None before any)
        self.error: str | None = None
        #: what the reader threads log of the failures (made with the first)
        self.failure_log: Failures | None = None
        #: why the camera is not up, when it was refused (its size), else None
        self.problem: str | None = None
        #: the configured size: "no signal" is shown at it when the camera gave no usable one
        self.size = size
        self._ring: Ring[EncodedPacket] = Ring(ring_size, lambda: PassthroughClosed(name), max_bytes=ring_bytes,
                                               weigh=_weigh)
        self._codec = CodecInfo("h264", 0, 0, VIDEO_TIME_BASE)
        #: the camera's last size within the limits (what "no signal" is shown at)
        self._last_size: tuple[int, int] | None = None
        #: the "no signal" pictures, encoded once per size: (size, IDRs to show in turn)
        self._no_signal: tuple[tuple[int, int], list[bytes]] | None = None
        self._seq = 0
        self._restamper = Restamper()

    # -- the PacketFeed interface

    @property
    def codec(self) -> CodecInfo:
        """What the source carries (its size and parameter sets are known once it has opened),
        on the 90 kHz clock of the feed's packets."""
        return self._codec

    @property
    def latest(self) -> EncodedPacket | None:
        return self._ring.newest

    @property
    def ring_bytes(self) -> int:
        """The bytes of camera data the ring holds now (at most RING_BYTES)."""
        return self._ring.bytes

    @property
    def running(self) -> bool:
        """True while a reader thread is open or still letting go of its source."""
        return self._run is not None or any(run.alive for run in self._released)

    @property
    def is_open(self) -> bool:
        return self._run is not None

    def start_packets(self) -> list[EncodedPacket]:
        """Where a new reader starts: the newest IDR and every packet after it (empty when the
        ring holds no IDR yet; the reader then waits for the camera's next one)."""
        return self._ring.since(lambda p: p.keyframe)

    def request_keyframe(self) -> None:
        """Counted only: a camera's keyframes come when the camera sends them."""
        self.stats.keyframe_requests += 1

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]:
        """The packet after number `after` while held, else the newest (see Ring.next)."""
        return await self._ring.next(after)

    async def next_in_order(self, after: int = 0) -> EncodedPacket:
        """The packet right after number `after` (`Overrun` when it is gone)."""
        return await self._ring.next_in_order(after)

    async def close(self) -> None:
        """Release the source now and wait for the reader thread to end."""
        self.consumers.clear()
        self._cancel_release()
        self._release()
        # a reader blocked in the network (av.open, a read) cannot be interrupted: wait a little,
        # then leave the daemon thread to end by itself rather than hold up a shutdown
        deadline = asyncio.get_running_loop().time() + CLOSE_WAIT
        while any(run.alive for run in self._released) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    # -- the reader thread and its hand-over to the loop

    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ring.reopen()
        # nothing of the last run's camera is trusted: its size is known again once it opens
        self._codec = CodecInfo("h264", 0, 0, VIDEO_TIME_BASE)
        self.problem = None
        previous = next((run for run in reversed(self._released) if run.alive), None)
        run = _Run(self, self.source_factory(), previous)
        self._run = run
        self.stats.runs += 1
        self.state = "starting"
        logger.info("passthrough %s: opening %s", self.name, run.source.description)
        run.start()

    def _opened(self, codec: CodecInfo) -> None:
        if codec.width and codec.height and not within_limits(codec.width, codec.height):
            codec = dataclasses.replace(codec, width=0, height=0)  # (a source checks it; never trusted here)
        self._codec = dataclasses.replace(codec, time_base=VIDEO_TIME_BASE)
        if codec.width and codec.height:
            self._last_size = (codec.width, codec.height)
        self._restamper.restart()

    def _set_state(self, state: str) -> None:
        self.state = state
        if state == "up":
            self.problem = None
            self._no_signal = None  # the next outage's picture says its own time

    def _count(self, what: str, count: int, problem: str | None = None) -> None:
        setattr(self.stats, what, getattr(self.stats, what) + count)
        if problem is not None:
            self.problem = problem

    def no_signal_size(self) -> tuple[int, int]:
        """The size "no signal" is shown at: the camera's last good size, else the configured one
        (even sides, within the limits: it is encoded as H.264 4:2:0)."""
        for width, height in (self._last_size or (0, 0), self.size, FALLBACK_SIZE):
            width, height = width & ~1, height & ~1
            if width >= 16 and height >= 16 and within_limits(width, height):
                return width, height
        return FALLBACK_SIZE

    def no_signal_pictures(self, description: str) -> list[bytes]:
        """The "no signal" IDRs at `no_signal_size()`, encoded once per size (called by the reader
        thread only; runs of a feed never overlap). Empty if they could not be made."""
        size = self.no_signal_size()
        made = self._no_signal
        if made is None or made[0] != size:
            pictures: list[bytes] = []
            try:
                pictures = _no_signal_pictures(size, description)
            except Exception as exc:  # noqa: BLE001 - never the reader thread's end
                logger.warning("passthrough %s: cannot make the no-signal picture at %dx%d: %s",
                               self.name, size[0], size[1], exc)
            self._no_signal = made = (size, pictures)
        return made[1]

    def _failed(self, reason: str, stalled: bool) -> None:
        self.error = reason
        self.stats.failures += 1
        self.stats.stalls += stalled

    def _publish(self, source_packet: SourcePacket, captured: float, wall: float) -> None:
        pts = self._restamper.stamp(source_packet.pts, source_packet.time_base, wall)
        self.stats.discontinuities = self._restamper.discontinuities
        packet = av.Packet(source_packet.data)
        packet.pts = packet.dts = pts
        packet.time_base = VIDEO_TIME_BASE
        self._seq += 1  # numbers grow across runs, so a reader never waits on an old number
        size = len(source_packet.data)
        stats = self.stats
        stats.packets += 1
        stats.bytes += size
        if source_packet.keyframe:
            stats.keyframes += 1
        self._ring.publish(EncodedPacket(self._seq, packet, source_packet.keyframe, captured, size, self._codec))


class _Run:
    """One run of the reader thread: open, read, retry with back-off, until stopped."""

    def __init__(self, feed: PassthroughFeed, source: PacketSource, previous: _Run | None) -> None:
        self.feed = feed
        self.source = source
        self.previous = previous
        self.state = "starting"
        self._stop = threading.Event()
        self._no_signal_count = 0
        #: said once per run: access units too large, filler data
        self._said: set[str] = set()
        #: the source's failures, said once per change of reason over the feed's life
        if feed.failure_log is None:
            feed.failure_log = Failures(source.description)
        self.failures = feed.failure_log
        self._thread = threading.Thread(target=self._guarded, name=f"passthrough {source.description}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # for good where the source can tell it from the stall watch's interrupt (a source that opens
        # again after): one that came just before the source's open is not lost in it
        stop = getattr(self.source, "stop", None)
        if callable(stop):
            stop()
        else:
            self.source.interrupt()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.feed._from_thread(self, self.feed._set_state, state)

    def _guarded(self) -> None:
        """`_main`, started again after anything it did not expect: the thread ends only when stopped."""
        while True:
            try:
                self._main()
                return
            except Exception:  # noqa: BLE001 - logged; the camera is retried
                logger.exception("%s: the reader failed; retrying", self.source.description)
                self._set_state("retrying")
                if self._stop.wait(1.0):
                    return

    def _fault(self, exc: Exception) -> None:
        """A failure of the source: a refused size is counted (said by `_failed`, with the others)."""
        if isinstance(exc, SizeRefused):
            self.feed._from_thread(self, self.feed._count, "refused", 1, str(exc))

    def _admit(self, packet: SourcePacket) -> SourcePacket | None:
        """An access unit as it is stored: without filler data; None (dropped, counted, said once
        a run) when it is larger than MAX_PACKET_BYTES."""
        data = packet.data
        if _has_filler(data):
            stripped = _strip_filler(data)
            self.feed._from_thread(self, self.feed._count, "filler_bytes", len(data) - len(stripped))
            if "filler" not in self._said:
                self._said.add("filler")
                logger.info("%s sends filler data (%d of %d bytes in one picture): stripped",
                            self.source.description, len(data) - len(stripped), len(data))
            packet = dataclasses.replace(packet, data=stripped)
            if not stripped:
                return None
        size = len(packet.data)
        if size > MAX_PACKET_BYTES:
            problem = f"an access unit of {size} bytes, more than {MAX_PACKET_BYTES}: dropped"
            self.feed._from_thread(self, self.feed._count, "oversize", 1, problem)
            if "oversize" not in self._said:
                self._said.add("oversize")
                logger.warning("%s sent %s (said once)", self.source.description, problem)
            return None
        return packet

    def _main(self) -> None:
        previous, self.previous = self.previous, None
        if previous is not None:
            previous._thread.join()  # the same camera, still being let go of
        feed, source, failures = self.feed, self.source, self.failures
        delay = 0.5
        opens = 0
        # a source that stays connected but gives no picture is interrupted by this watch: a
        # camera's RTCP or keep-alive answers keep its socket's time-out from ever firing
        watch = StallWatch(source, self._stop)
        while not self._stop.is_set():
            try:
                source.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                self._fault(exc)
                if not self._stop.is_set():
                    self._failed(failure_reason(exc), opening=True, exc=exc)
                self._no_signal(delay)
                delay = min(delay * 2, self.feed.retry_max)
                continue
            opens += 1
            feed._from_thread(self, _count_open, feed, opens > 1)
            feed._from_thread(self, feed._opened, source.codec)
            if self.state == "starting":
                logger.info("%s opened: %s", source.description, _describe(source))
            else:
                logger.debug("%s opened again", source.description)
            # what comes before the first IDR cannot be decoded (after a "no signal" picture,
            # it would be decoded against that): start each opening at an IDR
            idr_seen = False
            up_since: float | None = None
            watch.reading()
            try:
                while not self._stop.is_set():
                    packet = source.read()
                    if packet is None:
                        if self._stop.is_set():
                            break  # interrupted: released, not ended
                        if watch.fired:
                            self._failed(f"no picture for {watch.seconds:g} s", stalled=True)
                        else:
                            self._failed(getattr(source, "end_reason", None) or "the stream ended")
                        break
                    watch.picture()  # every picture counts, dropped ones and those before the first IDR too
                    admitted = self._admit(packet)
                    if admitted is None:
                        idr_seen = False  # what follows a dropped picture waits for an IDR
                        continue
                    if not idr_seen:
                        if not admitted.keyframe:
                            continue
                        idr_seen = True
                    if self.state != "up":
                        failures.recovered()
                        up_since = time.monotonic()
                    self._set_state("up")
                    feed._from_thread(self, feed._publish, admitted, time.time(), time.monotonic())
            except Exception as exc:  # noqa: BLE001
                self._fault(exc)
                if not self._stop.is_set():
                    if watch.fired:  # the watch's interrupt, seen as an error by the source
                        self._failed(f"no picture for {watch.seconds:g} s", stalled=True)
                    else:
                        self._failed(failure_reason(exc), exc=exc)
            finally:
                watch.done()
                source.close()
            if up_since is not None and time.monotonic() - up_since >= STABLE_SECONDS:
                delay = 0.5  # it worked for a while: a new outage starts the back-off again
            if not self._stop.is_set():
                self._no_signal(delay)
                delay = min(delay * 2, self.feed.retry_max)
        logger.info("%s released", source.description)

    def _failed(self, reason: str, *, stalled: bool = False, opening: bool = False,
                exc: BaseException | None = None) -> None:
        """One failure of the source: logged (once per change of reason), counted, and shown in
        the feed's state and error until pictures come again."""
        self.failures.failed(reason, stalled=stalled, opening=opening, exc=exc)
        self.feed._from_thread(self, self.feed._failed, reason, stalled)
        self._set_state("stalled" if stalled else "retrying")

    def _no_signal(self, seconds: float) -> None:
        """Wait `seconds` (or until stopped), showing viewers a "no signal" picture meanwhile, as
        an H.264 IDR of its own a few times a second (the camera's next IDR replaces it)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            if self.state in ("retrying", "stalled"):
                packet = self._no_signal_packet()
                if packet is not None:
                    self.feed._from_thread(self, self.feed._publish, packet, time.time(), time.monotonic())
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(NO_SIGNAL_INTERVAL, left))

    def _no_signal_packet(self) -> SourcePacket | None:
        """The next "no signal" IDR: made once per size (the camera's last good size, else the
        configured one), then the same bytes again (two in turn: consecutive IDRs differ in
        idr_pic_id, as H.264 wants)."""
        pictures = self.feed.no_signal_pictures(self.source.description)
        if not pictures:
            return None
        data = pictures[self._no_signal_count % len(pictures)]
        self._no_signal_count += 1
        return SourcePacket(data, round(time.monotonic() * VIDEO_CLOCK_RATE), VIDEO_TIME_BASE, True)


def _no_signal_pictures(size: tuple[int, int], description: str) -> list[bytes]:
    """Two "no signal" IDRs (with their parameter sets) at `size`."""
    width, height = size
    encoder = _intra_encoder(width, height)
    image = no_signal_image(width, height, description)
    pictures = []
    for pts in range(2):
        picture = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        picture.pts = pts
        pictures.append(b"".join(bytes(p) for p in encoder.encode(picture)))
    pictures += [b"".join(bytes(p) for p in encoder.encode(None))]
    return [data for data in pictures if data]


def _weigh(packet: EncodedPacket) -> int:
    return packet.size


def _strip_filler(data: bytes) -> bytes:
    """Annex-B bytes without their filler NAL units (each kept one with its own start code)."""
    starts = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        starts.append(pos)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    kept = [data[start:end] for start, end in zip(starts, [*starts[1:], len(data)], strict=True)
            if start + 3 < len(data) and data[start + 3] & 0x1F != NAL_FILLER]
    return b"".join(kept)


def _has_filler(data: bytes) -> bool:
    """Whether Annex-B bytes hold a filler NAL unit (looked for without copying the bytes)."""
    pos = data.find(b"\x00\x00\x01")
    while 0 <= pos < len(data) - 3:
        if data[pos + 3] & 0x1F == NAL_FILLER:
            return True
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return False


def _intra_encoder(width: int, height: int) -> Any:
    """A libx264 encoder whose every picture is an IDR with its parameter sets (for "no signal")."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 5)
    codec.gop_size = 1
    codec.profile = "Baseline"
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"}
    return codec


def _count_open(feed: PassthroughFeed, again: bool) -> None:
    feed.stats.opens += 1
    if again:
        feed.stats.reopenings += 1


def _describe(source: PacketSource) -> str:
    codec = source.codec
    mode = "passthrough" if source.passthrough else "not passthrough"
    return f"{codec.codec} {codec.width}x{codec.height} {codec.profile_level_id or ''} ({mode})"
