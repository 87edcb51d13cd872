"""The websocket fallback's Media Source Extensions player (plain HTTP: no WebCodecs) plays the
camera's sound too (static/wsplayer.js: Opus in fragmented MP4, a source buffer beside the
pictures', each packet placed by its capture time), in Chromium (in its namespace, as
tests/test_browser_fallback.py): the button and the meter come with it, and once unmuted the tone's
beeps as Chromium outputs them line up with the pattern's marks as it shows them."""

from __future__ import annotations

import time

import pytest

from . import netns as netns_mod
from .test_browser import PORT, sandbox  # noqa: F401 - the fixture
from .test_browser_fallback import chromium_and_server, plays, wait_for_server
from .ws_lipsync import measure_settled, settled_median

pytestmark = pytest.mark.slow

@pytest.mark.timeout(180)
def test_the_mse_player_plays_the_sound_in_sync_once_unmuted(sandbox, tmp_path):  # noqa: F811
    base = f"http://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    with chromium_and_server(sandbox, tmp_path, "--width", "320", "--height", "240") as (context, _restart):
        wait_for_server(context, base)
        page, _ = plays(context, base, "?transport=ws", frames=10)
        assert page.evaluate("[window.camtrack.transport, window.camtrack.decoder, window.isSecureContext]") == [
            "websocket", "mse", False]
        page.wait_for_function("!document.getElementById('sound').hidden", timeout=30000)
        page.wait_for_function("parseFloat(document.getElementById('sound-level').style.height) > 0",
                               timeout=30000)
        assert page.evaluate("window.camtrack.player.sound.codec") == "opus"
        page.click("#sound")
        assert page.evaluate("document.getElementById('video').muted") is False
        # (the beeps as heard through a tap on the element's sound, against the marks as shown:
        # tests/ws_lipsync.py, as tests/test_audio_browser.py's LIP_SYNC measures WebRTC)
        result = measure_settled(page, "mse", 14)
        assert result["decoded"] > 0 and result["loudest"] > 0.2 and result["played"] > 100, result
        # (a loaded machine may show a mark late or not at all: then a beep is paired with another mark,
        # hundreds of ms off; the median of the last six beeps is where the sync stands, after the first
        # seconds while the element settles)
        assert len(result["offsets"]) >= 8, result
        assert abs(settled_median(result["offsets"])) <= 80, result
        # the picture still plays at the live edge with its sound
        assert page.evaluate("window.camtrack.state") == "live"
        # and goes on when the sound stops coming (the element plays only as far as both buffers reach:
        # the player fills the sound's buffer with silence)
        # (a count waited for, not a fixed sleep: a loaded machine shows fewer in a given time; two
        # seconds' worth within 8 s, where an element waiting for its sound stops altogether)
        page.evaluate(DROP_SOUND)
        before = page.evaluate(PRESENTED)
        began = time.monotonic()
        page.wait_for_function(f"{PRESENTED} >= {before + 60}", timeout=8000)
        print(f"sound cut: 60 pictures presented in {time.monotonic() - began:.1f} s")
        assert page.evaluate("window.camtrack.state") == "live"


#: from now on the player gets no sound message (as if the camera's sound stalled)
DROP_SOUND = """() => {
  const player = window.camtrack.player;
  const push = player.push.bind(player);
  player.push = (buffer) => { if ((new Uint8Array(buffer)[1] & 8) === 0) push(buffer); };
}"""
PRESENTED = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
