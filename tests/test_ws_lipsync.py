"""The websocket fallback's WebCodecs player (HTTPS: a secure context) plays the camera's sound in
sync with its pictures, in Chromium (in its namespace, as tests/test_browser_fallback.py): once
unmuted, the tone's beeps as it outputs them line up with the pattern's marks as it draws them
(tests/ws_lipsync.py measures, as for the MSE player)."""

from __future__ import annotations

import pytest

from . import netns as netns_mod
from .test_browser import PORT, sandbox  # noqa: F401 - the fixture
from .test_browser_fallback import certificate, chromium_and_server, plays, wait_for_server
from .ws_lipsync import measure, settled_median

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_the_webcodecs_player_plays_the_sound_in_sync_once_unmuted(sandbox, tmp_path):  # noqa: F811
    cert, key = certificate(tmp_path)
    base = f"https://{netns_mod.SERVER_ADDRESS}:{PORT}/"
    with chromium_and_server(sandbox, tmp_path, "--cert", str(cert), "--key", str(key), "--width", "320",
                             "--height", "240") as (context, _restart):
        wait_for_server(context, base)
        page, _ = plays(context, base, "?transport=ws", frames=10)
        assert page.evaluate("[window.camtrack.transport, window.camtrack.decoder]") == ["websocket", "webcodecs"]
        page.wait_for_function("!document.getElementById('sound').hidden", timeout=30000)
        page.click("#sound")
        page.wait_for_function("window.camtrack.player.sound.played > 20", timeout=30000)
        result = measure(page, "webcodecs", 14)
        assert result["loudest"] > 0.2 and result["played"] > 100, result
        assert len(result["offsets"]) >= 8, result
        assert abs(settled_median(result["offsets"])) <= 80, result
