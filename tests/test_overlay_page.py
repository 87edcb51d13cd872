"""The page draws a processing function's data over the video in real headless Chromium, each result on
the picture it describes: the pattern's latency stamp read from the shown picture is compared with the
stamp the function read from the frame it was given (static/overlay.js, camtrack.outputs.results)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from . import netns as netns_mod
from .test_browser import PORT, browser_and_server, open_page
from .test_browser import sandbox as sandbox  # noqa: F401 - the namespace and Chromium wrapper
from .test_browser_fallback import certificate, chromium_and_server, wait_for_server

FUNCTIONS = '''
import time

from camtrack.media import stamp


def boxes(frame, info):
    """A box, and the stamp of the frame the data was made from."""
    return {"boxes": [{"x": 200, "y": 150, "w": 240, "h": 180, "label": "thing", "color": "#00ff00"}],
            "stamp": stamp.read_stamp(frame), "time": info.time}


def hangs(frame, info):
    """Works for the first frames, then hangs (longer than the test)."""
    if info.frame > 30:
        time.sleep(120)
    return {"boxes": [[10, 40, 50, 50]], "stamp": stamp.read_stamp(frame)}
'''

#: each picture drawn: the stamp read from the video at that moment, the stamp in the data drawn,
#: and whether the data's RTP timestamp was the shown picture's
RECORD_PAIRS = """() => {
  window.pairs = [];
  window.camtrack.overlay.onDraw = (entry) => {
    const result = window.camtrack.overlay.drawnResult;
    window.pairs.push({shown: window.camtrack.readStamp(), data: result.data.stamp, exact: entry.shown === entry.key});
    if (window.pairs.length > 5000) window.pairs.shift();
  };
}"""

GREEN_PIXELS = """() => {
  const canvas = document.getElementById("drawing");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let green = 0;
  for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 1] > 200 && pixels[i] < 60 && pixels[i + 3] > 200) green++;
  return green;
}"""


ORANGE_PIXELS = GREEN_PIXELS.replace("pixels[i + 1] > 200 && pixels[i] < 60",
                                     "pixels[i] > 200 && pixels[i + 1] > 120 && pixels[i + 1] < 200 && pixels[i + 2] < 90")


def signed(delta: int) -> int:
    delta %= 2**32
    return delta - 2**32 if delta >= 2**31 else delta


def functions(tmp_path: Path) -> Path:
    path = tmp_path / "functions.py"
    path.write_text(FUNCTIONS)
    return path


@pytest.mark.timeout(150)
def test_the_page_draws_each_result_on_the_picture_it_describes(sandbox, tmp_path):
    spec = f"{functions(tmp_path)}:boxes"
    # (with the built-in motion detector: its regions drawn too)
    with browser_and_server(sandbox, tmp_path, "h264", "--process", spec, "--motion") as (browser, _, _log):
        page = open_page(browser)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        check_pairs(drawn_pairs(page, 120), "WebRTC")
        assert page.evaluate(ORANGE_PIXELS) > 50, "no motion region drawn"
        page.screenshot(path=str(tmp_path / "overlay.png"))  # (to look at)
        print(drawn_ages(page))
        # the box is on the canvas over the video, the statistics say how processing goes
        assert page.evaluate(GREEN_PIXELS) > 500
        page.keyboard.press("i")
        page.wait_for_function("window.camtrack.stats && window.camtrack.stats['processing state'] === 'ok'",
                               timeout=10000)
        stats = page.evaluate("window.camtrack.stats")
        print(f"statistics: {stats}")
        assert stats["processing"].endswith("functions.boxes") or "boxes" in stats["processing"], stats
        assert 15 <= float(stats["calls/s"]) <= 40, stats
        assert float(stats["ms per frame"]) < 50, stats
        assert 0 <= int(stats["data age (drawn)"].split()[0]) < 1000, stats
        assert '"stamp"' in stats["data"], stats
        assert page.evaluate("document.getElementById('processing-state').hidden")


@pytest.mark.timeout(150)
def test_the_page_says_processing_is_stalled(sandbox, tmp_path):
    spec = f"{functions(tmp_path)}:hangs"
    with browser_and_server(sandbox, tmp_path, "h264", "--process", spec, "--process-timeout", "1") as (
            browser, _, _log):
        page = open_page(browser)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        page.wait_for_function("!document.getElementById('processing-state').hidden", timeout=30000)
        text = page.evaluate("document.getElementById('processing-state').textContent")
        assert text.startswith("processing stalled"), text
        # the picture keeps flowing meanwhile
        # (half a second of it within 10 s: waited for, not a fixed sleep of 1 s that a loaded
        # machine's Chromium may spend getting half a second further)
        t0 = page.evaluate("document.querySelector('video').currentTime")
        page.wait_for_function(f"document.querySelector('video').currentTime > {t0 + 0.5}", timeout=10000)


def drawn_pairs(page, count: int) -> list[dict]:
    page.wait_for_function("window.camtrack.overlay && window.camtrack.overlay.drawn.length > 10", timeout=30000)
    page.evaluate(RECORD_PAIRS)
    page.wait_for_function(f"window.pairs.length >= {count}", timeout=30000)
    pairs: list[dict] = page.evaluate("window.pairs")
    return pairs


def drawn_ages(page) -> str:
    """The age of the data when drawn (the page's clock minus its frame's capture time), p50 and p95."""
    ages = sorted(page.evaluate("window.camtrack.overlay.drawn.map((e) => e.age)"))
    return f"data age when drawn p50 {ages[len(ages) // 2]:.0f} ms, p95 {ages[int(len(ages) * 0.95)]:.0f} ms"


def check_pairs(pairs: list[dict], what: str, share: float = 0.85) -> None:
    """Almost every drawn picture carries its own frame's data (`share` of them: a busy machine delays
    some data past its picture, and a picture drawn again when its data came is read as the video
    shows then, which may be the next picture already), none a later frame's (a picture drawn again
    counts as its last drawing; every drawing is checked for early data)."""
    every = [signed(p["data"] - p["shown"]) for p in pairs]
    assert not [d for d in every if 20 <= d <= 5000], every
    last = {p["shown"]: p for p in pairs}  # (in order: each picture's last drawing)
    redrawn = len(pairs) - len(last)
    pairs = list(last.values())
    deltas = [signed(p["data"] - p["shown"]) for p in pairs]
    misread = [d for d in deltas if abs(d) > 5000]  # a stamp misread from a blurred picture
    same = [d for d in deltas if d == 0]
    early = [d for d in deltas if 20 <= d <= 5000]  # a later frame's data on an earlier picture
    exact = [p for p in pairs if p["exact"]]
    print(f"\n{what}: {len(pairs)} pictures drawn ({redrawn} again when their data came): "
          f"{len(same)} with their own frame's data, {len(early)} early, "
          f"{len(misread)} stamps misread, {len(exact)} by their exact picture key; "
          f"other deltas {sorted(d for d in deltas if d)[:20]}")
    assert not early, early
    assert len(misread) <= 0.02 * len(pairs), misread
    assert len(same) >= share * len(pairs), deltas
    assert len(exact) >= share * len(pairs)


@pytest.mark.timeout(150)
def test_the_websocket_fallback_page_draws_each_result_on_its_picture(sandbox, tmp_path):
    spec = f"{functions(tmp_path)}:boxes"
    with browser_and_server(sandbox, tmp_path, "h264", "--process", spec) as (browser, _, _log):
        page = open_page(browser, "?transport=ws")
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        assert page.evaluate("[window.camtrack.transport, window.camtrack.decoder]") == ["websocket", "mse"]
        check_pairs(drawn_pairs(page, 90), "websocket (MSE)", share=0.8)
        print(drawn_ages(page))
        assert page.evaluate(GREEN_PIXELS) > 500


@pytest.mark.timeout(150)
def test_the_websocket_fallback_over_webcodecs_draws_each_result_on_its_picture(sandbox, tmp_path):
    cert, key = certificate(tmp_path)
    base = f"https://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    spec = f"{functions(tmp_path)}:boxes"
    with chromium_and_server(sandbox, tmp_path, "--cert", str(cert), "--key", str(key), "--process", spec) as (
            context, _restart):
        wait_for_server(context, base)
        page = context.new_page()
        page.goto(base + "?transport=ws", timeout=15000)
        page.wait_for_function("window.camtrack.state === 'live'", timeout=30000)
        assert page.evaluate("[window.camtrack.transport, window.camtrack.decoder]") == ["websocket", "webcodecs"]
        check_pairs(drawn_pairs(page, 90), "websocket (WebCodecs)")
        print(drawn_ages(page))
        assert page.evaluate(GREEN_PIXELS) > 500


OVERLAY_IN_NODE = r"""
const fs = require("fs"), vm = require("vm");
const any = new Proxy(function () {}, {
  get: (t, k) => (k === Symbol.toPrimitive ? () => 0 : any), apply: () => any, set: () => true });
