"""The camera's sound in real headless Chromium (inside a private network namespace, as
tests/test_browser.py): the page starts muted with one unmute control and a level meter, and once
unmuted its getStats() shows audio with energy, from the test tone, a file's AAC and a real RTSP
camera's AAC (Opus) and G.711 (PCMU passed through) (GStreamer's RTSP server, in the namespace too);
a WHEP client hears it."""

from __future__ import annotations

import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from . import netns as netns_mod
from .test_audio import write_av_file
from .test_browser import PORT, URL, WHEP_NEGOTIATE, browser_and_server, open_page, sandbox  # noqa: F401 - the fixture
from .test_real_rtsp import SYSTEM_PYTHON, gst_available

pytestmark = pytest.mark.slow

RTSP_SERVER = Path(__file__).with_name("gst_rtsp_audio_server.py")
ONVIF_SERVER = Path(__file__).with_name("gst_onvif_backchannel_server.py")

AUDIO_STATS = """async () => {
  const pc = window.camtrack && window.camtrack.pc;
  if (!pc) return null;
  let found = null;
  const report = await pc.getStats();
  report.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") found = r; });
  if (!found) return null;
  const codec = found.codecId && report.get(found.codecId);
  return {packets: found.packetsReceived || 0, level: found.audioLevel || 0,
          energy: found.totalAudioEnergy || 0, codec: codec ? codec.mimeType : null};
}"""

WHEP_AUDIO = """async (endpoint) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  const element = document.createElement("video");
  element.autoplay = true;
  document.body.appendChild(element);
  pc.ontrack = (event) => { element.srcObject = event.streams[0]; element.play().catch(() => {}); };
""" + WHEP_NEGOTIATE + """  let energy = 0, level = 0, packets = 0, codec = null;
  for (let i = 0; i < 100 && !(energy > 0.005 && level > 0.1); i++) {
    await new Promise((r) => setTimeout(r, 200));
    const report = await pc.getStats();
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        energy = r.totalAudioEnergy || 0; level = Math.max(level, r.audioLevel || 0);
        packets = r.packetsReceived || 0;
        codec = r.codecId && report.get(r.codecId) ? report.get(r.codecId).mimeType : null;
      }
    });
  }
  pc.close();
  return {status: response.status, energy, level, packets, codec};
}"""


def heard(page, timeout: float = 30.0) -> dict:
    """The page's audio statistics once it has had sound with energy (the tone beeps 100 ms a second:
    the level is the loudest seen)."""
    deadline = time.monotonic() + timeout
    loudest = 0.0
    stats = None
    while time.monotonic() < deadline:
        stats = page.evaluate(AUDIO_STATS)
        if stats:
            loudest = max(loudest, stats["level"])
            if stats["energy"] > 0.005 and loudest > 0.1:
                return {**stats, "level": loudest}
        time.sleep(0.1)
    raise AssertionError(f"no sound with energy in {timeout} s: {stats}, loudest level {loudest}")


