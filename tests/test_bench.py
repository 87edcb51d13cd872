"""The benchmark still runs end to end (its figures are read by people, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_bench_quick_row():
    """A row, measured with another checkout's server too (--compare; here the same checkout)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--viewers", "2", "--modes", "shared",
         "--codecs", "vp8", "--duration", "2", "--max-viewers", "0", "--compare", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr
    for server in ("before", "this"):
        rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {server} | shared")]
        assert len(rows) == 1, result.stdout
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[:6] == [server, "shared", "vp8", "640x480", "1", "2"]
        assert float(cells[11]) > 0, "no frames received"
        assert cells[-1] == "0", "a viewer failed"
    assert "shared vp8 640x480 N=2 workers=1: this / before: server CPU" in result.stdout


@pytest.mark.timeout(180)
def test_bench_scale_row_with_light_viewers():
    """The scale mode's ladder with light viewers (pictures counted off the wire by the marker bit)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--scale", "--viewers", "4", "--light", "--join-rate", "10",
         "--duration", "2", "--crowd-quota", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| this")]
    assert len(rows) == 1, result.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "4" and float(cells[4]) > 20, "the light viewers counted too few pictures"
    assert cells[11] == "0", "a viewer failed"
    assert cells[12] != "-", "no gap between pictures measured"


@pytest.mark.timeout(180)
def test_bench_processing_quick():
    """bench.processing: the stage alone, then a served row with a --process function drawing."""
    result = subprocess.run([sys.executable, "-m", "bench.processing", "--quick", "--seconds", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr
    assert "capture to picture: p50" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("drawn_5 at 1 viewer"))
    assert float(line.split(": ")[1].split(" fps")[0]) > 10, "the viewer got too few pictures"


def test_bench_recording_quick():
    """bench.recording: a short run of each camera prints its CPU rows, its pre-roll and the
    event-to-file latency."""
    result = subprocess.run([sys.executable, "-m", "bench.recording", "--seconds", "1", "--rounds", "1", "--events", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-3000:]
    for camera in ("pattern", "passthrough"):
        assert f"{camera} (640x480, 30 fps)" in result.stdout
    assert result.stdout.count("recorder writing a clip") == 2
    assert result.stdout.count("event to pre-roll in the file: median") == 2
