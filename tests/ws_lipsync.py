"""Lip-sync of the websocket fallback's players in Chromium, shared by tests/test_mse_audio.py (the
Media Source Extensions player) and tests/test_ws_lipsync.py (the WebCodecs player): the tone's
beeps as the page outputs them against the pattern's marks as it shows them.

The beeps: a ScriptProcessor tap on the player's sound (the <video> element's, through a media
element source, for MSE; the WebCodecs player's own output node), each onset timed by the
AudioContext's output timestamp (when that sample reaches the speaker, in performance.now() ms). The
marks: the pattern's white box (top right) seen lit after at least 5 unlit pictures, timed by
requestVideoFrameCallback's expectedDisplayTime (MSE) or by the requestAnimationFrame time of the
first frame whose canvas shows it (WebCodecs draws as it decodes; up to a frame early)."""

from __future__ import annotations

from bench.lipsync import SHOWS_MARK

WS_LIP_SYNC = """async ([seconds, decoder]) => {
  const player = window.camtrack.player;
  const video = document.getElementById("video");
  const shown = decoder === "mse" ? video : document.getElementById("canvas");
  let context, source;
  if (decoder === "mse") {
    // (an element takes one media element source in its life: a second window reuses the first's,
    // its tap taken off)
    const kept = window.camtrackLipSync;
    if (kept) {
      ({context, source} = kept);
      source.disconnect(kept.tap);
    } else {
      context = new AudioContext();
      await context.resume();
      source = context.createMediaElementSource(video);
    }
  } else {
    context = player.sound.context;
    source = player.sound.output;
  }
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
  // (the tap's output is silence: the sound still reaches the speaker once, as before)
  const mute = context.createGain();
  mute.gain.value = decoder === "mse" ? 1 : 0;
  source.connect(tap); tap.connect(mute); mute.connect(context.destination);
  if (decoder === "mse") window.camtrackLipSync = {context, source, tap};
""" + SHOWS_MARK + """  const scratch = document.createElement("canvas");
  const marks = [];
  let unmarked = 0;
  const look = (at) => {
    const width = decoder === "mse" ? video.videoWidth : shown.width;
    const height = decoder === "mse" ? video.videoHeight : shown.height;
    if (!width || !height) return;
    scratch.width = width; scratch.height = height;
    const g = scratch.getContext("2d", {willReadFrequently: true});
    g.drawImage(shown, 0, 0);
    if (showsMark(g, width, height)) { if (unmarked >= 5) marks.push(at); unmarked = 0; } else unmarked++;
  };
  let running = true;
  if (decoder === "mse") {
    const onFrame = (now, meta) => { look(meta.expectedDisplayTime); if (running) video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  } else {
    // (a frame's look counts only when the player drew since the last: the canvas keeps its picture)
    let drawn = player.stats.frames;
    const onFrame = (now) => {
      if (player.stats.frames !== drawn) { drawn = player.stats.frames; look(now); }
      if (running) requestAnimationFrame(onFrame);
    };
    requestAnimationFrame(onFrame);
  }
  await new Promise((r) => setTimeout(r, seconds * 1000));
  running = false;
  if (decoder !== "mse") source.disconnect(tap); // (the element's sound goes on through it)
  const offsets = [];
  for (const beep of beeps) {
    let best = null;
    for (const mark of marks) if (best === null || Math.abs(mark - beep) < Math.abs(best - beep)) best = mark;
    if (best !== null && Math.abs(best - beep) < 500) offsets.push(beep - best);
  }
  return {beeps: beeps.length, marks: marks.length, offsets, loudest,
          decoded: decoder === "mse" ? video.webkitAudioDecodedByteCount : player.sound.decoded,
          played: player.sound.played, stalls: window.camtrack.stats && window.camtrack.stats.stalls,
          late: player.sound.late, lag: player.sound.lag, need: player.sound.need && player.sound.need()};
}"""


def measure(page, decoder: str, seconds: float) -> dict:
    """The page's lip-sync over `seconds` (`decoder`: "mse" or "webcodecs", its sound unmuted);
    prints the offsets (sound minus picture, ms)."""
    result = page.evaluate(WS_LIP_SYNC, [seconds, decoder])
    print(f"{decoder} lip-sync in Chromium (sound minus picture, ms):", [round(x) for x in result["offsets"]],
          {k: v for k, v in result.items() if k != "offsets"})
    return result


def settled_median(offsets: list[float], last: int = 6) -> float:
    """Where the sync stands: the median of the last `last` offsets (a loaded machine may show a mark
    late or not at all, pairing a beep with another mark hundreds of ms off; the first seconds are
    the player settling)."""
    tail = sorted(offsets[-last:])
    middle = len(tail) // 2
    return tail[middle] if len(tail) % 2 else (tail[middle - 1] + tail[middle]) / 2


def measure_settled(page, decoder: str, seconds: float, last: int = 6) -> dict:
    """`measure`, and when the median of its last `last` offsets is beyond 80 ms, a second window
    of `seconds` on the same page, which decides: a loaded machine may show or play a few beeps or
    marks 200 ms off in a row (a starved run read 111 ms, half its offsets 170-244 ms, the others
    4-44), while a real sync error misses both windows (the tone 150 ms late at its source: 151 then
    265 ms with MSE, 175 then 185 ms with WebCodecs)."""
    result = measure(page, decoder, seconds)
    if len(result["offsets"]) >= 8 and abs(settled_median(result["offsets"], last)) <= 80:
        return result
    print(f"{decoder}: the first window missed (median of the last {last}: "
          f"{settled_median(result['offsets'], last) if result['offsets'] else None}); a second one decides")
    return measure(page, decoder, seconds)