def rtsp_in(ns, audio: str) -> tuple[subprocess.Popen[str], str]:
    """GStreamer's RTSP camera with `audio`, inside the namespace (on its own 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(ns.command(SYSTEM_PYTHON, str(RTSP_SERVER), str(port), audio),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    assert url.startswith("rtsp://"), url
    return server, url


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", ["pattern", "file-aac", "rtsp-aac", "rtsp-pcmu"])
def test_the_page_is_muted_until_unmuted_then_plays_the_cameras_sound(sandbox, tmp_path, source):  # noqa: F811
    ns, _ = sandbox
    camera: subprocess.Popen[str] | None = None
    if source == "file-aac":
        path = tmp_path / "clip.mkv"
        write_av_file(path, "aac", seconds=4.0)
        options: tuple[str, ...] = ("--source", str(path))
    elif source.startswith("rtsp-"):
        if gst_available() is not None:
            pytest.skip("GStreamer's RTSP server is not installed")
        camera, url = rtsp_in(ns, source.removeprefix("rtsp-"))
        options = ("--source", url)
    else:
        options = ()
    try:
        with browser_and_server(sandbox, tmp_path, "h264", "--width", "320", "--height", "240", *options) as (
                browser, _, _log):
            page = open_page(browser)
            page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
            # the sound comes: the button appears, the video element still muted
            page.wait_for_function("!document.getElementById('sound').hidden", timeout=30000)
            assert page.evaluate("document.querySelector('video').muted") is True
            assert page.get_attribute("#sound", "aria-pressed") == "false"
            # the level meter moves before anyone unmutes
            page.wait_for_function("parseFloat(document.getElementById('sound-level').style.height) > 0",
                                   timeout=30000)
            page.click("#sound")
            assert page.evaluate("document.querySelector('video').muted") is False
            assert page.get_attribute("#sound", "aria-pressed") == "true"
            stats = heard(page)
            # a camera's G.711 passed through (Chromium offers PCMU and PCMA), anything else in Opus
            codec = "PCMU" if source == "rtsp-pcmu" else "opus"
            assert stats["codec"].lower() == f"audio/{codec}".lower()
            # the energy grows: the sound goes on being heard
            first = stats["energy"]
            page.wait_for_function(f"({AUDIO_STATS})().then((s) => s && s.energy > {first} + 0.001)",
                                   timeout=10000)
            # the statistics overlay names the audio codec
            page.click("#info")
            page.wait_for_function(f"window.camtrack.stats && window.camtrack.stats.audio === '{codec}'",
                                   timeout=10000)
            page.screenshot(path=str(tmp_path / f"page-{source}.png"))
    finally:
        if camera is not None:
            camera.kill()
            camera.wait(10)


@pytest.mark.timeout(180)
def test_a_whep_client_in_chromium_hears_the_tone(sandbox, tmp_path):  # noqa: F811
    with browser_and_server(sandbox, tmp_path, "h264", "--width", "320", "--height", "240") as (browser, _, _log):
        page = open_page(browser)
        result = page.evaluate(WHEP_AUDIO, URL + "whep")
        assert result["status"] == 201, result
        assert result["codec"].lower() == "audio/opus", result
        assert result["energy"] > 0.005 and result["level"] > 0.1, result


@pytest.mark.timeout(180)
def test_a_whep_client_in_chromium_gets_a_cameras_g711_passed_through(sandbox, tmp_path):  # noqa: F811
    """Chromium offers PCMU and PCMA: a real RTSP camera's PCMU reaches it as PCMU, with energy."""
    if gst_available() is not None:
        pytest.skip("GStreamer's RTSP server is not installed")
    ns, _ = sandbox
    camera, url = rtsp_in(ns, "pcmu")
    try:
        with browser_and_server(sandbox, tmp_path, "h264", "--source", url, "--width", "320",
                                "--height", "240") as (browser, _, _log):
            page = open_page(browser)
            result = page.evaluate(WHEP_AUDIO, URL + "whep")
            assert result["status"] == 201, result
            assert result["codec"].lower() == "audio/pcmu", result
            assert result["energy"] > 0.005 and result["level"] > 0.1, result
    finally:
        camera.kill()
        camera.wait(10)


@pytest.mark.timeout(180)
def test_lip_sync_in_chromium_is_within_80_ms(sandbox, tmp_path):  # noqa: F811
    """The tone's beeps as Chromium outputs them (MediaStreamTrackProcessor on the track: each 10 ms
    as the output pulls it, plus the output's own delay from the media-playout statistics) against
    the pattern's marks as it shows them (requestVideoFrameCallback): bench/lipsync.py. Chromium's
    synchronisation settles over the first seconds (its audio jitter buffer starts at 80 ms and the
    picture's delay moves towards the sound's in steps), so the beeps of the first 6 s are left out.
    The median of the rest, the beep heard against the mark seen, is within the issue's 80 ms; the
    sync error (the sound's latency minus the picture's, from the stamps) is that plus where the
    whole second fell in the marked picture's interval (0 to 33 ms at 30 fps), so within 80 ms of
    that. A sound report moved by 150 ms (the sound claimed captured earlier) read -124 ms here.

    A loaded machine moves where Chromium settles (docs/audio.md: 67 ms loaded, 98 ms starved): a
    first window that misses is followed by a second on the same page (a new peer, settled again),
    and the second is the verdict; both are printed. A real sync error misses both (the tone
    delayed 150 ms at its source, under two busy loops: medians 180 and 174 ms, sync errors 192 and
    190 ms)."""
    from bench.lipsync import LIP_SYNC_JS, analyse, settled, summary

    def within(figures: dict) -> bool:
        return (len(figures["offsets"]) >= 10 and abs(statistics.median(figures["offsets"])) <= 80
                and -80 <= statistics.median(figures["errors"]) <= 80 + 1000 / 30)

    with browser_and_server(sandbox, tmp_path, "h264", "--width", "320", "--height", "240") as (browser, _, _log):
        page = open_page(browser, "api/cameras")  # (a page of the server's that plays nothing itself)
        for window in (1, 2):
            raw = page.evaluate(LIP_SYNC_JS, [URL + "whep", 24])
            everything = analyse(raw)
            assert raw["onsets"], everything
            figures = analyse(settled(raw, 6.0))
            print(f"lip-sync in Chromium, window {window} (sound minus picture, ms), first 6 s:",
                  [round(x) for x in everything["offsets"][:len(everything["offsets"]) - len(figures["offsets"])]],
                  "then:", [round(x) for x in figures["offsets"]],
                  "sync errors:", [round(x) for x in figures["errors"]])
            print(f"lip-sync in Chromium, window {window}, settled:", summary(figures))
            if within(figures):
                break
    assert len(figures["offsets"]) >= 10, figures
    assert abs(statistics.median(figures["offsets"])) <= 80, figures
    assert -80 <= statistics.median(figures["errors"]) <= 80 + 1000 / 30, figures


