"""Local sound through ALSA, read and written with PyAV (FFmpeg's `alsa` devices): a microphone as
a camera's sound (`--audio alsa:DEVICE`) and a speaker a viewer talks to (`--talk alsa:DEVICE`),
docs/audio.md. Blocking: both run on threads of their own, never on the event loop.

PyAV's wheel carries its own libasound, which looks for ALSA's configuration where it was built
(/tmp/vendor/share/alsa) and so knows no device at all; `use_system_alsa_config` points it at the
system's (/usr/share/alsa) unless the environment already says where it is.
"""

from __future__ import annotations

import ctypes
import fractions
import logging
import os
import threading
import time
from typing import Any

import av
import numpy as np

from ..media.audio import AUDIO_CLOCK_RATE, FRAME_SAMPLES, AudioChunk

logger = logging.getLogger(__name__)

#: what names an ALSA device in --audio and --talk
PREFIX = "alsa:"
#: where Debian and most distributions keep ALSA's configuration (alsa.conf, cards/, pcm/)
SYSTEM_ALSA_DIR = "/usr/share/alsa"


def alsa_device(spec: str | None) -> str | None:
    """The device of an `alsa:DEVICE` setting ("default", "plughw:CARD=Mic", ...), else None."""
    if spec and spec.startswith(PREFIX) and len(spec) > len(PREFIX):
        return spec[len(PREFIX):]
    return None


def check_device(what: str, device: str) -> None:
    """ValueError unless `device` can be an ALSA PCM name (printable, no spaces or quotes)."""
    if not device or len(device) > 200 or not device.isprintable() or any(c in device for c in " \t'\"\\"):
        raise ValueError(f"{what}: {PREFIX}{device!r} is not an ALSA device name (like alsa:default or "
                         "alsa:plughw:CARD=Mic)")


def use_system_alsa_config() -> None:
    """Point PyAV's own libasound at the system's ALSA configuration, unless ALSA_CONFIG_PATH or
    ALSA_CONFIG_DIR already says where it is (called before any device is opened, on the thread that
    sets a camera up: setting the environment while other threads read it is not safe); and send its
    messages to this module's debug log rather than stderr (a device that does not open is said
    once by the audio feed; ALSA would say it again at every retry)."""
    _route_alsa_messages()
    if "ALSA_CONFIG_PATH" in os.environ or "ALSA_CONFIG_DIR" in os.environ:
        return
    if os.path.isfile(os.path.join(SYSTEM_ALSA_DIR, "alsa.conf")):
        os.environ["ALSA_CONFIG_DIR"] = SYSTEM_ALSA_DIR


#: ALSA's error handler type: (file, line, function, err, fmt, ...): the variadic rest is not read
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
_routed: list[object] = []


def _alsa_message(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    logger.debug("ALSA (%s): %s%s", (function or b"").decode(errors="replace"),
                 (fmt or b"").decode(errors="replace"), f": {os.strerror(-err)}" if err < 0 else "")


def _route_alsa_messages() -> None:
    """Once: snd_lib_error_set_handler of the libasound PyAV loaded (its wheel's own, or the
    system's), found among the process's mapped libraries; nothing if there is none."""
    if _routed:
        return
    _routed.append(None)
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libasound" in line and line.rstrip().endswith(
                (".so", ".so.2", ".so.2.0.0"))), None)
        if path is None:
            return
        handler = _HANDLER(_alsa_message)
        ctypes.CDLL(path).snd_lib_error_set_handler(handler)
        _routed.append(handler)  # (kept alive: ALSA calls it for as long as the process runs)
    except (OSError, AttributeError):
        logger.debug("ALSA's messages stay on stderr", exc_info=True)


