"""A camera's sound (camtrack.media.audio, docs/audio.md): the audio packet feed from the pattern's
tone and from a file's AAC and G.711, encoded to Opus once, decoded here with energy in it."""

from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path

import av
import numpy as np
import pytest

from camtrack.media.audio import AUDIO_CLOCK_RATE, FRAME_SAMPLES, G711_CLOCK_RATE, AudioFeed
from camtrack.media.feeds import PacketFeed
from camtrack.media.packet import MediaKind
from camtrack.media.reader import PacketReader
from camtrack.sources.audio import AvAudioSource, ToneSource, audio_source_factory, beeping, known_audio_codec

from .conftest import eventually
from .silent_server import SilentServer, open_refused_in, stopped_then_opened

# each listens for a second or two to real-time sound
pytestmark = pytest.mark.slow

#: the RMS (of samples in -1..1) of a 20 ms frame that is not silence
LOUD = 0.05


def opus_rms(packets: list[bytes]) -> list[float]:
    """Each Opus packet decoded, its RMS (samples scaled to -1..1)."""
    decoder = av.CodecContext.create("opus", "r")
    levels = []
    for data in packets:
        for frame in decoder.decode(av.Packet(data)):
            samples = frame.to_ndarray().astype(np.float64)
            if frame.format.name.startswith("s16"):
                samples /= 32768
            levels.append(float(np.sqrt(np.mean(samples ** 2))))
    return levels


async def read_for(feed: PacketFeed, seconds: float) -> list:
    """Packets a listener of `feed` gets in `seconds`."""
    reader = PacketReader(feed)
    got = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            encoded, _ = await asyncio.wait_for(reader.next(), 5)
            got.append(encoded)
    finally:
        reader.close()
    return got


def write_av_file(path: Path, audio_codec: str, seconds: float = 3.0, rate: int = 48000,
                  container: str | None = None) -> None:
    """A file with 640x480 H.264 video and a 1 kHz beep (first 100 ms of each second) in `audio_codec`
    (aac, pcm_mulaw, pcm_alaw, libopus), at `rate` Hz mono."""
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream(audio_codec, rate=rate)
        audio.layout = "mono"
        sample_format = "fltp" if audio_codec == "aac" else ("flt" if audio_codec == "libopus" else "s16")
        chunk = 960 if audio_codec == "libopus" else 1024
        step = 0
        for i in range(int(seconds * 30)):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i % 255, np.uint8), format="bgr24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
            while step * chunk < (i + 1) * rate / 30:
                t = (step * chunk + np.arange(chunk)) / rate
                wave = np.sin(2 * np.pi * 1000 * t) * 0.5 * ((t % 1.0) < 0.1)
                if sample_format == "s16":
                    samples = (wave * 32767).astype(np.int16)[None, :]
                else:
                    samples = wave.astype(np.float32)[None, :]
                audio_frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout="mono")
                audio_frame.sample_rate = rate
                audio_frame.pts = step * chunk
                audio_frame.time_base = fractions.Fraction(1, rate)
                for packet in audio.encode(audio_frame):
                    out.mux(packet)
                step += 1
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


async def test_the_tone_is_opus_with_beeps_on_the_48khz_clock_while_someone_listens():
    feed = AudioFeed("tone", ToneSource, linger=0.0)
    assert feed.codec.kind == MediaKind.AUDIO and feed.codec.clock_rate == AUDIO_CLOCK_RATE
    assert feed.codec.codec == "opus"
    assert not feed.running
    got = await read_for(feed, 2.2)
    try:
        assert len(got) >= 90  # 50 a second
        steps = {b.packet.pts - a.packet.pts for a, b in zip(got, got[1:], strict=False)}
        assert steps == {FRAME_SAMPLES}, steps  # no gap, no overlap
        levels = opus_rms([bytes(p.packet) for p in got])
        loud = [level > LOUD for level in levels]
        # a beep each second for 100 ms (5 frames): some loud, most quiet
        assert 6 <= sum(loud) <= 20, levels
        # the loud frames are those captured at the start of a second, as the picture's mark is (a
        # frame holds 20 ms from its capture time, decoded 6.5 ms late: Opus' own delay)
        beeps = [p for p, is_loud in zip(got, loud, strict=False) if is_loud]
        assert all(any(beeping(p.captured + d) for d in (-0.0075, 0.0, 0.019)) for p in beeps), \
            [round(p.captured % 1.0, 3) for p in beeps]
        assert feed.stats.encoders == 1 and feed.stats.encoded >= len(got)
    finally:
        await eventually(lambda: not feed.running, 5)
        await feed.close()