@pytest.mark.timeout(180)
def test_the_websocket_fallback_plays_the_sound_once_unmuted(sandbox, tmp_path):  # noqa: F811
    """?transport=ws on HTTPS (WebCodecs): the page asks for the sound on the socket; the button and
    the meter come with it, and once unmuted the player plays the tone's packets."""
    from .test_browser_fallback import webcodecs_page

    with webcodecs_page(sandbox, tmp_path) as page:
        page.wait_for_function("!document.getElementById('sound').hidden", timeout=30000)
        page.wait_for_function("parseFloat(document.getElementById('sound-level').style.height) > 0",
                               timeout=30000)
        assert page.evaluate("window.camtrack.player.sound.played") == 0  # muted: decoded, not played
        page.click("#sound")
        page.wait_for_function("window.camtrack.player.sound.played > 100", timeout=30000)
        assert page.evaluate("window.camtrack.player.sound.codec") == "opus"
        page.click("#info")
        page.wait_for_function("window.camtrack.stats && window.camtrack.stats.audio === 'opus'", timeout=10000)
        # a packet that does not decode (a camera's Opus reaches the page untouched): the browser
        # closes the decoder; the player makes another, and the sound goes on
        page.evaluate("""() => { const sound = window.camtrack.player.sound;
            sound.push({data: new Uint8Array([255, 255, 255, 255]), captured: Date.now(), pts: 0}); }""")
        page.wait_for_function("window.camtrack.player.sound.errors >= 1", timeout=10000)
        decoded = page.evaluate("window.camtrack.player.sound.decoded")
        page.wait_for_function(f"window.camtrack.player.sound.decoded > {decoded} + 50", timeout=30000)


@pytest.mark.timeout(180)
def test_push_to_talk_from_chromiums_fake_microphone_reaches_an_onvif_camera(sandbox, tmp_path, monkeypatch):  # noqa: F811
    """HTTPS page, ?talk=TOKEN: holding the talk button sends Chromium's fake microphone over the peer
    to the camera's ONVIF back-channel (GStreamer's RTSPOnvifServer, in the namespace, which prints
    the level of what it decodes); a second page holding it is told the line is busy."""
    push_to_talk(sandbox, tmp_path, monkeypatch)


@pytest.mark.timeout(180)
def test_push_to_talk_from_a_viewer_in_a_worker_process(sandbox, tmp_path, monkeypatch):  # noqa: F811
    """--workers 2: the talker's peer is in a worker process, which relays what it hears to the main
    process, where the camera's back-channel and its one line are: the camera hears Chromium's fake
    microphone, and a second page (in the other worker) is told the line is busy."""
    push_to_talk(sandbox, tmp_path, monkeypatch, "--workers", "2")


