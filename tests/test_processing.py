"""A user's function on the live picture (camtrack.processing): run once per captured frame for every
viewer, its drawing in what WebRTC, snapshots and MJPEG give, and its faults (raising, hanging, a
file that no longer loads) harming no viewer. Real pattern source, real encoders, real aiortc viewers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from camtrack.app import CAMERAS
from camtrack.cameras import Camera
from camtrack.client import Viewer
from camtrack.media.stream import CameraStream
from camtrack.outputs.results import ResultSender
from camtrack.processing import FrameInfo, FunctionFile, LoadError, ProcessingStage, load_function
from camtrack.processing.contract import MAX_DATA, interpret
from camtrack.processing.stage import MAX_ERROR
from camtrack.sources.pattern import PatternSource

from .conftest import eventually
from .test_mjpeg import decode, read_parts

ROOT = Path(__file__).resolve().parent.parent
#: the painted block: rows, columns and a colour the pattern does not have there
BLOCK = (slice(180, 300), slice(240, 400))
RED, BLUE = (0, 0, 255), (255, 0, 0)


def paint(colour: tuple[int, int, int]) -> Any:
    def process(frame: np.ndarray, info: FrameInfo) -> None:
        frame[BLOCK] = colour
    return process


def painted(image: np.ndarray, colour: tuple[int, int, int], tolerance: float = 30) -> bool:
    """Whether the block of `image` (BGR) is `colour`, through a lossy codec."""
    block = image[BLOCK].reshape(-1, 3).astype(float)
    inner = block.mean(axis=0)
    return bool(np.all(np.abs(inner - np.array(colour)) < tolerance))


def bgr(frame: Any) -> np.ndarray:
    image: np.ndarray = frame.to_ndarray(format="bgr24")
    return image


async def snapshot(root: str) -> np.ndarray:
    async with aiohttp.ClientSession() as http, http.get(root + "/snapshot.jpg") as response:
        assert response.status == 200
        return decode(await response.read())


async def count_frames(viewer: Viewer, seconds: float) -> int:
    """Pictures `viewer` decodes in `seconds`."""
    assert viewer.track is not None
    track = await viewer.track
    got = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            await asyncio.wait_for(track.recv(), left)
        except TimeoutError:
            break
        got += 1
    return got


class Counting:
    """A function that paints the block and records the frame numbers it was called with."""

    def __init__(self, delay: float = 0.0) -> None:
        self.frames: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.ages: list[float] = []

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> dict[str, int]:
        self.ages.append(time.time() - info.time)
        self.frames.append(info.frame)
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        frame[BLOCK] = RED
        return {"frame": info.frame}


async def watch_counting(serve: Any, viewers: int) -> None:
    counting = Counting()
    url, app = await serve(width=320, height=240, fps=20, process_function=counting)
    camera: Camera = app[CAMERAS].first
    watchers = [Viewer(url) for _ in range(viewers)]
    try:
        await asyncio.gather(*(v.connect() for v in watchers))
        await asyncio.gather(*(v.frames(3) for v in watchers))
        stream, stage = camera.stream, camera.processing
        assert stage is not None
        first_frame, calls = stream.frames, len(counting.frames)
        async with aiohttp.ClientSession() as http, http.get(url.removesuffix("/ws") + "/mjpeg") as mjpeg:
            # an MJPEG client too: another way out, the same calls
            got, parts = await asyncio.gather(asyncio.gather(*(count_frames(v, 2.0) for v in watchers)),
                                              read_parts(mjpeg, 10))
        captured, called = stream.frames - first_frame, len(counting.frames) - calls
        # once per captured frame, whatever the number of viewers: never more, hardly fewer
        assert called <= captured + 1, (called, captured)
        assert called >= 0.75 * captured, (called, captured)
        assert len(set(counting.frames)) == len(counting.frames), "a frame was processed twice"
        assert all(g >= 0.5 * captured for g in got), (got, captured)
        assert all(painted(decode(part), RED) for part in parts)
        assert counting.threads and not any(name == "MainThread" for name in counting.threads)
        assert stage.result is not None and stage.result.data == {"frame": stage.result.frame}
        assert camera.describe()["processing"]["state"] == "ok"
    finally:
        await asyncio.gather(*(v.close() for v in watchers))


async def test_called_once_per_frame_with_one_viewer(serve):
    await watch_counting(serve, 1)


@pytest.mark.slow
async def test_called_once_per_frame_with_eight_viewers(serve):
    await watch_counting(serve, 8)


async def test_the_drawing_reaches_webrtc_snapshots_and_mjpeg(serve):
    url, app = await serve(width=640, height=480, process_function=paint(RED))
    root = url.removesuffix("/ws")
    viewer = Viewer(url)
    try:
        await viewer.connect()
        frames = await viewer.frames(10)
        assert painted(bgr(frames[-1]), RED)
        assert painted(await snapshot(root), RED)
        async with aiohttp.ClientSession() as http, http.get(root + "/mjpeg") as response:
            parts = await read_parts(response, 3)
        assert all(painted(decode(part), RED) for part in parts)
        # one stage for all of them: the shared encoder and the JPEG encoder read the same pictures
        camera: Camera = app[CAMERAS].first
        assert camera.processing is not None and camera.processing.stats.errors == 0
    finally:
        await viewer.close()


@pytest.mark.slow
async def test_a_function_ten_times_slower_than_the_camera_gets_the_newest_frame(serve):
    """20 fps camera, a function of 0.5 s: the picture flows at the function's rate (2 fps: the
    processed pictures are the video), each call gets the newest frame, nothing queues."""
    slow = Counting(delay=0.5)
    url, app = await serve(width=320, height=240, fps=20, process_function=slow)
    camera: Camera = app[CAMERAS].first
    viewer = Viewer(url)
    try:
        await viewer.connect()
        await viewer.frames(2)
        got = await count_frames(viewer, 4.0)
        stage = camera.processing
        assert stage is not None and camera.encoder is not None
        # the viewer's rate is the function's: 2 a second, not the camera's 20, and never stops
        assert 4 <= got <= 12, got
        # each call got the newest frame: about 10 captured frames apart, none older than a frame interval
        steps = np.diff(slow.frames[-6:])
        assert np.all(steps >= 5), steps
        assert max(slow.ages[1:]) < 0.25, slow.ages
        # nothing queued: one picture in the stage, the encoder's ring as bounded as ever
        assert len(stage._ring) <= 1 and len(camera.encoder._ring) <= 8
        assert stage.state == "ok" and stage.stats.stalls == 0
    finally:
        await viewer.close()


async def test_a_raising_function_harms_no_viewer(serve, caplog):
    state = {"fail": True}

    def flaky(frame: np.ndarray, info: FrameInfo) -> None:
        if state["fail"]:
            raise ZeroDivisionError("a bug in the user's code")
        frame[BLOCK] = RED

    url, app = await serve(width=320, height=240, fps=20, process_function=flaky)
    camera: Camera = app[CAMERAS].first
    viewer = Viewer(url)
    try:
        with caplog.at_level(logging.ERROR, logger="camtrack.processing.stage"):
            await viewer.connect()
            await viewer.frames(3)
            got = await count_frames(viewer, 1.0)
            assert got >= 10, got  # the camera's rate, unprocessed
            stage = camera.processing
            assert stage is not None
            assert stage.stats.errors >= 20 and stage.state == "failing"
            described = camera.describe()["processing"]
            assert described["state"] == "failing" and "ZeroDivisionError" in described["error"]
            # one log line with the traceback, then rate-limited
            logged = [r for r in caplog.records if r.name == "camtrack.processing.stage"]
            assert len(logged) == 1, [r.getMessage() for r in logged]
            assert "Traceback" in logged[0].getMessage() and "a bug in the user's code" in logged[0].getMessage()
            assert not painted(bgr((await viewer.frames(1))[0]), RED)
        # fixed (as a reload would): tried again on the next frame, and drawn
        state["fail"] = False
        await eventually(lambda: stage.state == "ok", 5)
        assert painted(bgr((await viewer.frames(5))[-1]), RED)
        async with aiohttp.ClientSession() as http:
            async with http.get(url.removesuffix("/ws") + "/metrics") as response:
                text = await response.text()
        assert 'camtrack_process_errors_total{camera="default"}' in text
        assert 'camtrack_process_state{camera="default",state="ok"} 1.0' in text
    finally:
        await viewer.close()


async def test_a_hanging_function_lets_the_pictures_through_and_resumes(serve):
    release = threading.Event()
    state = {"hang": False}

    def hangs(frame: np.ndarray, info: FrameInfo) -> None:
        if state["hang"]:
            state["hang"] = False
            release.wait(20)
        frame[BLOCK] = RED

    url, app = await serve(width=320, height=240, fps=20, process_function=hangs, process_timeout=0.5)
    camera: Camera = app[CAMERAS].first
    root = url.removesuffix("/ws")
    viewer = Viewer(url)
    try:
        await viewer.connect()
        assert painted(bgr((await viewer.frames(5))[-1]), RED)
        state["hang"] = True
        stage = camera.processing
        assert stage is not None
        await eventually(lambda: stage.state == "stalled", 5)
        got = await count_frames(viewer, 1.0)
        assert got >= 10, got  # pictures keep flowing, unprocessed
        assert not painted(bgr((await viewer.frames(1))[0]), RED)
        async with aiohttp.ClientSession() as http:
            async with http.get(root + "/api/cameras") as response:
                described = (await response.json())["cameras"][0]["processing"]
            async with http.get(root + "/healthz") as response:
                health = await response.json()
        assert described["state"] == "stalled" and "more than 0.5 s" in described["error"]
        assert health["sources"]["default"]["processing"]["state"] == "stalled"
        release.set()
        await eventually(lambda: stage.state == "ok", 5)
        assert painted(bgr((await viewer.frames(5))[-1]), RED)
        assert stage.stats.stalls == 1
        assert viewer.pc is not None and viewer.pc.connectionState == "connected"
    finally:
        release.set()
        await viewer.close()


def write_function(path: Path, body: str) -> None:
    """Write the function's file, its modification time moved on (a save within the same tick counts)."""
    stamp = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.write_text(body)
    os.utime(path, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))


