"""Local sound through ALSA (camtrack.sources.alsa, docs/audio.md), for real through PyAV's own
libasound on a machine without a sound card: ALSA devices made of its `file` and `null` plugins
(tests/alsa_devices.py). A microphone (`--audio alsa:DEVICE`) whose tone an aiortc viewer hears;
a microphone that does not open (one log line, the video plays on, the state says it, retried); a
viewer talking to the server's own speaker (`--talk alsa:DEVICE`), its tone written by ALSA."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from bench.listener import Listener, reply, talker
from camtrack.app import CAMERAS
from camtrack.media.packet import MediaKind

from .alsa_devices import (
    BROKEN,
    MIC,
    PLAYBACK_BUFFER,
    SPEAKER,
    STUCK_MIC,
    STUCK_SPEAKER,
    TONE_AMPLITUDE,
    TONE_HZ,
    AlsaDevices,
    SpeakerWatch,
    dominant_hz,
    levels,
    onset,
)
from .conftest import eventually
from .test_browser import sandbox  # noqa: F401 - the fixture (Chromium and the server in a namespace)

# each listens or talks for a few seconds of real-time sound
pytestmark = pytest.mark.slow


@pytest.fixture
def devices(tmp_path, monkeypatch):
    made = AlsaDevices(tmp_path)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(made.config))
    made.start()
    yield made
    made.stop()


def mono(frames) -> np.ndarray:
    """Decoded audio frames (aiortc's: s16, interleaved) as one channel, -1..1."""
    parts = []
    for _, frame in frames:
        data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
        parts.append(data.astype(np.float64) / 32768)
    return np.concatenate(parts)


async def cameras_api(ws_url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(ws_url.removesuffix("/ws") + "/api/cameras") as response:
        return (await response.json())["cameras"][0]


async def test_a_local_microphone_is_the_cameras_sound(serve, devices):
    """--audio alsa:DEVICE beside the pattern's picture: an aiortc viewer hears the tone written into
    the device, at its pitch and level, encoded to Opus once."""
    url, app = await serve(width=320, height=240, fps=15, audio=f"alsa:{MIC}")
    feed = app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO)
    listener = Listener()
    try:
        await listener.connect(url)
        await eventually(lambda: len(listener.audio) >= 150 and len(listener.video) >= 10, 30)
        heard = mono(listener.audio[-100:])  # the last 2 s
        rms = float(np.sqrt(np.mean(heard ** 2)))
        pitch = dominant_hz(heard)
        print(f"ALSA microphone: heard {rms:.3f} RMS at {pitch:.0f} Hz (written: {TONE_AMPLITUDE / np.sqrt(2):.3f} "
              f"at {TONE_HZ:.0f} Hz)")
        assert abs(pitch - TONE_HZ) < 10, pitch
        assert 0.6 * TONE_AMPLITUDE / np.sqrt(2) < rms < 1.3 * TONE_AMPLITUDE / np.sqrt(2), rms
        # steady, not in bursts: (nearly) each 20 ms of the last second is loud
        pieces = levels(heard[-48000:])
        assert sum(rms > 0.1 for rms in pieces) >= 0.9 * len(pieces), pieces
        assert feed.state == "up" and feed.stats.encoders == 1
        assert (await cameras_api(url))["audio"] == {"state": "up", "error": None, "failures": 0}
        assert devices.opened >= 1
    finally:
        await listener.close()
    await eventually(lambda: not feed.running, 10)


@pytest.mark.parametrize("device", ["nosuch", BROKEN])
async def test_a_microphone_that_does_not_open_is_one_line_and_the_video_plays_on(serve, devices, caplog, device):
    """A device ALSA does not know, or one that fails to open: one warning, the camera's picture
    plays on, /api/cameras shows the sound retrying with the reason, and it is tried again."""
    caplog.set_level(logging.INFO, logger="camtrack")
    url, app = await serve(width=320, height=240, fps=15, audio=f"alsa:{device}")
    feed = app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO)
    listener = Listener()
    try:
        await listener.connect(url)
        await eventually(lambda: feed.stats.failures >= 2, 20)  # (tried again)
        pictures = len(listener.video)
        await eventually(lambda: len(listener.video) >= pictures + 15, 10)  # the picture plays on
        described = (await cameras_api(url))["audio"]
        assert described["state"] == "retrying" and described["failures"] >= 2, described
        assert "does not open" in described["error"], described
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelno >= logging.WARNING and r.name.startswith("camtrack") and "audio" in r.getMessage()]
        print("the log says:", warnings)
        assert len(warnings) == 1 and device in warnings[0] and "does not open" in warnings[0], warnings
    finally:
        await listener.close()


