"""Lip-sync in Chromium: the test tone's beeps as the page outputs them against the pattern's marks
as it shows them, with no measuring path of its own buffering in between.

    python -m bench.lipsync [--seconds S]

A WHEP client in the page plays the camera's picture and sound (one media stream: Chromium lines
them up by the sender reports) and times, on `performance.now()`:

- **the sound**: a `MediaStreamTrackProcessor` on the audio track. Chromium hands a remote track's
  sinks each 10 ms of sound as its audio output pulls it (the timestamp of each `AudioData` is that
  moment: it comes 10 ms apart, read at most a few ms later), so a beep's onset is that time plus
  its first loud sample's place in the chunk; what the output device still holds before it is heard
  is the `media-playout` statistics' `totalPlayoutDelay / totalSamplesCount` (what Chromium's own
  synchronisation counts for its sound), added. A WebAudio tap (MediaStreamAudioSourceNode) was
  tried before: it reads the sound through a FIFO of its own and came 19-102 ms late, and once
  drifted to 206 ms.
- **the picture**: `requestVideoFrameCallback`'s `expectedDisplayTime` for each picture, the mark
  (camtrack.sources.pattern.mark_box) and the latency stamp (camtrack.media.stamp) read from the
  picture drawn on a canvas.

Two figures per beep: **sound minus picture** (the beep heard against the first marked picture
shown, what a person would notice; the mark's picture is captured up to a frame interval after the
whole second, so the sound is ahead by up to that much with a perfect sync), and the **sync error**,
the sound's latency minus the picture's (the beep's onset is the whole second, the marked picture's
capture time is its stamp), which has no such step.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench.browser import BASE, chromium_and_server, open_when_listening
from tests.test_browser import WHEP_NEGOTIATE

#: camtrack.sources.pattern.shows_mark in the page, as a JS statement defining `showsMark(g, width,
#: height)`: whether the picture drawn at 0, 0 on the 2D context `g` shows the beep mark (inside
#: mark_box, a mean over 200); LIP_SYNC_JS's and tests/ws_lipsync.py's
SHOWS_MARK = """  const showsMark = (g, width, height) => {
    const side = Math.max(8, Math.floor(Math.min(width, height) / 10));
    const box = g.getImageData(width - side - 8 + 2, 32 + 2, side - 4, side - 4).data;
    let sum = 0; for (let i = 0; i < box.length; i += 4) sum += box[i] + box[i + 1] + box[i + 2];
    return sum / (box.length / 4) / 3 > 200;
  };
"""

#: the page's measurement (see the module's docstring): `[endpoint, seconds]` -> raw timings
LIP_SYNC_JS = """async ([endpoint, seconds]) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  const video = document.createElement("video");
  video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  let stream = null;
  pc.ontrack = (event) => { stream = event.streams[0]; video.srcObject = stream; video.play().catch(() => {}); };
""" + WHEP_NEGOTIATE + """  while (!stream || stream.getAudioTracks().length === 0) await new Promise((r) => setTimeout(r, 50));
  const out = {origin: performance.timeOrigin, onsets: [], lag: null, chunks: 0, frames: [], playout: []};
  let stop = false;
  // the sound: each 10 ms as Chromium's output pulls it (AudioData.timestamp, microseconds)
  const reader = new MediaStreamTrackProcessor({track: stream.getAudioTracks()[0]}).readable.getReader();
  const sound = (async () => {
    let quiet = 0;
    let buffer = new Float32Array(0);
    while (!stop) {
      const {value, done} = await reader.read();
      if (done) break;
      const now = performance.now();
      const at = value.timestamp / 1000;
      out.lag = out.lag === null ? now - at : Math.min(out.lag, now - at);
      out.chunks++;
      const n = value.numberOfFrames;
      if (buffer.length < n) buffer = new Float32Array(n);
      value.copyTo(buffer, {planeIndex: 0, format: "f32-planar"});
      let first = -1;
      for (let i = 0; i < n; i++) if (Math.abs(buffer[i]) > 0.05) { first = i; break; }
      if (first >= 0) {
        if (quiet >= 10) out.onsets.push(at + first * 1000 / value.sampleRate);
        quiet = 0;
      } else quiet++;
      value.close();
    }
  })();
  // the picture: when each is shown, whether it has the mark, its stamp
