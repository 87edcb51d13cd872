"""A --process function's data (issue 21): data mode (a function that returns data and leaves the
frame alone does not slow the video down), --process-fps, a passed-through camera that stays passed
through, `next_result` ending with the stage, and the Server-Sent Events endpoint
(`/api/cameras/NAME/data`: newest wins, the video's token/Host/Origin rules, the cap, shutdown).
Real pattern and H.264 file sources, real servers over real sockets, real aiortc viewers."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import aiohttp
import numpy as np
import pytest

from camtrack import Config
from camtrack.app import CAMERAS
from camtrack.cameras import Camera
from camtrack.client import Viewer
from camtrack.config import CameraConfig
from camtrack.media.stream import CameraStream
from camtrack.outputs import sse
from camtrack.processing import FrameInfo, ProcessingStage
from camtrack.processing.stage import ProcessingClosed
from camtrack.sources.pattern import PatternSource

from .conftest import eventually, run_app, watched_stage
from .test_processing import BLOCK, RED, count_frames


class DataOnly:
    """A function that returns data and leaves the frame alone, after `delay` seconds."""

    def __init__(self, delay: float = 0.0, pad: int = 0) -> None:
        self.delay = delay
        self.pad = pad
        self.frames: list[int] = []

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> dict[str, Any]:
        self.frames.append(info.frame)
        if self.delay:
            time.sleep(self.delay)
        data: dict[str, Any] = {"frame": info.frame, "time": info.time, "mean": float(frame[:8, :8].mean())}
        if self.pad:
            data["pad"] = "x" * self.pad
        return data


def draw(frame: np.ndarray, info: FrameInfo) -> dict[str, int]:
    frame[BLOCK] = RED
    return {"frame": info.frame}


def root_of(url: str) -> str:
    return url.removesuffix("/ws")


async def read_events(response: aiohttp.ClientResponse, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` events' JSON (comments skipped)."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        while len(events) < count:
            line = (await response.content.readline()).decode()
            assert line, "the stream ended"
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))

    await asyncio.wait_for(read(), timeout)
    return events


@pytest.mark.slow
async def test_a_data_function_ten_times_slower_than_the_camera_leaves_the_video_at_its_rate(serve):
    """20 fps camera, a 0.5 s function that only returns data: the viewer still decodes the camera's
    20 pictures a second (the function's own rate would be 2), and the data keeps coming."""
    slow = DataOnly(delay=0.5)
    url, app = await serve(width=320, height=240, fps=20, process_function=slow)
    camera: Camera = app[CAMERAS].first
    async with watched_stage(url, camera) as (viewer, stage):
        await eventually(lambda: stage.mode == "data", 10)
        calls, forwarded = stage.stats.calls, stage.stats.forwarded
        got = await count_frames(viewer, 4.0)
        calls, forwarded = stage.stats.calls - calls, stage.stats.forwarded - forwarded
        # the camera's rate (80 in 4 s), with a wide margin; drawn, it would be the function's 8
        assert got >= 40, (got, calls)
        assert forwarded >= 40, forwarded
        assert 4 <= calls <= 10, calls
        assert stage.result is not None and stage.result.data["frame"] == stage.result.frame
        assert camera.describe()["processing"]["mode"] == "data"
        assert stage.stats.stalls == 0 and stage.state == "ok"


@pytest.mark.slow
async def test_process_fps_calls_the_function_at_that_rate_and_leaves_the_pictures_at_the_cameras():
    counting = DataOnly()
    stream = CameraStream("test", lambda: PatternSource(64, 48, 20), linger=0)
    stage = ProcessingStage(stream, "test", counting, fps=4)
    reader = object()
    stage.attach(reader)
    try:
        await eventually(lambda: stage.mode == "data", 5)
        calls, forwarded, captured = stage.stats.calls, stage.stats.forwarded, stream.frames
        await asyncio.sleep(2.0)
        calls, forwarded = stage.stats.calls - calls, stage.stats.forwarded - forwarded
        captured = stream.frames - captured
        assert 5 <= calls <= 10, calls  # 4 a second, not the camera's 20
        assert forwarded >= 0.8 * captured >= 16, (forwarded, captured)  # every picture given on at once
        assert stage.describe()["fps"] == 4
    finally:
        await stage.close()
        await stream.close()


async def test_the_first_call_decides_the_mode_and_later_calls_switch_it(caplog):
    returns: dict[str, Any] = {"draw": False}

    def function(frame: np.ndarray, info: FrameInfo) -> dict[str, int]:
        if returns["draw"]:
            frame[:10] = 0
        return {"frame": info.frame}

    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", function)
    reader = object()
    stage.attach(reader)
    try:
        with caplog.at_level(logging.INFO, logger="camtrack.processing.stage"):
            await eventually(lambda: stage.mode == "data", 5)
            returns["draw"] = True
            await eventually(lambda: stage.mode == "drawn", 5)
            picture = (await stage.next_frame(stage.latest.seq if stage.latest else 0)).bgr
            assert picture[:10].max() == 0  # the drawing is the picture
            returns["draw"] = False
            await eventually(lambda: stage.mode == "data", 5)
            assert stage.stats.switches == 2
        assert any("draws no more" in r.getMessage() for r in caplog.records)
    finally:
        await stage.close()
        await stream.close()


async def test_next_result_ends_when_the_stage_closes_or_its_camera_does():
    """An attached reader never hangs: the stage closed (shutdown) or its input closed ends its
    wait; a reader that did not attach waits across an idle spell (the last reader left) and gets
    the next run's results (camtrack.events.watcher reads so)."""
    stream = CameraStream("test", lambda: PatternSource(64, 48, 30), linger=0)
    stage = ProcessingStage(stream, "test", DataOnly())
    reader = object()
    stage.attach(reader)
    try:
        first = await asyncio.wait_for(stage.next_result(), 5)
        never = first.frame + 10**9
        # closed while an attached reader waits for a result that will not come in time
        waiting = asyncio.ensure_future(stage.next_result(never))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await stage.close()
        with pytest.raises(ProcessingClosed):
            await asyncio.wait_for(waiting, 2)
        with pytest.raises(ProcessingClosed):  # closed: at once
            await asyncio.wait_for(stage.next_result(never), 2)
        # a follower (not attached) waits while the stage is idle, and reads the next run
        stage.attach(reader)
        stage.detach(reader)
        assert stage.result is None  # (cleared when it stopped: the next run's readers get that run's)
        newest = first.frame
        following = asyncio.ensure_future(stage.next_result(newest))
        await asyncio.sleep(0.3)
        assert not following.done()
        stage.attach(reader)
        assert (await asyncio.wait_for(following, 5)).frame > newest
        # the camera closed under an attached reader: its stage stops, the wait ends
        waiting = asyncio.ensure_future(stage.next_result(never))
        await asyncio.sleep(0.2)
        await stream.close()
        with pytest.raises(ProcessingClosed):
            await asyncio.wait_for(waiting, 2)
    finally:
        await stage.close()
        await stream.close()


async def test_server_sent_events_carry_each_result_with_its_frame_without_any_viewer(serve):
    function = DataOnly()
    url, app = await serve(width=320, height=240, fps=20, process_function=function)
    camera: Camera = app[CAMERAS].first
    root = root_of(url)
    async with aiohttp.ClientSession() as http:
        async with http.get(root + "/api/cameras/default/data") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert "no-cache" in response.headers["Cache-Control"]
            events = await read_events(response, 20)
            # no viewer: the stream alone runs the function
            assert camera.viewer_count == 0 and camera.processing is not None and camera.processing.running
            for event in events:
                assert event["camera"] == "default"
                assert event["data"]["frame"] == event["frame"] and event["data"]["time"] == event["time"]
                assert abs(time.time() - event["time"]) < 5
            frames = [event["frame"] for event in events]
            assert frames == sorted(set(frames)), frames
            assert frames[-1] - frames[0] >= 15  # about every frame: the function keeps up at 20 fps
            async with http.get(root + "/metrics") as metrics:
                text = await metrics.text()
            assert 'camtrack_process_mode{camera="default",mode="data"} 1.0' in text
            assert "camtrack_sse_clients 1.0" in text
            async with http.get(root + "/api/cameras") as cameras:
                described = (await cameras.json())["cameras"][0]["processing"]
            assert described["mode"] == "data" and described["shown"] is True
        # the client left: the stage stops (nothing else reads it)
        await eventually(lambda: camera.processing is not None and not camera.processing.running, 10)


@pytest.mark.slow
async def test_a_client_that_does_not_read_skips_to_the_newest_result(serve):
    """Results of 20 kB at 20 a second to a client that reads nothing for 3 s: what waits for it is
    what the sockets hold (a few events), then it gets the newest, not the 60 in between."""
    function = DataOnly(pad=20_000)
    url, app = await serve(width=320, height=240, fps=20, process_function=function)
    camera: Camera = app[CAMERAS].first
    port = int(root_of(url).rsplit(":", 1)[1])

    def client() -> tuple[list[int], int, int]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(b"GET /api/cameras/default/data HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            buffer = b""

            def events(seconds: float, enough: int | None = None) -> list[int]:
                nonlocal buffer
                frames: list[int] = []
                end = time.monotonic() + seconds
                while time.monotonic() < end and (enough is None or len(frames) < enough):
                    sock.settimeout(max(0.01, end - time.monotonic()))
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        break
                    assert chunk
                    buffer += chunk
                    for found in (b'data: {"camera":"default","frame":',):
                        while (at := buffer.find(found)) >= 0:
                            digits = buffer[at + len(found):at + len(found) + 20].split(b",")[0]
                            if not digits.isdigit() or b"\n" not in buffer[at:]:
                                break
                            frames.append(int(digits))
                            buffer = buffer[buffer.index(b"\n", at):]
                return frames

            before = events(10.0, enough=10)
            time.sleep(3.0)  # reads nothing
            newest_at_resume = camera.processing.result.frame if camera.processing and camera.processing.result else 0
            after = events(1.5)
            return before + after, len(before), newest_at_resume
        finally:
            sock.close()

    frames, first, newest_at_resume = await asyncio.to_thread(client)
    assert first >= 5, frames
    later = frames[first:]
    # 3 s of results at 20 a second is 60: what waited for the client is what the sockets held (12
    # events of 20 kB in a run here), then came the newest
    queued = [frame for frame in later if frame < newest_at_resume]
    assert len(queued) <= 30, (len(queued), frames)
    assert np.diff(frames[first - 1:]).max() >= 20, frames  # it skipped
    assert later[-1] >= newest_at_resume, (later[-1], newest_at_resume)
    assert frames == sorted(set(frames))


async def test_server_sent_events_follow_the_video_rules_and_the_cap(serve, monkeypatch):
    monkeypatch.setattr(sse, "MAX_CLIENTS", 2)
    url, app = await serve(token="s3cret-token", cameras=[
        CameraConfig("porch", "pattern", width=160, height=120, process_function=DataOnly()),
        CameraConfig("plain", "pattern", width=160, height=120)])
    root = root_of(url)
    data = root + "/api/cameras/porch/data"
    async with aiohttp.ClientSession() as http:
        for headers, query, status in [
            ({}, "", 401), ({}, "?token=wrong", 401), ({"Authorization": "Bearer wrong"}, "", 401),
            ({"Origin": "http://evil.example"}, "?token=s3cret-token", 403),
            ({"Host": "evil.example"}, "?token=s3cret-token", 421),
        ]:
            async with http.get(data + query, headers=headers) as response:
                assert response.status == status, (headers, query, response.status, await response.text())
        async with http.get(root + "/api/cameras/nowhere/data?token=s3cret-token") as response:
            assert response.status == 404 and "nowhere" in await response.text()
        async with http.get(root + "/api/cameras/plain/data?token=s3cret-token") as response:
            assert response.status == 404 and "no --process function" in (await response.json())["error"]
        # the token in the URL (EventSource sends no header) or as a bearer token; the page's own origin
        async with http.get(data + "?token=s3cret-token", headers={"Origin": root}) as first, \
                http.get(data, headers={"Authorization": "Bearer s3cret-token"}) as second:
            assert first.status == second.status == 200
            assert first.headers.get("Access-Control-Allow-Origin") == root
            assert (await read_events(first, 1))[0]["camera"] == "porch"
            await read_events(second, 1)
            async with http.get(data + "?token=s3cret-token") as third:
                assert third.status == 503 and "2 event streams are open" in await third.text()
                assert third.headers["Retry-After"]


async def test_a_stream_without_results_gets_heartbeats(serve, monkeypatch):
    monkeypatch.setattr(sse, "HEARTBEAT", 0.3)
    url, app = await serve(width=160, height=120, process_function=lambda frame, info: None)
    async with aiohttp.ClientSession() as http, http.get(root_of(url) + "/api/cameras/default/data") as response:
        lines: list[str] = []

        async def read() -> None:
            while sum(line == ": keep-alive\n" for line in lines) < 3:
                lines.append((await response.content.readline()).decode())

        await asyncio.wait_for(read(), 10)
        assert not any(line.startswith("data:") for line in lines)
        assert app[CAMERAS].first.processing.running


async def test_streams_end_cleanly_at_shutdown():
    config = Config(source="pattern", width=160, height=120, host="127.0.0.1", port=0, webrtc_port=0,
                    rtsp_port=0, linger=0.5, process_function=DataOnly())
    app, runner, port = await run_app(config)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/api/cameras/default/data") as response:
            await read_events(response, 2)
            began = time.monotonic()
            cleanup = asyncio.ensure_future(runner.cleanup())

            async def to_the_end() -> bytes:
                return await response.content.read()

            await asyncio.wait_for(to_the_end(), 5)  # the end of the stream, not a reset
            await asyncio.wait_for(cleanup, 10)
            assert time.monotonic() - began < 4
    finally:
        await runner.cleanup()


@pytest.mark.slow
async def test_a_passed_through_camera_stays_passed_through_with_a_data_function(serve, tmp_path):
    from .test_passthrough import write_h264

    source = write_h264(tmp_path / "camera.mp4", "baseline")
    function = DataOnly()
    url, app = await serve(source=str(source), mode="passthrough", width=320, height=240, process_function=function,
                           process_fps=5)
    camera: Camera = app[CAMERAS].first
    described = camera.describe()
    assert described["mode"] == "passthrough" and camera.encoder is None
    assert described["processing"]["shown"] is False
    viewer = Viewer(url)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(root_of(url) + "/api/cameras/default/data") as response:
            events = await read_events(response, 3)
            assert [e["frame"] for e in events] == sorted({e["frame"] for e in events})
            assert all(e["data"]["frame"] == e["frame"] for e in events)
            # viewers get the camera's own packets, decoded by nobody but the function's reader
            packets = camera.pipeline.source.packets or 0
            await viewer.connect()
            frames = await viewer.frames(10)
            assert (frames[-1].width, frames[-1].height) == (320, 240)
            assert (camera.pipeline.source.packets or 0) > packets and camera.encoder is None
            calls = camera.processing.stats.calls if camera.processing else 0
            await asyncio.sleep(2.0)
            calls = (camera.processing.stats.calls if camera.processing else 0) - calls
            assert 3 <= calls <= 13, calls  # --process-fps 5
            assert camera.processing is not None and camera.processing.mode == "data"
    finally:
        await viewer.close()


async def test_a_drawing_function_on_a_passed_through_camera_is_told_its_drawing_is_not_shown(serve, tmp_path,
                                                                                               caplog):
    from .test_passthrough import write_h264

    source = write_h264(tmp_path / "camera.mp4", "baseline")
    url, app = await serve(source=str(source), mode="passthrough", width=320, height=240, process_function=draw)
    camera: Camera = app[CAMERAS].first
    assert camera.describe()["mode"] == "passthrough"
    with caplog.at_level(logging.WARNING, logger="camtrack.processing.stage"):
        async with aiohttp.ClientSession() as http, \
                http.get(root_of(url) + "/api/cameras/default/data") as response:
            await read_events(response, 5)
    said = [r for r in caplog.records if "what it draws is not shown" in r.getMessage()]
    assert len(said) == 1
    assert camera.describe()["processing"]["mode"] == "drawn"
    assert camera.describe()["processing"]["shown"] is False


async def test_motion_alone_is_a_data_function_and_the_overlay_draws():
    """The built-ins in a chain: --motion leaves the frame alone (data mode: the camera's pictures
    given on at once), --overlay draws (drawn mode)."""
    from camtrack.processing import Chain, ChainStage, MotionDetector, Overlay

    for chain, mode in ((Chain(None, MotionDetector()), "data"), (Chain(None, None, Overlay("{camera}", "top-left")),
                                                                   "drawn")):
        stream = CameraStream("test", lambda: PatternSource(160, 120, 30), linger=0)
        stage = ChainStage(stream, "test", chain, 2.0)
        reader = object()
        stage.attach(reader)
        try:
            await eventually(lambda stage=stage: stage.stats.calls >= 3, 5)  # type: ignore[misc]
            assert stage.mode == mode
        finally:
            await stage.close()
            await stream.close()
