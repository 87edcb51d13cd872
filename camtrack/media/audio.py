"""A camera's sound: a second packet feed of the camera, on its own clock (48 kHz Opus, 8 kHz G.711).

An `AudioSource` (blocking, read by a thread of the feed's own, like a `PacketSource`) gives sound
as it comes: PCM (`av.AudioFrame`: the test tone, a file's or a stream's AAC or G.711 decoded), or
Opus packets to pass through as they are. The `AudioFeed` encodes PCM to Opus on that thread, once
for every listener, numbers the packets, stamps them on the 48 kHz clock from their capture time
and publishes them into a ring (newest wins, nothing queued per reader), so it is a `PacketFeed`
like the video's: the same readers, fan-out and RTP sender carry it. It runs only while someone
listens: the first reader opens the source, the last one releases it `linger` seconds later.

A camera whose sound is G.711 (µ-law, A-law) also has a feed of its own packets as they come
(`PassedAudio`, the audio tier of that codec: `Tier(codec="pcmu")`), on their 8 kHz clock, for
listeners who take that codec: the same thread, the same one reading of the camera, publishes
them there untouched, and decodes and encodes them to Opus only while the Opus feed has readers.
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
#: G.711's RTP clock (its sample rate)
G711_CLOCK_RATE = 8000
#: the codecs passed through as they come (camtrack's names, as tiers and SDP say them), and FFmpeg's
PASSED_CODECS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}
#: FFmpeg's names of a source's codec, in camtrack's (the rest keep FFmpeg's)
OWN_CODEC_NAMES = {ffmpeg: name for name, ffmpeg in PASSED_CODECS.items()}


def g711_codec(name: str) -> CodecInfo:
    """What a feed of a camera's own G.711 (`name`: pcmu or pcma) carries: 8 kHz, its own clock."""
    return CodecInfo(name, 0, 0, fractions.Fraction(1, G711_CLOCK_RATE), kind=MediaKind.AUDIO,
                     clock_rate=G711_CLOCK_RATE)


class AudioClosed(FeedClosed):
    """The audio feed stopped while a reader waited for a packet."""


@dataclass(frozen=True)
class AudioChunk:
    """Sound as a source gives it: PCM to encode (`frame`), an Opus packet to pass on (`opus`) or a
    G.711 packet (`g711`, in the codec `g711_codec`: pcmu or pcma) to pass on to listeners who take
    it and to decode for the others, and the wall time (seconds since the epoch) of its first sample."""

    captured: float
    frame: av.AudioFrame | None = None
    opus: bytes | None = None
    #: samples an Opus packet lasts (at 48 kHz), or a G.711 packet (at 8 kHz: its length)
    samples: int = FRAME_SAMPLES
    g711: bytes | None = None
    g711_codec: str = ""


class AudioSource(Protocol):
    """Where sound comes from: `open()`, `read()` until None (it ended), `close()`; all on the feed's
    thread. `interrupt()` may be called from any thread to end a wait early. A source may say its
    sound's codec once open in `codec_name` (FFmpeg's name: "pcm_mulaw", "aac", ...); one that does
    not gives raw sound ("pcm")."""

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
    """Presentation times on the feed's clock (48 kHz, or 8 kHz for G.711): the running sample
    count (no gap, no overlap from packet to packet, as a player needs), set again from the capture
    time after a gap."""

    def __init__(self, rate: int = AUDIO_CLOCK_RATE) -> None:
        self.rate = rate
        self._origin: float | None = None
        self._next = 0

    def pts(self, captured: float, samples: int) -> int:
        if self._origin is None:
            self._origin = captured
        by_clock = round((captured - self._origin) * self.rate)
        if abs(by_clock - self._next) > MAX_DRIFT * self.rate:
            self._next = max(by_clock, self._next)
        pts = self._next
        self._next += samples
        return pts


class _StandAlonePackets:
    """The reading side of a feed of sound, whose packets each stand alone: a listener starts at the
    next one, there is no keyframe to ask for; read from the feed's ring."""

    _ring: Ring[EncodedPacket]

    @property
    def latest(self) -> EncodedPacket | None:
        return self._ring.newest

    def start_packets(self) -> list[EncodedPacket]:
        """Nothing: a listener starts at the next packet (each one stands alone)."""
        return []

    def request_keyframe(self) -> None:
        """Nothing to do: every sound packet (Opus, G.711) can be decoded alone."""

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]:
        return await self._ring.next(after)

    async def next_in_order(self, after: int = 0) -> EncodedPacket:
        return await self._ring.next_in_order(after)


