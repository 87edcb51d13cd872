"""camtrack's own RTSP reader (camtrack.sources.rtsp): RTP to access units, the SDP it reads, and a
session with the loopback test server; the transcode path decoding its packets.

Against GStreamer's real server (authentication among it): tests/test_real_rtsp.py.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import av
import pytest

from camtrack.media.frame import VIDEO_CLOCK_RATE
from camtrack.media.passthrough import PassthroughFeed
from camtrack.sources import make_packet_source, make_source
from camtrack.sources.decoded import DecodedSource
from camtrack.sources.demux import DemuxSource
from camtrack.sources.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_type, split_annexb
from camtrack.sources.rtsp import Depacketizer, RtspError, RtspSource, RtspUnsupported, parse_sdp

from .conftest import eventually
from .rtsp_server import RtspServer
from .test_demux import files, rtsp, write_h264  # noqa: F401 - their fixtures: test files, a loopback RTSP server

WIDTH, HEIGHT = 320, 240


# -- RTP to access units


def rtp(payload: bytes, seq: int, timestamp: int, *, marker: bool = False, pt: int = 96, csrc: int = 0,
        extension: bytes | None = None, padding: int = 0) -> bytes:
    first = 0x80 | csrc | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    head = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF, timestamp, 0x1234) + b"\0\0\0\1" * csrc
    if extension is not None:
        head += b"\xbe\xde" + struct.pack("!H", len(extension) // 4) + extension
    return head + payload + (b"\0" * (padding - 1) + bytes([padding]) if padding else b"")


IDR = bytes([0x65]) + b"\x88" * 3000
SLICE = bytes([0x41]) + b"\x9a" * 50
SPS, PPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA]), bytes([0x68, 0xCE, 0x3C, 0x80])


def fu_a(nal: bytes, size: int) -> list[bytes]:
    body, parts = nal[1:], []
    for start in range(0, len(body), size):
        flags = (0x80 if start == 0 else 0) | (0x40 if start + size >= len(body) else 0)
        parts.append(bytes([(nal[0] & 0xE0) | 28, flags | (nal[0] & 0x1F)]) + body[start:start + size])
    return parts


def stap_a(*nals: bytes) -> bytes:
    return bytes([0x18]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def test_an_access_unit_ends_on_its_marker_bit() -> None:
    unpack = Depacketizer(96)
    parts = fu_a(IDR, 1000)
    assert unpack.push(rtp(stap_a(SPS, PPS), 1, 9000)) == []
    for i, part in enumerate(parts[:-1]):
        assert unpack.push(rtp(part, 2 + i, 9000)) == []
    # the last packet of the picture completes it: nothing waits for the next picture
    assert unpack.push(rtp(parts[-1], 2 + len(parts) - 1, 9000, marker=True)) == [(9000, [SPS, PPS, IDR])]
    seq = 2 + len(parts)
    assert unpack.push(rtp(SLICE, seq, 12000, marker=True)) == [(12000, [SLICE])]


def test_without_marker_bits_the_next_timestamp_ends_a_picture() -> None:
    unpack = Depacketizer(96)
    assert unpack.push(rtp(IDR, 1, 9000)) == []
    assert unpack.push(rtp(SLICE, 2, 12000)) == [(9000, [IDR])]
    assert unpack.push(rtp(SLICE, 3, 15000)) == [(12000, [SLICE])]


def test_csrc_extension_padding_and_other_payload_types() -> None:
    unpack = Depacketizer(96)
    assert unpack.push(rtp(IDR, 1, 100, marker=True, csrc=2, extension=b"\x10\xff\x00\x00", padding=4)) == [(100, [IDR])]
    assert unpack.push(rtp(SLICE, 2, 200, marker=True, pt=97)) == []  # not the video's payload type
    assert unpack.push(b"\x80\x60\x00") == [] and unpack.push(b"\x40" * 20) == []  # too short, not RTP version 2


def test_after_a_loss_pictures_wait_for_the_next_idr() -> None:
    unpack = Depacketizer(96)
    assert unpack.push(rtp(SLICE, 1, 100, marker=True)) == []  # before the first IDR: nothing to decode against
    assert unpack.push(rtp(IDR, 2, 200, marker=True)) == [(200, [IDR])]
    assert unpack.push(rtp(SLICE, 3, 300, marker=True)) == [(300, [SLICE])]
    parts = fu_a(IDR, 1000)
    assert unpack.push(rtp(parts[0], 4, 400)) == []
    assert unpack.push(rtp(parts[2], 6, 400, marker=True)) == []  # parts[1] lost: the picture is dropped
    assert unpack.lost == 1
    assert unpack.push(rtp(SLICE, 7, 500, marker=True)) == []  # and what depends on it
    assert unpack.push(rtp(IDR, 8, 600, marker=True)) == [(600, [IDR])]
    assert unpack.push(rtp(SLICE, 5, 400, marker=True)) == []  # a late packet from before changes nothing
    assert unpack.push(rtp(SLICE, 9, 700, marker=True)) == [(700, [SLICE])]


def test_a_fragment_without_its_start_is_dropped() -> None:
    unpack = Depacketizer(96)
    unpack.push(rtp(IDR, 1, 100, marker=True))
    parts = fu_a(SLICE, 20)
    assert unpack.push(rtp(parts[1], 2, 200, marker=True)) == []


def test_an_endless_access_unit_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("camtrack.sources.rtsp.MAX_ACCESS_UNIT", 10_000)
    unpack = Depacketizer(96)
    unpack.push(rtp(IDR, 1, 100, marker=True))
    parts = fu_a(bytes([0x41]) + b"\1" * 50_000, 1200)
    done = [unpack.push(rtp(part, 2 + i, 200)) for i, part in enumerate(parts)]
    assert all(d == [] for d in done) and unpack._size <= 10_000
    assert unpack.push(rtp(IDR, 2 + len(parts), 300, marker=True)) == [(300, [IDR])]


# -- SDP


SDP = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=cam\r\nt=0 0\r\n{session}"
    "m=audio 0 RTP/AVP 0\r\na=control:trackID=1\r\n"
    "m=video 0 RTP/AVP {pts}\r\n{rtpmap}a=fmtp:96 packetization-mode={mode};profile-level-id=42c01e;"
    "sprop-parameter-sets=Z0LAHtoA,aM48gA==\r\na=control:{control}\r\n"
)


@pytest.mark.parametrize(("session", "control", "expected"), [
    ("", "trackID=0", "rtsp://cam/live/trackID=0"),
    ("", "rtsp://other/x", "rtsp://other/x"),
    ("", "*", "rtsp://cam/live"),
    ("a=control:rtsp://cam/agg\r\n", "video", "rtsp://cam/agg/video"),
])
def test_sdp_gives_the_video_track(session: str, control: str, expected: str) -> None:
    track = parse_sdp(SDP.format(session=session, pts="96", rtpmap="a=rtpmap:96 H264/90000\r\n", mode=1, control=control),
                      "rtsp://cam/live")
    assert (track.control, track.payload_type, track.clock_rate) == (expected, 96, 90000)
    assert [nal_type(n) for n in track.parameter_sets] == [NAL_SPS, NAL_PPS]


def test_sdp_refusals() -> None:
    h265 = SDP.format(session="", pts="96", rtpmap="a=rtpmap:96 H265/90000\r\n", mode=1, control="v")
    with pytest.raises(RtspUnsupported, match="H265"):
        parse_sdp(h265, "rtsp://cam/")
    with pytest.raises(RtspUnsupported, match="JPEG"):
        parse_sdp(SDP.format(session="", pts="26", rtpmap="a=rtpmap:26 JPEG/90000\r\n", mode=1, control="v"), "rtsp://cam/")
    with pytest.raises(RtspUnsupported, match="packetization-mode 2"):
        parse_sdp(SDP.format(session="", pts="96", rtpmap="a=rtpmap:96 H264/90000\r\n", mode=2, control="v"), "rtsp://cam/")
    with pytest.raises(RtspError, match="no video"):
        parse_sdp("v=0\r\nm=audio 0 RTP/AVP 0\r\n", "rtsp://cam/")


# -- a session with the loopback server


@pytest.mark.parametrize("in_band", [True, False], ids=["in-band", "sdp-only"])
async def test_a_session_gives_annexb_pictures_with_parameter_sets(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]],  # noqa: F811
                                                                    in_band: bool) -> None:
    url, server = await rtsp(in_band=in_band)

    def read(count: int) -> tuple[RtspSource, list]:
        source = RtspSource(url)
        source.open()
        try:
            return source, [source.read() for _ in range(count)]
        finally:
            source.close()

    source, packets = await asyncio.to_thread(read, 40)
    assert source.fallback is None
    assert (source.codec.width, source.codec.height) == (WIDTH, HEIGHT)
    assert source.codec.profile_level_id is not None and source.codec.profile_level_id[:2] == "64"
    assert source.passthrough and len(source.codec.parameter_sets) == 2
    assert all(p is not None for p in packets) and packets[0].keyframe  # starts at an IDR
    for packet in packets:
        kinds = [nal_type(n) for n in split_annexb(packet.data)]
        if packet.keyframe:
            assert kinds.index(NAL_SPS) < kinds.index(NAL_IDR) and kinds.index(NAL_PPS) < kinds.index(NAL_IDR)
    steps = {b.pts - a.pts for a, b in zip(packets, packets[1:], strict=False)}
    assert steps == {VIDEO_CLOCK_RATE // 30}
    codec = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in codec.decode(av.Packet(p.data))]
    assert len(frames) >= len(packets) - 1 and {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
    await eventually(lambda: "TEARDOWN" in server.methods, timeout=10)


async def test_a_picture_is_out_before_the_next_one_is_sent(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:  # noqa: F811
    """What this reader is for: FFmpeg's parser holds each picture until the next begins (one frame
    interval); here a picture comes out as soon as its last packet is in. At 1 fps the gap is a second."""
    url, _ = await rtsp(fps=1.0)

    def first_two() -> tuple[float, float]:
        source = RtspSource(url)
        source.open()
        opened = time.monotonic()
        try:
            source.read()
            first = time.monotonic() - opened
            source.read()
            return first, time.monotonic() - opened
        finally:
            source.close()

    first, second = await asyncio.to_thread(first_two)
    assert first < 0.5 <= second, (first, second)


async def test_sessions_are_kept_alive(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:  # noqa: F811
    url, server = await rtsp(session_timeout=2)
    source = RtspSource(url)
    await asyncio.to_thread(source.open)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set() and source.read() is not None:
            pass

    reader = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        await eventually(lambda: "GET_PARAMETER" in server.methods, timeout=10)
    finally:
        stop.set()
        await reader
        source.close()


async def test_interrupt_wakes_a_blocked_read(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:  # noqa: F811
    url, _ = await rtsp(fps=0.1)  # a picture every 10 s
    source = RtspSource(url)
    await asyncio.to_thread(source.open)
    assert await asyncio.to_thread(source.read) is not None
    reader = asyncio.ensure_future(asyncio.to_thread(source.read))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    source.interrupt()
    assert await asyncio.wait_for(reader, 5) is None
    assert time.monotonic() - began < 2
    source.close()


async def test_a_camera_that_hangs_up_ends_the_stream(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:  # noqa: F811
    url, server = await rtsp()
    source = RtspSource(url)
    await asyncio.to_thread(source.open)
    assert await asyncio.to_thread(source.read) is not None
    server.drop_connections()

    def drain() -> int:
        count = 0
        while source.read() is not None:
            count += 1
        return count

    assert await asyncio.wait_for(asyncio.to_thread(drain), 10) < 100
    source.close()


async def test_unreachable_and_refused(unused_tcp_port: int) -> None:
    source = RtspSource(f"rtsp://127.0.0.1:{unused_tcp_port}/cam", open_timeout=2)
    with pytest.raises(OSError):
        await asyncio.to_thread(source.open)


class Mode2Server(RtspServer):
    """Says packetization-mode 2 (interleaved), which camtrack's reader leaves to PyAV's."""

    def sdp(self) -> str:
        return super().sdp().replace("packetization-mode=1", "packetization-mode=2")


async def test_what_it_cannot_read_goes_to_pyav(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]],  # noqa: F811
                                                 caplog: pytest.LogCaptureFixture) -> None:
    url, _ = await rtsp(server_type=Mode2Server)
    source = RtspSource(url)
    with caplog.at_level(logging.INFO, logger="camtrack.sources.rtsp"):
        await asyncio.to_thread(source.open)
    try:
        assert isinstance(source.fallback, DemuxSource)
        assert "packetization-mode 2; reading it with PyAV instead" in caplog.text
        packet = await asyncio.to_thread(source.read)
        assert packet is not None and (source.codec.width, source.codec.height) == (WIDTH, HEIGHT)
    finally:
        source.close()


def test_which_reader() -> None:
    assert isinstance(make_packet_source("rtsp://cam/live"), RtspSource)
    assert isinstance(make_packet_source("RTSP://cam/live"), RtspSource)
    assert isinstance(make_packet_source("rtsp://cam/live", rtsp_transport="udp"), DemuxSource)
    assert isinstance(make_packet_source("rtsps://cam/live"), DemuxSource)
    assert isinstance(make_packet_source("http://cam/video.ts"), DemuxSource)


async def test_the_passthrough_feed_reconnects_with_it(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:  # noqa: F811
    url, server = await rtsp(in_band=False)
    feed = PassthroughFeed("cam", lambda: RtspSource(url, read_timeout=2.0), linger=0.1, retry_max=0.5)
    feed.attach(object())
    try:
        await eventually(lambda: feed.stats.packets >= 10, timeout=10)
        before = feed.latest
        assert before is not None
        server.go_down()
        await eventually(lambda: feed.state == "retrying", timeout=10)
        server.come_back()
        await eventually(lambda: feed.stats.reopenings >= 1 and feed.state == "up", timeout=15)
        count = feed.stats.packets
        await eventually(lambda: feed.stats.packets >= count + 10, timeout=10)
        latest = feed.latest
        assert latest is not None and latest.seq > before.seq and latest.packet.pts > before.packet.pts  # type: ignore[operator]
    finally:
        await feed.close()


# -- transcoding what cannot pass through


async def test_transcode_decodes_the_cameras_packets(rtsp: Callable[..., Awaitable[tuple[str, RtspServer]]]) -> None:  # noqa: F811
    url, _ = await rtsp()
    source = make_source(url, 160, 120, 30)
    assert isinstance(source, DecodedSource) and isinstance(source.packets, RtspSource)

    def read(count: int) -> list:
        source.open()
        try:
            return [source.read() for _ in range(count)]
        finally:
            source.close()

    images = await asyncio.to_thread(read, 20)
    assert all(i is not None and i.shape == (120, 160, 3) for i in images)
    assert source.errors == 0


def test_transcode_of_a_file_or_http_stays_with_opencv(tmp_path: Path) -> None:
    path = write_h264(tmp_path / "clip.mp4")
    assert not isinstance(make_source(str(path), 320, 240, 30), DecodedSource)
    assert not isinstance(make_source("http://cam/mjpeg", 320, 240, 30), DecodedSource)