async def test_many_listeners_share_one_encoder():
    feed = AudioFeed("tone", ToneSource, linger=0.0)
    results = await asyncio.gather(*(read_for(feed, 1.5) for _ in range(16)))
    try:
        assert all(len(r) >= 60 for r in results)
        assert feed.stats.encoders == 1 and feed.stats.runs == 1
        # one encode per 20 ms however many listen (1.5 s: about 75, not 16 times that)
        assert feed.stats.encoded < 120
    finally:
        await feed.close()


async def test_a_files_aac_and_g711_are_decoded_and_encoded_to_opus_once(tmp_path):
    for codec, rate in (("aac", 48000), ("aac", 44100), ("pcm_mulaw", 8000), ("pcm_alaw", 8000)):
        path = tmp_path / f"clip-{codec}-{rate}.{'mkv' if codec == 'aac' else 'mov'}"
        write_av_file(path, codec, rate=rate)
        factory = audio_source_factory(str(path), "auto")
        assert factory is not None, codec
        feed = AudioFeed("file", factory, linger=0.0)
        got = await read_for(feed, 2.2)
        await feed.close()
        assert len(got) >= 80, (codec, len(got))
        levels = opus_rms([bytes(p.packet) for p in got])
        assert max(levels) > LOUD, (codec, levels)
        assert sum(level > LOUD for level in levels) <= len(levels) // 2, codec  # beeps, not noise
        assert feed.stats.encoders == 1


async def test_a_files_opus_passes_through_untouched(tmp_path):
    path = tmp_path / "clip-opus.mkv"
    write_av_file(path, "libopus")
    with av.open(str(path)) as container:
        originals = {bytes(p) for p in container.demux(container.streams.audio[0]) if p.size}
    feed = AudioFeed("file", audio_source_factory(str(path), "auto"), linger=0.0)
    got = await read_for(feed, 1.5)
    await feed.close()
    assert len(got) >= 50
    assert all(bytes(p.packet) in originals for p in got)
    assert feed.stats.encoders == 0 and feed.stats.passed >= len(got)


@pytest.mark.parametrize(("codec", "name"), [("pcm_mulaw", "pcmu"), ("pcm_alaw", "pcma")])
async def test_a_files_g711_passes_through_untouched_and_is_encoded_only_for_opus_listeners(tmp_path, codec, name):
    """The camera's own G.711 feed (its tier of that codec): the file's packets byte for byte on the
    8 kHz clock, no decoder nor encoder; an Opus listener beside it starts the one encoder on the
    same run, which stops when it leaves; the codec learnt when the source opens."""
    path = tmp_path / f"clip-{name}.mov"
    write_av_file(path, codec, rate=8000)
    with av.open(str(path)) as container:
        originals = [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]
    assert known_audio_codec(str(path), "auto") == name
    feed = AudioFeed("file", audio_source_factory(str(path), "auto"), linger=0.0)  # (its codec not told)
    assert feed.passed_feed(name) is None  # (not known yet)
    try:
        assert await feed.learn_codec() == name
        passed = feed.passed_feed(name)
        assert passed is not None and feed.passed_feed("pcma" if name == "pcmu" else "pcmu") is None
        assert passed.codec.codec == name and passed.codec.clock_rate == G711_CLOCK_RATE
        got = await read_for(passed, 2.5)  # (the file opened again: linger 0 released it after learning)
        assert len(got) >= 8  # (128 ms packets)
        start = originals.index(bytes(got[0].packet))
        assert [bytes(p.packet) for p in got] == originals[start:start + len(got)]
        steps = {b.packet.pts - a.packet.pts for a, b in zip(got, got[1:], strict=False)}
        assert steps == {len(originals[0])}, steps  # each packet's samples at 8 kHz
        assert feed.stats.encoders == 0 and feed.stats.encoded == 0
        # an Opus listener beside a G.711 one: one run, one encoder for it, stopped when it leaves
        both = await asyncio.gather(read_for(passed, 2.5), read_for(feed, 2.5))
        assert all(len(r) >= 8 for r in both)
        assert max(opus_rms([bytes(p.packet) for p in both[1]])) > LOUD
        assert feed.stats.encoders == 1 and feed.stats.encoded > 0
        encoded = feed.stats.encoded
        await read_for(passed, 1.0)
        # (a packet in flight: its 128 ms are 7 Opus frames)
        assert not feed.opus_wanted and feed.stats.encoded <= encoded + 7
    finally:
        await feed.close()


