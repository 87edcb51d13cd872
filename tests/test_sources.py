"""Frame sources, the capture thread and the latency stamp."""

from __future__ import annotations

import contextlib
import functools
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from camtrack.media import stamp
from camtrack.media.capture import CaptureThread
from camtrack.media.frame import Frame
from camtrack.sources import PatternSource, SourceError, check_source, make_source

ROOT = Path(__file__).resolve().parent.parent


def collect(source, count: int, timeout: float = 20.0) -> list[Frame]:
    """Run a capture thread until it has produced `count` frames."""
    frames: list[Frame] = []
    done = threading.Event()

    def on_frame(frame: Frame) -> None:
        frames.append(frame)
        if len(frames) >= count:
            done.set()

    capture = CaptureThread(source, on_frame)
    capture.start()
    try:
        assert done.wait(timeout), f"only {len(frames)} frames in {timeout} s"
    finally:
        capture.stop()
        capture.join(5)
    assert not capture.alive
    return frames[:count]


def test_stamp_round_trip():
    image = np.zeros((48, 640, 3), np.uint8)
    for value in (0, 1, 0xDEADBEEF, 2**32 - 1, stamp.now_ms()):
        stamp.write_stamp(image, value)
        assert stamp.read_stamp(image) == value


def test_latency_wraps_around():
    assert stamp.latency_ms(2**32 - 10, 5) == 15
    assert stamp.latency_ms(100, 90) == -10


def test_pattern_size_rate_and_stamp():
    frames = collect(PatternSource(320, 240, 30), 45)
    assert all(f.bgr.shape == (240, 320, 3) for f in frames)
    assert all(f.yuv.shape == (360, 320) for f in frames)
    assert [f.seq for f in frames] == list(range(1, 46))
    # paced at about 30 fps (loose bounds: this is behaviour, not a benchmark)
    elapsed = frames[-1].monotonic - frames[0].monotonic
    assert 20 < (len(frames) - 1) / elapsed < 40
    for frame in frames:
        captured_ms = int(frame.time * 1000) % 2**32
        assert abs(stamp.latency_ms(stamp.read_stamp(frame.bgr), captured_ms)) <= 100
        # the I420 Y plane carries it too
        assert abs(stamp.latency_ms(stamp.read_stamp(frame.yuv[:240]), captured_ms)) <= 100
    # the picture moves
    assert not np.array_equal(frames[0].bgr[100:], frames[30].bgr[100:])


def write_video(path: Path, count: int, size=(160, 120), fps=30.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(count):
        image = np.full((size[1], size[0], 3), (i * 10) % 256, np.uint8)
        cv2.putText(image, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 255), 2)
        writer.write(image)
    writer.release()


def test_video_file_plays_resized_and_loops(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 20)
    source = make_source(str(path), 320, 240, 30)
    frames = collect(source, 50)
    assert all(f.bgr.shape == (240, 320, 3) for f in frames)
    levels = [int(f.bgr[200:, 300:].mean()) for f in frames]
    # the file has 20 distinct frames: after the end it starts again from the first
    assert levels[0] == pytest.approx(levels[20], abs=3)
    assert levels[5] == pytest.approx(levels[25], abs=3)
    assert levels[0] != pytest.approx(levels[10], abs=3)


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such video file"):
        make_source(str(tmp_path / "missing.mp4"), 320, 240, 30)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError):
        check_source(str(garbage), 320, 240, 30)
    with pytest.raises(SourceError, match="cannot open camera"):
        check_source("/dev/video57", 320, 240, 30)


def test_command_line_reports_a_bad_source(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--source", str(tmp_path / "nope.avi"), "--port", "8080"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "no such video file" in result.stderr
    assert "Traceback" not in result.stderr


def test_capture_retries_a_failing_source():
    class Flaky:
        description = "flaky"

        def __init__(self):
            self.opens = 0

        def open(self):
            self.opens += 1
            if self.opens < 3:
                raise SourceError("not yet")

        def read(self):
            time.sleep(0.01)
            return np.zeros((32, 32, 3), np.uint8)

        def close(self):
            pass

    source = Flaky()
    capture = CaptureThread(source, lambda frame: None, retry_max=0.2)
    capture.start()
    deadline = time.monotonic() + 10
    while capture.state != "up" and time.monotonic() < deadline:
        time.sleep(0.02)
    capture.stop()
    capture.join(5)
    assert source.opens == 3
    assert capture.source_opens == 1


@contextlib.contextmanager
def serve_directory(path: Path) -> Iterator[int]:
    """A plain HTTP server on loopback for the files in `path`; yields its port."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_stream_url_is_read_through_opencv(tmp_path):
    """An http:// URL (here a file served on loopback) is a source too."""
    write_video(tmp_path / "clip.avi", 20)
    with serve_directory(tmp_path) as port:
        source = make_source(f"http://127.0.0.1:{port}/clip.avi", 320, 240, 30)
        assert source.description.startswith("stream")
        frames = collect(source, 10)
        assert all(f.bgr.shape == (240, 320, 3) for f in frames)


# -- V4L2 cameras asked for their own encoding (no camera here: what camtrack asks PyAV for)


def test_a_camera_asked_for_h264_or_mjpeg_is_read_with_pyav() -> None:
    from camtrack.sources import choose_mode, make_packet_source
    from camtrack.sources.decoded import DecodedSource
    from camtrack.sources.demux import DemuxSource
    from camtrack.sources.opencv import OpenCvSource

    packets = make_packet_source("0", input_format="h264", width=1920, height=1080, fps=30)
    assert isinstance(packets, DemuxSource)
    assert (packets.url, packets.format) == ("/dev/video0", "v4l2")
    assert {k: packets.options[k] for k in ("input_format", "video_size", "framerate")} == {
        "input_format": "h264", "video_size": "1920x1080", "framerate": "30"}
    assert packets.live and not packets.loop and not packets.realtime  # a camera: neither paced nor looped
    mjpeg = make_source("/dev/video2", 1280, 720, 15, input_format="mjpeg")
    assert isinstance(mjpeg, DecodedSource) and isinstance(mjpeg.packets, DemuxSource)
    assert mjpeg.packets.url == "/dev/video2" and mjpeg.packets.options["input_format"] == "mjpeg"
    assert isinstance(make_source("/dev/video2", 640, 480, 30), OpenCvSource)  # raw: OpenCV, as before
    with pytest.raises(SourceError, match="raw pictures"):
        make_packet_source("0")
    assert choose_mode("0", "auto", input_format="mjpeg") == ("transcode", "the camera is asked for MJPEG")
    assert choose_mode("0", "auto") == ("transcode", "it gives pictures")
    mode, why = choose_mode("/dev/video63", "auto", input_format="h264")  # asked for H.264, but not there
    assert mode == "transcode" and "PyAV cannot read it" in why
