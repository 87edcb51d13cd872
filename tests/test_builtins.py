"""The built-ins of camtrack.processing: privacy masks (applied on the capture thread: absent from
what WebRTC viewers decode, MJPEG, snapshots and the user's function), the text overlay (on top of
the user's drawing), motion detection (data, read from the frame as captured) and their chain with
a user's function. Real pattern and file sources, real encoders, real aiortc viewers."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
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
from camtrack.config import Config
from camtrack.processing import Chain, FrameInfo, MaskError, Masks, MotionDetector, Overlay, apply_masks, draw_text
from camtrack.processing.masks import polygon_points
from camtrack.processing.overlay import POSITIONS

from .conftest import eventually, watched_stage
from .test_mjpeg import decode, read_parts
from .test_processing import bgr, snapshot

ROOT = Path(__file__).resolve().parent.parent
#: a rectangle over the pattern's colour bars and part of the ball's path, and a triangle in percent
RECTANGLE = "100,60 300,60 300,300 100,300"
TRIANGLE = "70%,5% 95%,5% 95%,40%"
#: inside them, a few pixels in from the edges (chroma subsampling and the codec blur an edge)
RECTANGLE_INSIDE = (slice(68, 292), slice(108, 292))
TRIANGLE_INSIDE = (slice(40, 60), slice(560, 600))   # (rows 24..192, columns 448..608 at 640x480: its right part)
#: an unmasked patch of the pattern's bars, and its colour (bar 5 of 7: BGR (0, 0, 192))
BAR = (slice(100, 200), slice(470, 530))
BAR_COLOUR = (0, 0, 192)


def black(image: np.ndarray, where: tuple[slice, slice]) -> bool:
    """Whether `where` of `image` is near-black (a margin for the codec)."""
    patch = image[where].astype(float)
    return bool(patch.mean() < 12 and np.percentile(patch, 99) < 40)


def kept(image: np.ndarray) -> bool:
    """Whether the unmasked bar still has its colour."""
    mean = image[BAR].reshape(-1, 3).astype(float).mean(axis=0)
    return bool(np.all(np.abs(mean - np.array(BAR_COLOUR)) < 30))


# -- masks -----------------------------------------------------------------------------------------

def test_mask_polygons_in_pixels_and_percent():
    assert polygon_points("0,0 10,0 10,5", 640, 480).tolist() == [[0, 0], [10, 0], [10, 5]]
    assert polygon_points("50%,0 100%,0 100%,25%", 640, 480).tolist() == [[320, 0], [640, 0], [640, 120]]
    assert polygon_points("0.5,1.5 10,0 10,5", 640, 480).tolist()[0] == [0, 2]


@pytest.mark.parametrize(("polygon", "says"), [
    ("0,0 10,0", "needs at least 3 points"),
    ("0,0 10,0 10", "is not a point x,y"),
    ("0,0 10,0 x,5", "'x' is not a number"),
    ("0,0 10,0 -5,5", "'-5' is not a number"),
    ("0,0 10,0 10,500", "the point 10,500 is outside the 640x480 picture"),
    ("0,0 10,0 101%,5", "more than 100%"),
    ("0,0 10,10 20,20", "covers no area"),
    ("", "needs at least 3 points"),
])
def test_a_bad_mask_says_why_in_one_line(polygon, says):
    with pytest.raises(MaskError) as raised:
        polygon_points(polygon, 640, 480)
    assert says in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=says.replace("%", "%")):
        Config(masks=[polygon])


def test_apply_masks_blacks_out_in_place_and_masks_copy_what_it_cannot_write():
    frame = np.full((480, 640, 3), 200, np.uint8)
    assert apply_masks(frame, [RECTANGLE, [(600, 400), (639, 400), (639, 479)]]) is frame
    assert black(frame, RECTANGLE_INSIDE) and frame[470, 635].max() == 0 and frame[10, 10].min() == 200
    frozen = np.full((480, 640, 3), 200, np.uint8)
    frozen.flags.writeable = False
    masked = Masks([TRIANGLE], 640, 480)(frozen)
    assert masked is not frozen and black(masked, TRIANGLE_INSIDE) and frozen.min() == 200


class Watching:
    """A --process function recording the brightest pixel of the masked areas it was given."""

    def __init__(self) -> None:
        self.brightest: list[int] = []

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> None:
        self.brightest.append(int(max(frame[RECTANGLE_INSIDE].max(), frame[TRIANGLE_INSIDE].max())))


async def test_masked_pixels_never_leave_the_server(serve):
    """Masks on the capture thread: what a WebRTC viewer decodes, a snapshot, MJPEG and the user's
    function all have the masked areas black and the rest of the pattern as it was."""
    watching = Watching()
    url, app = await serve(width=640, height=480, masks=[RECTANGLE, TRIANGLE], process_function=watching)
    root = url.removesuffix("/ws")
    viewer = Viewer(url)
    try:
        await viewer.connect()
        frames = [bgr(f) for f in await viewer.frames(10)]
        assert all(black(f, RECTANGLE_INSIDE) and black(f, TRIANGLE_INSIDE) for f in frames)
        assert kept(frames[-1])
        shot = await snapshot(root)
        assert black(shot, RECTANGLE_INSIDE) and black(shot, TRIANGLE_INSIDE) and kept(shot)
        async with aiohttp.ClientSession() as http, http.get(root + "/mjpeg") as response:
            parts = [decode(part) for part in await read_parts(response, 3)]
        assert all(black(p, RECTANGLE_INSIDE) and black(p, TRIANGLE_INSIDE) and kept(p) for p in parts)
        assert watching.brightest and max(watching.brightest) == 0
    finally:
        await viewer.close()


async def test_masks_without_a_function_and_a_camera_that_could_pass_through(serve, tmp_path):
    from .test_passthrough import write_h264

    source = write_h264(tmp_path / "camera.mp4", "baseline", frames=60)
    url, app = await serve(source=str(source), mode="auto", width=320, height=240, masks=["0,0 50%,0 50%,100% 0,100%"])
    camera: Camera = app[CAMERAS].first
    assert camera.describe()["mode"] == "transcode"
    assert "privacy masks" in camera.pipeline.plan.reason
    assert camera.processing is None  # (masks are the capture's, not a processing stage's)
    viewer = Viewer(url)
    try:
        await viewer.connect()
        image = bgr((await viewer.frames(5))[-1])
        assert black(image, (slice(4, 236), slice(4, 156)))
        assert image[:, 164:].mean() > 40  # the file's grey (60) and its moving bar
    finally:
        await viewer.close()


def test_masks_given_for_every_camera_are_checked_against_each_cameras_size():
    config = Config(masks=["0,0 600,0 600,400"], width=640, height=480)
    with pytest.raises(ValueError, match=r"^camera small: mask '0,0 600,0 600,400': the point 600,0 is outside the "
                                         r"320x240 picture$"):
        config.camera("small", "pattern", width=320, height=240)
    assert config.camera("small", "pattern", width=320, height=240, masks=["0,0 50%,0 50%,50%"]).masks


@pytest.mark.parametrize(("builtin", "says"), [
    ({"masks": ["0,0 10,0 10,10"]}, "privacy masks"), ({"overlay": "%T"}, "--overlay draws")])
def test_a_built_in_that_draws_transcodes_a_camera_that_could_pass_through(tmp_path, builtin, says):
    from camtrack.plan import plan_camera

    from .test_passthrough import write_h264

    source = str(write_h264(tmp_path / "camera.mp4", "baseline", frames=30))
    config = Config(source=source, width=320, height=240)
    assert plan_camera(config.cameras[0], config).mode == "passthrough"
    config = Config(source=source, width=320, height=240, **builtin)
    plan = plan_camera(config.cameras[0], config)
    assert plan.mode == "transcode" and says in plan.reason


async def test_motion_alone_keeps_a_camera_that_could_pass_through_passed_through(tmp_path):
    """--motion gives data only: the camera's own H.264 goes on to viewers, the detector reads
    pictures decoded for it."""
    from camtrack.pipeline import build_pipeline
    from camtrack.plan import plan_camera

    from .test_passthrough import write_h264

    source = str(write_h264(tmp_path / "camera.mp4", "baseline", frames=30))
    config = Config(source=source, width=320, height=240, motion=True)
    plan = plan_camera(config.cameras[0], config)
    assert plan.mode == "passthrough", plan.reason
    pipeline = build_pipeline(config.cameras[0], plan, config)
    try:
        assert pipeline.processing is not None and pipeline.processing.input is pipeline.decoder
        pipeline.processing.attach(reader := object())
        result = await asyncio.wait_for(pipeline.processing.next_result(), 20)
        assert set(result.data) == {"motion"} and 0 <= result.data["motion"]["level"] <= 1
        pipeline.processing.detach(reader)
    finally:
        await pipeline.close()


def test_a_passthrough_plan_with_masks_builds_no_pipeline():
    from camtrack.pipeline import build_pipeline
    from camtrack.plan import CameraPlan

    config = Config(source="camera.mp4", masks=["0,0 10,0 10,10"])
    with pytest.raises(ValueError, match="masks need its pictures encoded here"):
        build_pipeline(config.cameras[0], CameraPlan("camera.mp4", "passthrough", "made elsewhere"), config)


@pytest.mark.slow
def test_bad_masks_at_start_are_one_line_and_status_2(tmp_path):
    config = tmp_path / "camtrack.toml"
    config.write_text('[cameras.porch]\nsource = "pattern"\nmask = ["0,0 10,0 10,900"]\n')
    cases = [
        (["--mask", "0,0 10,0"], "needs at least 3 points"),
        (["--mask", "0,0 10,0 10,10", "--mode", "passthrough"], "not with --mode passthrough"),
        (["--config", str(config)], "outside the 640x480 picture"),
        (["--overlay", "bad\nline"], "overlay must be one line"),
    ]
    for args, says in cases:
        done = subprocess.run([sys.executable, "server.py", "--source", "pattern", "--host", "127.0.0.1",
                               "--port", "1", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("camtrack: error: ") and says in lines[0], (args, done.stderr)


# -- overlay ---------------------------------------------------------------------------------------

def box_of(text: str, position: str, shape: tuple[int, int, int] = (480, 640, 3)) -> tuple[slice, slice]:
    """Where draw_text puts the box of `text`: rows and columns."""
    canvas = np.zeros(shape, np.uint8)
    draw_text(canvas, text, position, colour=(255, 255, 255), background=(255, 255, 255))
    rows, cols = np.nonzero(canvas[:, :, 0])
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def test_draw_text_in_each_corner():
    for position in POSITIONS:
        frame = np.full((480, 640, 3), 128, np.uint8)
        assert draw_text(frame, "12:34:56 porch", position) is frame
        rows, cols = box_of("12:34:56 porch", position)
        box = frame[rows, cols]
        assert (box == 0).mean() > 0.5 and (box > 200).any(), position  # a black box, white text
        assert rows.start >= 16  # clear of the latency stamp's row
        assert (rows.start < 240) == position.startswith("top") and (cols.start < 320) == position.endswith("left")
    with pytest.raises(ValueError, match="position must be one of"):
        draw_text(frame, "x", "middle")


def test_the_overlay_formats_the_capture_time_and_the_camera():
    overlay = Overlay("%Y-%m-%d %H:%M:%S {camera}")
    when = time.mktime((2026, 12, 5, 13, 45, 7, 0, 0, -1))
    assert overlay.line(FrameInfo("porch", 1, when + 0.5)) == "2026-12-05 13:45:07 porch"
    assert overlay.line(FrameInfo("porch", 2, when + 1.2)) == "2026-12-05 13:45:08 porch"


def overlaid(image: np.ndarray, rows: slice, cols: slice) -> bool:
    box = image[rows, cols].astype(float)
    return bool((box.max(axis=2) < 60).mean() > 0.4 and (box.min(axis=2) > 180).mean() > 0.03)


async def test_the_overlay_is_drawn_on_top_of_the_users_drawing(serve):
    def red(frame: np.ndarray, info: FrameInfo) -> None:
        frame[:] = (0, 0, 255)

    text = "%H:%M:%S {camera}"
    url, app = await serve(width=640, height=480, overlay=text, overlay_position="bottom-right", process_function=red)
    rows, cols = box_of(time.strftime(text.replace("{camera}", "default")), "bottom-right")
    # (the inner part: the box's width may change by a few pixels with the digits)
    rows, cols = slice(rows.start + 3, rows.stop - 3), slice(cols.start + 12, cols.stop - 3)
    viewer = Viewer(url)
    try:
        await viewer.connect()
        image = bgr((await viewer.frames(5))[-1])
        assert overlaid(image, rows, cols)
        assert image[:200, :200].mean(axis=(0, 1))[2] > 200  # red elsewhere: the user's drawing
        assert overlaid(await snapshot(url.removesuffix("/ws")), rows, cols)
        camera: Camera = app[CAMERAS].first
        assert camera.describe()["processing"]["function"].endswith(" + overlay")
    finally:
        await viewer.close()


# -- motion ----------------------------------------------------------------------------------------

def test_motion_is_nothing_on_a_still_picture_and_boxes_what_moves():
    detector = MotionDetector()
    still = np.full((480, 640, 3), 90, np.uint8)
    for _ in range(5):
        assert detector.detect(still) == {"level": 0.0, "regions": []}
    moved = still.copy()
    moved[200:280, 400:480] = 250
    found = detector(moved, FrameInfo("x", 6, 0.0))["motion"]
    share = 80 * 80 / (640 * 480)
    assert share * 0.7 < found["level"] < share * 1.5, found
    (x, y, w, h), = found["regions"]
    # full-frame pixels, around the square (the down-scaling and the joining widen it a little)
    assert 380 <= x <= 400 and 180 <= y <= 200 and 80 <= w <= 110 and 80 <= h <= 110, found


def chain_data(chain: Chain, frame: np.ndarray) -> tuple[Any, np.ndarray]:
    """What a chain returns for `frame` (a copy) and the picture it leaves."""
    picture = frame.copy()
    returned = chain(picture, FrameInfo("c", 1, time.time()))
    if isinstance(returned, tuple):
        return returned[1], returned[0]
    if isinstance(returned, np.ndarray):
        return None, returned
    return returned, picture


def test_the_chain_reads_motion_before_the_user_draws_and_merges_the_data():
    still = np.full((240, 320, 3), 90, np.uint8)
    flip = [0]

    def blinking(frame: np.ndarray, info: FrameInfo) -> Any:
        flip[0] ^= 1
        frame[50:150, 50:150] = 255 * flip[0]
        return {"blink": flip[0]}

    chain = Chain(blinking, MotionDetector(), Overlay("%S", "top-left"))
    for _ in range(4):
        data, picture = chain_data(chain, still)
        # motion reads the frame as captured: the user's blinking block and the overlay are no motion
        assert data == {"blink": flip[0], "motion": {"level": 0.0, "regions": []}}
        assert picture[100, 100].min() == 255 * flip[0] and picture[:40, :60].min() == 0
    # how data combines: a dict's keys win; anything else goes under "data"; no motion: as returned
    assert chain_data(Chain(lambda f, i: [1, 2], MotionDetector()), still)[0] == {
        "data": [1, 2], "motion": {"level": 0.0, "regions": []}}
    assert chain_data(Chain(lambda f, i: {"motion": "mine"}, MotionDetector()), still)[0] == {"motion": "mine"}
    assert chain_data(Chain(None, MotionDetector()), still)[0] == {"motion": {"level": 0.0, "regions": []}}
    assert chain_data(Chain(lambda f, i: 7, None, Overlay("x")), still)[0] == 7
    # a picture the user returns is not drawn on in place (the user's code may keep it)
    kept_picture = np.full((240, 320, 3), 10, np.uint8)
    data, picture = chain_data(Chain(lambda f, i: kept_picture, None, Overlay("x")), still)
    assert data is None and picture is not kept_picture and kept_picture.max() == 10 and picture.max() > 200


def write_still_video(path: Path, frames: int = 30) -> Path:
    """An MJPEG file of one still picture (a source whose every frame is the same)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (320, 240))
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, :] = (40, 120, 200)
    cv2.rectangle(image, (60, 60), (200, 180), (250, 250, 250), -1)
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