PAINTING = """
def process(frame, info):
    frame[180:300, 240:400] = {colour}
"""


async def test_saving_the_file_reloads_it_while_a_viewer_watches(serve, tmp_path, caplog):
    source = tmp_path / "mine.py"
    write_function(source, PAINTING.format(colour=RED))
    url, app = await serve(width=640, height=480, fps=20, process=f"{source}:process")
    camera: Camera = app[CAMERAS].first
    viewer = Viewer(url)
    received: list[Any] = []
    try:
        await viewer.connect()
        assert painted(bgr((await viewer.frames(5))[-1]), RED)
        assert viewer.track is not None
        track = await viewer.track

        async def keep_watching() -> None:
            while True:
                received.append(bgr(await track.recv())[BLOCK].mean(axis=(0, 1)))

        watching = asyncio.ensure_future(keep_watching())
        try:
            write_function(source, PAINTING.format(colour=BLUE))
            await eventually(lambda: bool(received) and painted_mean(received[-1], BLUE), 4)
            # a save that does not load: the previous version runs on, and the reason is shown
            with caplog.at_level(logging.WARNING, logger="camtrack.processing.loading"):
                write_function(source, "def process(frame, info):\n    frame[0:10] = (\n")
                stage = camera.processing
                assert stage is not None
                await eventually(lambda: stage.reload_error is not None, 4)
            assert "SyntaxError" in (stage.reload_error or "") and "line 2" in (stage.reload_error or "")
            assert any("keeping the previous one" in r.getMessage() for r in caplog.records)
            count = len(received)
            await eventually(lambda: len(received) >= count + 10, 5)
            assert painted_mean(received[-1], BLUE) and stage.state == "ok"
            assert camera.describe()["processing"]["reload_error"] == stage.reload_error
            # fixed again
            write_function(source, PAINTING.format(colour=RED))
            await eventually(lambda: painted_mean(received[-1], RED) and stage.reload_error is None, 4)
        finally:
            watching.cancel()
        # the viewer never left: frames kept coming throughout (20 fps, a reload takes < 1 s)
        assert len(received) >= 20
        assert viewer.pc is not None and viewer.pc.connectionState == "connected"
        assert len(camera.viewers["websocket"]) == 1
    finally:
        await viewer.close()


