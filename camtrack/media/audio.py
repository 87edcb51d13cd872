"""A camera's sound: a second packet feed of the camera, on its own 48 kHz clock.

An `AudioSource` (blocking, read by a thread of the feed's own, like a `PacketSource`) gives sound
as it comes: PCM (`av.AudioFrame`: the test tone, a file's or a stream's AAC or G.711 decoded), or
Opus packets to pass through as they are. The `AudioFeed` encodes PCM to Opus on that thread, once
for every listener, numbers the packets, stamps them on the 48 kHz clock from their capture time
and publishes them into a ring (newest wins, nothing queued per reader), so it is a `PacketFeed`
like the video's: the same readers, fan-out and RTP sender carry it. It runs only while someone
listens: the first reader opens the source, the last one releases it `linger` seconds later.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import av

from .feeds import FeedClosed
from .lingering import ThreadFed
from .packet import CodecInfo, EncodedPacket, MediaKind
from .ring import Read, Ring

logger = logging.getLogger(__name__)

#: Opus's RTP clock (whatever the sample rate inside): every audio pts camtrack writes counts in it
AUDIO_CLOCK_RATE = 48000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_CLOCK_RATE)
#: samples in one Opus frame camtrack encodes: 20 ms, what browsers send and expect
FRAME_SAMPLES = 960
#: the Opus bitrate (mono speech and room sound; a browser's own default is 32 kbit/s)
OPUS_BITRATE = 32000
#: packets the ring holds: one second of 20 ms frames (a listener further behind skips ahead)
RING_PACKETS = 50
#: a capture time this far (seconds) from where the running sample count puts it: a gap (the
#: source stalled, a file looped), so the clock follows the capture time again
MAX_DRIFT = 0.1
#: seconds before the first try again to open a source that failed, doubling up to RETRY_MAX (a
#: stream without sound is not asked again every 2 s for as long as someone listens)
RETRY_SECONDS = 2.0
RETRY_MAX = 30.0

#: what an Opus feed carries
OPUS = CodecInfo("opus", 0, 0, AUDIO_TIME_BASE, kind=MediaKind.AUDIO, clock_rate=AUDIO_CLOCK_RATE)


class AudioClosed(FeedClosed):
    """The audio feed stopped while a reader waited for a packet."""


@dataclass(frozen=True)
class AudioChunk:
    """Sound as a source gives it: PCM to encode (`frame`) or an Opus packet to pass on (`opus`),
    and the wall time (seconds since the epoch) of its first sample."""

    captured: float
    frame: av.AudioFrame | None = None
    opus: bytes | None = None
    #: samples (at 48 kHz) an Opus packet lasts
    samples: int = FRAME_SAMPLES


class AudioSource(Protocol):
    """Where sound comes from: `open()`, `read()` until None (it ended), `close()`; all on the feed's
    thread. `interrupt()` may be called from any thread to end a wait early."""

    description: str

    def open(self) -> None: ...

    def read(self) -> AudioChunk | None: ...

    def close(self) -> None: ...

    def interrupt(self) -> None: ...


@dataclass
class AudioStats:
    """What an audio feed did (camtrack_audio_* in /metrics)."""

    #: times it started (a first listener after none)
    runs: int = 0
    #: Opus encoders opened (one per run that encodes: never one per listener)
    encoders: int = 0
    #: frames encoded, packets passed through, bytes published
    encoded: int = 0
    passed: int = 0
    bytes: int = 0
    encode_seconds: float = 0.0
    #: times the source failed (then retried)
    failures: int = 0


def opus_encoder() -> av.AudioCodecContext:
    """libopus for live sound: 48 kHz mono, 20 ms frames, low delay."""
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = AUDIO_CLOCK_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = OPUS_BITRATE
    codec.time_base = AUDIO_TIME_BASE
    codec.options = {"application": "lowdelay", "frame_duration": "20"}
    codec.open()
    return codec


class AudioClock:
    """Presentation times on the 48 kHz clock: the running sample count (no gap, no overlap from
    packet to packet, as a player needs), set again from the capture time after a gap."""

    def __init__(self) -> None:
        self._origin: float | None = None
        self._next = 0

    def pts(self, captured: float, samples: int) -> int:
        if self._origin is None:
            self._origin = captured
        by_clock = round((captured - self._origin) * AUDIO_CLOCK_RATE)
        if abs(by_clock - self._next) > MAX_DRIFT * AUDIO_CLOCK_RATE:
            self._next = max(by_clock, self._next)
        pts = self._next
        self._next += samples
        return pts


class AudioFeed(ThreadFed["_AudioRun"]):
    """A camera's sound as Opus packets (a `PacketFeed` of kind audio; see the module's docstring)."""

    #: every Opus packet starts anew: a listener starts at the next one
    makes_keyframes = False

    _releasing = "audio %s: no listeners, releasing %s"

    def __init__(self, name: str, source_factory: Callable[[], AudioSource], *, linger: float = 3.0) -> None:
        super().__init__(linger)
        self.name = name
        self.source_factory = source_factory
        self.stats = AudioStats()
        #: `idle`, `starting`, `up` or `retrying`
        self.state = "idle"
        self.error: str | None = None
        self._ring: Ring[EncodedPacket] = Ring(RING_PACKETS, lambda: AudioClosed(name))
        self._seq = 0

    # -- the PacketFeed interface

    @property
    def codec(self) -> CodecInfo:
        return OPUS

    @property
    def latest(self) -> EncodedPacket | None:
        return self._ring.newest

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def is_open(self) -> bool:
        return self._run is not None

    def start_packets(self) -> list[EncodedPacket]:
        """Nothing: a listener starts at the next packet (each one stands alone)."""
        return []

    def request_keyframe(self) -> None:
        """Nothing to do: every Opus packet can be decoded alone."""

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]:
        return await self._ring.next(after)

    async def next_in_order(self, after: int = 0) -> EncodedPacket:
        return await self._ring.next_in_order(after)

    async def close(self) -> None:
        self.consumers.clear()
        self._cancel_release()
        self._release()
        deadline = time.monotonic() + 1.0
        while any(run.alive for run in self._released) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # -- the thread and its hand-over to the loop

    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ring.reopen()
        self.stats.runs += 1
        self.state = "starting"
        run = _AudioRun(self, self.source_factory())
        self._run = run
        logger.info("audio %s: opening %s", self.name, run.source.description)
        run.start()

    def _publish(self, packet: av.Packet[Any], captured: float, size: int) -> None:
        self._seq += 1
        self.stats.bytes += size
        self._ring.publish(EncodedPacket(self._seq, packet, True, captured, size, OPUS))

    def _state_is(self, state: str, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.error = error
            self.stats.failures += 1


class _AudioRun:
    """One run of the feed's thread: open the source, encode (or pass on) what it gives, retry."""

    def __init__(self, feed: AudioFeed, source: AudioSource) -> None:
        self.feed = feed
        self.source = source
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"audio {feed.name}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.source.interrupt()

    def _main(self) -> None:
        feed, source = self.feed, self.source
        said: str | None = None
        delay = RETRY_SECONDS
        while not self._stop.is_set():
            try:
                source.open()
                feed._from_thread(self, feed._state_is, "up")
                delay = RETRY_SECONDS
                self._pump()
            except Exception as exc:  # noqa: BLE001 - a source's failure: said once per reason, retried
                reason = str(exc) or type(exc).__name__
                if reason != said:
                    logger.warning("audio %s: %s: %s; retrying", feed.name, source.description, reason)
                    said = reason
                feed._from_thread(self, feed._state_is, "retrying", reason)
                delay = min(delay * 2, RETRY_MAX)
            finally:
                try:
                    source.close()
                except Exception:  # noqa: BLE001 - closing a broken source
                    logger.debug("audio %s: closing %s failed", feed.name, source.description, exc_info=True)
            self._stop.wait(delay)

    def _pump(self) -> None:
        """Read and encode until the source ends or the run is stopped (on this thread)."""
        feed, source = self.feed, self.source
        clock = AudioClock()
        encoder: av.AudioCodecContext | None = None
        pending: list[float] = []  # capture times of the frames in the encoder, oldest first
        while not self._stop.is_set():
            chunk = source.read()
            if chunk is None:
                return
            if chunk.opus is not None:
                packet = av.Packet(chunk.opus)
                packet.pts = packet.dts = clock.pts(chunk.captured, chunk.samples)
                packet.time_base = AUDIO_TIME_BASE
                feed.stats.passed += 1
                feed._from_thread(self, feed._publish, packet, chunk.captured, len(chunk.opus))
                continue
            frame = chunk.frame
            if frame is None:
                continue
            if encoder is None:
                encoder = opus_encoder()
                feed.stats.encoders += 1
            began = time.perf_counter()
            frame.pts = None  # (the encoder's own count; the packets get the feed's clock below)
            pending.append(chunk.captured)
            for encoded in encoder.encode(frame):
                captured = pending.pop(0) if pending else chunk.captured
                data = bytes(encoded)
                packet = av.Packet(data)
                packet.pts = packet.dts = clock.pts(captured, FRAME_SAMPLES)
                packet.time_base = AUDIO_TIME_BASE
                feed.stats.encoded += 1
                feed._from_thread(self, feed._publish, packet, captured, len(data))
            feed.stats.encode_seconds += time.perf_counter() - began
