"""The packet source (PyAV demuxing files and loopback streams into Annex-B H.264) and the
passthrough feed, on H.264 files the tests write with libx264. RTSP against the tests' own minimal
server (tests/rtsp_server.py): no real RTSP server is installed on the test machines yet."""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web

from camtrack.media.frame import VIDEO_CLOCK_RATE
from camtrack.media.passthrough import PassthroughFeed, Restamper
from camtrack.sources.demux import DemuxSource, probe
from camtrack.sources.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    H264Converter,
    nal_type,
    parse_avcc_extradata,
    split_annexb,
    split_avcc,
)

from .conftest import eventually
from .rtsp_server import AccessUnit, RtspServer

WIDTH, HEIGHT, FPS, GOP = 320, 240, 30, 15
PROFILE_IDC = {"baseline": "42", "main": "4d", "high": "64"}


def write_h264(path: Path, *, profile: str = "baseline", bf: int = 0, frames: int = 45, fps: int = FPS,
               gop: int = GOP, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """An H.264 file of a moving bar, `frames` long, a keyframe every `gop` frames."""
    fmt = "h264" if path.suffix == ".h264" else None
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"profile": profile, "bf": str(bf), "g": str(gop), "keyint_min": str(gop),
                                        "sc_threshold": "0", "preset": "veryfast"}
        stream.codec_context.max_b_frames = bf
        for i in range(frames):
            image = np.full((height, width, 3), 60, np.uint8)
            image[:, (i * 7) % width] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("h264")
    made = {
        "baseline.mp4": write_h264(folder / "baseline.mp4", profile="baseline"),
        "main.mp4": write_h264(folder / "main.mp4", profile="main"),
        "high.mp4": write_h264(folder / "high.mp4", profile="high"),
        "high.mkv": write_h264(folder / "high.mkv", profile="high"),
        "high.h264": write_h264(folder / "high.h264", profile="high"),
        "baseline.ts": write_h264(folder / "baseline.ts", profile="baseline"),
        "bframes.mp4": write_h264(folder / "bframes.mp4", profile="main", bf=2),
        "bframes.h264": write_h264(folder / "bframes.h264", profile="high", bf=2),
    }
    return made


def read_pass(url: str, **settings: object) -> tuple[DemuxSource, list]:
    """Every packet of one pass through a file, unpaced."""
    source = DemuxSource(url, loop=False, realtime=False, **settings)  # type: ignore[arg-type]
    source.open()
    packets = []
    try:
        while (packet := source.read()) is not None:
            packets.append(packet)
    finally:
        source.close()
    return source, packets


def decode(datas: list[bytes]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    for data in datas:
        frames.extend(decoder.decode(av.Packet(data)))
    frames.extend(decoder.decode(None))
    return frames


@pytest.mark.parametrize("profile", ["baseline", "main", "high"])
def test_codec_info_per_profile(files: dict[str, Path], profile: str) -> None:
    codec, why_not = probe(str(files[f"{profile}.mp4"]))
    assert (codec.codec, codec.width, codec.height) == ("h264", WIDTH, HEIGHT)
    assert codec.profile_level_id is not None and codec.profile_level_id[:2] == PROFILE_IDC[profile]
    assert len(codec.profile_level_id) == 6
    sps, pps = codec.parameter_sets
    assert sps[:4] == pps[:4] == b"\x00\x00\x00\x01"
    assert (nal_type(sps[4:]), nal_type(pps[4:])) == (NAL_SPS, NAL_PPS)
    assert why_not is None


@pytest.mark.parametrize("name", ["bframes.mp4", "bframes.h264"])
def test_b_frames_are_not_passthrough(files: dict[str, Path], name: str) -> None:
    codec, why_not = probe(str(files[name]))
    assert codec.codec == "h264"
    assert why_not is not None and "B-frames" in why_not


@pytest.mark.parametrize("name", ["baseline.mp4", "high.mkv", "high.h264", "baseline.ts"])
def test_packets_are_annexb_with_parameter_sets_before_every_idr(files: dict[str, Path], name: str) -> None:
    source, packets = read_pass(str(files[name]))
    assert source.passthrough
    assert len(packets) == 45
    keyframes = [p for p in packets if p.keyframe]
    assert len(keyframes) == 45 // GOP
    assert packets[0].keyframe
    for packet in packets:
        assert packet.data.startswith(b"\x00\x00\x00\x01")
        kinds = [nal_type(n) for n in split_annexb(packet.data)]
        if packet.keyframe:
            assert NAL_IDR in kinds
            first_idr = kinds.index(NAL_IDR)
            assert NAL_SPS in kinds[:first_idr] and NAL_PPS in kinds[:first_idr]
        else:
            assert NAL_IDR not in kinds
    pts = [p.pts for p in packets]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    step = float((pts[-1] - pts[0]) / (len(pts) - 1) * packets[0].time_base)
    assert step == pytest.approx(1 / FPS, rel=0.02)
    frames = decode([p.data for p in packets])
    assert len(frames) == 45
    assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}


