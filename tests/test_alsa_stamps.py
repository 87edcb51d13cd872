"""A local microphone's sound as camtrack.sources.alsa cuts and stamps it (AlsaAudioSource._take, fed
the raw PCM the device would give, without a device): any rate makes whole 20 ms frames at 48 kHz
(what the resampler leaves over waits for the next piece), and the stamps follow a device clock that
drifts from the wall clock smoothly, without the jumps re-anchoring used to make."""

from __future__ import annotations

import numpy as np
import pytest

from camtrack.sources.alsa import AlsaAudioSource

from .alsa_devices import dominant_hz


def source(rate: int, channels: int = 1) -> AlsaAudioSource:
    made = AlsaAudioSource("test")
    made._configure(rate, "s16", channels)
    return made


@pytest.mark.parametrize(("rate", "channels"), [(11025, 1), (44100, 1), (44100, 2), (48000, 1), (22050, 2)])
def test_any_rate_makes_whole_frames_in_time(rate, channels):
    """10 s of a 440 Hz tone at `rate` in the device's ~20 ms pieces: 10 s of 20 ms frames at 48 kHz
    (but the resampler's few samples of delay), the tone at its pitch, each frame stamped 20 ms after
    the last and when its sound came (11025 Hz, 220.5 samples per 20 ms, used to give nothing)."""
    made = source(rate, channels)
    piece = round(rate * 0.02)
    sent = 0
    while sent < rate * 10:
        t = (sent + np.arange(piece)) / rate
        wave = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype(np.int16)
        made._take(np.repeat(wave, channels).tobytes(), 1000.0 + sent / rate)
        sent += piece
    frames = made._queue
    stamps = np.array([chunk.captured for chunk in frames])
    assert all(chunk.frame is not None and chunk.frame.samples == 960 for chunk in frames)
    assert len(frames) >= 498, len(frames)  # (10 s: 500)
    assert np.allclose(np.diff(stamps), 0.02, atol=1e-4), np.diff(stamps)[:5]
    # frame k holds 48 kHz samples k * 960 on: made when the device's sound of that time came
    assert np.allclose(stamps, 1000.0 + np.arange(len(stamps)) * 0.02, atol=0.005), stamps[:3]
    heard = np.concatenate([chunk.frame.to_ndarray().reshape(-1) for chunk in frames]).astype(np.float64) / 32768
    assert abs(dominant_hz(heard[48000:]) - 440) < 2


@pytest.mark.parametrize("ppm", [1000, -1000, 200])
def test_the_stamps_follow_a_drifting_device_clock(ppm):
    """A device whose clock runs `ppm` off the wall clock, its periods coming up to 5 ms late
    (jitter): over 10 minutes its stamps stay within a few ms of when the sound came, and step by
    20 ms (± 0.1 ms), no jump (they used to drift up to 0.5 s and then jump back)."""
    made = source(48000)
    rng = np.random.default_rng(1)
    silence = np.zeros(960, np.int16).tobytes()
    count = 30000  # 10 min
    came = 1000.0 + np.arange(count) * 0.02 * (1 + ppm * 1e-6)
    late = rng.uniform(0, 0.005, count)
    stamps = np.empty(count)
    for index in range(count):
        made._take(silence, came[index] + late[index])
        stamps[index] = made._queue.pop().captured
    error = stamps - came
    settled = error[250:]  # (after 5 s)
    steps = np.diff(stamps)
    print(f"{ppm:+d} ppm, jitter 0-5 ms: stamps {settled.min() * 1000:.1f}..{settled.max() * 1000:.1f} ms after "
          f"the sound came; steps {steps.min() * 1000:.4f}..{steps.max() * 1000:.4f} ms")
    assert 0 < settled.min() and settled.max() < 0.006, (settled.min(), settled.max())
    assert np.all(np.abs(steps - 0.02) < 0.0001), (steps.min(), steps.max())


def test_the_stamps_start_again_after_the_device_stalled():
    """A device that gives nothing for a second (an overrun, a stall): the stamps take the new time
    at once rather than creep towards it."""
    made = source(48000)
    silence = np.zeros(960, np.int16).tobytes()
    for index in range(100):
        made._take(silence, 1000.0 + index * 0.02)
    for index in range(100):
        made._take(silence, 1003.0 + index * 0.02)
    stamps = [chunk.captured for chunk in made._queue]
    assert stamps[99] == pytest.approx(1001.98, abs=1e-3)
    assert stamps[100] == pytest.approx(1003.0, abs=1e-3)
