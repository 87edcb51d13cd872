"""End to end: real aiortc viewers over the real /ws on loopback."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media import stamp

from .conftest import eventually

RTPMAP = re.compile(r"^a=rtpmap:\d+ ([\w-]+)/90000", re.M)


@pytest.mark.parametrize("encoder", ["shared", "per-viewer"])
@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_three_viewers_share_one_source(serve, codec, encoder):
    url, app = await serve(width=320, height=240, fps=30, codec=codec, encoder=encoder)
    stream = app[CAMERAS].first.stream
    watchers = stream.consumers if encoder == "per-viewer" else app[CAMERAS].first.encoder.consumers
    viewers = [Viewer(url) for _ in range(3)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        for viewer in viewers:
            # the camera's codec first (with --encoder per-viewer the other one too: aiortc encodes either)
            assert viewer.hello["codecs"][0] == codec
            assert viewer.hello["iceServers"] == []
            # the answer carries the configured codec only (plus its retransmission format)
            assert set(RTPMAP.findall(viewer.answer_sdp)) == {codec.upper(), "rtx"}
            assert "a=candidate:" in viewer.answer_sdp
        results = await asyncio.gather(*(v.frames(40, timeout=60) for v in viewers))
        for frames in results:
            assert all((f.width, f.height) == (320, 240) for f in frames)
            pts = [f.pts for f in frames]
            assert pts == sorted(set(pts)), "pts must strictly increase"
            # the latency stamp survives encoding: decoded frames are recent, not a backlog
            last = frames[-1].to_ndarray(format="gray")
            assert 0 <= stamp.latency_ms(stamp.read_stamp(last)) < 2000
        assert stream.runs == 1
        assert len(watchers) == 3
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
    # every viewer said bye: the source is released after the linger time
    await eventually(lambda: not stream.running and stream.state == "idle")
    assert stream.consumers == set() and watchers == set()


async def test_new_offer_replaces_the_peer(serve):
    url, app = await serve(width=320, height=240)
    stream = app[CAMERAS].first.stream
    viewer = Viewer(url)
    try:
        await viewer.connect()
        await viewer.frames(5)
        # a second negotiation on the same socket, from a fresh peer connection
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        got = asyncio.get_running_loop().create_future()
        pc.on("track", lambda track: got.done() or got.set_result(track))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await viewer.ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await viewer.receive("answer")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        track = await asyncio.wait_for(got, 20)
        await viewer.pc.close()  # the old server-side peer is already gone
        for _ in range(5):
            await asyncio.wait_for(track.recv(), 20)
        assert len(app[CAMERAS].first.encoder.consumers) == 1
        assert stream.runs == 1
        await pc.close()
    finally:
        await viewer.close()
    await eventually(lambda: not stream.running)


async def test_abrupt_disconnect_releases_the_source(serve):
    url, app = await serve(width=320, height=240)
    stream = app[CAMERAS].first.stream
    viewer = Viewer(url)
    await viewer.connect()
    await viewer.frames(5)
    # the socket drops without a bye: the peer is closed and forgotten
    await viewer.ws.close()
    await eventually(lambda: not app[CAMERAS].first.encoder.consumers and not stream.consumers)
    await eventually(lambda: not stream.running)
    await viewer.close(bye=False)
