"""Chromium (Debian's, through Playwright, in a network namespace: tests/test_browser.py) plays clips
fetched through /api/recordings in a plain `<video>`: one finished normally, one a `kill -9` left
unfinished and the next start closed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camtrack.outputs.recording import Store

from .test_browser import browser_and_server, open_page, sandbox  # noqa: F401 - the fixture

SCRIPT = Path(__file__).parent / "record_process.py"

PLAY = """async (id) => {
  const video = document.createElement("video");
  video.muted = true;
  document.body.appendChild(video);
  const ended = new Promise((done) => { video.onended = () => done("ended"); video.onerror = () => done("error"); });
  video.src = "api/recordings/" + id;
  await new Promise((done) => { video.onloadedmetadata = done; video.onerror = done; });
  const metadata = {width: video.videoWidth, height: video.videoHeight, duration: video.duration,
                    error: video.error && video.error.message};
  video.playbackRate = 4;
  await video.play();
  const how = await Promise.race([ended, new Promise((done) => setTimeout(() => done("timeout"), 20000))]);
  const quality = video.getVideoPlaybackQuality();
  return {...metadata, how, currentTime: video.currentTime, frames: quality.totalVideoFrames};
}"""


def record(directory: Path, options: dict[str, object], wait_for: str, after: float = 0.0) -> dict[str, object]:
    """Run tests/record_process.py until its line `wait_for` ("clip" or "done"), `after` s more, then kill -9."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(directory), "0", json.dumps(options)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        said: dict[str, object] = {}
        while wait_for not in said:
            line = process.stdout.readline()
            assert line, "record_process.py ended"
            said.update(json.loads(line))
        time.sleep(after)
    finally:
        process.kill()
        process.wait(10)
    return said


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_chromium_plays_clips_fetched_through_the_api(sandbox, tmp_path):  # noqa: F811
    clips = tmp_path / "clips"
    finished = record(clips, {"end_after": 1.0, "post_roll": 1.0}, "done")
    crashed = record(clips, {}, "clip", after=3.0)
    assert Store(clips).path(str(crashed["clip"]), ".mp4.part").exists()
    with browser_and_server(sandbox, tmp_path, "h264", "--record", str(clips), "--record-min-free", "0") as (
            browser, _servers, _log):
        page = open_page(browser)
        listed = page.evaluate("async () => (await (await fetch('api/recordings')).json()).recordings")
        by_id = {clip["id"]: clip for clip in listed}
        assert set(by_id) >= {finished["clip"], crashed["clip"]}
        assert by_id[crashed["clip"]]["repaired"] is True
        for clip_id in (finished["clip"], crashed["clip"]):
            played = page.evaluate(PLAY, clip_id)
            clip = by_id[clip_id]
            assert played["error"] is None and played["how"] == "ended", played
            assert (played["width"], played["height"]) == (640, 480), played
            assert abs(played["duration"] - clip["duration"]) < 0.2, (played, clip["duration"])
            assert played["currentTime"] >= clip["duration"] - 0.2, played
            assert played["frames"] >= 25 * clip["duration"] * 0.8, played


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_recordings_page_lists_plays_protects_and_deletes(sandbox, tmp_path):  # noqa: F811
    """/recordings in Chromium, with a token: the clips newest first with their thumbnails; one plays
    in place; Protect and Delete reach the API; Live goes back to the camera, whose Recordings button
    comes back."""
    clips = tmp_path / "clips"
    first = record(clips, {"end_after": 0.5, "post_roll": 0.5, "pre_roll": 1.0}, "done")
    second = record(clips, {"end_after": 0.5, "post_roll": 0.5, "pre_roll": 1.0}, "done")
    with browser_and_server(sandbox, tmp_path, "h264", "--record", str(clips), "--record-min-free", "0",
                            "--token", "s3cret") as (browser, _servers, _log):
        page = open_page(browser, "recordings?token=s3cret")
        page.on("dialog", lambda dialog: dialog.accept())
        page.wait_for_function("document.querySelectorAll('#clips li').length === 2", timeout=30000)
        assert "token" not in page.url  # (moved out of the address bar)
        ids = page.evaluate("[...document.querySelectorAll('#clips li')].map((li) => li.dataset.id)")
        assert ids == [second["clip"], first["clip"]]
        page.wait_for_function("[...document.querySelectorAll('#clips img')].every((i) => i.naturalWidth > 0)",
                               timeout=30000)
        page.click(f"li[data-id='{first['clip']}'] img")
        page.wait_for_function("document.querySelector('#player').currentTime > 0.5", timeout=30000)
        size = page.evaluate("[document.querySelector('#player').videoWidth, document.querySelector('#player').videoHeight]")
        assert size == [640, 480]
        assert page.evaluate("document.querySelector('#live').getAttribute('href')") == "./?camera=default"
        page.click(f"li[data-id='{first['clip']}'] button.protect")
        page.wait_for_function(f"document.querySelector(\"li[data-id='{first['clip']}'] button.protect\")"
                               ".textContent === 'Unprotect'", timeout=15000)
        listed = page.evaluate("async () => (await (await fetch('api/recordings', "
                               "{headers: {Authorization: 'Bearer s3cret'}})).json()).recordings")
        assert {c["id"]: c["protected"] for c in listed} == {first["clip"]: True, second["clip"]: False}
        page.click(f"li[data-id='{second['clip']}'] button.delete")
        page.wait_for_function("document.querySelectorAll('#clips li').length === 1", timeout=15000)
        assert not Store(clips).path(str(second["clip"])).exists()
        page.click("#live")
        page.wait_for_function("window.camtrack && window.camtrack.state === 'live'", timeout=30000)
        # ... and the live page's Recordings button comes back here, for its camera
        page.click("#recordings")
        page.wait_for_function("document.querySelectorAll('#clips li').length === 1", timeout=30000)
        assert page.url.endswith("recordings?camera=default"), page.url
