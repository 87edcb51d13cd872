"""Latency in Chromium on loopback: WebRTC against the websocket fallback (WebCodecs and MSE).

    python -m bench.run --browser [--duration S]

The server and Debian's Chromium run in a private network namespace (loopback and a veth pair,
as the browser tests do; needs root). One page at a time plays the test pattern, 640x480 at 30 fps
H.264, over each transport; at every picture the page shows (`requestVideoFrameCallback` for the
<video> of WebRTC and MSE, the next animation frame after a WebCodecs picture is drawn) it reads
the latency stamp from what is on screen: glass-to-glass, capture to display.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.run import stop_server
from tests import netns
from tests.test_browser import CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parent.parent
PORT = 8080
BASE = f"http://{netns.SERVER_ADDRESS}:{PORT}/"
#: what each row opens: WebRTC (the default page), then the websocket with each decoder
MODES = {"webrtc": "", "webcodecs": "?transport=ws&decoder=webcodecs", "mse": "?transport=ws&decoder=mse"}

#: collects the latency stamp of every picture shown for `seconds` (the page's own readout)
SAMPLE = """async (seconds) => {
  const c = window.camtrack;
  const out = [];
  const end = performance.now() + seconds * 1000;
  const video = document.getElementById("video");
  await new Promise((done) => {
    if (c.decoder === "webcodecs") {
      let last = c.player.stats.frames;
      const tick = () => {
        if (c.player && c.player.stats.frames !== last) {
          last = c.player.stats.frames;
          const ms = c.readLatency();
          if (ms !== null) out.push(ms);
        }
        if (performance.now() < end) requestAnimationFrame(tick); else done();
      };
      requestAnimationFrame(tick);
    } else {
      const frame = () => {
        const ms = c.readLatency();
        if (ms !== null) out.push(ms);
        if (performance.now() < end) video.requestVideoFrameCallback(frame); else done();
      };
      video.requestVideoFrameCallback(frame);
    }
  });
  // a --process function's data drawn meanwhile (static/overlay.js): its age, and whether it was
  // the shown picture's own
  const drawn = c.overlay ? c.overlay.drawn.filter((e) => e.at >= end - seconds * 1000) : [];
  return {latency: out, transport: c.transport, decoder: c.decoder,
          ages: drawn.map((e) => e.age), own: drawn.filter((e) => e.key === e.shown).length};
}"""


@dataclass
class BrowserRow:
    mode: str
    frames: int
    fps: float
    p50: float
    p95: float
    mean: float
    first_frame: float
    #: p50 of the first and of the last quarter of the window: drift shows as a difference
    first_quarter: float
    last_quarter: float
    #: a --process function's data drawn by the page: its ages when drawn (ms), and how many of the
    #: pictures drawn on carried their own frame's data
    data_ages: tuple[float, ...] = ()
    data_own: int = 0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


@contextlib.contextmanager
def chromium_and_server(name: str, *options: str, flags: Sequence[str] = ()) -> Iterator[Any]:
    """server.py (the test pattern at 30 fps in H.264, then `options`) and Debian's Chromium
    (CHROMIUM_FLAGS, then `flags`) in a private network namespace `name`-PID (needs root), the server
    at BASE: yields the browser (playwright's, sync); then closes it, stops the server (bench.run's
    stop_server) and deletes the namespace. bench.lipsync's too."""
    from playwright.sync_api import sync_playwright

    ns = netns.create(f"{name}-{os.getpid()}")
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    wrapper = workdir / "chromium"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} /usr/bin/chromium "$@"\n')
    wrapper.chmod(0o755)
    server = subprocess.Popen(
        ns.command(sys.executable, str(ROOT / "server.py"), "--host", netns.SERVER_ADDRESS, "--port", str(PORT),
                   "--source", "pattern", "--fps", "30", "--codec", "h264", "--ice-address", netns.SERVER_ADDRESS,
                   "--log-level", "warning", *options),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(wrapper), args=[*CHROMIUM_FLAGS, *flags], headless=True)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        stop_server(server)
        ns.delete()


def open_when_listening(page: Any, url: str, timeout: float = 30.0) -> float:
    """Opens `url` on `page`, trying again until the server listens (for `timeout` s at most): when
    the try that opened it started (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            opened = time.monotonic()
            page.goto(url, timeout=5000)
            return opened
        except Exception:  # noqa: BLE001 - until the server listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def measure(duration: float, extra: tuple[str, ...] = (), modes: tuple[str, ...] = tuple(MODES)) -> list[BrowserRow]:
    """A row per transport of `modes`; `extra`: more server options (bench.processing: --process)."""
    rows = []
    # WebCodecs needs a secure context: this one plain-HTTP origin counts as one
    with chromium_and_server("camtrack-bench", "--width", "640", "--height", "480", *extra,
                             flags=[f"--unsafely-treat-insecure-origin-as-secure={BASE.rstrip('/')}"]) as browser:
        for mode in modes:
            query = MODES[mode]
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.on("console", lambda m: print(f"  page: {m.text}", file=sys.stderr) if m.type == "info" else None)
            opened = open_when_listening(page, BASE + query)
            page.wait_for_function("window.camtrack.state === 'live' && window.camtrack.readLatency() !== null",
                                   timeout=30000, polling=20)
            first = time.monotonic() - opened
            page.wait_for_timeout(2000)  # past the start: the measured window is steady state
            got = page.evaluate(SAMPLE, duration)
            page.close()
            assert got["decoder"] == mode, got
            latency = got["latency"]
            quarter = max(1, len(latency) // 4)
            rows.append(BrowserRow(mode, len(latency), len(latency) / duration, percentile(latency, 0.5),
                                   percentile(latency, 0.95), statistics.mean(latency), first,
                                   percentile(latency[:quarter], 0.5), percentile(latency[-quarter:], 0.5),
                                   tuple(got["ages"]), got["own"]))
            print(f"  {mode}: {len(latency)} pictures, p50 {rows[-1].p50:.0f} ms", file=sys.stderr, flush=True)
    return rows


def report(duration: float) -> None:
    rows = measure(duration)
    print(f"# Chromium on loopback, 640x480@30 H.264 test pattern, {duration:g} s per transport")
    print("| transport | pictures shown/s | latency p50 ms | p95 ms | mean ms | p50 first/last quarter ms "
          "| first picture s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.mode} | {r.fps:.1f} | {r.p50:.0f} | {r.p95:.0f} | {r.mean:.0f} | "
              f"{r.first_quarter:.0f}/{r.last_quarter:.0f} | {r.first_frame:.1f} |")
    webrtc = next((r for r in rows if r.mode == "webrtc"), None)
    if webrtc is not None:
        for r in rows:
            if r is not webrtc:
                print(f"{r.mode}: p50 {r.p50 - webrtc.p50:+.0f} ms against WebRTC")