def push_to_talk(sandbox, tmp_path, monkeypatch, *options: str) -> None:  # noqa: F811
    """The push-to-talk tests' run, the server given `options` too."""
    from . import test_browser_fallback as fallback

    if gst_available() is not None:
        pytest.skip("GStreamer's RTSP server is not installed")
    ns, _ = sandbox
    monkeypatch.setattr(fallback, "CHROMIUM_FLAGS", [*fallback.CHROMIUM_FLAGS, "--use-fake-device-for-media-stream",
                                                     "--use-fake-ui-for-media-stream"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    camera = subprocess.Popen(ns.command(SYSTEM_PYTHON, str(ONVIF_SERVER), str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    heard: list[tuple[float, float]] = []
    try:
        assert camera.stdout is not None
        url = camera.stdout.readline().strip()
        assert url.startswith("rtsp://"), url

        def listen() -> None:
            for line in camera.stdout:  # type: ignore[union-attr]
                if line.startswith("LEVEL "):
                    heard.append((float(line.split()[1]), float(line.split()[2])))

        threading.Thread(target=listen, daemon=True).start()
        cert, key = fallback.certificate(tmp_path)
        base = f"https://{netns_mod.SERVER_ADDRESS}:{PORT}/"
        with fallback.chromium_and_server(sandbox, tmp_path, "--cert", str(cert), "--key", str(key), "--source", url,
                                          "--talk", "source", "--talk-token", "speak", "--width", "320",
                                          "--height", "240", *options) as (context, _restart):
            fallback.wait_for_server(context, base)
            page, _ = fallback.plays(context, base, "?talk=speak", frames=5)
            workers = "--workers" in options
            assert "talk" not in page.url  # (the talk token left the address bar)
            page.wait_for_function("!document.getElementById('talk').hidden && "
                                   "!document.getElementById('talk').disabled", timeout=30000)
            box = page.locator("#talk").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            # a second press, a new session, is tried before failing: the test camera once decoded
            # nothing of a whole session (its unselected streams failed with not-linked and took the
            # media down; fixed in tests/gst_onvif_backchannel_server.py), and a retry here is printed
            for attempt in range(2):
                pressed = time.time()
                page.mouse.down()
                page.wait_for_function("window.camtrack.talk.state === 'on' || window.camtrack.talk.error",
                                       timeout=30000)
                assert page.evaluate("window.camtrack.talk.state") == "on", page.evaluate("window.camtrack.talk")
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not any(rms > 0.02 and at > pressed for at, rms in heard):
                    time.sleep(0.1)
                loud = [at for at, rms in heard if rms > 0.02 and at > pressed]
                if loud or attempt:
                    break
                print("push-to-talk: the camera heard nothing of the first session: pressing again")
                page.mouse.up()
                page.wait_for_function("window.camtrack.talk.state === 'off'", timeout=30000)
            assert loud, (heard[-5:], page.evaluate("window.camtrack.talk"))
            print(f"push-to-talk: the camera heard Chromium's microphone {loud[0] - pressed:.2f} s after the press "
                  "(the fake microphone beeps now and then: an upper bound)")
            # a second page holding the button meanwhile: busy
            other, _ = fallback.plays(context, base, "?talk=speak", frames=5)
            other.wait_for_function("!document.getElementById('talk').hidden && "
                                    "!document.getElementById('talk').disabled", timeout=30000)
            other.keyboard.down("t")
            other.wait_for_function("window.camtrack.talk.error", timeout=30000)
            assert "busy" in other.evaluate("window.camtrack.talk.error"), other.evaluate("window.camtrack.talk")
            if workers:  # both pages' peers in worker processes, the talker's sound relayed from one
                health = page.evaluate("fetch('/healthz').then((r) => r.json())")
                peers = [worker["peers"] for worker in health["workers"]]
                print("push-to-talk: peers in each worker:", peers)
                assert sum(peers) == 2, health["workers"]
            other.keyboard.up("t")
            page.mouse.up()
            page.wait_for_function("window.camtrack.talk.state === 'off'", timeout=30000)
    finally:
        camera.kill()
        camera.wait(10)


@pytest.mark.timeout(180)
def test_plain_http_beyond_localhost_says_why_it_cannot_talk(sandbox, tmp_path):  # noqa: F811
    with browser_and_server(sandbox, tmp_path, "h264", "--width", "320", "--height", "240", "--talk",
                            "rtsp://127.0.0.1:9/none", "--talk-token", "speak") as (browser, _, _log):
        page = open_page(browser)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        page.wait_for_function("!document.getElementById('talk').hidden", timeout=30000)
        assert page.evaluate("window.isSecureContext") is False
        assert page.evaluate("document.getElementById('talk').disabled") is True
        assert "HTTPS" in page.get_attribute("#talk", "title")