async def test_a_viewer_talks_to_the_servers_own_speaker(serve, devices):
    """--talk alsa:DEVICE: with the talk token, a viewer's tone goes to the ALSA speaker (one talker at
    a time, none without the token); ALSA writes it to the speaker's file, and when the file grew
    tells when camtrack wrote the tone (tests/alsa_devices.py: SpeakerWatch)."""
    url, _ = await serve(width=320, height=240, fps=15, talk=f"alsa:{SPEAKER}", talk_token="speak", audio="off")
    first_parts, first, tone = await talker(url)
    second_parts, second, _ = await talker(url)
    watch = SpeakerWatch(devices.speaker)
    try:
        await first.send_json({"type": "talk", "on": True, "token": "nope"})
        assert "not allowed to talk" in (await reply(first, "talk"))["message"]
        await first.send_json({"type": "talk", "on": True, "token": "speak"})
        on = await reply(first, "talk")
        assert on.get("state") == "on", on
        await second.send_json({"type": "talk", "on": True, "token": "speak"})
        assert "busy" in (await reply(second, "talk"))["message"]
        # silence past the file plugin's buffer (2.7 s), so that the file shows the tone as it is written
        await eventually(lambda: watch.sizes and watch.sizes[-1][1] > 48000, 15)
        tone.loud_at = loud_at = time.time()
        await asyncio.sleep(1.5)
        await first.send_json({"type": "talk", "on": False})
        assert (await reply(first, "talk"))["state"] == "off"
        # (ALSA's file plugin writes the rest when the device closes)
        await eventually(lambda: len(devices.speaker_samples()) >= PLAYBACK_BUFFER + 48000 * 1.5, 10)
        samples = devices.speaker_samples()
        heard = levels(samples)
        first_loud = onset(samples)
        assert first_loud is not None, heard[-10:]
        assert max(heard[:first_loud // 960], default=0) < 0.01  # silence before the tone
        assert sum(rms > 0.2 for rms in heard) >= 50  # (1.5 s of tone: at least one of it)
        assert abs(dominant_hz(samples[first_loud:first_loud + 24000]) - 1000) < 10  # (bench.listener's tone)
        written = watch.written_at(first_loud)
        assert written is not None, watch.sizes[-5:]
        delay = written - loud_at
        print(f"talk to the ALSA speaker: the viewer's tone written to the device {delay * 1000:.0f} ms after "
              "its microphone made it")
        assert 0 < delay < 1.0, delay
        # the line is free again
        await second.send_json({"type": "talk", "on": True, "token": "speak"})
        assert (await reply(second, "talk"))["state"] == "on"
    finally:
        watch.stop()
        for session, ws, pc in (first_parts, second_parts):
            await ws.close()
            await pc.close()
            await session.close()


async def test_a_speaker_that_does_not_open_refuses_the_talk(serve, devices):
    url, _ = await serve(width=320, height=240, fps=15, talk="alsa:nosuch", talk_token="speak", audio="off")
    parts, ws, _ = await talker(url)
    try:
        await ws.send_json({"type": "talk", "on": True, "token": "speak"})
        message = (await reply(ws, "talk"))["message"]
        assert "speaker does not open" in message, message
    finally:
        session, ws, pc = parts
        await ws.close()
        await pc.close()
        await session.close()


@pytest.mark.timeout(180)
def test_push_to_talk_from_chromium_plays_on_the_servers_alsa_speaker(sandbox, tmp_path, monkeypatch):  # noqa: F811
    """HTTPS page, ?talk=TOKEN, a camera with --talk alsa:DEVICE (the server's own speaker, the
    pattern as the local camera): holding the talk button sends Chromium's fake microphone to the
    ALSA device, whose file gets its beeps; a second page is told the line is busy."""
    from . import netns as netns_mod
    from . import test_browser_fallback as fallback
    from .test_browser import PORT

    made = AlsaDevices(tmp_path)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(made.config))  # (the server process inherits it)
    monkeypatch.setattr(fallback, "CHROMIUM_FLAGS", [*fallback.CHROMIUM_FLAGS, "--use-fake-device-for-media-stream",
                                                     "--use-fake-ui-for-media-stream"])
    cert, key = fallback.certificate(tmp_path)
    base = f"https://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    watch = SpeakerWatch(made.speaker)
    try:
        with fallback.chromium_and_server(sandbox, tmp_path, "--cert", str(cert), "--key", str(key), "--talk",
                                          f"alsa:{SPEAKER}", "--talk-token", "speak", "--audio", "off", "--width",
                                          "320", "--height", "240") as (context, _restart):
            fallback.wait_for_server(context, base)
            page, _ = fallback.plays(context, base, "?talk=speak", frames=5)
            page.wait_for_function("!document.getElementById('talk').hidden && "
                                   "!document.getElementById('talk').disabled", timeout=30000)
            box = page.locator("#talk").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            pressed = time.time()
            page.mouse.down()
            page.wait_for_function("window.camtrack.talk.state === 'on' || window.camtrack.talk.error",
                                   timeout=30000)
            assert page.evaluate("window.camtrack.talk.state") == "on", page.evaluate("window.camtrack.talk")
            # a second page holding the button meanwhile: busy
            other, _ = fallback.plays(context, base, "?talk=speak", frames=5)
            other.wait_for_function("!document.getElementById('talk').hidden && "
                                    "!document.getElementById('talk').disabled", timeout=30000)
            other.keyboard.down("t")
            other.wait_for_function("window.camtrack.talk.error", timeout=30000)
            assert "busy" in other.evaluate("window.camtrack.talk.error"), other.evaluate("window.camtrack.talk")
            other.keyboard.up("t")
            # held past the file plugin's buffer (2.7 s) and some: then let go (the device closes)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (watch.sizes and watch.sizes[-1][1] > 2 * 48000 * 2):
                time.sleep(0.1)
            page.mouse.up()
            page.wait_for_function("window.camtrack.talk.state === 'off'", timeout=30000)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(made.speaker_samples()) < PLAYBACK_BUFFER + 2 * 48000:
                time.sleep(0.1)
    finally:
        watch.stop()
    samples = made.speaker_samples()
    heard = levels(samples)
    loud = [i for i, rms in enumerate(heard) if rms > 0.02]
    print(f"push-to-talk to the ALSA speaker: {len(samples) / 48000:.1f} s written, {len(loud)} loud 20 ms pieces "
          f"(the first at {loud[0] * 0.02 if loud else 0:.2f} s), loudest {max(heard, default=0):.3f} RMS")
    assert len(samples) >= PLAYBACK_BUFFER + 2 * 48000, len(samples)
    assert loud, heard[-10:]
    # when the first loud piece was written: timed by the file where it shows it, else placed before
    # the first bytes the file showed (written at real time: an estimate)
    first = loud[0] * 960
    written = watch.written_at(first)
    grown = [(at, size) for at, size in watch.sizes if size > 0]
    if written is None and grown:
        at, size = grown[0]
        written = at - (PLAYBACK_BUFFER + size // 2 - first) / 48000
    if written is not None:
        print(f"push-to-talk to the ALSA speaker: Chromium's microphone written to the device {written - pressed:.2f} s "
              "after the press (an upper bound: it includes asking for the microphone and the fake microphone's "
              "next beep)")


def test_a_burst_to_the_speaker_is_cut_to_what_it_can_hold(devices):
    """Sound that comes faster than the speaker plays (a burst after the network stalled) is dropped
    beyond MAX_QUEUED, not queued in ALSA's buffer (which would delay the rest of the talk)."""
    from camtrack.sources.alsa import MAX_QUEUED, AlsaPlayback

    from .test_backchannel import tone

    speaker = AlsaPlayback(SPEAKER)
    speaker.open()
    try:
        began = time.monotonic()
        for index in range(50):  # 1 s at once
            speaker.send(tone(index * 960))
        # (the device plays on while the burst is sent: what it takes is MAX_QUEUED ahead of the
        # clock, which a loaded machine moves on by tenths of a second during the 50 sends)
        burst_took = time.monotonic() - began
        burst_taken = speaker.frames
        time.sleep(1.0)  # it has played that out: the next second, at real time, is taken whole
        began = time.monotonic()
        for index in range(50):
            wait = began + index * 0.02 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            speaker.send(tone((50 + index) * 960))
    finally:
        speaker.close()
    written = len(devices.speaker_samples()) / 48000
    print(f"a 1 s burst then 1 s at real time: {written:.2f} s written, {speaker.dropped} frames dropped; the "
          f"burst's 50 sends took {burst_took * 1000:.0f} ms, {burst_taken} of them taken")
    assert speaker.frames + speaker.dropped == 100
    # the burst cut to MAX_QUEUED beyond what the device played while it was sent (plus its first
    # frame); the real-time second taken (a margin for a loaded machine's late sleeps, whose
    # catching up is a small burst too)
    assert burst_taken * 0.02 <= MAX_QUEUED + burst_took + 0.02 + 1e-9, (burst_taken, burst_took)
    assert written <= 1.0 + MAX_QUEUED + burst_took + 0.1, (written, burst_took)
    assert written >= 1.0, written


@pytest.mark.timeout(180)
def test_chromium_hears_a_local_microphone(sandbox, tmp_path, monkeypatch):  # noqa: F811
    """The page in Chromium, a camera with --audio alsa:DEVICE: the sound button and meter come, and
    once unmuted getStats() shows Opus with the steady tone's level (0.3 of full scale)."""
    from .test_audio_browser import heard
    from .test_browser import browser_and_server, open_page

    made = AlsaDevices(tmp_path)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(made.config))  # (the server process inherits it)
    made.start()
    try:
        with browser_and_server(sandbox, tmp_path, "h264", "--width", "320", "--height", "240", "--audio",
                                f"alsa:{MIC}") as (browser, _, _log):
            page = open_page(browser)
            page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
            page.wait_for_function("!document.getElementById('sound').hidden", timeout=30000)
            page.click("#sound")
            stats = heard(page)
            print(f"Chromium hears the ALSA microphone: {stats}")
            assert stats["codec"].lower() == "audio/opus"
            # audioLevel is linear, 1 at full scale: the tone's peak is 0.3
            assert 0.15 < stats["level"] < 0.45, stats
    finally:
        made.stop()
    assert made.opened >= 1


class Hears:
    """A peer that hears its viewer, as camtrack.outputs.webrtc.talk.Talk sees one."""

    on_heard = None
    hears = True


@contextlib.asynccontextmanager
async def heartbeat() -> AsyncIterator[list[float]]:
    """The event loop's pulse: a task ticking every 50 ms; yields the gaps between its ticks."""
    gaps: list[float] = []

    async def beat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(beat())
    try:
        yield gaps
    finally:
        task.cancel()


def alsa_children() -> list[int]:
    """This process's children that hold an ALSA device (camtrack/sources/alsa_io.py)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                held = b"alsa_io.py" in cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and held:
            found.append(int(pid))
    return found


async def test_a_busy_speaker_refuses_the_talk_and_the_server_runs_on(devices, monkeypatch):
    """A speaker that does not open (another program holds it; here ALSA's file plugin blocked in
    opening a FIFO nobody reads): the talk is refused within OPEN_TIMEOUT, saying why, and the event
    loop never stops meanwhile (FFmpeg's blocking open used to hold the GIL: the server froze)."""
    from camtrack.outputs.webrtc import talk
    from camtrack.sources import alsa

    monkeypatch.setattr(alsa, "OPEN_TIMEOUT", 1.5)
    async with heartbeat() as gaps:
        began = time.monotonic()
        with pytest.raises(talk.TalkRefused) as refused:
            await talk.Talk("cam", f"alsa:{STUCK_SPEAKER}", Hears(), lambda why: None).start()
        took = time.monotonic() - began
        await asyncio.sleep(0.2)
    print(f"a busy speaker: refused in {took:.2f} s ({refused.value}); the loop's longest pause "
          f"{max(gaps) * 1000:.0f} ms")
    assert "speaker does not open" in str(refused.value) and "no answer within 1.5 s" in str(refused.value)
    assert took < 5, took
    assert max(gaps) < 0.5, max(gaps)
    assert "cam" not in talk._LINES  # (the line free again)
    await eventually(lambda: not alsa_children(), 5)


async def test_a_speaker_that_stops_taking_sound_stalls_nothing(devices, monkeypatch):
    """A speaker that opens and then takes no more sound (its FIFO open but never read): talking on
    ends the talk (on_end says why) within STALL_TIMEOUT of the pipe filling; a talk that ends while
    the device holds sound it cannot play returns within CLOSE_TIMEOUT (its player killed); the event
    loop never pauses (FFmpeg's drain at close used to hold the GIL for as long as it took: forever)."""
    from camtrack.outputs.webrtc import talk
    from camtrack.sources import alsa

    from .test_backchannel import tone

    monkeypatch.setattr(alsa, "STALL_TIMEOUT", 1.0)
    monkeypatch.setattr(alsa, "CLOSE_TIMEOUT", 1.0)
    reader = os.open(devices.stuck_speaker, os.O_RDONLY | os.O_NONBLOCK)  # (opened, never read)
    try:
        async with heartbeat() as gaps:
            # 1. 2 s of sound, then the talk ends: the device holds 2 s it cannot write out
            ended: list[str] = []
            peer = Hears()
            first = talk.Talk("cam", f"alsa:{STUCK_SPEAKER}", peer, ended.append)
            await first.start()
            for index in range(100):
                peer.on_heard(tone(index * 960))
                await asyncio.sleep(0.02)
            began = time.monotonic()
            await first.stop()
            stopped_in = time.monotonic() - began
            # 2. a talk that goes on: the pipes fill up, the speaker takes nothing: the talk ends
            peer = Hears()
            second = talk.Talk("cam", f"alsa:{STUCK_SPEAKER}", peer, ended.append)
            await second.start()
            began = time.monotonic()
            index = 0
            while not ended and time.monotonic() - began < 30:
                if peer.on_heard is not None:
                    peer.on_heard(tone(index * 960))
                index += 1
                await asyncio.sleep(0.02)
            ended_in = time.monotonic() - began
    finally:
        os.close(reader)
    print(f"a speaker that takes no sound: a talk's end returned in {stopped_in:.2f} s; a talk went on "
          f"{ended_in:.1f} s, then: {ended}; the loop's longest pause {max(gaps) * 1000:.0f} ms")
    assert stopped_in < 3, stopped_in
    assert ended and "speaker failed" in ended[0] and "took no sound" in ended[0], ended
    assert max(gaps) < 0.5, max(gaps)
    assert "cam" not in talk._LINES
    await eventually(lambda: not alsa_children(), 5)


async def test_a_stuck_microphone_is_one_line_retried_without_piling_up(serve, devices, caplog, monkeypatch):
    """A microphone that does not open (blocked like a device another program holds): one warning
    saying so (a listening spell), the state retrying, and listeners coming and going leave no blocked thread or process
    behind (each open used to block a thread for ever, a new one at each listener)."""
    from camtrack.sources import alsa

    monkeypatch.setattr(alsa, "OPEN_TIMEOUT", 1.0)
    caplog.set_level(logging.INFO, logger="camtrack")
    url, app = await serve(width=320, height=240, fps=15, audio=f"alsa:{STUCK_MIC}")
    feed = app[CAMERAS].first.pipeline.packets(MediaKind.AUDIO)
    async with heartbeat() as gaps:
        for _ in range(3):
            listener = Listener()
            try:
                await listener.connect(url)
                await eventually(lambda: feed.running and feed.state == "retrying", 20)
                described = (await cameras_api(url))["audio"]
                assert described["state"] == "retrying" and "no answer within 1 s" in described["error"], described
            finally:
                await listener.close()
            await eventually(lambda: not feed.running, 10)
        await eventually(lambda: not [t for t in threading.enumerate() if t.name.startswith("audio ")], 10)
        await eventually(lambda: not alsa_children(), 5)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("camtrack") and "audio" in r.getMessage()]
    print(f"a stuck microphone: {warnings}; the loop's longest pause {max(gaps) * 1000:.0f} ms")
    # one line a listening spell (the feed says each reason once a run), however often it is retried
    assert 1 <= len(warnings) <= 3 and all(STUCK_MIC in w and "no answer within" in w for w in warnings), warnings
    assert feed.stats.failures >= 3
    assert max(gaps) < 0.5, max(gaps)


def test_a_microphone_stopped_just_before_it_opens_stays_stopped(devices):
    """The feed stops its run from the loop's thread (the run's stop, then the source's `interrupt`)
    while the run's thread may be between its check of the stop and the source's `open`: that
    interrupt holds. The interleaving made deterministic: interrupted, then opened. open used to clear
    it, start a child on the stuck device and wait OPEN_TIMEOUT (5 s) for it: a stopping feed held."""
    from camtrack.sources.alsa import AlsaAudioSource

    from .silent_server import stopped_then_opened

    took = stopped_then_opened(AlsaAudioSource(STUCK_MIC), OSError)
    print(f"a microphone stopped before it opened: open returned in {took * 1000:.1f} ms")
    assert took < 1.0, took
    assert not alsa_children()


#: a server's stand-in: camtrack's own _Child starts a microphone's child on the stuck device, says its
#: pid, and waits to be killed
SERVER = """
import sys, time
from camtrack.sources.alsa import _Child
child = _Child("record", sys.argv[1])
print(child.process.pid, flush=True)
time.sleep(120)
"""

#: a subreaper (as systemd for a user service, a container's tini or dumb-init): orphans of its
#: descendants become its children, not pid 1's. It starts the server, kills it (at once, or once its
#: ALSA child has imported PyAV and watches its parent), and says whether that child exited, and when
SUBREAPER = """
import ctypes, json, os, signal, subprocess, sys, time
server_code, device, when = sys.argv[1:4]
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
server = subprocess.Popen([sys.executable, "-c", server_code, device], stdout=subprocess.PIPE, text=True)
child = int(server.stdout.readline())
if when == "opening":  # (PyAV's libasound mapped: the child's watch is set a moment later)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{child}/maps") as maps:
            if "libasound" in maps.read():
                break
        time.sleep(0.05)
    time.sleep(0.5)
os.kill(server.pid, signal.SIGKILL)
server.wait()
killed = time.monotonic()
with open(f"/proc/{child}/stat") as stat:
    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
exited = None
while time.monotonic() - killed < 10:
    if os.waitpid(child, os.WNOHANG)[0]:
        exited = time.monotonic() - killed
        break
    time.sleep(0.02)
if exited is None:
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
print(json.dumps({"exited": exited, "new_parent_is_me": parent == os.getpid()}))
"""


@pytest.mark.parametrize("when", ["at_once", "opening"])
def test_an_alsa_child_dies_with_its_server_under_a_subreaper(devices, when):
    """The server dies (SIGKILL) under a subreaper, whose orphans are its own, not pid 1's: the ALSA
    child, stuck in opening its device (it would stay for as long as the device is stuck), exits within
    a few seconds, whether the server died while the child started (it watched for pid 1 as its parent
    then: it never exited) or once it watches for its parent's death."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", SUBREAPER, SERVER, STUCK_MIC, when], cwd=root,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"the server killed ({when}) under a subreaper: its ALSA child exited after {result['exited']} s")
    assert result["new_parent_is_me"], result  # (the orphan went to the subreaper: the case checked)
    assert result["exited"] is not None and result["exited"] < 5, result
