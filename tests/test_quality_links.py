"""Quality tiers seen from outside (docs/quality.md): the page's quality picker and statistics in
Chromium, and viewers on real links (tbf-shaped veth pairs in network namespaces, tests/shaped.py)."""

from __future__ import annotations

import pytest

from .test_browser import browser_and_server, open_page, sandbox, wait_frames  # noqa: F401 - sandbox: a fixture

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
