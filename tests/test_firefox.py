"""The page and WHEP in real Firefox (Debian's firefox-esr, driven by puppeteer-core over WebDriver
BiDi: tests/firefox/play.mjs), with the server, inside a private network namespace.

This Firefox has no H.264 (its OpenH264 plug-in is downloaded at run time, which cannot happen
here, nor on many offline or distribution installs): its offers carry VP8, VP9 and AV1, and it
must get VP8 from a camera of either codec, transcoded or passed through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from . import netns as netns_mod
from .test_browser import PORT, Server, unavailable

HERE = Path(__file__).resolve().parent / "firefox"
FIREFOX = "/usr/bin/firefox-esr"
URL = f"http://{netns_mod.SERVER_ADDRESS}:{PORT}/"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox():
    if not Path(FIREFOX).exists():
        unavailable(f"{FIREFOX} is not installed (apt-get install firefox-esr)")
    if shutil.which("node") is None:
        unavailable("node is not installed (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "puppeteer-core").is_dir():
        unavailable(f"puppeteer-core is not installed: run `npm ci` in {HERE}")
    try:
        ns = netns_mod.create(f"camtrack-ff-{os.getpid()}")
    except netns_mod.NetnsUnavailable as exc:
        unavailable(str(exc))
    yield ns
    ns.delete()


def play(ns: netns_mod.Netns, home: Path, mode: str, url: str, frames: int = 30, timeout: float = 40) -> dict:
    """What Firefox decoded: `mode` "page" (the page at `url`) or "whep" (a WHEP client posting to
    `url`), until more than `frames` frames were decoded. `home`: its HOME and TMPDIR (its profile)."""
    argv = ns.command("node", str(HERE / "play.mjs"), mode, url, str(frames), str(timeout))
    env = {**os.environ, "FIREFOX": FIREFOX, "HOME": str(home), "TMPDIR": str(home)}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 45, cwd=HERE, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"play.mjs printed nothing (status {result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}"
    return json.loads(lines[-1])


def server(ns: netns_mod.Netns, tmp_path: Path, codec: str, *options: str) -> Server:
    return Server(ns, tmp_path / "server.log", codec, *options)


def check_vp8(seen: dict, transport: str) -> None:
    assert seen["ok"], seen
    # Firefox offered no H.264 (the point of this test), and got VP8 over WebRTC, at the camera's size
    assert "H264" not in seen["offered"] and "VP8" in seen["offered"], seen
    assert seen["transport"] == transport, seen
    assert seen["codec"].lower() == "video/vp8", seen
    assert seen["frames"] > 30


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("codec", "workers"), [("h264", 0), ("vp8", 0), ("h264", 2)])
def test_firefox_plays_a_transcoded_camera_over_webrtc_in_vp8(sandbox, tmp_path, codec, workers):
    """The page and a WHEP client in Firefox play a camera whose shared encoder sends `codec`: a
    default camtrack (H.264) included, and with its viewers' peers in two worker processes."""
    running = server(sandbox, tmp_path, codec, *(("--workers", str(workers)) if workers else ()))
    try:
        page = play(sandbox, tmp_path, "page", URL)
        check_vp8(page, "webrtc")
        assert (page["width"], page["height"]) == (640, 480)
        whep = play(sandbox, tmp_path, "whep", URL + "whep")
        check_vp8(whep, "whep")
        assert whep["deleted"] == 200
        print(f"\nFirefox {page['version']}, {codec} camera, {workers} workers: the page decoded {page['frames']} VP8 frames "
              f"{page['seconds']:.1f} s after opening; WHEP {whep['seconds']:.1f} s")
    finally:
        took = running.stop()
        log = (tmp_path / "server.log").read_text()
        print(log[-4000:])
    assert took < 8
    if codec == "h264":
        assert "answered with vp8" in log
    if workers:  # (each worker logs its own peers' answers, prefixed with its number)
        assert re.search(r"worker \d .*answered with vp8", log)


@pytest.mark.timeout(150)
def test_firefox_plays_a_passed_through_h264_file_in_vp8(sandbox, tmp_path):
    """A camera whose own H.264 passes through (a file): Firefox gets it in VP8."""
    from .test_passthrough import FPS, write_h264

    source = write_h264(tmp_path / "main.mp4", "main", frames=6 * FPS)
    running = server(sandbox, tmp_path, "h264", "--source", str(source), "--mode", "passthrough")
    try:
        page = play(sandbox, tmp_path, "page", URL)
        check_vp8(page, "webrtc")
        assert (page["width"], page["height"]) == (320, 240)
        print(f"\npassed-through H.264 file: the page decoded {page['frames']} VP8 frames "
              f"{page['seconds']:.1f} s after opening")
    finally:
        running.stop()
        log = (tmp_path / "server.log").read_text()
        print(log[-4000:])
    assert "answered with vp8" in log


@pytest.mark.timeout(150)
def test_firefox_draws_each_processing_result_on_the_picture_it_describes(sandbox, tmp_path):
    """The page in Firefox draws a function's data over the video on the picture it describes (its
    video frame callbacks give the RTP timestamp too): tests/test_overlay_page.py's check."""
    from .test_overlay_page import check_pairs, functions

    running = server(sandbox, tmp_path, "vp8", "--process", f"{functions(tmp_path)}:boxes")
    try:
        seen = play(sandbox, tmp_path, "overlay", URL, frames=90)
        assert seen["ok"], seen
        check_pairs(seen["pairs"], f"Firefox {seen['version']}")
    finally:
        running.stop()