def painted_mean(mean: np.ndarray, colour: tuple[int, int, int], tolerance: float = 30) -> bool:
    return bool(np.all(np.abs(mean - np.array(colour)) < tolerance))


async def test_data_and_bad_returns_at_the_stage():
    """The contract's four returns, and a picture of the wrong size: a fault, the frame unprocessed."""
    returns: dict[str, Any] = {}

    def function(frame: np.ndarray, info: FrameInfo) -> Any:
        return returns["value"](frame)

    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", function)
    reader = object()
    stage.attach(reader)
    try:
        async def next_picture(value: Any) -> np.ndarray:
            returns["value"] = value
            calls = stage.stats.calls
            await eventually(lambda: stage.stats.calls >= calls + 2, 5)
            return (await stage.next_frame()).bgr

        assert (await next_picture(lambda f: np.zeros_like(f))).max() == 0
        assert stage.result is None
        picture = await next_picture(lambda f: {"boxes": [[1, 2, 3, 4]]})
        assert picture.max() > 0 and stage.result is not None and stage.result.data == {"boxes": [[1, 2, 3, 4]]}
        assert (await next_picture(lambda f: (np.full_like(f, 7), [1, 2]))).max() == 7
        assert stage.result.data == [1, 2]
        assert stage.last_error is None and stage.state == "ok"
        unprocessed = await next_picture(lambda f: np.zeros((10, 10, 3), np.uint8))
        assert unprocessed.shape == (48, 64, 3) and unprocessed.max() > 0
        assert stage.state == "failing" and "shape (10, 10, 3)" in (stage.last_error or "")
        await next_picture(lambda f: {"not json": object()})
        assert "JSON" in (stage.last_error or "")
        # the I420 every encoder reads is the processed picture's
        await next_picture(lambda f: np.zeros_like(f))
        frame = await stage.next_frame()
        assert frame.yuv.shape == (72, 64) and frame.yuv[:48].max() < 20
    finally:
        await stage.close()
        await stream.close()


