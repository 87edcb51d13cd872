"""A source that fails while people watch: they keep their connections and see it come back."""

from __future__ import annotations

import logging
import threading

import aiohttp
import numpy as np

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.sources import PatternSource, SourceError

from .conftest import eventually
from .test_sources import serve_directory, write_video


class Unpluggable(PatternSource):
    """The test pattern, with a cable that can be pulled."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.plugged = threading.Event()
        self.plugged.set()
        self.description = "unpluggable camera"

    def open(self) -> None:
        if not self.plugged.is_set():
            raise SourceError("no such device")
        super().open()

    def read(self):
        return super().read() if self.plugged.is_set() else None


async def health(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url.replace("/ws", "/healthz")) as response:
        return response.status, await response.json()


def left_middle_luma(frame) -> float:
    y = frame.to_ndarray(format="gray")
    return float(y[y.shape[0] // 2 - 10 : y.shape[0] // 2 + 10, 4:30].mean())


async def test_source_failure_and_recovery(serve, caplog):
    caplog.set_level(logging.INFO)
    url, app = await serve(width=320, height=240)
    camera = Unpluggable(320, 240, 30)
    app[CAMERAS].first.stream.source_factory = lambda: camera

    status, body = await health(url)
    assert status == 200 and body["sources"]["default"]["state"] == "idle" and body["viewers"] == 0

    viewer = Viewer(url)
    await viewer.connect()
    frames = await viewer.frames(10)
    assert left_middle_luma(frames[-1]) > 150  # the grey bar of the pattern
    status, body = await health(url)
    assert status == 200 and body["status"] == "ok" and body["sources"]["default"]["state"] == "up"
    assert body["viewers"] == 1 and body["peers"] == 1
    pc = viewer.pc

    camera.plugged.clear()
    await eventually(lambda: app[CAMERAS].first.stream.state == "retrying")
    status, body = await health(url)
    assert status == 503 and body["status"] == "down" and body["sources"]["default"]["state"] == "retrying"
    # viewers stay connected and are shown a "no signal" picture
    track = await viewer.track
    for _ in range(200):
        frame = await track.recv()
        if left_middle_luma(frame) < 80:
            break
    else:
        raise AssertionError("no 'no signal' picture while the source was down")
    await viewer.frames(5, timeout=20)  # still arriving (a few a second)
    assert pc.connectionState == "connected"

    camera.plugged.set()
    await eventually(lambda: app[CAMERAS].first.stream.state == "up", timeout=30)
    for _ in range(200):
        frame = await track.recv()
        if left_middle_luma(frame) > 150:
            break
    else:
        raise AssertionError("the picture did not come back")
    status, body = await health(url)
    assert status == 200 and body["status"] == "ok"
    assert viewer.pc is pc and pc.connectionState == "connected"
    assert app[CAMERAS].first.stream.runs == 1  # the stream stayed open; only the device was reopened

    # the log said it once, not once per frame or per retry
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING and "unpluggable camera" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    await viewer.close()


async def test_file_source_loops_and_url_source_reconnects(serve, tmp_path):
    """Covered at the source level in test_sources; here: a URL source that ends comes back."""
    write_video(tmp_path / "clip.avi", 15)
    with serve_directory(tmp_path) as port:
        url, app = await serve(width=320, height=240, source=f"http://127.0.0.1:{port}/clip.avi")
        viewer = Viewer(url)
        await viewer.connect()
        # 15 frames in the file; a stream that ends is reopened, so frames keep coming
        frames = await viewer.frames(40, timeout=60)
        assert len(frames) == 40
        assert np.isfinite(left_middle_luma(frames[-1]))
        await viewer.close()