def test_parameter_sets_go_in_front_of_idrs_that_lack_them(files: dict[str, Path]) -> None:
    """A camera sending SPS/PPS only out of band (RTSP's sprop-parameter-sets, MP4's avcC)."""
    with av.open(str(files["baseline.mp4"])) as container:
        stream = container.streams.video[0]
        extradata = stream.codec_context.extradata
        assert extradata is not None and extradata[0] == 1  # avcC
        length_size, sps, pps = parse_avcc_extradata(extradata)
        assert length_size == 4 and len(sps) == len(pps) == 1
        idr = next(bytes(p) for p in container.demux(stream) if p.is_keyframe)
    converter = H264Converter(extradata)
    # strip the in-band parameter sets the encoder wrote: only the slices (and SEI) remain
    slices = [n for n in split_avcc(idr) if nal_type(n) not in (NAL_SPS, NAL_PPS)]
    data, keyframe = converter.convert(b"".join(len(n).to_bytes(4, "big") + n for n in slices))
    kinds = [nal_type(n) for n in split_annexb(data)]
    assert keyframe and kinds[:2] == [NAL_SPS, NAL_PPS] and NAL_IDR in kinds


def test_a_file_is_paced_in_real_time_and_loops(files: dict[str, Path]) -> None:
    source = DemuxSource(str(files["high.mkv"]))
    source.open()
    try:
        began = time.monotonic()
        packets = [source.read() for _ in range(61)]
        elapsed = time.monotonic() - began
    finally:
        source.close()
    assert all(p is not None for p in packets)
    # 60 frame intervals at 30 fps: 2 s (the first packet comes at once)
    assert 1.7 < elapsed < 3.0, elapsed
    assert source.loops == 1
    pts = [p.pts for p in packets if p is not None]
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    assert min(steps) > 0
    assert float(max(steps) * packets[0].time_base) < 2 / FPS  # type: ignore[union-attr]
    assert [p.keyframe for p in packets if p is not None].count(True) == 5  # 0, 15, 30, 45 (loop), 60


def test_interrupt_ends_a_paced_wait(files: dict[str, Path]) -> None:
    source = DemuxSource(str(files["baseline.mp4"]))
    source.open()
    try:
        source.read()
        source.interrupt()
        began = time.monotonic()
        assert source.read() is None
        assert time.monotonic() - began < 0.5
    finally:
        source.close()


def test_restamper_keeps_growing_across_jumps() -> None:
    clock = Restamper()
    tb = fractions.Fraction(1, 1000)
    stamps = [clock.stamp(pts, tb, wall) for pts, wall in [(1000, 0.0), (1033, 0.033), (1066, 0.066), (1066, 0.07)]]
    assert stamps[:3] == [0, 2970, 5940] and stamps[3] == 5941
    # the source went back to zero (a camera restarting): continue from the wall clock
    after = clock.stamp(0, tb, 1.066)
    assert after == pytest.approx(5941 + VIDEO_CLOCK_RATE, abs=400)
    assert clock.stamp(33, tb, 1.1) == after + 2970
    assert clock.discontinuities == 1
    clock.restart()
    assert clock.stamp(5000, tb, 1.2) > after + 2970


async def test_http_stream_loopback(files: dict[str, Path]) -> None:
    """A live HTTP stream (a TS file served on loopback): read as it comes, not paced, ends."""
    app = web.Application()
    app.router.add_static("/", files["baseline.ts"].parent)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/baseline.ts"
        source, packets = await asyncio.to_thread(read_pass, url)
        assert source.live and not source.loop
        assert source.codec.width == WIDTH and source.passthrough
        assert len(packets) == 45 and packets[0].keyframe
    finally:
        await runner.cleanup()


