"""Where a camera's sound comes from (camtrack.media.audio.AudioSource): the test pattern's tone, and
the audio track of a file or a stream read with PyAV (AAC and the rest decoded, to be encoded to
Opus once; Opus passed on as it is; G.711 passed on as it is, for the feed to pass through to
listeners who take it and to decode for the others)."""

from __future__ import annotations

import fractions
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from ..media.audio import AUDIO_CLOCK_RATE, FRAME_SAMPLES, G711_CLOCK_RATE, OWN_CODEC_NAMES, AudioChunk, AudioSource
from .alsa import AlsaAudioSource, alsa_device, use_system_alsa_config
from .demux import is_stream, open_options
from .urls import redact

#: the tone's beep: its pitch (Hz), how long it lasts from each whole second (s), its amplitude
BEEP_HZ = 1000.0
BEEP_SECONDS = 0.1
BEEP_AMPLITUDE = 0.5


def beeping(wall: float) -> bool:
    """Whether the test tone beeps (and the pattern shows its mark) at wall time `wall`: for
    BEEP_SECONDS from each whole second, so that lip-sync can be read from both."""
    return wall % 1.0 < BEEP_SECONDS


class ToneSource:
    """The test pattern's sound: a 1 kHz beep for the first 100 ms of every whole second of the wall
    clock, silence between, 20 ms frames of 48 kHz mono given in real time (each when its first
    sample is due: its capture time)."""

    def __init__(self) -> None:
        self.description = "test tone"
        self.codec_name = "pcm"
        self._stop = threading.Event()
        self._next = 0.0

    def open(self) -> None:
        self._stop.clear()
        self._next = time.time()

    def read(self) -> AudioChunk | None:
        now = time.time()
        if self._next > now:
            if self._stop.wait(self._next - now):
                return None
        elif now - self._next > 0.2:
            self._next = now  # late (a stalled machine): no burst to catch up
        start = self._next
        self._next += FRAME_SAMPLES / AUDIO_CLOCK_RATE
        return AudioChunk(start, frame=tone_frame(start))

    def close(self) -> None:
        pass

    def interrupt(self) -> None:
        self._stop.set()


def tone_frame(start: float) -> av.AudioFrame:
    """The tone's 20 ms from wall time `start` (s16 mono, 48 kHz)."""
    times = start + np.arange(FRAME_SAMPLES) / AUDIO_CLOCK_RATE
    on = (times % 1.0) < BEEP_SECONDS
    wave = np.sin(2 * np.pi * BEEP_HZ * times) * (BEEP_AMPLITUDE * 32767) * on
    frame = av.AudioFrame.from_ndarray(wave.astype(np.int16)[None, :], format="s16", layout="mono")
    frame.sample_rate = AUDIO_CLOCK_RATE
    return frame


class AvAudioSource:
    """The first audio track of a file or stream, read with PyAV: Opus passed on, anything else
    (AAC, G.711 µ-law and A-law, MP3, ...) decoded and cut into 20 ms frames of 48 kHz mono for the
    feed's one Opus encoder. Files are paced in real time and start over at their end."""

    def __init__(self, url: str, *, rtsp_transport: str = "tcp", open_timeout: float = 10.0,
                 read_timeout: float = 5.0) -> None:
        self.url = url
        self.live = is_stream(url)
        self.options = open_options(url, rtsp_transport=rtsp_transport, read_timeout=read_timeout)
        if url.lower().startswith(("rtsp://", "rtsps://")):
            self.options["allowed_media_types"] = "audio"  # (a session of its own: its audio only)
        self.timeouts = (open_timeout, read_timeout)
        self.description = f"audio of {redact(url)}"
        self._container: Any = None
        self._packets: Any = None
        self._stream: Any = None
        self._resampler: av.AudioResampler | None = None
        self._fifo: av.AudioFifo | None = None
        self._stop = threading.Event()
        #: wall time of the next 20 ms frame's first sample (files: paced; streams: as they come)
        self._wall: float | None = None
        self._queue: list[AudioChunk] = []
        self.codec_name = ""

    def open(self) -> None:
        # an interrupt is for good (the feed makes a source anew for each run, and interrupts it only
        # to stop the run): never cleared here, or one that came between the run's check of its stop
        # and this open would be lost, and a silent camera would hold the stopping run until the open
        # gave up (5 s: it waits an answer for the read timeout)
        if self._stop.is_set():
            raise OSError("stopped before it opened")
        self._open_container()
        self._wall = None

    def _open_container(self) -> None:
        container = av.open(self.url, options=dict(self.options), timeout=self.timeouts)
        if not container.streams.audio:
            container.close()
            raise ValueError("no audio track")
        stream = container.streams.audio[0]
        self.codec_name = own_codec_name(stream.codec_context)
        self._container, self._stream = container, stream
        self._packets = container.demux(stream)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._fifo = av.AudioFifo()

    def read(self) -> AudioChunk | None:
        while not self._queue:
            if self._stop.is_set():
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                if self.live:
                    return None
                self._restart()  # a file: once more from the start
                continue
            if packet.size == 0:
                continue
            self._take(packet)
        chunk = self._queue.pop(0)
        if not self.live:
            wait = chunk.captured - time.time()
            if wait > 0 and self._stop.wait(wait):
                return None
        return chunk

    def _restart(self) -> None:
        self._container.close()
        self._open_container()

    def _take(self, packet: Any) -> None:
        """The chunks of one packet: an Opus packet as it is, else its sound in 20 ms frames."""
        now = time.time()
        if self._wall is None or (self.live and abs(self._wall - now) > 0.5):
            self._wall = now
        if self.codec_name == "opus":
            samples = round(float(packet.duration * packet.time_base) * AUDIO_CLOCK_RATE) if packet.duration \
                else FRAME_SAMPLES
            self._queue.append(AudioChunk(self._wall, opus=bytes(packet), samples=samples))
            self._wall += samples / AUDIO_CLOCK_RATE
            return
        if self.codec_name in ("pcm_mulaw", "pcm_alaw"):  # (8 kHz mono: own_codec_name)
            data = bytes(packet)
            self._queue.append(AudioChunk(self._wall, samples=len(data), g711=data,
                                          g711_codec=OWN_CODEC_NAMES[self.codec_name]))
            self._wall += len(data) / G711_CLOCK_RATE
            return
        assert self._resampler is not None and self._fifo is not None
        for decoded in packet.decode():
            for frame in self._resampler.resample(decoded):
                frame.pts = None
                self._fifo.write(frame)
        while True:
            cut = self._fifo.read(FRAME_SAMPLES)
            if cut is None:
                break
            frame = cut
            frame.pts = None
            frame.time_base = fractions.Fraction(1, AUDIO_CLOCK_RATE)
            self._queue.append(AudioChunk(self._wall, frame=frame))
            self._wall += FRAME_SAMPLES / AUDIO_CLOCK_RATE

    def close(self) -> None:
        container, self._container = self._container, None
        self._queue.clear()
        if container is not None:
            container.close()

    def interrupt(self) -> None:
        """Stop for good (from any thread): a paced wait ends, and any later open raises at once."""
        self._stop.set()


