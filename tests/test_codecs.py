"""The codec negotiated per viewer: the camera's own when the offer has it, else the other one
(a browser without H.264, such as Firefox without its OpenH264 plug-in, gets VP8)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.outputs.webrtc.peer import OfferError, check_offer

from .conftest import eventually

RTPMAP = re.compile(r"^a=rtpmap:\d+ ([\w-]+)/90000", re.M)


async def make_offer(*codecs: str) -> tuple[RTCPeerConnection, str]:
    """An aiortc peer's recvonly video offer with only `codecs` (mime subtypes, in that order; none:
    aiortc's own list, VP8 first)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    if codecs:
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for name in codecs for c in capabilities
                                         if c.mimeType.lower() == f"video/{name}".lower()])
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_the_offer_decides_the_codec():
    """The camera's own codec when the offer has it, whatever the offer's order; else the next the
    server can send; an offer with neither in a form the server answers is told why."""
    offers = {}
    for key, codecs in {"both": (), "vp8": ("VP8",), "h264": ("H264",), "h264-first": ("H264", "VP8")}.items():
        pc, offers[key] = await make_offer(*codecs)
        await pc.close()
    assert RTPMAP.findall(offers["both"])[0] == "VP8"  # aiortc (as Chromium) offers VP8 first
    for offer in ("both", "h264-first"):
        assert check_offer(offers[offer], ("h264", "vp8")) == "h264"
        assert check_offer(offers[offer], ("vp8", "h264")) == "vp8"
    assert check_offer(offers["vp8"], ("h264", "vp8")) == "vp8"
    assert check_offer(offers["h264"], ("vp8", "h264")) == "h264"
    # a camera that can send only its own codec (one name, as before)
    assert check_offer(offers["vp8"], "vp8") == "vp8"
    unusable = {
        # VP9 and AV1 only: no codec this server sends
        "VP9": offers["vp8"].replace("VP8/90000", "VP9/90000"),
        # H.264 in packetization mode 0 only: aiortc sends mode 1
        "H264 mode 0": re.sub(r"packetization-mode=1", "packetization-mode=0", offers["h264"]),
        # H.264 High only: the answer would be constrained baseline, which that offer does not take
        "H264 High": re.sub(r"profile-level-id=42[0-9a-f]{4}", "profile-level-id=640c1f", offers["h264"]),
    }
    for name, sdp in unusable.items():
        with pytest.raises(OfferError, match="no H264 or VP8 codec this server can send; it sends h264 or vp8"):
            check_offer(sdp, ("h264", "vp8"))
            raise AssertionError(f"an offer of {name} was accepted")
    with pytest.raises(OfferError, match="no H264 codec this server can send; it sends h264 only"):
        check_offer(offers["vp8"], "h264")


async def test_a_vp8_only_viewer_of_a_per_viewer_h264_camera_gets_vp8(serve):
    """With --encoder per-viewer aiortc encodes each viewer's pictures itself, in the codec that
    viewer negotiated: a VP8-only viewer and an H.264 one watch the same H.264 camera."""
    url, app = await serve(width=320, height=240, codec="h264", encoder="per-viewer")
    camera = app[CAMERAS].first
    vp8, h264 = Viewer(url, codecs=("vp8",)), Viewer(url, codecs=("h264", "vp8"))
    try:
        await asyncio.gather(vp8.connect(), h264.connect())
        assert vp8.hello["codecs"] == ["h264", "vp8"]
        assert set(RTPMAP.findall(vp8.answer_sdp)) <= {"VP8", "rtx"} and "VP8" in vp8.answer_sdp
        assert "H264" in h264.answer_sdp and "VP8" not in h264.answer_sdp
        for frames in await asyncio.gather(vp8.frames(20), h264.frames(20)):
            assert all((f.width, f.height) == (320, 240) for f in frames)
        assert camera.stream.runs == 1
    finally:
        await asyncio.gather(vp8.close(), h264.close())
    await eventually(lambda: not camera.stream.running)


async def test_an_offer_with_no_codec_the_server_sends_is_told_why(serve):
    url, app = await serve(width=320, height=240, codec="vp8")
    pc, sdp = await make_offer("VP8")
    sdp = sdp.replace("VP8/90000", "VP9/90000")
    async with aiohttp.ClientSession() as http:
        async with http.post(url.removesuffix("/ws") + "/whep", data=sdp,
                             headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400
            assert "no VP8" in await r.text()
    await pc.close()
    assert app[CAMERAS].first.meters["whep"].negotiation_failures == 1
