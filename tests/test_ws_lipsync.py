"""The websocket fallback's WebCodecs player (HTTPS: a secure context) plays the camera's sound in
sync with its pictures, in Chromium (in its namespace, as tests/test_browser_fallback.py): once
unmuted, the tone's beeps as it outputs them line up with the pattern's marks as it draws them
(tests/ws_lipsync.py measures, as for the MSE player); and a player closed while it holds pictures
back for the sound draws none of them afterwards."""

from __future__ import annotations

import time

import pytest

from .test_browser import sandbox  # noqa: F401 - the fixture
from .test_browser_fallback import webcodecs_page
from .ws_lipsync import measure_settled, settled_median

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_the_webcodecs_player_plays_the_sound_in_sync_once_unmuted(sandbox, tmp_path):  # noqa: F811
    with webcodecs_page(sandbox, tmp_path) as page:
        page.wait_for_function("!document.getElementById('sound').hidden", timeout=30000)
        page.click("#sound")
        page.wait_for_function("window.camtrack.player.sound.played > 20", timeout=30000)
        late = page.evaluate("window.camtrack.player.sound.late")
        result = measure_settled(page, "webcodecs", 14)
        late = page.evaluate("window.camtrack.player.sound.late") - late
        print(f"{late} sound packets dropped as late while measuring")
        assert result["loudest"] > 0.2 and result["played"] > 100, result
        # (the median of the last six beeps: where the sync stands once settled, whatever a loaded
        # machine does to a mark or two)
        assert len(result["offsets"]) >= 8, result
        assert abs(settled_median(result["offsets"])) <= 80, result
        # the sound stops coming: the pictures go on, at once drawn (no longer held for the sound)
        # (counts waited for, not fixed sleeps: a loaded machine draws fewer in a given time; two
        # seconds' worth within 8 s, where pictures held for the sound stop altogether)
        page.evaluate(DROP, "sound")
        before = page.evaluate(DRAWN)
        began = time.monotonic()
        page.wait_for_function(f"{DRAWN} >= {before + 60}", timeout=8000)
        print(f"sound cut: 60 pictures drawn in {time.monotonic() - began:.1f} s, the pictures' hold "
              f"{page.evaluate(NEED)} ms")
        assert page.evaluate(NEED) == 0
        # the pictures stop coming, the sound comes again: it plays on, scheduled by its capture times
        # (never more than a second ahead: nothing piles up)
        page.evaluate(DROP, "picture")
        played = page.evaluate(PLAYED)
        began = time.monotonic()
        page.wait_for_function(f"{PLAYED} >= {played + 100}", timeout=8000)
        print(f"pictures cut: 100 sound packets played in {time.monotonic() - began:.1f} s, the last "
              f"{page.evaluate(AHEAD):.3f} s ahead")
        assert page.evaluate(AHEAD) < 1.05
        # and both again: in sync again (measured as the first: 12 s, the median of the last six)
        page.evaluate(DROP, None)
        drawn = page.evaluate(DRAWN)
        page.wait_for_function(f"{DRAWN} >= {drawn + 30}", timeout=8000)
        result = measure_settled(page, "webcodecs", 12)
        assert len(result["offsets"]) >= 8, result
        assert abs(settled_median(result["offsets"])) <= 80, result

@pytest.mark.timeout(120)
def test_a_closed_webcodecs_player_draws_no_picture_it_held(sandbox, tmp_path):  # noqa: F811
    """Pictures held back for the sound wait on timers; the player closed (the page's teardown, as when
    it reconnects or stops) while some wait: none is drawn afterwards (they were: on the canvas the next
    player draws on, up to HOLD, 400 ms, later). The sound's need is set to 2 s so that every picture is
    held the longest (the hold itself is what tests/test_ws_lipsync.py's other test measures)."""
    with webcodecs_page(sandbox, tmp_path) as page:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        assert page.evaluate("window.camtrack.decoder") == "webcodecs"
        result = page.evaluate(CLOSE_WHILE_HELD)
    print(f"a player closed with pictures held: {result}; page errors {errors}")
    assert result["held"] >= 1, result  # (pictures came in the last 400 ms before the close: held then)
    assert result["drawn"] > 0, result  # (held pictures were drawn, late, before the close)
    assert result["after"] == 0 and result["painted"] == 0, result
    assert not errors, errors


#: the page's player made to hold each picture 400 ms (HOLD: the sound "needs" 2 s), then closed by
#: the page's own teardown, its canvas cleared: pictures drawn since (counted by the closed player, and
#: pixels painted on the canvas) within a second
CLOSE_WHILE_HELD = """async () => {
  const player = window.camtrack.player;
  const canvas = document.getElementById("canvas");
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  player.sound.need = () => 2000;
  await sleep(1000);
  const before = player.stats.messages;
  await sleep(400);
  const held = player.stats.messages - before;
  const drawn = player.stats.frames;
  teardown();
  const closedAt = player.stats.frames;
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  await sleep(1000);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) painted += 1;
  return {held, drawn, after: player.stats.frames - closedAt, painted};
}"""

#: from now on the player gets no message of the sound ("sound") or of the pictures ("picture"), or
#: (null) every message again
DROP = """(kind) => {
  const player = window.camtrack.player;
  player.original = player.original || player.push.bind(player);
  player.push = (buffer) => {
    const audio = (new Uint8Array(buffer)[1] & 8) !== 0;
    if (kind !== (audio ? "sound" : "picture")) player.original(buffer);
  };
}"""
DRAWN = "window.camtrack.player.stats.frames"
PLAYED = "window.camtrack.player.sound.played"
NEED = "window.camtrack.player.sound.need()"
#: how far ahead of the sound's clock its last packet ends (s)
AHEAD = "window.camtrack.player.sound.ahead()"