def test_which_cameras_have_sound(tmp_path):
    silent = tmp_path / "silent.mp4"
    with av.open(str(silent), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height = 64, 64
        for packet in video.encode(None):
            out.mux(packet)
    assert audio_source_factory("pattern", "auto") is ToneSource
    assert audio_source_factory("pattern", "off") is None
    assert audio_source_factory(str(silent), "auto") is None
    assert audio_source_factory("rtsp://127.0.0.1:1/x", "auto") is not None
    assert audio_source_factory("/dev/video0", "auto") is None
    # an rtsp:// camera's sound comes from its picture's session (camtrack's reader over TCP); PyAV over UDP
    from camtrack.sources.rtspaudio import SessionAudioSource

    assert isinstance(audio_source_factory("rtsp://127.0.0.1:1/x", "auto")(), SessionAudioSource)
    assert isinstance(audio_source_factory("rtsp://127.0.0.1:1/x", "auto", rtsp_transport="udp")(), AvAudioSource)


def test_a_streams_sound_stopped_just_before_it_opens_stays_stopped():
    """PyAV's reader of a stream's sound (an rtsp:// camera over UDP, http://...): its open used to
    clear the interrupt and wait for the silent camera's answer (5.2 s, then 'Invalid data found'), holding a
    stopping feed's run."""
    with SilentServer() as server:
        took = stopped_then_opened(AvAudioSource(server.url, rtsp_transport="udp"), OSError)
        print(f"a stream's sound stopped before it opened: open returned in {took * 1000:.1f} ms")
        assert took < 1.0, took
        assert not server.accepted  # (nothing opened: no connection left to the camera)


def test_a_sessions_sound_stopped_just_before_its_pyav_reader_opens_stays_stopped():
    """An rtsp:// camera's sound over TCP (`SessionAudioSource`) whose camtrack reader cannot read it
    (here rtsps://) goes to a PyAV reader made after the feed's interrupt, which went to camtrack's
    reader: the PyAV reader is stopped too. The interleaving made deterministic: the interrupt comes
    while the PyAV reader is made. It used to open the silent camera and wait its answer (5.2 s)."""
    from camtrack.sources.rtspaudio import SessionAudioSource

    with SilentServer() as server:
        made: list[AvAudioSource] = []

        def pyav_reader() -> AvAudioSource:
            source.interrupt()  # (the feed stops the run now)
            made.append(AvAudioSource(server.url))
            return made[0]

        source = SessionAudioSource(server.url.replace("rtsp://", "rtsps://"), fallback=pyav_reader)
        took = open_refused_in(source, OSError)
        print(f"a session's sound stopped as its PyAV reader was made: open returned in {took * 1000:.1f} ms")
        assert made and took < 1.0, took
        assert not server.accepted
