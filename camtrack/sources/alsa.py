"""Local sound through ALSA, read and written with PyAV (FFmpeg's `alsa` devices): a microphone as
a camera's sound (`--audio alsa:DEVICE`) and a speaker a viewer talks to (`--talk alsa:DEVICE`),
docs/audio.md. Blocking: both run on threads of their own, never on the event loop; and the device
itself is held by a child process (camtrack/sources/alsa_io.py): FFmpeg opens, drains and closes an
ALSA device in blocking calls that keep Python's GIL, so a busy or stuck device would freeze the whole
server. The child is fed or read through a pipe, given a few seconds to open the device, and killed
when it does not answer: a busy device is a clear error, never a frozen server.

PyAV's wheel carries its own libasound, which looks for ALSA's configuration where it was built
(/tmp/vendor/share/alsa) and so knows no device at all; `use_system_alsa_config` points it at the
system's (/usr/share/alsa) unless the environment already says where it is.
"""

from __future__ import annotations

import ctypes
import fractions
import logging
import os
import select
import subprocess
import sys
import threading
import time

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


#: the child process that holds a device (run as a script: see its docstring)
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alsa_io.py")
#: seconds a child has to open its device (speaker or microphone): a busy or stuck one is given up
#: then (the child killed): a refused talk, a microphone retrying
OPEN_TIMEOUT = 5.0
#: seconds a speaker's child has to play out what it holds and exit once a talk ends: then killed
CLOSE_TIMEOUT = 2.0
#: seconds a speaker may take no sound at all while some waits for it: then the talk ends
STALL_TIMEOUT = 2.0
#: seconds a microphone may give no sound at all: then it is closed (its child killed) and retried
READ_TIMEOUT = 5.0
#: a microphone's stamps: how far they are steered towards the device's arrival times each 20 ms
#: (a 1000 ppm clock followed within about 1 ms; the jitter of ALSA's periods averaged over ~1 s)
STEER = 0.02
#: ... and how far apart they may be before they are set anew (the device stalled, or overran)
REANCHOR = 0.2