async def test_feed_lifecycle_and_start_from_newest_idr(files: dict[str, Path]) -> None:
    feed = PassthroughFeed("cam", lambda: DemuxSource(str(files["high.mp4"])), linger=0.1)
    reader = object()
    feed.attach(reader)
    try:
        assert feed.running
        first = await asyncio.wait_for(feed.next_packet(0), 10)
        assert feed.codec.width == WIDTH and feed.codec.profile_level_id is not None
        assert feed.codec.time_base == fractions.Fraction(1, VIDEO_CLOCK_RATE)
        # read in order past a keyframe in the middle of the file
        packets = [first.item]
        while len(packets) < 25:
            read = await asyncio.wait_for(feed.next_packet(packets[-1].seq), 5)
            assert read.skipped == 0
            packets.append(read.item)
        seqs = [p.seq for p in packets]
        assert seqs == list(range(seqs[0], seqs[0] + 25))
        pts = [p.packet.pts for p in packets]
        assert all(b is not None and a is not None and b > a for a, b in zip(pts, pts[1:], strict=False))
        step = (pts[-1] - pts[0]) / 24  # type: ignore[operator]
        assert step == pytest.approx(VIDEO_CLOCK_RATE / FPS, rel=0.02)
        start = feed.start_packets()
        assert start and start[0].keyframe and start[-1].seq == feed.latest.seq  # type: ignore[union-attr]
        assert not any(p.keyframe for p in start[1:])
        # a joiner decodes from there: every packet gives a picture of the camera's size
        frames = decode([bytes(p.packet) for p in start])
        assert len(frames) == len(start) and {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
        feed.request_keyframe()
        assert feed.stats.keyframe_requests == 1
        assert feed.stats.keyframes >= 2 and feed.stats.packets >= 25 and feed.stats.opens == 1
    finally:
        feed.detach(reader)
    await eventually(lambda: not feed.running, timeout=5)
    assert feed.state == "idle" and feed.latest is None
    last_seq = packets[-1].seq
    # a second run: numbers keep growing, timestamps too
    feed.attach(reader)
    try:
        read = await asyncio.wait_for(feed.next_packet(0), 10)
        assert read.item.seq > last_seq and read.item.packet.pts > pts[-1]  # type: ignore[operator]
        assert feed.stats.runs == 2
    finally:
        await feed.close()
    assert not feed.running


async def test_feed_retries_quietly_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "late.mp4"
    feed = PassthroughFeed("cam", lambda: DemuxSource(str(path), loop=False), linger=0.1, retry_max=0.5)
    reader = object()
    caplog.set_level(logging.INFO)
    feed.attach(reader)
    try:
        await eventually(lambda: feed.state == "retrying", timeout=5)
        await asyncio.sleep(0)  # (retries continue meanwhile)
        await eventually(lambda: sum("retrying" in r.getMessage() for r in caplog.records) >= 1, timeout=5)
        await asyncio.to_thread(write_h264, path, frames=15)
        # the file appears: it opens, plays once, ends, and opens again
        await eventually(lambda: feed.stats.reopenings >= 1 and feed.stats.packets >= 20, timeout=15)
        assert feed.stats.packets <= 15 * (feed.stats.opens + 1)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "late.mp4" in r.getMessage()]
        # the missing file said once for its outage (not once per attempt), each end said once
        assert sum("retrying" in r.getMessage() for r in warnings) == 1
        assert sum("ended" in r.getMessage() for r in warnings) <= feed.stats.reopenings
    finally:
        await feed.close()
    assert feed.state == "idle"


