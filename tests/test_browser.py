"""The page in real headless Chromium, with the server, inside a private network namespace."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from . import netns as netns_mod

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PORT = 8080
URL = f"http://{netns_mod.SERVER_ADDRESS}:{PORT}/"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

FRAMES_DECODED = """async () => {
  const pc = window.camtrack && window.camtrack.pc;
  if (!pc) return {frames: 0, codec: null};
  const stats = await pc.getStats();
  let frames = 0, codecId = null;
  stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") { frames = r.framesDecoded || 0; codecId = r.codecId; } });
  const codec = codecId && stats.get(codecId) ? stats.get(codecId).mimeType : null;
  return {frames, codec};
}"""


#: the WHEP offer and answer of a page's `pc` with `endpoint` (ICE gathered, 3 s at most), as JS
#: statements that leave the POST's `response` (the clients below, in tests/test_audio_browser.py and
#: in bench/lipsync.py)
WHEP_NEGOTIATE = """  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
    setTimeout(done, 3000);
  });
  const response = await fetch(endpoint, {method: "POST", body: pc.localDescription.sdp,
                                          headers: {"Content-Type": "application/sdp"}});
  await pc.setRemoteDescription({type: "answer", sdp: await response.text()});
"""

WHEP_CLIENT = """async (endpoint) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
""" + WHEP_NEGOTIATE + """  let frames = 0;
  for (let i = 0; i < 100 && frames <= 10; i++) {
    await new Promise((r) => setTimeout(r, 200));
    (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp") frames = r.framesDecoded || 0; });
  }
  const deleted = await fetch(response.headers.get("Location"), {method: "DELETE"});
  pc.close();
  return {status: response.status, frames, deleted: deleted.status};
}"""


def unavailable(reason: str):
    """Browser tests may skip on a developer's machine, never in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        unavailable("playwright for Python is not installed")
    try:
        ns = netns_mod.create(f"camtrack-test-{os.getpid()}")
    except netns_mod.NetnsUnavailable as exc:
        unavailable(str(exc))
    wrapper = tmp_path_factory.mktemp("chromium") / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    yield ns, wrapper
    ns.delete()


class Server:
    """`python server.py` in the namespace."""

    def __init__(self, ns: netns_mod.Netns, log: Path, codec: str, *options: str) -> None:
        self.log = log
        argv = ns.command(
            sys.executable, str(ROOT / "server.py"), "--host", netns_mod.SERVER_ADDRESS, "--port", str(PORT),
            "--source", "pattern", "--codec", codec, "--ice-address", netns_mod.SERVER_ADDRESS, "--linger", "1",
            *options,
        )
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM, and how long the server took to exit."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.log.read_text()}") from None
        return time.monotonic() - start


@contextlib.contextmanager
def browser_and_server(sandbox, tmp_path: Path, codec: str, *options: str):
    """Chromium and `server.py` in the namespace; yields the browser, the list of servers
    started (a test may restart it) and the server log, printed if the test fails."""
    from playwright.sync_api import sync_playwright

    ns, wrapper = sandbox
    log = tmp_path / "server.log"
    servers = [Server(ns, log, codec, *options)]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_FLAGS, headless=True)
            try:
                yield browser, servers, log
            finally:
                browser.close()
    except BaseException:
        print(log.read_text() if log.exists() else "(no server log)")
        raise
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop()