class _Child:
    """One child process holding an ALSA device (alsa_io.py): started, its first line awaited with a
    deadline (and a stop event), killed."""

    def __init__(self, mode: str, device: str) -> None:
        # (this process's pid: the child exits if it is not its parent, dead before the child watched it)
        self.process = subprocess.Popen(
            [sys.executable, "-P", CHILD, mode, device, str(os.getpid())],
            stdin=subprocess.PIPE if mode == "play" else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        assert self.process.stdout is not None
        self.out = self.process.stdout.fileno()
        #: what came after the first line (record: the first sound)
        self.leftover = b""

    def first_line(self, timeout: float, stop: threading.Event | None = None) -> str:
        """The child's first line (`ok ...`): OSError if it says `error: ...`, exits, is stopped, or
        does not answer within `timeout` (killed then)."""
        deadline = time.monotonic() + timeout
        got = b""
        while b"\n" not in got:
            left = deadline - time.monotonic()
            if stop is not None and stop.is_set():
                self.kill()
                raise OSError("stopped while it opened")
            if left <= 0:
                self.kill()
                raise OSError(f"no answer within {timeout:g} s: another program holds it, or it is stuck")
            if select.select([self.out], [], [], min(left, 0.1))[0]:
                data = os.read(self.out, 65536)
                if not data:
                    self.kill()
                    raise OSError(f"its process exited (code {self.process.returncode}) before it opened")
                got += data
        line, _, self.leftover = got.partition(b"\n")
        text = line.decode(errors="replace")
        if text.startswith("error: "):
            self.kill()
            raise OSError(text.removeprefix("error: "))
        if not text.startswith("ok"):
            self.kill()
            raise OSError(f"its process said {text[:100]!r}")
        return text

    def kill(self) -> None:
        """Killed (if it still runs) and reaped; its pipes closed."""
        if self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(1.0)
            except subprocess.TimeoutExpired:  # (stuck in the kernel: it goes when it can)
                logger.warning("ALSA: process %d does not die", self.process.pid)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


class AlsaAudioSource:
    """A local microphone (an ALSA capture device) as a camera's sound: its PCM as it comes, in 20 ms
    frames of 48 kHz mono, each stamped with the wall time of its first sample. Asked for 48 kHz mono
    (a `plughw:` or `default` device converts; a bare `hw:` one that refuses mono is opened in its own
    two channels and mixed down here). The device is read by a child process (alsa_io.py `record`):
    one that does not open within `open_timeout` (busy, stuck) is an error, the child killed.

    Stamps: by the running sample count, steered gently (STEER) towards when the device's sound
    arrives, so that a device clock off by up to ~1000 ppm is followed within a millisecond or two
    (never a jump); set anew only when they are REANCHOR apart (the device stalled)."""

    def __init__(self, device: str, *, open_timeout: float | None = None) -> None:
        self.device = device
        self.description = f"ALSA capture device {device!r}"
        #: seconds the child has to open the device (None: OPEN_TIMEOUT)
        self.open_timeout = open_timeout
        self._child: _Child | None = None
        self._stop = threading.Event()
        self._resampler: av.AudioResampler | None = None
        self._fifo = av.AudioFifo()
        self._pending = bytearray()
        #: bytes of ~20 ms (whole samples) at the device's rate and channels, and of a second
        self._chunk_bytes = 0
        self._bytes_per_second = 0
        #: the device's PyAV sample format, layout and rate
        self._format = "s16"
        self._layout = "mono"
        self._rate = AUDIO_CLOCK_RATE
        self._codec = ""
        #: the stamp of the next 20 ms frame out
        self._wall: float | None = None
        self._queue: list[AudioChunk] = []

    def open(self) -> None:
        # an interrupt is for good (the feed makes a source anew for each run, and interrupts it only
        # to stop the run): never cleared here, or one that came between the run's check of its stop
        # and this open would be lost, and a stuck device would hold the stopping run for OPEN_TIMEOUT
        if self._stop.is_set():
            raise OSError("stopped before it opened")
        child = _Child("record", self.device)
        try:
            line = child.first_line(self.open_timeout or OPEN_TIMEOUT, self._stop)
            _, rate, channels, sample_format, codec = line.split()
            self._configure(int(rate), sample_format, int(channels))
        except ValueError:
            child.kill()
            raise OSError(f"its process said {line[:100]!r}") from None
        except OSError as exc:
            raise OSError(f"does not open: {exc}") from None
        self._codec = codec  # (FFmpeg's name of raw PCM: the feed says "pcm")
        self._child = child
        self._pending = bytearray(child.leftover)

    def _configure(self, rate: int, sample_format: str, channels: int) -> None:
        """Ready for the device's sound: `rate` Hz, `channels`, PyAV's `sample_format` (packed)."""
        self._rate = rate
        self._format = sample_format
        self._layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
        size = av.AudioFormat(sample_format).bytes * channels
        self._bytes_per_second = rate * size
        self._chunk_bytes = max(1, round(rate * 0.02)) * size
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._fifo = av.AudioFifo()
        self._pending = bytearray()
        self._wall = None

    def read(self) -> AudioChunk | None:
        child = self._child
        assert child is not None
        last = time.monotonic()
        while not self._queue:
            if self._stop.is_set():
                return None
            if not select.select([child.out], [], [], 0.1)[0]:
                if time.monotonic() - last > READ_TIMEOUT:
                    raise OSError(f"gave no sound for {READ_TIMEOUT:g} s")
                continue
            data = os.read(child.out, 65536)
            if not data:
                raise OSError(f"stopped giving sound (its process exited: code {child.process.poll()})")
            last = time.monotonic()
            # FFmpeg reads one ALSA period a packet, as small as the device allows (a few samples):
            # the raw PCM is gathered and cut into 20 ms pieces, not decoded packet by packet
            self._pending += data
            now = time.time()  # (when the newest sample came: the older ones came that much before)
            while len(self._pending) >= self._chunk_bytes:
                first = now - len(self._pending) / self._bytes_per_second
                raw = bytes(self._pending[:self._chunk_bytes])
                del self._pending[:self._chunk_bytes]
                self._take(raw, first)
        return self._queue.pop(0)

    def _take(self, raw: bytes, first: float) -> None:
        """A piece of the device's PCM whose first sample came at `first`: resampled to 48 kHz mono,
        cut into the feed's 20 ms frames (what is left over waits for the next piece), stamped by the
        running sample count steered towards the device's times."""
        assert self._resampler is not None
        # when the next sample out came: before this piece's first by what waits in the FIFO
        expected = first - self._fifo.samples / AUDIO_CLOCK_RATE
        if self._wall is None or abs(self._wall - expected) > REANCHOR:
            self._wall = expected
        else:
            self._wall += (expected - self._wall) * STEER
        dtype = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "u8": np.uint8}.get(self._format, np.int16)
        array = np.frombuffer(raw, dtype).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(array, format=self._format, layout=self._layout)
        frame.sample_rate = self._rate
        for out in self._resampler.resample(frame):
            out.pts = None
            self._fifo.write(out)
        while self._fifo.samples >= FRAME_SAMPLES:
            piece = self._fifo.read(FRAME_SAMPLES)
            assert piece is not None
            piece.pts = None
            piece.sample_rate = AUDIO_CLOCK_RATE
            piece.time_base = fractions.Fraction(1, AUDIO_CLOCK_RATE)
            self._queue.append(AudioChunk(self._wall, frame=piece))
            self._wall += FRAME_SAMPLES / AUDIO_CLOCK_RATE

    def close(self) -> None:
        child, self._child = self._child, None
        self._queue.clear()
        if child is not None:
            child.kill()

    def interrupt(self) -> None:
        """Stop for good (from any thread): a wait for the device ends, and so does any later open."""
        self._stop.set()


