"""GStreamer's webrtcbin as a viewer of camtrack, over WHEP and over /ws (tests/gst_whep_client.py,
run with Debian's python3 and its GStreamer 1.22).

webrtcbin offers `a=setup:actpass` with an RSA certificate; aiortc as the DTLS *client* offers
only ECDSA suites, so camtrack must answer such offers `a=setup:passive` (aiortc the DTLS server)
or the handshake fails with "no shared cipher". Every check decodes real pictures in GStreamer:
H.264 (the default), VP8, a camera's own High-profile H.264 passed through, and peers living in
worker processes. libnice never gathers on loopback by itself; the client adds 127.0.0.1 as its
only local address (Debian's gir1.2-nice-0.1), so every packet stays on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from camtrack.app import CAMERAS, ICE
from camtrack.media.passthrough import PassthroughFeed
from camtrack.workers.pool import WorkerPeers

from .conftest import eventually
from .honest import free_port
from .test_passthrough import write_h264

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).with_name("gst_whep_client.py")
SYSTEM_PYTHON = "/usr/bin/python3"
FRAMES = 60
#: seconds the client may take to decode FRAMES pictures (about 2.5 s here: a margin for a busy CI)
CLIENT_TIMEOUT = 40.0


def gst_webrtc_missing() -> str | None:
    """Why the GStreamer client cannot run here, or None."""
    check = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
             "gi.require_version('Nice', '0.1'); from gi.repository import Gst, GstWebRTC, Nice; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'nicesrc', 'dtlssrtpdec', 'avdec_h264', "
             "'vp8dec')), 'an element is missing'")
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else result.stderr.decode(errors="replace").strip().splitlines()[-1]


@pytest.fixture(scope="module")
def gstreamer() -> None:
    why = gst_webrtc_missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"GStreamer's webrtcbin cannot run in CI: {why}")
        pytest.skip(f"GStreamer's webrtcbin is not installed ({why}); .ci/run installs it")


async def gst_viewer(*target: str, frames: int = FRAMES) -> dict[str, Any]:
    """Run the GStreamer client (`--whep URL` or `--ws URL`) until it decoded `frames` pictures;
    its report."""
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(CLIENT), *target, "--frames", str(frames), "--timeout", str(CLIENT_TIMEOUT),
        "--local-address", "127.0.0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT + 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = out.decode().strip().splitlines()
    assert lines, f"the GStreamer client printed nothing (status {process.returncode}):\n{err.decode()[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    report["stderr"] = err.decode(errors="replace")[-3000:]
    return report


def assert_played(report: dict[str, Any], codec: str, size: tuple[int, int] = (320, 240)) -> None:
    print(f"GStreamer decoded {report['frames']} {report['codec']} pictures, the first "
          f"{report['first_frame_s'] or 0:.2f} s after it started; {report['answer_setup']}")
    assert report["frames"] >= FRAMES, report
    assert report["answer_setup"] == ["a=setup:passive"], report
    assert report["codec"] == codec.upper(), report
    assert (report["width"], report["height"]) == size, report
    assert report["first_frame_s"] < 15, report


def whep(url: str) -> str:
    return url.removesuffix("/ws") + "/whep"


def ws(url: str) -> str:
    return url.replace("http://", "ws://")


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_gstreamer_plays_over_whep(serve, gstreamer, codec):
    url, app = await serve(width=320, height=240, codec=codec)
    camera = app[CAMERAS].first
    report = await gst_viewer("--whep", whep(url))
    assert_played(report, codec)
    assert camera.meters["whep"].negotiation_failures == 0
    # its DELETE ended the session
    await eventually(lambda: not camera.viewers["whep"], timeout=20)


async def test_gstreamer_plays_over_the_websocket_signaling(serve, gstreamer):
    """On the shared UDP port (--webrtc-port), as users run it; the other tests use a port per peer."""
    url, app = await serve(width=320, height=240, webrtc_port=free_port(socket.SOCK_DGRAM))
    camera = app[CAMERAS].first
    report = await gst_viewer("--ws", ws(url))
    assert_played(report, "h264")
    # its bye ended the session
    await eventually(lambda: not camera.viewers["websocket"], timeout=20)


async def test_gstreamer_plays_a_passed_through_h264_file(serve, gstreamer, tmp_path):
    # a 5 s High-profile file, a keyframe a second
    source = write_h264(tmp_path / "high.mp4", "high", frames=150, gop=30)
    url, app = await serve(source=str(source), mode="passthrough", width=320, height=240)
    camera = app[CAMERAS].first
    report = await gst_viewer("--whep", whep(url))
    assert_played(report, "h264")
    # the file's own packets went out (no shared encoder exists for this camera)
    assert isinstance(camera.feed, PassthroughFeed) and camera.encoder is None


async def test_gstreamer_plays_from_worker_processes(serve, gstreamer):
    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    peers = app[ICE].peers
    assert isinstance(peers, WorkerPeers)
    pool = peers.pool

    async def watch(*target: str) -> dict[str, Any]:
        """The client's report; its peer was in a worker process while it played."""
        task = asyncio.ensure_future(gst_viewer(*target))
        await eventually(lambda: any(w.peers for w in pool.workers) or task.done(), timeout=30)
        assert any(w.peers for w in pool.workers), "the viewer's peer was not placed in a worker"
        return await task

    whep_report = await watch("--whep", whep(url))
    assert_played(whep_report, "h264")
    ws_report = await watch("--ws", ws(url))
    assert_played(ws_report, "h264")
    await eventually(lambda: not camera.viewers["whep"] and not camera.viewers["websocket"], timeout=20)
