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

from .capture import no_signal_image
from .feeds import FeedClosed
from .frame import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE
from .lingering import Lingering
from .packet import CodecInfo, EncodedPacket
from .ring import Read, Ring

logger = logging.getLogger(__name__)

#: seconds `close()` waits for a reader thread stuck in the network before leaving it behind
CLOSE_WAIT = 1.0
#: seconds between "no signal" pictures while the source is retrying
NO_SIGNAL_INTERVAL = 0.2
#: packets the ring holds: the newest GOP of most cameras (4 s at 30 fps is 120; 10 s at 30 is 300)
RING_PACKETS = 300
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


class PassthroughFeed(Lingering):
    """A packet feed of a camera's own H.264 (the same interface as the shared encoder).

    Its source is opened by a reader thread when the first reader attaches and released `linger`
    seconds after the last one detaches. The thread retries with back-off when the source fails
    or ends (said once per outage). `start_packets()` is the run from the newest IDR the ring
    holds, so a viewer starts at once without asking the camera for anything.
    """

    def __init__(self, name: str, source_factory: Callable[[], PacketSource], *, linger: float = 3.0,
                 ring_size: int = RING_PACKETS, retry_max: float = 10.0) -> None:
        super().__init__(linger)
        self.name = name
        self.source_factory = source_factory
        self.retry_max = retry_max
        self.stats = PassthroughStats()
        #: `idle`, `starting`, `up` (giving packets) or `retrying`
        self.state = "idle"
        self._ring: Ring[EncodedPacket] = Ring(ring_size, lambda: PassthroughClosed(name))
        self._codec = CodecInfo("h264", 0, 0, VIDEO_TIME_BASE)
        self._seq = 0
        self._run: _Run | None = None
        self._released: list[_Run] = []
        self._loop: asyncio.AbstractEventLoop | None = None
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
        previous = next((run for run in reversed(self._released) if run.alive), None)
        run = _Run(self, self.source_factory(), previous)
        self._run = run
        self.stats.runs += 1
        self.state = "starting"
        logger.info("passthrough %s: opening %s", self.name, run.source.description)
        run.start()

    def _release(self) -> None:
        self._release_timer = None
        run, self._run = self._run, None
        if run is None:
            return
        logger.info("passthrough %s: no readers, releasing %s", self.name, run.source.description)
        run.stop()
        self._released = [r for r in self._released if r.alive] + [run]
        self._ring.close()
        self.state = "idle"

    def _from_thread(self, run: _Run, call: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._on_loop, run, call, args)
            except RuntimeError:  # the loop closed in between
                pass

    def _on_loop(self, run: _Run, call: Callable[..., None], args: tuple[Any, ...]) -> None:
        if run is self._run:  # not a late call from a run being released
            call(*args)

    def _opened(self, codec: CodecInfo) -> None:
        self._codec = dataclasses.replace(codec, time_base=VIDEO_TIME_BASE)
        self._restamper.restart()

    def _set_state(self, state: str) -> None:
        self.state = state

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
        self._no_signal_encoder: Any = None
        self._no_signal_count = 0
        self._thread = threading.Thread(target=self._main, name=f"passthrough {source.description}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.source.interrupt()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.feed._from_thread(self, self.feed._set_state, state)

    def _main(self) -> None:
        previous, self.previous = self.previous, None
        if previous is not None:
            previous._thread.join()  # the same camera, still being let go of
        feed, source = self.feed, self.source
        delay = 0.5
        opens = 0
        while not self._stop.is_set():
            try:
                source.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                if self.state != "retrying":
                    logger.warning("%s: %s; retrying", source.description, exc)
                self._set_state("retrying")
                self._no_signal(delay)
                delay = min(delay * 2, self.feed.retry_max)
                continue
            opens += 1
            feed._from_thread(self, _count_open, feed, opens > 1)
            feed._from_thread(self, feed._opened, source.codec)
            if self.state == "retrying":
                logger.debug("%s opened again", source.description)
            else:
                logger.info("%s opened: %s", source.description, _describe(source))
            # what comes before the first IDR cannot be decoded (after a "no signal" picture,
            # it would be decoded against that): start each opening at an IDR
            idr_seen = False
            try:
                while not self._stop.is_set():
                    packet = source.read()
                    if packet is not None and not idr_seen:
                        if not packet.keyframe:
                            continue
                        idr_seen = True
                    if packet is None:
                        if self._stop.is_set():
                            break  # interrupted: released, not ended
                        if self.state == "up":
                            logger.warning("%s ended; reopening", source.description)
                        self._set_state("retrying")
                        break
                    if self.state == "retrying":
                        logger.info("%s is back", source.description)
                    self._set_state("up")
                    delay = 0.5
                    feed._from_thread(self, feed._publish, packet, time.time(), time.monotonic())
            except Exception:  # noqa: BLE001
                if self.state == "up" and not self._stop.is_set():
                    logger.exception("%s failed; reopening", source.description)
                self._set_state("retrying")
            finally:
                source.close()
            if not self._stop.is_set():
                self._no_signal(delay)
                delay = min(delay * 2, self.feed.retry_max)
        logger.info("%s released", source.description)

    def _no_signal(self, seconds: float) -> None:
        """Wait `seconds` (or until stopped), showing viewers a "no signal" picture meanwhile, as
        an H.264 IDR of its own a few times a second (the camera's next IDR replaces it)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            if self.state == "retrying":
                packet = self._no_signal_packet()
                if packet is not None:
                    self.feed._from_thread(self, self.feed._publish, packet, time.time(), time.monotonic())
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(NO_SIGNAL_INTERVAL, left))

    def _no_signal_packet(self) -> SourcePacket | None:
        codec = self.feed.codec
        width, height = (codec.width, codec.height) if codec.width and codec.height else (640, 480)
        try:
            if self._no_signal_encoder is None:
                self._no_signal_encoder = _intra_encoder(width, height)
            picture = av.VideoFrame.from_ndarray(
                no_signal_image(width, height, self.source.description), format="bgr24").reformat(format="yuv420p")
            picture.pts = self._no_signal_count
            self._no_signal_count += 1
            data = b"".join(bytes(p) for p in self._no_signal_encoder.encode(picture))
        except (av.FFmpegError, ValueError) as exc:
            logger.debug("no-signal picture failed: %s", exc)
            return None
        if not data:
            return None
        return SourcePacket(data, round(time.monotonic() * VIDEO_CLOCK_RATE), VIDEO_TIME_BASE, True)


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