#: seconds of sound the speaker may hold ahead of what it plays: what comes faster (a burst after the
#: network stalled) is dropped, or it would delay the rest of the talk by as much (FFmpeg asks ALSA for
#: a buffer of up to 2.7 s, and playing starts at the first write)
MAX_QUEUED = 0.25


class AlsaPlayback:
    """A local speaker (an ALSA playback device) a viewer talks to: `open()`, `send(frame)` as the
    viewer's sound comes (any rate and layout: resampled to 48 kHz mono, written as 16-bit PCM),
    `close()`. The talk-back sink beside the RTSP back-channel (camtrack.sources.backchannel).

    The device is held by a child process (alsa_io.py `play`) fed through a pipe written without
    blocking: one that does not open within OPEN_TIMEOUT is a refusal; one that takes no sound for
    STALL_TIMEOUT, or exits, ends the talk (OSError from `send`); at `close()` it has CLOSE_TIMEOUT to
    play out what it holds, then it is killed.

    What the device holds is reckoned from the wall clock (it plays 48 000 samples a second from the
    first write; after a pause it starts again): sound beyond MAX_QUEUED of it is dropped, and so is
    sound beyond MAX_QUEUED waiting for the pipe."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.description = f"ALSA playback device {device!r}"
        self._child: _Child | None = None
        self._resampler: av.AudioResampler | None = None
        #: PCM the pipe did not take yet; when it last took some (time.monotonic())
        self._backlog = bytearray()
        self._progress = 0.0
        #: when the device would have played everything written so far (time.monotonic())
        self._played_out = 0.0
        #: frames written; frames dropped (they came faster than the device plays)
        self.frames = 0
        self.dropped = 0

    def open(self) -> None:
        child = _Child("play", self.device)
        child.first_line(OPEN_TIMEOUT)
        assert child.process.stdin is not None
        os.set_blocking(child.process.stdin.fileno(), False)
        self._child = child
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_CLOCK_RATE)
        self._backlog = bytearray()
        self._progress = time.monotonic()

    def send(self, frame: av.AudioFrame) -> None:
        assert self._resampler is not None and self._child is not None
        frame.pts = None
        now = time.monotonic()
        self._flush(now)
        self._played_out = max(self._played_out, now)  # (it ran dry: it starts again with this)
        if self._played_out - now > MAX_QUEUED or len(self._backlog) > MAX_QUEUED * AUDIO_CLOCK_RATE * 2:
            self.dropped += 1
            return
        if not self._backlog:
            self._progress = now
        for resampled in self._resampler.resample(frame):
            self._played_out += resampled.samples / AUDIO_CLOCK_RATE
            self._backlog += resampled.to_ndarray().astype("<i2").tobytes()
        self.frames += 1
        self._flush(now)

    def _flush(self, now: float) -> None:
        """What the pipe takes of the backlog, without waiting (OSError: the child is gone or stuck)."""
        child = self._child
        assert child is not None and child.process.stdin is not None
        while self._backlog:
            try:
                written = os.write(child.process.stdin.fileno(), self._backlog[:65536])
            except BlockingIOError:
                break
            except BrokenPipeError:
                raise OSError(f"its process exited (code {child.process.poll()})") from None
            del self._backlog[:written]
            self._progress = now
        if self._backlog and now - self._progress > STALL_TIMEOUT:
            raise OSError(f"it took no sound for {STALL_TIMEOUT:g} s (stuck?)")
        if child.process.poll() is not None:
            raise OSError(f"its process exited (code {child.process.returncode})")

    def close(self) -> None:
        """What the pipe takes of the backlog; the end of the sound: the child plays what the device
        holds and exits, or is killed after CLOSE_TIMEOUT."""
        child, self._child = self._child, None
        if child is None:
            return
        assert child.process.stdin is not None
        try:
            os.write(child.process.stdin.fileno(), self._backlog[:65536])
        except OSError:
            pass
        self._backlog = bytearray()
        try:
            child.process.stdin.close()
        except OSError:
            pass
        try:
            child.process.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not play out what it held within %g s: stopped", self.description, CLOSE_TIMEOUT)
        child.kill()
