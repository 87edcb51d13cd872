"""Publishing to a real Janus (Debian's `janus`), inside a network namespace of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import janus_server
from . import netns as netns_mod

ROOT = Path(__file__).resolve().parent.parent


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"janus test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_publish_to_janus_and_survive_its_restart(tmp_path, codec):
    if not janus_server.available():
        unavailable("Janus is not installed (apt-get install janus)")
    try:
        ns = netns_mod.create(f"camtrack-janus-{os.getpid()}")
    except netns_mod.NetnsUnavailable as exc:
        unavailable(str(exc))
    try:
        run = subprocess.run(ns.command(sys.executable, "-m", "tests.janus_scenario", str(tmp_path), codec),
                             cwd=ROOT, capture_output=True, text=True, timeout=280)
    finally:
        ns.delete()
    assert run.returncode == 0, run.stderr[-6000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for phase in ("first", "after_restart"):
        assert result[phase]["frames"] >= 30, result
        assert result[phase]["sizes"] == [[320, 240]], result
        assert result[phase]["display"] == "front"
        assert result[phase]["publishers"] == ["back", "front"]  # each camera its own feed
    assert result["back"]["sizes"] == [[256, 192]]
    assert result["healthz"]["state"] == "publishing" and result["healthz"]["room"] == janus_server.ROOM
    assert result["local_frames_while_janus_down"] == 20
    assert 'camtrack_janus_publishing{camera="front"} 0.0' in result["metrics_while_down"]
    assert result["publishes"] >= 2 and result["failures"] >= 1
    assert result["wrong_room"]["state"] == "retrying" and "No such room" in result["wrong_room"]["last_error"]
    assert result["unreachable"]["state"] == "retrying" and result["unreachable"]["last_error"]
    assert result["silent"]["state"] == "retrying" and "did not answer" in result["silent"]["last_error"]
    assert result["still_publishing"]