async def test_aiortc_packetizes_the_feed_with_the_source_timestamps(files: dict[str, Path]) -> None:
    """What EncodedTrack does with each packet: aiortc's H.264 packetizer splits the Annex-B
    into RTP payloads (an IDR's first payload carries SPS and PPS) stamped from the packet's pts."""
    from aiortc.codecs.h264 import H264Encoder

    feed = PassthroughFeed("cam", lambda: DemuxSource(str(files["main.mp4"])), linger=0.1)
    feed.attach(object())
    try:
        first = await asyncio.wait_for(feed.next_packet(0), 10)
        packets = [first.item]
        while len(packets) < 20:
            packets.append((await asyncio.wait_for(feed.next_packet(packets[-1].seq), 5)).item)
    finally:
        await feed.close()
    packer = H264Encoder()
    stamps = []
    for encoded in packets:
        payloads, timestamp = packer.pack(encoded.packet)
        assert payloads
        stamps.append(timestamp)
        if encoded.keyframe:
            # STAP-A (24) aggregating SPS (7) and PPS (8), or the parameter sets on their own
            assert payloads[0][0] & 0x1F in (24, NAL_SPS)
    assert stamps == [p.packet.pts for p in packets]
    assert {b - a for a, b in zip(stamps, stamps[1:], strict=False)} == {VIDEO_CLOCK_RATE // FPS}


@pytest.fixture
async def rtsp(files: dict[str, Path]) -> AsyncIterator[Callable[..., Awaitable[tuple[str, RtspServer]]]]:
    """Start loopback RTSP servers of a test file (see tests/rtsp_server.py)."""
    servers: list[RtspServer] = []

    async def start(name: str = "high.mp4", *, in_band: bool = True, fps: float = FPS,
                    server_type: type[RtspServer] = RtspServer, session_timeout: int = 60) -> tuple[str, RtspServer]:
        source, packets = await asyncio.to_thread(read_pass, str(files[name]))
        tb = packets[0].time_base
        units = [AccessUnit(p.data, round(p.pts * tb * VIDEO_CLOCK_RATE), p.keyframe) for p in packets]
        sps, pps = (ps[4:] for ps in source.codec.parameter_sets)
        server = server_type(units, sps, pps, fps, in_band_parameter_sets=in_band)
        server.session_timeout = session_timeout
        servers.append(server)
        return await server.start(), server

    yield start
    for server in servers:
        await server.stop()


@pytest.mark.parametrize("in_band", [True, False], ids=["in-band", "sdp-only"])
async def test_rtsp_over_tcp(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]], in_band: bool) -> None:
    url, server = await rtsp("high.mp4", in_band=in_band)

    def read(count: int) -> tuple[DemuxSource, list, float]:
        source = DemuxSource(url)
        began = time.monotonic()
        source.open()
        opened = time.monotonic() - began
        try:
            return source, [source.read() for _ in range(count)], opened
        finally:
            source.close()

    source, packets, opened = await asyncio.to_thread(read, 40)
    assert source.live and not source.realtime
    assert source.options["rtsp_transport"] == "tcp"
    assert (source.codec.width, source.codec.height, source.codec.profile_level_id[:2]) == (WIDTH, HEIGHT, "64")  # type: ignore[index]
    assert source.passthrough and len(source.codec.parameter_sets) == 2
    assert all(p is not None for p in packets)
    keyframes = [p for p in packets if p is not None and p.keyframe]
    assert keyframes
    for packet in keyframes:
        kinds = [nal_type(n) for n in split_annexb(packet.data)]
        assert kinds.index(NAL_SPS) < kinds.index(NAL_IDR) and kinds.index(NAL_PPS) < kinds.index(NAL_IDR)
    first_key = next(i for i, p in enumerate(packets) if p is not None and p.keyframe)
    frames = decode([p.data for p in packets[first_key:] if p is not None])
    assert len(frames) == len(packets) - first_key and {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
    print(f"rtsp open {opened * 1000:.0f} ms, first packet keyframe: {packets[0].keyframe}")  # type: ignore[union-attr]


async def test_feed_reconnects_when_the_rtsp_server_drops(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:
    url, server = await rtsp("baseline.mp4", in_band=False)
    feed = PassthroughFeed("cam", lambda: DemuxSource(url, read_timeout=2.0), linger=0.1, retry_max=0.5)
    feed.attach(object())
    try:
        await eventually(lambda: feed.stats.packets >= 10, timeout=10)
        before = feed.latest
        assert before is not None
        server.drop_connections()
        await eventually(lambda: feed.stats.reopenings >= 1 and feed.state == "up", timeout=15)
        count = feed.stats.packets
        await eventually(lambda: feed.stats.packets >= count + 10, timeout=10)
        assert server.sessions >= 2
        latest = feed.latest
        assert latest is not None and latest.seq > before.seq
        assert latest.packet.pts > before.packet.pts  # type: ignore[operator]
        start = feed.start_packets()
        assert start and start[0].keyframe
    finally:
        await feed.close()


async def test_rtsp_with_b_frames_is_not_passthrough(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:
    url, _ = await rtsp("bframes.mp4")
    codec, why_not = await asyncio.to_thread(probe, url)
    assert codec.codec == "h264" and codec.profile_level_id is not None and codec.profile_level_id[:2] == "4d"
    assert why_not is not None and "B-frames" in why_not