const camtrack = { view: () => ({ element: any, width: 0, height: 0 }) };
const window = { camtrack, devicePixelRatio: 1 };
const context = { window, document: { getElementById: () => any }, performance: { now: () => 0 },
                  setInterval: () => 0, Date, Math, Number, Array, String, Infinity };
vm.runInNewContext(fs.readFileSync(process.argv[2], "utf8"), context);
const overlay = camtrack.overlay;
const out = {};
// the picture of rtp 9000 is shown; its own result came first, then a late older one (unordered channel)
overlay.receive({ type: "data", frame: 3, time: 1, rtp: 9000, data: { own: true } });
overlay.receive({ type: "data", frame: 1, time: 1, rtp: 3000, data: {} });
overlay.picture("rtp", 9000, {});
out.own = overlay.drawnResult && overlay.drawnResult.frame;
// no result of its own: the closest earlier one, whatever the arrival order
overlay.reset();
overlay.receive({ type: "data", frame: 2, time: 1, rtp: 6000, data: {} });
overlay.receive({ type: "data", frame: 1, time: 1, rtp: 3000, data: {} });
overlay.receive({ type: "data", frame: 4, time: 1, rtp: 12000, data: {} });
overlay.picture("rtp", 9000, {});
out.closest = overlay.drawnResult && overlay.drawnResult.frame;
// across the RTP timestamp's wrap
overlay.reset();
overlay.receive({ type: "data", frame: 5, time: 1, rtp: 2 ** 32 - 3000, data: {} });
overlay.receive({ type: "data", frame: 4, time: 1, rtp: 2 ** 32 - 6000, data: {} });
overlay.picture("rtp", 1000, {});
out.wrapped = overlay.drawnResult && overlay.drawnResult.frame;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_page_draws_a_pictures_own_result_not_a_later_arrived_older_one(tmp_path):
    """overlay.js's choice of the result for a picture, run in node: the picture's own result, else
    the closest earlier one (wrap-aware), whatever order the unordered data channel gave them in."""
    script = tmp_path / "overlay-test.js"
    script.write_text(OVERLAY_IN_NODE)
    overlay = Path(__file__).resolve().parent.parent / "static" / "overlay.js"
    done = subprocess.run(["node", str(script), str(overlay)], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout) == {"own": 3, "closest": 2, "wrapped": 5}
