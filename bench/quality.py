"""Quality tiers (docs/quality.md), measured in one run:

- the server's CPU with 1 viewer of each tier, and with 16 of the low tier (one encoder for all);
- the time from a link narrowing to its viewer's move down;
- a viewer behind a tbf-shaped link (tests/shaped.py) beside an unshaped one, with tiers on (the
  default) and off (--low-scale 0): frames a second and glass-to-glass latency p50/p95 of both
  (honest aiortc viewers, tests/honest.py: every picture decoded, its stamp read).

    python -m bench.quality                 # everything (about two minutes)
    python -m bench.quality --only shaped --kbit 400 --seconds 20 -- --low-scale 0

Needs root (network namespaces) for the shaped rows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.honest import Watched
from tests.shaped import ShapedNet, ShapedServer, shaped_viewer

ROOT = Path(__file__).resolve().parent.parent


async def shaped_run(kbit: int, seconds: float, settle: float, args: list[str]) -> dict[str, Watched]:
    """Both viewers' window of `seconds` after `settle` seconds with viewer a behind `kbit` kbit/s."""
    net = ShapedNet("ctb")
    try:
        net.shape(kbit)
        server = ShapedServer(net, "--source", "pattern", *args)
        async with server:
            viewers = {side: shaped_viewer(net, side, server.ws_for(side)) for side in ("a", "b")}
            try:
                for viewer in viewers.values():
                    await viewer.start(timeout=60)
                await asyncio.sleep(settle)
                since = time.time()
                await asyncio.sleep(seconds + 0.6)
                return {side: viewer.window(since, since + seconds + 0.5) for side, viewer in viewers.items()}
            finally:
                await asyncio.gather(*(viewer.stop() for viewer in viewers.values()))
    finally:
        net.delete()


FRAMES = """async () => {
  let frames = 0;
  if (window.camtrack.pc) (await window.camtrack.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames = r.framesDecoded || 0;
  });
  return frames;
}"""


