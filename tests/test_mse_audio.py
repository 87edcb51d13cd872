"""The websocket fallback's Media Source Extensions player (plain HTTP: no WebCodecs) plays the
camera's sound too (static/wsplayer.js: Opus in fragmented MP4, a source buffer beside the
pictures', each packet placed by its capture time), in Chromium (in its namespace, as
tests/test_browser_fallback.py): the button and the meter come with it, and once unmuted the tone's
beeps as Chromium outputs them line up with the pattern's marks as it shows them."""

from __future__ import annotations

import pytest

from . import netns as netns_mod
from .test_browser import PORT, sandbox  # noqa: F401 - the fixture
from .test_browser_fallback import chromium_and_server, plays, wait_for_server

pytestmark = pytest.mark.slow

#: the beeps as heard (a ScriptProcessor tap on the element's sound, timed by the AudioContext's
#: output timestamp) against the marks as shown (requestVideoFrameCallback's expectedDisplayTime),
#: as tests/test_audio_browser.py's LIP_SYNC measures WebRTC
MSE_LIP_SYNC = """async (seconds) => {
  const video = document.getElementById("video");
  const context = new AudioContext();
  await context.resume();
  const source = context.createMediaElementSource(video);
  const tap = context.createScriptProcessor(256, 1, 1);
  const beeps = [];
  let quietSince = 0;
  let loudest = 0;
  tap.onaudioprocess = (event) => {
    const data = event.inputBuffer.getChannelData(0);
    let first = -1;
    for (let i = 0; i < data.length; i++) {
      loudest = Math.max(loudest, Math.abs(data[i]));
      if (first < 0 && Math.abs(data[i]) > 0.1) first = i;
    }
    const stamp = context.getOutputTimestamp();
    const at = stamp.performanceTime + (event.playbackTime + first / context.sampleRate - stamp.contextTime) * 1000;
    if (first >= 0) { if (quietSince >= 10) beeps.push(at); quietSince = 0; } else quietSince++;
  };
  source.connect(tap); tap.connect(context.destination);
  const canvas = document.createElement("canvas");
  const marks = [];
  let unmarked = 0;
  const onFrame = (now, meta) => {
    const w = video.videoWidth, h = video.videoHeight;
    if (w) {
      canvas.width = w; canvas.height = h;
      const g = canvas.getContext("2d", {willReadFrequently: true});
      g.drawImage(video, 0, 0);
      const side = Math.max(8, Math.floor(Math.min(w, h) / 10));
      const box = g.getImageData(w - side - 8 + 2, 32 + 2, side - 4, side - 4).data;
      let sum = 0; for (let i = 0; i < box.length; i += 4) sum += box[i] + box[i + 1] + box[i + 2];
      const marked = sum / (box.length / 4) / 3 > 200;
      if (marked) { if (unmarked >= 5) marks.push(meta.expectedDisplayTime); unmarked = 0; } else unmarked++;
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const offsets = [];
  for (const beep of beeps) {
    let best = null;
    for (const mark of marks) if (best === null || Math.abs(mark - beep) < Math.abs(best - beep)) best = mark;
    if (best !== null && Math.abs(best - beep) < 500) offsets.push(beep - best);
  }
  return {beeps: beeps.length, marks: marks.length, offsets, loudest, decoded: video.webkitAudioDecodedByteCount,
          played: window.camtrack.player.sound.played, stalls: window.camtrack.stats && window.camtrack.stats.stalls};
}"""


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
        result = page.evaluate(MSE_LIP_SYNC, 14)
        print("MSE lip-sync in Chromium (sound minus picture, ms):", [round(x) for x in result["offsets"]],
              {k: v for k, v in result.items() if k != "offsets"})
        assert result["decoded"] > 0 and result["loudest"] > 0.2 and result["played"] > 100, result
        # (a loaded machine may show a mark late or not at all: then a beep is paired with another mark,
        # hundreds of ms off; the median of the last six beeps is where the sync stands, after the first
        # seconds while the element settles)
        assert len(result["offsets"]) >= 8, result
        last = sorted(result["offsets"][-6:])
        assert abs((last[2] + last[3]) / 2) <= 80, result
        # the picture still plays at the live edge with its sound
        assert page.evaluate("window.camtrack.state") == "live"
        # and goes on when the sound stops coming (the element plays only as far as both buffers reach:
        # the player fills the sound's buffer with silence)
        page.evaluate(DROP_SOUND)
        before = page.evaluate(PRESENTED)
        page.wait_for_timeout(4000)
        after = page.evaluate(PRESENTED)
        print(f"sound cut: {after - before} pictures presented in 4 s")
        assert after - before >= 60, (before, after)
        assert page.evaluate("window.camtrack.state") == "live"


#: from now on the player gets no sound message (as if the camera's sound stalled)
DROP_SOUND = """() => {
  const player = window.camtrack.player;
  const push = player.push.bind(player);
  player.push = (buffer) => { if ((new Uint8Array(buffer)[1] & 8) === 0) push(buffer); };
}"""
PRESENTED = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
