"""ALSA devices for tests on a machine without a sound card, made of ALSA's own plugins (the `file`
plugin over a `null` slave): a microphone whose capture reads a FIFO the test writes a tone into in
real time, and a speaker whose playback is written to a file. The configuration is a file the test
writes; ALSA_CONFIG_PATH points the camtrack process (or this one) at it.

PyAV's wheel carries its own libasound (alsa-lib 1.2.14 here), which reads ALSA_CONFIG_PATH; the
`file` plugin lags its output file by the playback buffer FFmpeg asks for (up to 131072 frames,
2.7 s at 48 kHz), and writes the rest when the device is closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np

MIC = "camtrack_mic"
SPEAKER = "camtrack_speaker"
#: a capture device whose input file does not exist: it does not open
BROKEN = "camtrack_broken"
#: a speaker and a microphone over FIFOs nobody opens (`stuck_fifos`): ALSA's file plugin blocks in
#: opening them, like a device another program holds; a speaker's FIFO opened but never read blocks
#: its writes (a device that stops taking sound)
STUCK_SPEAKER = "camtrack_stuck_speaker"
STUCK_MIC = "camtrack_stuck_mic"
RATE = 48000
#: the microphone's tone: its pitch (Hz) and amplitude (of full scale)
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.3


class AlsaDevices:
    """The configuration file, the microphone's FIFO and writer thread, the speaker's file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fifo = directory / "mic.fifo"
        self.speaker = directory / "speaker.raw"
        self.config = directory / "asound.conf"
        os.mkfifo(self.fifo)
        self.stuck_speaker = directory / "stuck_speaker.fifo"
        self.stuck_mic = directory / "stuck_mic.fifo"
        os.mkfifo(self.stuck_speaker)
        os.mkfifo(self.stuck_mic)
        self.config.write_text(f"""
pcm.{MIC} {{
  type file
  slave.pcm {{ type null }}
  file "/dev/null"
  infile "{self.fifo}"
  format "raw"
}}
pcm.{SPEAKER} {{
  type file
  slave.pcm {{ type null }}
  file "{self.speaker}"
  format "raw"
}}
pcm.{BROKEN} {{
  type file
  slave.pcm {{ type null }}
  file "/dev/null"
  infile "{directory / 'missing.raw'}"
  format "raw"
}}
pcm.{STUCK_SPEAKER} {{
  type file
  slave.pcm {{ type null }}
  file "{self.stuck_speaker}"
  format "raw"
}}
pcm.{STUCK_MIC} {{
  type file
  slave.pcm {{ type null }}
  file "/dev/null"
  infile "{self.stuck_mic}"
  format "raw"
}}
""")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="test microphone", daemon=True)
        #: samples written into the microphone, and how many times a reader opened it
        self.written = 0
        self.opened = 0

    @property
    def env(self) -> dict[str, str]:
        return {"ALSA_CONFIG_PATH": str(self.config)}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _write(self) -> None:
        """The tone (mono, 16-bit, 48 kHz) into the FIFO in 20 ms pieces at real time, whenever a
        reader has it open; opened again after the reader goes (camtrack releases the device)."""
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # (ENXIO: no reader yet)
                    raise
                self._stop.wait(0.02)
                continue
            self.opened += 1
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            began, sent = time.monotonic(), 0
            try:
                while not self._stop.is_set():
                    t = (self.written + np.arange(960)) / RATE
                    wave = np.sin(2 * np.pi * TONE_HZ * t) * TONE_AMPLITUDE * 32767
                    os.write(fd, wave.astype("<i2").tobytes())
                    self.written += 960
                    sent += 960
                    wait = began + sent / RATE - time.monotonic()
                    if wait > 0:
                        self._stop.wait(wait)
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    def speaker_samples(self) -> np.ndarray:
        """What the speaker was given so far (mono, 16-bit, 48 kHz), scaled to -1..1."""
        data = self.speaker.read_bytes() if self.speaker.exists() else b""
        return np.frombuffer(data[:len(data) // 2 * 2], "<i2").astype(np.float64) / 32768


#: the playback buffer FFmpeg's ALSA output asks for (ALSA_BUFFER_SIZE_MAX, frames; the null plugin
#: gives it): what ALSA's file plugin holds back from its file until the device closes
PLAYBACK_BUFFER = 131072


class SpeakerWatch:
    """When each byte reached the speaker's file (its size polled every 5 ms), to tell when camtrack
    wrote a sample: the file plugin puts sample N in the file once N + PLAYBACK_BUFFER were written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sizes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="test speaker watch", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        last = -1
        while not self._stop.wait(0.005):
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != last:
                self.sizes.append((time.time(), size))
                last = size

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def written_at(self, sample: int) -> float | None:
        """When camtrack wrote `sample` (counted from the first it wrote): None if the file did not
        show it while it was open (the rest came at its close)."""
        need = 2 * max(0, sample - PLAYBACK_BUFFER)
        return next((at for at, size in self.sizes if size > need), None) if sample >= PLAYBACK_BUFFER else None


def onset(samples: np.ndarray, threshold: float = 0.1) -> int | None:
    """The first sample louder than `threshold` (-1..1)."""
    loud = np.nonzero(np.abs(samples) > threshold)[0]
    return int(loud[0]) if len(loud) else None


def levels(samples: np.ndarray, size: int = 960) -> list[float]:
    """RMS of each 20 ms of `samples` (-1..1)."""
    count = len(samples) // size
    return [float(np.sqrt(np.mean(samples[i * size:(i + 1) * size] ** 2))) for i in range(count)]


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    """The strongest frequency of `samples`."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])