def pattern_frame() -> tuple[np.ndarray, FrameInfo]:
    source = PatternSource(640, 480, 30)
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    assert frame is not None
    return frame, FrameInfo("default", 1, time.time())


@pytest.mark.parametrize("spec", ["edge.py:edges", "faces.py:faces", "blobs.py:blobs"])
def test_the_examples_run_on_a_pattern_frame(spec):
    file, name = spec.split(":")
    if file == "faces.py" and not hasattr(cv2, "CascadeClassifier"):
        # OpenCV 5 moved the Haar cascades out of opencv-python: loading says so, in one line
        with pytest.raises(LoadError, match=r"has no Haar cascades: faces.py needs opencv-python-headless 4.x"):
            load_function(ROOT / "examples" / file, name)
        return
    function = load_function(ROOT / "examples" / file, name)
    frame, info = pattern_frame()
    original = frame.copy()
    returned = function(frame, info)
    outcome = interpret(returned, frame.shape)  # (BadReturn if it broke the contract)
    if file == "edge.py":
        assert outcome.picture is not None and outcome.picture.shape == frame.shape
        assert 0 < np.count_nonzero(outcome.picture) < outcome.picture.size
    elif file == "faces.py":
        assert outcome.has_data and outcome.data == []  # no face in the pattern
        assert np.array_equal(frame, original)
    else:
        assert outcome.has_data and outcome.data["count"] >= 0
        assert not np.array_equal(frame, original)  # the count is written on it