async def shaped_browser_run(kbit: int, seconds: float, settle: float, args: list[str]) -> dict[str, float | None]:
    """Chromium behind `kbit` kbit/s (the page, as a user opens it) watching the pattern: its frames
    a second and the latency of what it shows (the page's stamp reader, ten times a second) over
    `seconds` after `settle` seconds, and the tier it ended on."""
    import tempfile

    from playwright.async_api import async_playwright

    from tests.shaped import SERVER_A
    from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

    net = ShapedNet("ctr")
    wrapper = Path(tempfile.mkdtemp()) / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {net.a.name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    try:
        net.shape(kbit)
        async with ShapedServer(net, "--source", "pattern", *args) as server, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_FLAGS, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(f"http://{SERVER_A}:{server.port}/")
                await page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
                await asyncio.sleep(settle)
                frames, began, latencies = await page.evaluate(FRAMES), time.monotonic(), []
                while time.monotonic() - began < seconds:
                    latency = await page.evaluate("window.camtrack.readLatency()")
                    if latency is not None:
                        latencies.append(float(latency))
                    await asyncio.sleep(0.1)
                fps = (await page.evaluate(FRAMES) - frames) / (time.monotonic() - began)
                quality = await page.evaluate("window.camtrack.quality")
            finally:
                await browser.close()
    finally:
        net.delete()
    from bench.run import percentile

    return {"fps": fps, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "tier": (quality or {}).get("tier")}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kbit", type=int, default=400, help="the narrow link, kbit/s (default: 400)")
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured window (default: 15)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before a shaped window (default: 10)")
    parser.add_argument("--only", choices=("cpu", "move", "shaped", "browser"), help="one part only")
    parser.add_argument("server_args", nargs="*", help="more server.py options for the shaped rows (after --)")
    options = parser.parse_args()
    if options.only in (None, "cpu"):
        print("| viewers | tier | encoder ms/frame | server CPU % | fps min | latency p50 ms | latency p95 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for quality, viewers in (("main", 1), ("low", 1), ("low", 16), ("main", 16)):
            row = tier_row(quality, viewers, options.seconds / 2)
            encode = "-" if row["encode_ms"] is None else f"{row['encode_ms']:.2f}"
            print(f"| {viewers} | {quality} | {encode} | {row['cpu']:.0f} | {row['fps_min']:.1f} | {ms(row['p50'])} | "
                  f"{ms(row['p95'])} | {row['errors']} |", flush=True)
    if options.only in (None, "move"):
        took, why = asyncio.run(time_to_move_down(options.kbit))
        print(f"\nmoved down {took:.1f} s after the link narrowed to {options.kbit} kbit/s ({why})", flush=True)
    if options.only in (None, "shaped"):
        print("\n| tiers | viewer | fps | latency p50 ms | latency p95 ms |")
        print("| --- | --- | --- | --- | --- |")
        runs = [("on", options.server_args), ("off", [*options.server_args, "--low-scale", "0"])]
        for name, args in runs if options.only is None else [("as given", options.server_args)]:
            seen = asyncio.run(shaped_run(options.kbit, options.seconds, options.settle, args))
            for side, watched in seen.items():
                what = f"aiortc, shaped {options.kbit} kbit/s" if side == "a" else "aiortc, unshaped"
                print(f"| {name} | {what} | {watched.fps:.1f} | {ms(watched.p50)} | {ms(watched.p95)} |", flush=True)
    if options.only in (None, "browser"):
        print("\n| tiers | viewer | fps | latency p50 ms | latency p95 ms | tier at the end |")
        print("| --- | --- | --- | --- | --- | --- |")
        runs = [("on", options.server_args), ("off", [*options.server_args, "--low-scale", "0"])]
        for name, args in runs if options.only is None else [("as given", options.server_args)]:
            row = asyncio.run(shaped_browser_run(options.kbit, options.seconds, options.settle, args))
            print(f"| {name} | Chromium, shaped {options.kbit} kbit/s | {row['fps']:.1f} | {ms(row['p50'])} | "
                  f"{ms(row['p95'])} | {row['tier']} |", flush=True)



def tier_row(quality: str, viewers: int, duration: float) -> dict[str, float | None]:
    """Server CPU (% of a core), fps and latency of `viewers` aiortc viewers of the test pattern
    (640x480 at 30 fps, 1 Mbit/s; its low tier 320x240 at 250 kbit/s) that asked for `quality`, on
    loopback: one decodes every picture and reads its stamp, the others count pictures (--light)."""
    from bench.run import cpu_seconds, free_port, kill_running, percentile, reports, start_server, stop_server

    port = free_port()
    server = start_server(
        port, ["--source", "pattern", "--ice-address", "127.0.0.1", "--webrtc-port", "0", "--rtsp-port", "0",
               "--log-level", "warning", "--max-loop-lag", "0", "--send-budget", "0", "--max-picture-age", "0",
               "--max-cpu", "0"], root=ROOT, path="/healthz", stderr=subprocess.DEVNULL)
    clients = []
    try:
        url = f"ws://127.0.0.1:{port}/ws?quality={quality}"
        start_at = time.time() + 4 + 0.1 * viewers
        for count, decode in ((1, True), (viewers - 1, False)):
            if count:
                argv = [sys.executable, "-m", "bench.viewers", "--url", url, "--count", str(count), "--start-at",
                        str(start_at), "--duration", str(duration), "--stamp-width", "640"]
                argv.append("--decode" if decode else "--light")
                clients.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True))
        time.sleep(max(0.0, start_at - time.time()))
        cpu0, t0, enc0 = cpu_seconds(server.pid), time.monotonic(), encoding(port, quality)
        time.sleep(duration)
        cpu = 100 * (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        enc1 = encoding(port, quality)
        per_frame = 1000 * (enc1[0] - enc0[0]) / (enc1[1] - enc0[1]) if enc1[1] > enc0[1] else None
        results = reports(clients)
    finally:
        kill_running(clients)
        stop_server(server)
    per_viewer = [v for r in results for v in r["viewers"]]
    latency = [ms for v in per_viewer for ms in v.get("latency", [])]
    return {"cpu": cpu, "encode_ms": per_frame, "fps_min": min(v["frames"] / duration for v in per_viewer),
            "p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95),
            "errors": sum(1 for v in per_viewer if "error" in v)}


def encoding(port: int, quality: str) -> tuple[float, float]:
    """(seconds spent encoding, frames encoded) so far by the encoder of tier `quality`, from /metrics."""
    names = (("camtrack_encode_seconds_sum", "camtrack_encode_seconds_count") if quality == "main" else
             ("camtrack_tier_encode_seconds_total", "camtrack_tier_frames_encoded_total"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = []
    for name in names:
        values.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith(name + "{") and ('codec="h264"' in line or f'tier="{quality}"' in line)))
    return values[0], values[1]


async def time_to_move_down(kbit: int) -> tuple[float, str]:
    """Seconds from the link narrowing under a viewer watching main (through an unshaped link, for
    10 s) to the server moving it to low (its log's line), and why."""
    net = ShapedNet("ctm")
    try:
        async with ShapedServer(net, "--source", "pattern") as server:
            viewer = shaped_viewer(net, "a", server.ws_for("a"))
            await viewer.start(timeout=60)
            try:
                await asyncio.sleep(10)
                narrowed = time.time()
                net.shape(kbit)
                for _ in range(300):
                    await asyncio.sleep(0.1)
                    for line in server.log().splitlines():
                        if "to the low tier" in line:
                            at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                            return at - narrowed, line.split("(", 1)[1].split(")")[0]
                raise RuntimeError("the viewer was not moved down within 30 s")
            finally:
                await viewer.stop()
    finally:
        net.delete()


if __name__ == "__main__":
    main()