def own_codec_name(codec: Any) -> str:
    """FFmpeg's name of an audio stream's codec (its `codec_context`); G.711 other than 8 kHz mono
    (what RTP's PCMU and PCMA are) gets its rate and channels after an @, so it is decoded rather
    than passed through."""
    name = str(codec.name)
    if name in ("pcm_mulaw", "pcm_alaw") and (codec.sample_rate != G711_CLOCK_RATE or codec.channels != 1):
        return f"{name}@{codec.sample_rate}x{codec.channels}"
    return name


def audio_codec(path: str) -> str | None:
    """The codec of the first audio track of the file at `path` (camtrack's name for G.711: pcmu,
    pcma; else FFmpeg's), or None when it has none (opened and closed: milliseconds)."""
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                return None
            name = own_codec_name(container.streams.audio[0].codec_context)
            return OWN_CODEC_NAMES.get(name, name)
    except (OSError, ValueError, av.FFmpegError):
        return None


def has_audio(path: str) -> bool:
    """Whether the file at `path` has an audio track (opened and closed: milliseconds)."""
    return audio_codec(path) is not None


def known_audio_codec(spec: str, audio: str) -> str | None:
    """The codec of the sound of the camera whose source is `spec`, when known without opening a
    stream: "pcm" for the pattern's tone and a local microphone, a file's own; None for a stream
    (learnt when it opens)."""
    if audio == "off":
        return None
    if spec == "pattern" or alsa_device(audio) is not None:
        return "pcm"
    if "://" not in spec and os.path.isfile(spec):
        return audio_codec(spec)
    return None


def audio_source_factory(spec: str, audio: str, *, rtsp_transport: str = "tcp") -> Callable[[], AudioSource] | None:
    """What makes the sound of the camera whose source is `spec` (--audio `audio`), or None when it
    has none: the pattern's tone; a file's audio track when it has one (looked at now); a stream's
    (rtsp://, http://, ...) audio track, looked for when a listener comes; `alsa:DEVICE`: a local
    microphone (camtrack.sources.alsa), whatever the picture's source."""
    device = alsa_device(audio)
    if audio == "off" or device is not None:
        if spec.lower().startswith("rtsp://"):
            from .rtsp import read_sound_of

            read_sound_of(spec, False)  # (its picture's session does not set the camera's sound up)
        if audio == "off":
            return None
    if device is not None:
        use_system_alsa_config()  # (now, on the thread that builds the camera: it sets the environment)
        return functools.partial(AlsaAudioSource, device)
    if spec == "pattern":
        return ToneSource
    if spec.lower().startswith("rtsp://") and rtsp_transport == "tcp":
        # read in the picture's session by camtrack's own reader (camtrack.sources.rtspaudio)
        from .rtsp import read_sound_of
        from .rtspaudio import SessionAudioSource

        read_sound_of(spec)
        return functools.partial(SessionAudioSource, spec, fallback=functools.partial(AvAudioSource, spec))
    if "://" in spec and is_stream(spec):
        return functools.partial(AvAudioSource, spec, rtsp_transport=rtsp_transport)
    if "://" not in spec and os.path.isfile(spec) and has_audio(spec):
        return functools.partial(AvAudioSource, spec)
    return None