def open_page(browser, path: str = "", timeout: float = 30.0):
    """A page on the server's URL, retried until the server answers."""
    page = browser.new_page(viewport={"width": 800, "height": 600})
    deadline = time.monotonic() + timeout
    while True:
        try:
            page.goto(URL + path, timeout=5000)
            return page
        except Exception:  # noqa: BLE001 - connection refused until the server listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_frames(page, minimum: int, timeout: float = 30.0, interval: float = 0.2) -> dict:
    """Until the page's peer decoded more than `minimum` frames (polled: `wait_for_function` takes a
    promise for a truthy value and would not wait for getStats())."""
    deadline = time.monotonic() + timeout
    while True:
        stats = page.evaluate(FRAMES_DECODED)
        if stats["frames"] > minimum:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"only {stats['frames']} frames decoded in {timeout} s; state "
                                 f"{page.evaluate('window.camtrack.state')}")
        time.sleep(interval)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_page_plays_and_reconnects(sandbox, tmp_path, codec):
    ns, _ = sandbox
    with browser_and_server(sandbox, tmp_path, codec) as (browser, servers, log):
        page = open_page(browser)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        page.wait_for_function("document.querySelector('video').currentTime > 0", timeout=30000)
        stats = wait_frames(page, 30)
        assert stats["codec"].lower() == f"video/{codec}"
        size = page.evaluate("[document.querySelector('video').videoWidth, document.querySelector('video').videoHeight]")
        assert size == [640, 480]
        t0 = page.evaluate("document.querySelector('video').currentTime")
        page.wait_for_function(f"document.querySelector('video').currentTime > {t0} + 0.5", timeout=15000)

        shot = page.locator("video").screenshot()
        (tmp_path / f"page-{codec}.png").write_bytes(shot)
        image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
        assert image.std() > 30, "the video looks blank"
        # the colour bars: a yellow-ish and a blue-ish area exist
        colours = {tuple(int(v) // 64 for v in px) for px in image[image.shape[0] // 3, ::8]}
        assert len(colours) >= 5, colours

        # restart the server: the page notices and comes back by itself
        took = servers[-1].stop()
        assert took < 8, f"server took {took:.1f} s to exit on SIGTERM"
        page.wait_for_function("window.camtrack.state !== 'live'", timeout=15000)
        servers.append(Server(ns, log, codec))
        page.wait_for_function("window.camtrack.connects >= 2 && window.camtrack.state === 'live'",
                               timeout=45000)
        wait_frames(page, 10)


@pytest.mark.timeout(180)
def test_page_token_and_full_states(sandbox, tmp_path):
    with browser_and_server(sandbox, tmp_path, "h264", "--token", "s3cret", "--max-viewers", "1") as (browser, _, log):
        stranger = open_page(browser)
        stranger.wait_for_function("window.camtrack.state === 'unauthorized'", timeout=30000)
        assert "unauthorized" in stranger.locator("#status").inner_text()
        stranger.close()

        viewer = open_page(browser, "?token=s3cret")
        viewer.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        wait_frames(viewer, 10)
        # the token left the address bar (and never went into a URL the server sees)
        assert "token" not in viewer.url

        late = open_page(browser, "?token=s3cret")
        late.wait_for_function("window.camtrack.state === 'full'", timeout=30000)
        assert "server full" in late.locator("#status").inner_text()
        late.screenshot(path=str(tmp_path / "full.png"))
        assert "s3cret" not in log.read_text()


@pytest.mark.timeout(180)
def test_page_controls(sandbox, tmp_path):
    """Camera picker, stats overlay with the live latency, snapshot, fullscreen, a phone-sized screen."""
    cameras = ("--camera", "front=pattern", "--camera", "back=pattern")
    with browser_and_server(sandbox, tmp_path, "h264", *cameras) as (browser, _, _log):
        page = open_page(browser)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        picker = page.locator("#camera")
        picker.wait_for(state="visible", timeout=10000)
        assert picker.locator("option").all_inner_texts() == ["front (640×480)", "back (640×480)"]

        page.click("#info")
        # the overlay fills in as getStats() learns things (fps after two samples, RTT after an RTCP report)
        page.wait_for_function("window.camtrack.stats && window.camtrack.stats.resolution === '640×480'"
                               " && /^-?\\d+ ms$/.test(window.camtrack.stats['glass-to-glass'])"
                               " && window.camtrack.stats.fps !== '-' && 'RTT' in window.camtrack.stats",
                               timeout=20000)
        latency = page.evaluate("window.camtrack.latency")
        assert 0 <= latency < 2000, latency
        stats = page.evaluate("window.camtrack.stats")
        assert stats["codec"] == "H264" and stats["fps"] != "-" and "RTT" in stats
        page.screenshot(path=str(tmp_path / "overlay.png"))

        with page.expect_download(timeout=20000) as download:
            page.click("#snapshot")
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.name.startswith("front-") and saved.suffix == ".jpg"
        assert cv2.imread(str(saved)).shape == (480, 640, 3)

        picker.select_option("back")
        page.wait_for_function("window.camtrack.hello.camera === 'back' && window.camtrack.state === 'live'",
                               timeout=30000)
        assert "camera=back" in page.url
        wait_frames(page, 10)

        page.click("#fullscreen")
        page.wait_for_function("document.fullscreenElement !== null", timeout=10000)

        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        phone.goto(URL + "?camera=back")
        phone.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        phone.wait_for_function("document.querySelector('video').videoWidth > 0", timeout=30000)
        for button in ("#info", "#snapshot", "#fullscreen"):
            box = phone.locator(button).bounding_box()
            assert box["width"] >= 44 and box["height"] >= 44
            assert 0 <= box["x"] and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
        phone.click("#info")
        phone.wait_for_function("window.camtrack.stats && window.camtrack.stats.resolution === '640×480'",
                                timeout=20000)
        phone.screenshot(path=str(tmp_path / "phone.png"))

        # WHEP from the browser, with a client written here (not the page's code)
        decoded = phone.evaluate(WHEP_CLIENT, "/cameras/front/whep")
        assert decoded["frames"] > 10 and decoded["status"] == 201 and decoded["deleted"] == 200


@pytest.mark.timeout(180)
@pytest.mark.parametrize("profile", ["main", "high"])
def test_page_plays_a_cameras_own_h264(sandbox, tmp_path, profile):
    """Passthrough: Chromium plays a Main or High source's own packets; a page opened in the middle
    of the camera's 4-second GOP shows the picture at once and plays live from then on."""
    from .test_passthrough import FPS, write_h264

    source = write_h264(tmp_path / f"{profile}.mp4", profile, frames=12 * FPS)
    with browser_and_server(sandbox, tmp_path, "h264", "--source", str(source), "--mode", "passthrough") as (
            browser, _, _log):
        first = open_page(browser)
        first.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        wait_frames(first, 2 * FPS)
        late = open_page(browser)  # ~2.5 s into a GOP of 4 s at the earliest
        opened = time.monotonic()
        wait_frames(late, 0, timeout=20, interval=0.02)
        first_frame = time.monotonic() - opened
        at_once = late.evaluate(FRAMES_DECODED)["frames"]
        # live from then on: about 30 decoded a second (measured once the start run is decoded)
        late.wait_for_timeout(1000)  # the start run's frames land in this second, not in the window
        decoded = late.evaluate(FRAMES_DECODED)["frames"]
        late.wait_for_timeout(2000)  # a measuring window, not a wait for readiness
        rate = (late.evaluate(FRAMES_DECODED)["frames"] - decoded) / 2.0
        size = late.evaluate("[document.querySelector('video').videoWidth, document.querySelector('video').videoHeight]")
        print(f"\n{profile}: page opened mid-GOP decoded its first frame {first_frame * 1000:.0f} ms after "
              f"opening ({at_once} at once), then {rate:.0f} frames/s; {size[0]}x{size[1]}")
        assert size == [320, 240]
        assert first_frame < 5.0  # page load, signaling and ICE included; well under the 4 s GOP + that
        assert 20 <= rate <= 40


@pytest.mark.timeout(180)
def test_page_joining_mid_gop_shows_the_live_picture(sandbox, tmp_path):
    """Passthrough of an RTSP camera whose keyframes are 4 s apart and whose pictures carry the time
    they were made: a page opened 1.5 s or more after the camera's keyframe shows, as its first
    picture, the live one (the join bridge), not the keyframe's."""
    ns, _ = sandbox
    camera = subprocess.Popen(ns.command(sys.executable, "-m", "tests.rtsp_server", "--size", "320x240"),
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert camera.stdout is not None
        url = camera.stdout.readline().strip()
        assert url.startswith("rtsp://"), url
        with browser_and_server(sandbox, tmp_path, "h264", "--source", url, "--mode", "passthrough",
                                "--width", "320", "--height", "240") as (browser, _, _log):
            first = open_page(browser)
            wait_frames(first, 15)
            # the camera opened for the first page at its keyframe: 1.5 to 3 s into its GOP now
            deadline = time.monotonic() + 20
            while first.evaluate(FRAMES_DECODED)["frames"] % 120 not in range(45, 90):
                assert time.monotonic() < deadline, "the first page stopped decoding"
                time.sleep(0.02)
            late = open_page(browser)
            opened = time.monotonic()
            shown = None
            while shown is None:
                assert time.monotonic() - opened < 20, "the late page showed no picture"
                shown = late.evaluate("window.camtrack.readLatency()")
                time.sleep(0.01)
            shown_after = time.monotonic() - opened
            wait_frames(late, 60)
            now = late.evaluate("window.camtrack.readLatency()")
            print(f"\npage opened mid-GOP: its first picture shown {shown_after * 1000:.0f} ms after opening was "
                  f"{shown} ms old; {now} ms two seconds later")
            assert shown < 700, f"the first picture shown was {shown} ms old (the keyframe's is over 1500 ms)"
            assert now is not None and now < 700
    finally:
        camera.kill()
        camera.wait(10)
