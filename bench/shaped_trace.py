"""A timeline of one Chromium viewer behind a tbf-shaped link (tests/shaped.py), twice a second: its
tier, the latency of what it shows (the page's stamp reader), what its getStats() says (frames
decoded a second, kbit/s received and of that retransmitted, packets lost, NACKs sent, freezes, the
video and audio jitter buffers' delay and the video's target) and the tbf queue on the server's end
(bytes and packets queued, packets dropped). docs/quality.md quotes it: it shows what the link and
the browser do around a move between tiers.

    python -m bench.shaped_trace                      # 400 kbit/s, 60 s
    python -m bench.shaped_trace --kbit 400 --seconds 60 -- --audio off

Needs root (network namespaces) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
import time
from typing import Any

from tests.shaped import SERVER_A, ShapedNet, ShapedServer
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

SAMPLE = """async () => {
  const out = {latency: window.camtrack.readLatency(), quality: window.camtrack.quality,
               width: document.querySelector('video').videoWidth};
  const pc = window.camtrack.pc;
  if (pc) (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp") out[r.kind] = r; });
  return out;
}"""


def queue(net: ShapedNet) -> tuple[int, int, int]:
    """The tbf queue on the shaped link: (packets dropped so far, bytes queued, packets queued)."""
    text = subprocess.run(["ip", "netns", "exec", net.server.name, "tc", "-s", "qdisc", "show", "dev", "qa0"],
                          capture_output=True, text=True).stdout
    found = re.search(r"dropped (\d+).*?backlog (\d+)([KM]?)b (\d+)p", text, re.S)
    if found is None:
        return (0, 0, 0)
    scale = {"": 1, "K": 1000, "M": 1000_000}[found.group(3)]
    return int(found.group(1)), int(found.group(2)) * scale, int(found.group(4))


async def trace(kbit: int, seconds: float, args: list[str]) -> list[dict[str, Any]]:
    from playwright.async_api import async_playwright

    net = ShapedNet("ctt")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = os.path.join(tmp, "chromium-in-netns")
        with open(wrapper, "w") as out:
            out.write(f'#!/bin/sh\nexec ip netns exec {net.a.name} {CHROMIUM} "$@"\n')
        os.chmod(wrapper, 0o755)
        try:
            net.shape(kbit)
            async with ShapedServer(net, "--source", "pattern", "--bitrate", "1000000", *args) as server, \
                    async_playwright() as p:
                browser = await p.chromium.launch(executable_path=wrapper, args=CHROMIUM_FLAGS, headless=True)
                page = await browser.new_page()
                began = time.monotonic()
                await page.goto(f"http://{SERVER_A}:{server.port}/")
                await page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
                while time.monotonic() - began < seconds:
                    sample = await page.evaluate(SAMPLE)
                    rows.append({"t": time.monotonic() - began, **sample, "queue": queue(net)})
                    await asyncio.sleep(0.5)
                await browser.close()
        finally:
            net.delete()
    return rows


def table(rows: list[dict[str, Any]]) -> None:
    print("   t  tier  width  latency  fps  kbit/s  rtx kbit/s  lost  nacks  freezes  jb ms  target ms"
          "  audio jb ms  queue B  queue p  dropped")
    previous: dict[str, Any] | None = None
    for row in rows:
        video, audio = row.get("video") or {}, row.get("audio") or {}
        quality = row.get("quality") or {}
        cells = [f"{row['t']:5.1f}", f"{quality.get('tier', '-'):>4}", f"{row['width']:5}",
                 f"{row['latency'] if row['latency'] is not None else '-':>7}"]
        if previous is not None:
            seconds = row["t"] - previous["t"]
            was, was_audio = previous.get("video") or {}, previous.get("audio") or {}

            def delta(now: dict[str, Any], then: dict[str, Any], key: str) -> float:
                return float(now.get(key) or 0) - float(then.get(key) or 0)

            emitted = delta(video, was, "jitterBufferEmittedCount")
            audio_emitted = delta(audio, was_audio, "jitterBufferEmittedCount")
            cells += [f"{delta(video, was, 'framesDecoded') / seconds:4.0f}",
                      f"{8 * delta(video, was, 'bytesReceived') / seconds / 1000:6.0f}",
                      f"{8 * delta(video, was, 'retransmittedBytesReceived') / seconds / 1000:10.0f}",
                      f"{video.get('packetsLost', 0):5}", f"{video.get('nackCount', 0):6}",
                      f"{video.get('freezeCount', 0):8}",
                      f"{1000 * delta(video, was, 'jitterBufferDelay') / emitted:6.0f}" if emitted else "     -",
                      f"{1000 * delta(video, was, 'jitterBufferTargetDelay') / emitted:10.0f}" if emitted else
                      "         -",
                      f"{1000 * delta(audio, was_audio, 'jitterBufferDelay') / audio_emitted:12.0f}" if audio_emitted
                      else "           -"]
            cells += [f"{row['queue'][1]:8}", f"{row['queue'][2]:8}", f"{row['queue'][0]:8}"]
            print(" ".join(cells))
        previous = row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbit", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("server_args", nargs="*", help="more options for camtrack (after --)")
    options = parser.parse_args()
    table(asyncio.run(trace(options.kbit, options.seconds, options.server_args)))


if __name__ == "__main__":
    main()