def test_a_function_file_that_does_not_load_says_why(tmp_path):
    (tmp_path / "syntax.py").write_text("def f(frame, info):\n    return (\n")
    (tmp_path / "raises.py").write_text("import nothing_of_that_name\n")
    (tmp_path / "other.py").write_text("def g(frame, info):\n    pass\nf = 3\n")
    cases = {
        f"{tmp_path}/missing.py:f": "No such file or directory",
        f"{tmp_path}/syntax.py:f": "SyntaxError",
        f"{tmp_path}/raises.py:f": "ModuleNotFoundError: No module named 'nothing_of_that_name' (line 1)",
        f"{tmp_path}/other.py:h": "has no function 'h'",
        f"{tmp_path}/other.py:f": "is not a function",
        f"{tmp_path}/other.py": "must be FILE.py:FUNCTION",
    }
    for spec, says in cases.items():
        with pytest.raises(LoadError, match=None) as raised:
            FunctionFile(spec)
        assert says in str(raised.value) and "\n" not in str(raised.value), (spec, str(raised.value))


@pytest.mark.slow
def test_a_bad_file_at_start_is_one_line_and_status_2(tmp_path):
    (tmp_path / "syntax.py").write_text("def f(frame, info):\n    return (\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('not today')\n")
    config = tmp_path / "camtrack.toml"
    config.write_text(f'[cameras.porch]\nsource = "pattern"\nprocess = "{tmp_path}/raises.py:f"\n')
    cases = [
        (["--process", f"{tmp_path}/syntax.py:f"], "SyntaxError"),
        (["--process", f"{tmp_path}/nowhere.py:f"], "No such file or directory"),
        (["--process", "examples/edge.py:nothing"], "has no function 'nothing'"),
        (["--process", "examples/edge.py"], "must be FILE.py:FUNCTION"),
        (["--config", str(config)], "RuntimeError: not today (line 1)"),
    ]
    for args, says in cases:
        done = subprocess.run([sys.executable, "server.py", "--source", "pattern", "--host", "127.0.0.1",
                               "--port", "1", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("camtrack: error: ") and says in lines[0], (args, done.stderr)


async def test_a_camera_that_could_pass_through_is_transcoded_to_show_the_drawing(serve, tmp_path, caplog):
    """`--mode auto`: transcoded, saying that `--mode passthrough` would keep the camera's own H.264
    (tests/test_data.py: then the function's data is shown, not its drawing)."""
    from .test_passthrough import write_h264

    source = write_h264(tmp_path / "camera.mp4", "baseline", frames=60)
    with caplog.at_level(logging.INFO, logger="camtrack.plan"):
        url, app = await serve(source=str(source), mode="auto", width=320, height=240, process_function=paint(RED))
    camera: Camera = app[CAMERAS].first
    assert camera.describe()["mode"] == "transcode"
    assert any("a --process function may draw on its pictures" in r.getMessage()
               and "--mode passthrough keeps the camera's own H.264" in r.getMessage() for r in caplog.records)
    viewer = Viewer(url)
    try:
        await viewer.connect()
        assert painted(bgr((await viewer.frames(5))[-1]), RED)
    finally:
        await viewer.close()


async def test_viewers_that_encode_for_themselves_get_the_drawing_too(serve):
    url, app = await serve(width=320, height=240, encoder="per-viewer", process_function=paint(RED))
    viewer = Viewer(url)
    try:
        await viewer.connect()
        assert painted(bgr((await viewer.frames(5))[-1]), RED)
    finally:
        await viewer.close()


async def test_data_is_made_json_once_at_call_time_capped_and_finite():
    """The data's JSON is made on the processing thread when the call returns: a function that returns
    an object it changes later has each frame's own contents sent; NaN, Infinity and data longer than
    MAX_DATA are faults that say why."""
    state: dict[str, Any] = {}
    returns: dict[str, Any] = {"value": None}

    def function(frame: np.ndarray, info: FrameInfo) -> Any:
        if returns["value"] is not None:
            return returns["value"](info)
        state["frame"] = info.frame  # (the same object each time, changed by the next call)
        return state

    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", function)
    reader = object()
    stage.attach(reader)
    try:
        await eventually(lambda: stage.stats.calls >= 5, 5)
        result = stage.result
        assert result is not None
        await eventually(lambda: state["frame"] > result.frame, 5)  # (changed since)
        assert json.loads(result.text) == {"frame": result.frame} == result.data
        assert result.size == len(result.text)

        async def fault(value: Any) -> str:
            returns["value"] = value
            errors = stage.stats.errors
            await eventually(lambda: stage.stats.errors >= errors + 2, 5)
            assert stage.state == "failing"
            return stage.last_error or ""

        assert "NaN or Infinity" in await fault(lambda info: {"level": float("nan")})
        assert "NaN or Infinity" in await fault(lambda info: [float("inf")])
        assert f"more than the {MAX_DATA}" in await fault(lambda info: "x" * (MAX_DATA + 1))
    finally:
        await stage.close()
        await stream.close()


async def test_the_function_never_runs_on_two_threads_and_a_hang_leaks_no_thread():
    """A function that hangs, its stage's readers leaving and coming back again and again (a page
    reloaded, an SSE client reconnecting): the next run's calls wait behind the hung one (the stage
    says stalled) on the stage's one thread; no call runs beside it, no thread is left behind."""
    release = threading.Event()
    lock = threading.Lock()
    running, most, threads = 0, 0, set()

    def hangs(frame: np.ndarray, info: FrameInfo) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.get_ident())
        try:
            release.wait(30)
        finally:
            with lock:
                running -= 1

    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", hangs, timeout=0.2)
    before = threading.active_count()
    try:
        for _ in range(6):
            reader = object()
            stage.attach(reader)
            await eventually(lambda: stage.state == "stalled", 5)
            await asyncio.sleep(0.2)
            stage.detach(reader)
            await eventually(lambda: not stage.running, 5)
        assert most == 1 and len(threads) == 1
        assert threading.active_count() <= before + 3  # (the stage's one thread, the stream's)
    finally:
        release.set()
        await stage.close()
        await stream.close()


async def test_a_stopped_stage_keeps_no_result_for_its_next_readers():
    """A result from before the stage stopped is not what a reader of its next run gets first."""
    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", lambda frame, info: {"frame": info.frame})
    try:
        reader = object()
        stage.attach(reader)
        await eventually(lambda: stage.result is not None, 5)
        stage.detach(reader)
        await eventually(lambda: not stage.running, 5)
        await eventually(lambda: stage.result is None, 2)  # (once the run's end was handled)
    finally:
        await stage.close()
        await stream.close()


async def test_an_error_line_is_kept_short():
    """An exception's line may be any length: the status messages and /api carry at most MAX_ERROR."""

    def raises(frame: np.ndarray, info: FrameInfo) -> None:
        raise ValueError("y" * 5000)

    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", raises)
    reader = object()
    stage.attach(reader)
    try:
        await eventually(lambda: stage.stats.errors >= 1, 5)
        assert stage.last_error is not None and len(stage.last_error) <= MAX_ERROR
        assert stage.last_error.startswith(stage.description)
    finally:
        await stage.close()
        await stream.close()


async def test_a_viewers_results_survive_a_refused_message_and_end_quietly_when_the_stage_stops():
    """A message the connection refuses (ValueError: longer than the remote takes) is skipped, the
    next ones go; the stage stopping under the viewer (ProcessingClosed) ends its sender quietly."""
    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", lambda frame, info: {"frame": info.frame})
    sent: list[str] = []

    def send(text: str) -> None:  # (a connection that takes no data message, as one with a tiny limit)
        if '"type":"data"' in text:
            raise ValueError("message too long")
        sent.append(text)

    sender = ResultSender(stage, send, lambda: False, None, "rtp")
    task = asyncio.ensure_future(sender.run())
    try:
        await eventually(lambda: sender.refused >= 3 and len(sent) >= 2, 5)
        assert not task.done()
        await stage.close()
        await eventually(task.done, 5)
        assert task.exception() is None
    finally:
        task.cancel()
        await stage.close()
        await stream.close()
