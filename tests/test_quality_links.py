"""Quality tiers seen from outside (docs/quality.md): the page's quality picker and statistics in
Chromium, and viewers on real links (tbf-shaped veth pairs in network namespaces, tests/shaped.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from .test_browser import browser_and_server, open_page, sandbox, wait_frames  # noqa: F401 - sandbox: a fixture

FRAMES = """async () => {
  let frames = 0;
  (await window.camtrack.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames = r.framesDecoded || 0;
  });
  return frames;
}"""
VIDEO_SIZE = "[document.querySelector('video').videoWidth, document.querySelector('video').videoHeight]"


@pytest.mark.timeout(180)
def test_the_page_offers_auto_high_low_and_shows_its_tier(sandbox, tmp_path):  # noqa: F811
    with browser_and_server(sandbox, tmp_path, "h264") as (browser, _, _log):
        page = open_page(browser)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        picker = page.locator("#quality")
        picker.wait_for(state="visible", timeout=10000)
        assert picker.locator("option").all_inner_texts() == ["auto", "high", "low"]
        wait_frames(page, 10)
        assert page.evaluate(VIDEO_SIZE) == [640, 480]
        page.click("#info")
        page.wait_for_function("window.camtrack.stats && /^main \\(/.test(window.camtrack.stats.tier || '')",
                               timeout=20000)

        picker.select_option("low")
        page.wait_for_function("window.camtrack.quality && window.camtrack.quality.tier === 'low'", timeout=20000)
        page.wait_for_function(f"{VIDEO_SIZE}[0] === 320", timeout=20000)
        page.wait_for_function("/^low \\(asked/.test(window.camtrack.stats.tier || '')", timeout=20000)
        frames = wait_frames(page, 0)["frames"]
        wait_frames(page, frames + 20)
        page.screenshot(path=str(tmp_path / "low.png"))

        picker.select_option("main")
        page.wait_for_function(f"{VIDEO_SIZE}[0] === 640", timeout=20000)
        assert page.evaluate("window.camtrack.quality.tier") == "main"

        # asked in the page's address: it starts there
        low = open_page(browser, "?quality=low")
        low.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        low.wait_for_function(f"{VIDEO_SIZE}[0] === 320", timeout=20000)
        assert low.locator("#quality").input_value() == "low"


#: the least frame rate a viewer of the 30 fps camera shows, however loaded the machine (the bug
#: test_a_viewer_behind_a_narrow_link_... was written for showed 16)
MIN_FPS = 20


async def encoded(server) -> tuple[dict[str, float], float]:
    """The frames the server has encoded for the main tier (its shared encoders, every codec) and
    the low tier, from /metrics, and when (time.monotonic(), halfway through the request)."""
    asked = time.monotonic()
    status, text = await server.get("/metrics")
    at = (asked + time.monotonic()) / 2
    assert status == 200, (status, text)
    counts = {"main": 0.0, "low": 0.0}
    for line in text.splitlines():
        if line.startswith("camtrack_frames_encoded_total{"):
            counts["main"] += float(line.split()[-1])
        elif line.startswith("camtrack_tier_frames_encoded_total{") and 'tier="low"' in line:
            counts["low"] += float(line.split()[-1])
    return counts, at


@pytest.mark.timeout(300)
async def test_a_viewer_behind_a_narrow_link_moves_to_low_and_back_while_another_stays_on_main(tmp_path):
    """Chromium behind a 400 kbit/s tbf link (its own network namespace) and an aiortc viewer
    unshaped, both watching a 640x480 30 fps camera at 1 Mbit/s: within seconds the shaped one is on
    the low tier (moved by the server from its receiver reports) and plays at the camera's rate with
    bounded latency, while the other stays on main; the limit lifted, it returns to main."""
    from playwright.async_api import async_playwright

    from .shaped import SERVER_A, ShapedNet, ShapedServer, shaped_viewer
    from .test_browser import CHROMIUM, CHROMIUM_FLAGS

    net = ShapedNet("ctl")
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {net.a.name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    try:
        net.shape(400)
        async with ShapedServer(net, "--source", "pattern", "--bitrate", "1000000") as server:
            other = shaped_viewer(net, "b", server.ws_for("b"))
            await other.start(timeout=60)
            try:
                async with async_playwright() as p:
                    browser = await p.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_FLAGS,
                                                      headless=True)
                    page = await browser.new_page()
                    await page.goto(f"http://{SERVER_A}:{server.port}/")
                    await page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
                    # (margins: a move takes about 2 s here, bench.quality measures it; a loaded CI
                    # machine has taken longer than 20 s to settle)
                    await page.wait_for_function("window.camtrack.quality && window.camtrack.quality.tier === 'low'",
                                                 timeout=40000)
                    quality = await page.evaluate("window.camtrack.quality")
                    assert quality["choice"] == "auto" and quality["reason"].startswith(("loss", "NACK", "delay",
                                                                                         "REMB")), quality
                    # within seconds of its first low picture it plays at the camera's rate with its
                    # latency bounded: the narrow link's queue drains at the move (the main tier's
                    # packets are not resent on the viewer's NACKs once it moved, docs/quality.md;
                    # before, the resent packets kept the link full and the latency 1-3 s for 5-10 s
                    # after the move, and longer than 45 s in 3 runs of 6)
                    await page.wait_for_function(f"{VIDEO_SIZE}[0] === 320", timeout=30000)
                    await asyncio.sleep(2)  # (its first low pictures: what the link held at the move)
                    # (over 5 s, against what the server encoded for each tier in the same window: a
                    # loaded 2-core machine encodes fewer than 30 a second, and the viewers can show no
                    # more; the bug this was written for showed the shaped viewer 16 fps of 30)
                    produced, asked = await encoded(server)
                    decoded = await page.evaluate(FRAMES)
                    latencies: list[int] = []
                    began, since = time.monotonic(), time.time()
                    while time.monotonic() - began < 5:
                        latency = await page.evaluate("window.camtrack.readLatency()")
                        if latency is not None:
                            latencies.append(latency)
                        await asyncio.sleep(0.1)
                    fps = (await page.evaluate(FRAMES) - decoded) / (time.monotonic() - began)
                    until = time.time()
                    counts, answered = await encoded(server)
                    made = {tier: (count - produced[tier]) / (answered - asked) for tier, count in counts.items()}
                    await asyncio.sleep(0.6)  # (the unshaped viewer's report of the window's end)
                    seen = other.window(since, until)
                    assert await page.evaluate("window.camtrack.quality.tier") == "low"
                    latencies.sort()
                    p95 = latencies[int(0.95 * (len(latencies) - 1))]
                    print(f"shaped viewer on low, 2-7 s after its first low picture: {fps:.1f} fps (the low tier "
                          f"encoded {made['low']:.1f}), latency p50 {latencies[len(latencies) // 2]} ms, p95 {p95} ms;"
                          f" the unshaped viewer on main {seen.fps:.1f} fps (main encoded {made['main']:.1f})")
                    assert fps >= 0.8 * made["low"] and fps >= MIN_FPS, f"{fps:.1f} fps on the low tier, {made}"
                    assert len(latencies) >= 20 and p95 < 500, str(latencies)
                    # the unshaped viewer stayed on main, at the camera's rate
                    assert other.width == 640, other.width
                    assert seen.fps >= 0.8 * made["main"] and seen.fps >= MIN_FPS, (seen, made)

                    net.unshape()
                    await page.wait_for_function("window.camtrack.quality.tier === 'main'", timeout=45000)
                    await page.wait_for_function(f"{VIDEO_SIZE}[0] === 640", timeout=10000)
                    assert other.width == 640
                    await browser.close()
            finally:
                await other.stop()
    finally:
        net.delete()


async def test_a_websocket_stream_behind_a_narrow_link_moves_to_low_instead_of_being_dropped():
    """The websocket fallback behind 400 kbit/s: its sends wait (the socket's buffers fill), so it
    moves to the low tier, plays at the camera's rate with its pictures arriving soon after capture,
    and is not dropped; the limit lifted, it returns to main."""
    import json
    import sys

    from .honest import ROOT
    from .shaped import ShapedNet, ShapedServer

    net = ShapedNet("ctw")
    try:
        net.shape(400)
        async with ShapedServer(net, "--source", "pattern", "--bitrate", "1000000") as server:
            viewer = await asyncio.create_subprocess_exec(
                *net.a.command(sys.executable, "-m", "tests.stream_viewer", server.ws_for("a")), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE)
            assert viewer.stdout is not None
            reports: list[dict] = []

            async def until(predicate, timeout: float) -> None:
                async with asyncio.timeout(timeout):
                    while True:
                        line = await viewer.stdout.readline()
                        report = json.loads(line)
                        assert "error" not in report, report
                        reports.append(report)
                        if predicate(report):
                            return

            try:
                try:
                    await until(lambda r: r["tier"] == "low" and r["width"] == 320, 30)
                except TimeoutError:
                    raise AssertionError(str([(r["frames"], r["width"], r["tier"], r["age"][:2]) for r in reports])) from None
                # its queue drained: pictures arrive soon after capture (the socket's buffers hold
                # about a second and a half at this rate)
                await until(lambda r: r["age"] and max(r["age"]) < 300, 20)
                start = len(reports)
                await until(lambda r: len(reports) - start >= 6, 10)
                window = reports[start:]
                fps = sum(r["frames"] for r in window) / (0.5 * len(window))
                ages = sorted(a for r in window for a in r["age"])
                assert fps >= 24 and ages[int(0.95 * (len(ages) - 1))] < 500, (fps, ages)
                net.unshape()
                await until(lambda r: r["tier"] == "main" and r["width"] == 640, 45)
            finally:
                viewer.terminate()
                await viewer.wait()
    finally:
        net.delete()


@pytest.mark.timeout(120)
async def test_sixteen_low_tier_viewers_cost_one_encoder_and_show_in_metrics(serve):
    from camtrack.app import CAMERAS
    from camtrack.client import Viewer
    from camtrack.media.packet import MediaKind
    from camtrack.media.tiers import Tier

    from .conftest import eventually

    url, app = await serve(width=640, height=480, fps=30)
    camera = app[CAMERAS].first
    root = url.removesuffix("/ws")
    viewers = [Viewer(url + "?quality=low") for _ in range(16)]
    try:
        await asyncio.gather(*(v.connect(timeout=60) for v in viewers))
        got = await asyncio.gather(*(v.frames(10, timeout=60) for v in viewers))
        assert all((f.width, f.height) == (320, 240) for frames in got for f in frames)
        low = camera.packets(MediaKind.VIDEO, Tier(quality="low"))
        # one encoder for the sixteen, encoding each captured frame once; the main one idle
        assert list(camera.pipeline.quality_encoders()) == ["low"]
        assert low.running and camera.encoder is not None and not camera.encoder.running
        assert low.stats.frames <= camera.stream.frames + 1
        async with aiohttp.ClientSession() as http:
            async with http.get(root + "/metrics") as r:
                text = await r.text()
        assert 'camtrack_tier_viewers{camera="default",tier="low"} 16.0' in text
        assert 'camtrack_tier_viewers{camera="default",tier="main"} 0.0' in text
        assert 'camtrack_tier_frames_encoded_total{camera="default",tier="low"}' in text
        # one asks for main: it moves, counted as asked (the count is the process's: tests before
        # this one in the same run may have moved viewers of a camera named "default" too)
        from camtrack.media import quality

        asked = quality.MOVES.get(("default", "low", "main", "asked"), 0) + 1
        assert viewers[0].ws is not None
        await viewers[0].ws.send_json({"type": "quality", "quality": "main"})
        while (await viewers[0].receive("quality"))["tier"] != "main":
            pass

        async def moved() -> bool:
            async with aiohttp.ClientSession() as http, http.get(root + "/metrics") as r:
                text = await r.text()
            return (f'camtrack_tier_moves_total{{camera="default",from="low",to="main",why="asked"}} {asked:.1f}' in text
                    and 'camtrack_tier_viewers{camera="default",tier="low"} 15.0' in text)

        deadline = time.monotonic() + 10
        while not await moved():
            assert time.monotonic() < deadline, "the move is not in /metrics"
            await asyncio.sleep(1.1)  # (the page is rendered at most once a second)
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
    await eventually(lambda: not low.running)