@pytest.mark.slow
async def test_motion_data_from_the_pattern_and_none_from_a_still_camera(serve, tmp_path):
    """With a viewer watching: the pattern's bouncing ball is motion (level above 0, regions in the
    picture); a still camera with a blinking --process drawing and the overlay is none (motion reads
    the frames as captured), and its data merges the user's dict with motion's."""
    url, app = await serve(width=640, height=480, fps=20, motion=True)
    camera: Camera = app[CAMERAS].first
    async with watched_stage(url, camera) as (viewer, stage):
        seen: list[dict[str, Any]] = []

        def moved() -> bool:
            if stage.result is not None:
                seen.append(stage.result.data["motion"])
            return len(seen) > 10 and any(m["level"] > 0.002 and m["regions"] for m in seen)

        await eventually(moved, timeout=20)
        for motion in seen:
            assert 0 <= motion["level"] <= 1
            assert all(0 <= x and 0 <= y and x + w <= 640 and y + h <= 480 and w > 0 and h > 0
                       for x, y, w, h in motion["regions"])

    blinks = [0]

    def blinking(frame: np.ndarray, info: FrameInfo) -> dict[str, int]:
        blinks[0] += 1
        frame[100:140, 100:140] = 255 * (blinks[0] % 2)
        return {"blinks": blinks[0]}

    source = write_still_video(tmp_path / "still.avi")
    url, app = await serve(source=str(source), width=320, height=240, fps=20, motion=True, overlay="%H:%M:%S.%s",
                           process_function=blinking)
    camera = app[CAMERAS].first
    async with watched_stage(url, camera) as (viewer, stage):
        first = stage.stats.calls
        await eventually(lambda: stage.stats.calls > first + 20 and stage.result is not None, timeout=20)
        result = stage.result
        assert result is not None and set(result.data) == {"blinks", "motion"}
        levels = [result.data["motion"]["level"]]
        for _ in range(10):
            levels.append((await stage.next_result(result.frame)).data["motion"]["level"])
            result = stage.result
            assert result is not None
        assert max(levels) < 0.001, levels
        assert stage.stats.errors == 0


async def test_a_function_file_in_a_chain_is_reloaded_on_save(serve, tmp_path, caplog):
    path = tmp_path / "mine.py"
    path.write_text("def process(frame, info):\n    return {'version': 1}\n")
    from camtrack.processing import FunctionFile

    with caplog.at_level(logging.INFO, logger="camtrack.processing"):
        url, app = await serve(width=320, height=240, fps=20, motion=True,
                               process_function=FunctionFile(f"{path}:process", interval=0.1))
        camera: Camera = app[CAMERAS].first
        async with watched_stage(url, camera) as (viewer, stage):
            await eventually(lambda: stage.result is not None and stage.result.data.get("version") == 1)
            time.sleep(0.01)  # (a new modification time)
            path.write_text("def process(frame, info):\n    return {'version': 2}\n")
            await eventually(lambda: stage.result is not None and stage.result.data.get("version") == 2)
            assert "motion" in stage.result.data
            assert camera.describe()["processing"]["function"] == "mine.py:process + motion"