class AudioFeed(ThreadFed["_AudioRun"], _StandAlonePackets):
    """A camera's sound as Opus packets (a `PacketFeed` of kind audio; see the module's docstring)."""

    #: every Opus packet starts anew: a listener starts at the next one
    makes_keyframes = False

    _releasing = "audio %s: no listeners, releasing %s"

    def __init__(self, name: str, source_factory: Callable[[], AudioSource], *, linger: float = 3.0,
                 own_codec: str | None = None) -> None:
        super().__init__(linger)
        self.name = name
        self.source_factory = source_factory
        self.stats = AudioStats()
        #: `idle`, `starting`, `up` or `retrying`
        self.state = "idle"
        self.error: str | None = None
        #: the codec of the camera's own sound (camtrack's name: pcmu, pcma, opus; else FFmpeg's: aac,
        #: ...; "pcm" for raw sound), once known: when the camera was set up (a file, the tone) or
        #: when its source opened (a stream); None before
        self.own_codec = own_codec
        #: the feeds of the camera's own packets passed through as they come, by codec (PassedAudio:
        #: made at first need, only for the camera's own G.711)
        self.passed: dict[str, PassedAudio] = {}
        #: whether the Opus feed has readers now (read by the thread: it decodes and encodes a
        #: camera's G.711 only then)
        self.opus_wanted = False
        #: readers that do not read the Opus feed (the passed feeds', a codec probe's)
        self._quiet: set[object] = set()
        #: set when a run opened its source (its codec known) or failed to
        self._known: asyncio.Event | None = None
        self._ring: Ring[EncodedPacket] = Ring(RING_PACKETS, lambda: AudioClosed(name))
        self._seq = 0

    # -- readers: of the Opus feed, or (quiet) of a passed feed

    def attach(self, reader: object, *, quiet: bool = False) -> None:
        """Add a reader of the Opus feed (or, `quiet`, one that only keeps the source open)."""
        if quiet:
            self._quiet.add(reader)
        else:
            self.opus_wanted = True  # (before the first run's thread reads anything)
        super().attach(reader)
        self._wants()

    def detach(self, reader: object) -> None:
        super().detach(reader)
        self._quiet.discard(reader)
        self._wants()

    def _wants(self) -> None:
        self.opus_wanted = any(reader not in self._quiet for reader in self.consumers)

    def passed_feed(self, codec: str | None) -> PassedAudio | None:
        """The feed of the camera's own packets in `codec` (pcmu, pcma) passed through untouched,
        when the camera's sound is known to be of that codec, else None."""
        if codec is None or codec != self.own_codec or codec not in PASSED_CODECS:
            return None
        feed = self.passed.get(codec)
        if feed is None:
            feed = self.passed[codec] = PassedAudio(self, codec)
        return feed

    async def learn_codec(self, timeout: float = 3.0) -> str | None:
        """The codec of the camera's own sound (`own_codec`), opening its source to learn it when
        it is not known yet (at most `timeout` seconds: a stream's description); None when it
        cannot be known now (the source fails: it is asked again at a later call)."""
        if self.own_codec is not None or self.state == "retrying":
            return self.own_codec
        token = object()
        self.attach(token, quiet=True)  # (released `linger` after: a listener coming next finds it open)
        try:
            known = self._known
            if known is not None:
                await asyncio.wait_for(known.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self.detach(token)
        return self.own_codec

    # -- the PacketFeed interface

    @property
    def codec(self) -> CodecInfo:
        return OPUS

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def is_open(self) -> bool:
        return self._run is not None

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
        for passed in self.passed.values():
            passed._ring.reopen()
        self._known = asyncio.Event()
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

    def _release(self) -> None:
        super()._release()
        for passed in self.passed.values():
            passed._ring.close()

    def _opened(self, codec: str) -> None:
        """The run's source opened: its sound is in `codec` (camtrack's name, or FFmpeg's)."""
        self.own_codec = codec
        self._state_is("up")

    def _state_is(self, state: str, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.error = error
            self.stats.failures += 1
        if state in ("up", "retrying") and self._known is not None:
            self._known.set()


class PassedAudio(_StandAlonePackets):
    """A camera's own G.711 packets (pcmu or pcma) as they come, on their 8 kHz clock: a `PacketFeed`
    of kind audio beside its `AudioFeed` (the Opus one), published by the same thread from the same
    reading of the camera. Its readers keep that feed's source open but start no Opus encoder."""

    makes_keyframes = False

    def __init__(self, feed: AudioFeed, codec: str) -> None:
        self.name = feed.name
        self.feed = feed
        self._codec = g711_codec(codec)
        self._ring: Ring[EncodedPacket] = Ring(RING_PACKETS, lambda: AudioClosed(feed.name))
        if feed.running:
            self._ring.reopen()
        self.consumers: set[object] = set()
        #: whether it has readers (read by the feed's thread: it publishes here only then)
        self.wanted = False
        self._seq = 0

    @property
    def codec(self) -> CodecInfo:
        return self._codec

    @property
    def running(self) -> bool:
        return self.feed.running

    def attach(self, reader: object) -> None:
        self.consumers.add(reader)
        self.wanted = True
        self.feed.attach(reader, quiet=True)

    def detach(self, reader: object) -> None:
        self.consumers.discard(reader)
        self.wanted = bool(self.consumers)
        self.feed.detach(reader)

    def _publish(self, packet: av.Packet[Any], captured: float, size: int) -> None:
        self._seq += 1
        self.feed.stats.bytes += size
        self._ring.publish(EncodedPacket(self._seq, packet, True, captured, size, self._codec))


class _G711Decoder:
    """A camera's G.711 decoded into 20 ms frames of 48 kHz mono for the Opus encoder (made when
    the Opus feed has readers, dropped when it has none)."""

    def __init__(self, codec: str) -> None:
        decoder = av.CodecContext.create(PASSED_CODECS[codec], "r")
        assert isinstance(decoder, av.AudioCodecContext)
        decoder.sample_rate = G711_CLOCK_RATE
        decoder.layout = "mono"
        self.codec = codec
        self._decoder = decoder
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._fifo = av.AudioFifo()
        self._wall = 0.0

    def frames(self, chunk: AudioChunk) -> list[tuple[float, av.AudioFrame]]:
        """The 20 ms frames `chunk` completes, each with the wall time of its first sample."""
        assert chunk.g711 is not None
        if self._fifo.samples == 0:
            self._wall = chunk.captured
        for decoded in self._decoder.decode(av.Packet(chunk.g711)):
            for frame in self._resampler.resample(decoded):
                frame.pts = None
                self._fifo.write(frame)
        out: list[tuple[float, av.AudioFrame]] = []
        while True:
            cut = self._fifo.read(FRAME_SAMPLES)
            if cut is None:
                break
            cut.pts = None
            out.append((self._wall, cut))
            self._wall += FRAME_SAMPLES / AUDIO_CLOCK_RATE
        return out


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
                codec = getattr(source, "codec_name", "") or "pcm"
                feed._from_thread(self, feed._opened, OWN_CODEC_NAMES.get(codec, codec))
                delay = RETRY_SECONDS
                self._pump()
            except Exception as exc:  # noqa: BLE001 - a source's failure: said once per reason, retried
                reason = str(exc) or type(exc).__name__
                if self._stop.is_set():  # (stopped while it opened or read: no failure to say)
                    break
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
        """Read, pass on and encode until the source ends or the run is stopped (on this thread)."""
        feed, source = self.feed, self.source
        clock = AudioClock()
        g711_clock = AudioClock(G711_CLOCK_RATE)
        encoder: av.AudioCodecContext | None = None
        decoder: _G711Decoder | None = None
        pending: list[float] = []  # capture times of the frames in the encoder, oldest first

        def encode(frame: av.AudioFrame, captured: float) -> None:
            nonlocal encoder
            if encoder is None:
                encoder = opus_encoder()
                feed.stats.encoders += 1
            began = time.perf_counter()
            frame.pts = None  # (the encoder's own count; the packets get the feed's clock below)
            pending.append(captured)
            for encoded in encoder.encode(frame):
                at = pending.pop(0) if pending else captured
                data = bytes(encoded)
                packet = av.Packet(data)
                packet.pts = packet.dts = clock.pts(at, FRAME_SAMPLES)
                packet.time_base = AUDIO_TIME_BASE
                feed.stats.encoded += 1
                feed._from_thread(self, feed._publish, packet, at, len(data))
            feed.stats.encode_seconds += time.perf_counter() - began

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
            if chunk.g711 is not None:
                passed = feed.passed.get(chunk.g711_codec)
                if passed is not None and passed.wanted:  # untouched, on its own 8 kHz clock
                    packet = av.Packet(chunk.g711)
                    packet.pts = packet.dts = g711_clock.pts(chunk.captured, chunk.samples)
                    packet.time_base = passed.codec.time_base
                    feed.stats.passed += 1
                    feed._from_thread(self, passed._publish, packet, chunk.captured, len(chunk.g711))
                if not feed.opus_wanted:  # no Opus listener: no decoder, no encoder
                    encoder = decoder = None
                    pending.clear()
                    continue
                if decoder is None or decoder.codec != chunk.g711_codec:
                    decoder = _G711Decoder(chunk.g711_codec)
                began = time.perf_counter()
                frames = decoder.frames(chunk)
                feed.stats.encode_seconds += time.perf_counter() - began
                for captured, frame in frames:
                    encode(frame, captured)
                continue
            if chunk.frame is not None and feed.opus_wanted:
                encode(chunk.frame, chunk.captured)