class AlsaAudioSource:
    """A local microphone (an ALSA capture device) as a camera's sound: its PCM as it comes, in 20 ms
    frames of 48 kHz mono, each stamped with the wall time of its first sample. Asked for 48 kHz mono
    (a `plughw:` or `default` device converts; a bare `hw:` one that refuses mono is opened in its own
    two channels and mixed down here)."""

    def __init__(self, device: str, *, open_timeout: float = 10.0) -> None:
        self.device = device
        self.description = f"ALSA capture device {device!r}"
        self.open_timeout = open_timeout
        self._container: Any = None
        self._packets: Any = None
        self._stop = threading.Event()
        self._resampler: av.AudioResampler | None = None
        self._pending = bytearray()
        #: bytes of 20 ms at the device's rate and channels; its PyAV sample format and layout
        self._chunk_bytes = 0
        self._format = "s16"
        self._layout = "mono"
        self._rate = AUDIO_CLOCK_RATE
        self._codec = ""
        self._wall: float | None = None
        self._queue: list[AudioChunk] = []

    def open(self) -> None:
        self._stop.clear()
        try:
            try:
                container = self._open_with(channels=1)
            except av.FFmpegError:
                # a device that takes two channels only (hw:): its own layout, mixed down by the resampler
                container = self._open_with(channels=2)
        except av.FFmpegError:
            # FFmpeg says EIO whatever ALSA said (ALSA's own words: this module's debug log)
            raise OSError("does not open: no such device, or another program holds it (`arecord -L` lists "
                          "the devices)") from None
        stream = container.streams.audio[0]
        context = stream.codec_context
        self._codec = context.name
        self._rate = context.sample_rate or AUDIO_CLOCK_RATE
        channels = context.layout.nb_channels
        self._layout = {1: "mono", 2: "stereo"}.get(channels, context.layout.name)
        self._format = context.format.name
        self._chunk_bytes = int(self._rate * 0.02) * context.format.bytes * channels
        self._container, self._packets = container, container.demux(stream)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._pending = bytearray()
        self._wall = None

    def _open_with(self, channels: int) -> Any:
        return av.open(self.device, format="alsa", timeout=self.open_timeout,
                       options={"sample_rate": str(AUDIO_CLOCK_RATE), "channels": str(channels)})

    def read(self) -> AudioChunk | None:
        while not self._queue:
            if self._stop.is_set():
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            if packet.size == 0:
                continue
            # FFmpeg reads one ALSA period a packet, as small as the device allows (a few samples):
            # the raw PCM is gathered and cut into 20 ms frames, not decoded packet by packet
            self._pending += bytes(packet)
            now = time.time()  # (when the newest sample came: the older ones came that much before)
            while len(self._pending) >= self._chunk_bytes:
                first = now - len(self._pending) / (self._chunk_bytes / 0.02)
                raw = bytes(self._pending[:self._chunk_bytes])
                del self._pending[:self._chunk_bytes]
                self._take(raw, first)
        return self._queue.pop(0)

    def _take(self, raw: bytes, first: float) -> None:
        """20 ms of the device's PCM, whose first sample came at `first`: resampled to 48 kHz mono,
        cut into the feed's frames, stamped by the running sample count (from `first` after a gap)."""
        assert self._resampler is not None
        samples = int(self._rate * 0.02)
        if self._wall is None or abs(self._wall - first) > 0.5:
            self._wall = first
        dtype = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "u8": np.uint8}.get(self._format, np.int16)
        channels = len(raw) // (samples * np.dtype(dtype).itemsize)
        array = np.frombuffer(raw, dtype).reshape(1, samples * channels)
        frame = av.AudioFrame.from_ndarray(array, format=self._format, layout=self._layout)
        frame.sample_rate = self._rate
        for out in self._resampler.resample(frame):
            data = out.to_ndarray().reshape(-1)
            for start in range(0, len(data) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
                piece = av.AudioFrame.from_ndarray(data[start:start + FRAME_SAMPLES][None, :], format="s16",
                                                   layout="mono")
                piece.sample_rate = AUDIO_CLOCK_RATE
                piece.time_base = fractions.Fraction(1, AUDIO_CLOCK_RATE)
                self._queue.append(AudioChunk(self._wall, frame=piece))
                self._wall += FRAME_SAMPLES / AUDIO_CLOCK_RATE

    def close(self) -> None:
        container, self._container = self._container, None
        self._queue.clear()
        if container is not None:
            container.close()

    def interrupt(self) -> None:
        self._stop.set()


#: seconds of sound the speaker may hold ahead of what it plays: what comes faster (a burst after the
#: network stalled) is dropped, or it would delay the rest of the talk by as much (FFmpeg asks ALSA for
#: a buffer of up to 2.7 s, and playing starts at the first write)
MAX_QUEUED = 0.25


class AlsaPlayback:
    """A local speaker (an ALSA playback device) a viewer talks to: `open()`, `send(frame)` as the
    viewer's sound comes (any rate and layout: resampled to 48 kHz mono, written as 16-bit PCM),
    `close()`. The talk-back sink beside the RTSP back-channel (camtrack.sources.backchannel).

    What the device holds is reckoned from the wall clock (it plays 48 000 samples a second from the
    first write; after a pause it starts again): sound beyond MAX_QUEUED of it is dropped."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.description = f"ALSA playback device {device!r}"
        self._container: Any = None
        self._stream: Any = None
        self._resampler: av.AudioResampler | None = None
        self._pts = 0
        #: when the device would have played everything written so far (time.monotonic())
        self._played_out = 0.0
        #: frames written; frames dropped (they came faster than the device plays)
        self.frames = 0
        self.dropped = 0

    def open(self) -> None:
        container = av.open(self.device, mode="w", format="alsa")
        try:
            stream = container.add_stream("pcm_s16le", rate=AUDIO_CLOCK_RATE, layout="mono")
            container.start_encoding()  # (the device is opened here: a missing or busy one fails now)
        except av.FFmpegError:
            self._close_quietly(container)
            raise OSError("no such device, or another program holds it (`aplay -L` lists the devices)") from None
        except BaseException:
            self._close_quietly(container)
            raise
        self._container, self._stream = container, stream
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._pts = 0

    def send(self, frame: av.AudioFrame) -> None:
        assert self._resampler is not None and self._container is not None
        frame.pts = None
        now = time.monotonic()
        self._played_out = max(self._played_out, now)  # (it ran dry: it starts again with this)
        if self._played_out - now > MAX_QUEUED:
            self.dropped += 1
            return
        for resampled in self._resampler.resample(frame):
            self._played_out += resampled.samples / AUDIO_CLOCK_RATE
            resampled.pts = self._pts
            resampled.time_base = fractions.Fraction(1, AUDIO_CLOCK_RATE)
            self._pts += resampled.samples
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            self._close_quietly(container)

    @staticmethod
    def _close_quietly(container: Any) -> None:
        try:
            container.close()
        except av.FFmpegError:
            pass