""" + SHOWS_MARK + """  const canvas = document.createElement("canvas");
  const onFrame = (now, meta) => {
    if (stop) return;
    const w = video.videoWidth, h = video.videoHeight;
    if (w >= 32) {
      canvas.width = w; canvas.height = h;
      const g = canvas.getContext("2d", {willReadFrequently: true});
      g.drawImage(video, 0, 0);
      const cell = Math.max(1, Math.min(16, Math.floor(w / 32)));
      const cells = g.getImageData(0, 0, cell * 32, cell).data;
      const y = Math.floor(cell / 2);
      let stamp = 0;
      for (let bit = 0; bit < 32; bit++) {
        const i = (y * cell * 32 + bit * cell + Math.floor(cell / 2)) * 4;
        stamp = stamp * 2 + ((cells[i] + cells[i + 1] + cells[i + 2]) / 3 >= 128 ? 1 : 0);
      }
      out.frames.push([meta.expectedDisplayTime, showsMark(g, w, h), stamp]);
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  // the output's own delay (what it holds before it is heard), from the statistics
  const playout = async () => {
    (await pc.getStats()).forEach((r) => {
      if (r.type === "media-playout" && r.kind === "audio") out.playout.push([r.totalPlayoutDelay, r.totalSamplesCount]);
    });
  };
  await playout();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  await playout();
  stop = true;
  pc.close();
  await Promise.race([sound, new Promise((r) => setTimeout(r, 500))]);
  return out;
}"""


def analyse(raw: dict[str, Any]) -> dict[str, Any]:
    """The page's timings (LIP_SYNC_JS) as figures, in ms: per beep matched with a mark within
    500 ms, `offsets` (sound heard minus mark shown) and `errors` (the sound's latency minus the
    picture's); `video_latency` (capture to shown, the median over every picture whose stamp read
    sanely) and `playout` (the output's own delay added to the sound)."""
    origin = raw["origin"]
    playout = 0.0
    if len(raw["playout"]) >= 2:
        (d0, n0), (d1, n1) = raw["playout"][0], raw["playout"][-1]
        playout = 1000 * (d1 - d0) / (n1 - n0) if n1 > n0 else 0.0
    elif raw["playout"]:
        delay, count = raw["playout"][-1]
        playout = 1000 * delay / count if count else 0.0
    lag = max(0.0, raw["lag"] or 0.0)  # (timestamps on performance.now(): never later than read)
    heard = [origin + at + lag + playout for at in raw["onsets"]]
    marks: list[tuple[float, float]] = []  # (shown, captured), epoch ms, each mark's first picture
    latencies = []
    unmarked = 0
    for shown_at, marked, stamp in raw["frames"]:
        shown = origin + shown_at
        latency = (shown - stamp + 2 ** 31) % 2 ** 32 - 2 ** 31  # (the stamp is ms modulo 2**32)
        sane = -1000 < latency < 5000
        if sane:
            latencies.append(latency)
        if marked:
            if unmarked >= 5 and sane:
                marks.append((shown, shown - latency))
            unmarked = 0
        else:
            unmarked += 1
    offsets, errors = [], []
    for beep in heard:
        if not marks:
            break
        shown, captured = min(marks, key=lambda mark: abs(mark[0] - beep))
        if abs(shown - beep) > 500:
            continue
        offsets.append(beep - shown)
        whole = captured - captured % 1000  # the beep's start: the mark's picture is captured after it
        errors.append((beep - whole) - (shown - captured))
    return {"beeps": len(heard), "marks": len(marks), "offsets": offsets, "errors": errors,
            "video_latency": statistics.median(latencies) if latencies else None, "playout": playout,
            "lag": raw["lag"], "chunks": raw["chunks"]}


def summary(figures: dict[str, Any]) -> str:
    """One line of `analyse`'s figures."""
    def spread(values: list[float]) -> str:
        if not values:
            return "none"
        values = sorted(values)
        return f"min {values[0]:.0f}, median {statistics.median(values):.0f}, max {values[-1]:.0f} ms"

    return (f"{len(figures['offsets'])} beeps; sound heard minus mark shown: {spread(figures['offsets'])}; "
            f"sync error (sound's latency minus picture's): {spread(figures['errors'])} "
            f"(picture shown {figures['video_latency'] or 0:.0f} ms after capture; the output's own delay "
            f"{figures['playout']:.0f} ms included)")


def settled(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    """`raw` without the beeps of its first `seconds` of sound (Chromium's synchronisation settles
    over the first seconds: its audio jitter buffer starts at 80 ms, and the picture's delay moves
    towards the sound's in steps)."""
    onsets = raw["onsets"]
    return {**raw, "onsets": [at for at in onsets if at > onsets[0] + seconds * 1000]} if onsets else raw


def measure_raw(seconds: float = 20.0, width: int = 640, height: int = 480) -> dict[str, Any]:
    """server.py (the pattern and its tone, H.264) and Chromium in a private network namespace
    (needs root, as bench.browser), one page measuring for `seconds`: its raw timings."""
    with chromium_and_server("camtrack-lipsync", "--width", str(width), "--height", str(height)) as browser:
        page = browser.new_page(viewport={"width": 800, "height": 600})
        open_when_listening(page, BASE + "api/cameras")  # (a page of the origin that plays nothing itself)
        return dict(page.evaluate(LIP_SYNC_JS, [BASE + "whep", seconds]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=6.0, help="seconds of beeps left out at the start")
    args = parser.parse_args()
    raw = measure_raw(args.seconds)
    print(f"lip-sync in Chromium, 640x480@30, first {args.settle:.0f} s: {summary(analyse(raw))}")
    print(f"lip-sync in Chromium, 640x480@30, after: {summary(analyse(settled(raw, args.settle)))}")


if __name__ == "__main__":
    main()
