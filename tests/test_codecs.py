"""The codec negotiated per viewer: the camera's own when the offer has it, else the other one
(a browser without H.264, such as Firefox without its OpenH264 plug-in, gets VP8)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media.encoder import SharedEncoder
from camtrack.media.packet import MediaKind
from camtrack.media.reader import PacketReader
from camtrack.media.tiers import Tier
from camtrack.outputs.webrtc.peer import OfferError, check_offer

from .conftest import eventually
from .whep import make_offer, whep

RTPMAP = re.compile(r"^a=rtpmap:\d+ ([\w-]+)/90000", re.M)


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


def sent_codecs(answer: str) -> set[str]:
    return set(RTPMAP.findall(answer)) - {"rtx"}


@pytest.mark.parametrize("mode", ["transcode", "passthrough"])
async def test_vp8_only_viewers_of_an_h264_camera_share_one_vp8_encoder(serve, tmp_path, mode):
    """A default (H.264) camera, transcoded or passed through: two VP8-only viewers (over /ws and
    WHEP) get VP8 from one encoder of the camera's VP8 tier, while an H.264 viewer gets the camera's
    own packets; the tier stops after its last viewer leaves."""
    options = {}
    if mode == "passthrough":
        from .test_passthrough import write_h264

        options = {"source": str(write_h264(tmp_path / "camera.mp4", "main")), "mode": "passthrough"}
    url, app = await serve(width=320, height=240, **options)
    camera = app[CAMERAS].first
    vp8, h264 = Viewer(url, codecs=("vp8",)), Viewer(url)
    async with aiohttp.ClientSession() as http:
        pc = None
        try:
            await asyncio.gather(vp8.connect(), h264.connect())
            pc, answer, track = await whep(url, http, "VP8")
            assert vp8.hello["codecs"] == ["h264", "vp8"]
            assert sent_codecs(vp8.answer_sdp) == {"VP8"} and sent_codecs(answer) == {"VP8"}
            # aiortc offers VP8 first: the camera's own H.264 still wins
            assert sent_codecs(h264.answer_sdp) == {"H264"}
            whep_track = await asyncio.wait_for(track, 20)
            results = await asyncio.gather(vp8.frames(20), h264.frames(20),
                                           asyncio.gather(*(asyncio.wait_for(whep_track.recv(), 20) for _ in range(20))))
            for frames in results:
                assert all((f.width, f.height) == (320, 240) for f in frames)
            tier = camera.packets(MediaKind.VIDEO, Tier(codec="vp8"))
            main = camera.packets()
            assert isinstance(tier, SharedEncoder) and tier is not main and tier.codec.codec == "vp8"
            # one VP8 encoder, read by both VP8 viewers and nobody else, run once
            assert len(tier.consumers) == 2 and tier.stats.runs == 1
            # the camera's own packets: the H.264 viewer's reader (and, passed through, the decoder
            # that feeds the VP8 encoder its pictures)
            assert main is not None
            readers = [c for c in main.consumers if isinstance(c, PacketReader)]
            assert len(readers) == 1
            if mode == "passthrough":
                assert tier.input in main.consumers  # (the decoder of the camera's packets)
            await eventually(lambda: len(camera.viewers["websocket"]) == 2 and len(camera.viewers["whep"]) == 1)
        finally:
            await asyncio.gather(vp8.close(), h264.close())
            if pc is not None:
                await pc.close()
    await eventually(lambda: not tier.consumers and not tier.running)
    await eventually(lambda: not main.consumers)


async def test_an_h264_only_viewer_of_a_vp8_camera_gets_h264(serve):
    url, app = await serve(width=320, height=240, codec="vp8")
    camera = app[CAMERAS].first
    viewer = Viewer(url, codecs=("h264",))
    try:
        await viewer.connect()
        assert viewer.hello["codecs"] == ["vp8", "h264"]
        assert sent_codecs(viewer.answer_sdp) == {"H264"}
        frames = await viewer.frames(10)
        assert (frames[-1].width, frames[-1].height) == (320, 240)
        tier = camera.packets(MediaKind.VIDEO, Tier(codec="h264"))
        main = camera.packets()
        assert main is not None and tier is not main and tier is not None and len(tier.consumers) == 1
        assert not main.consumers  # the camera's own VP8 encoder was not needed
    finally:
        await viewer.close()


@pytest.mark.slow
async def test_worker_processes_relay_the_vp8_tier_once_per_worker(serve):
    """With --workers 2, VP8-only viewers in worker processes get the camera's VP8 tier, relayed
    to each worker once (a pump of its own, beside the camera's H.264 one), from one encoder."""
    from camtrack.workers.pool import Pump

    from .test_workers import pool_of

    url, app = await serve(width=320, height=240, workers=2, ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    pool = pool_of(app)
    viewers = [Viewer(url, codecs=("vp8",)), Viewer(url, codecs=("vp8",)), Viewer(url)]
    try:
        for viewer in viewers:  # one after the other: least loaded, so a VP8 viewer on each worker
            await viewer.connect()
        assert [sent_codecs(v.answer_sdp) for v in viewers] == [{"VP8"}, {"VP8"}, {"H264"}]
        for frames in await asyncio.gather(*(v.frames(20, timeout=30) for v in viewers)):
            assert all((f.width, f.height) == (320, 240) for f in frames)
        assert sorted(w.load for w in pool.workers) == [1, 2]
        assert sorted(w.describe()["feeds"] for w in pool.workers) == [["default/video/main", "default/video/vp8"],
                                                                        ["default/video/vp8"]]
        tier = camera.packets(MediaKind.VIDEO, Tier(codec="vp8"))
        assert tier is not None and tier.stats.runs == 1
        # the tier's readers are the two workers' pumps: each packet encoded once, sent once to each
        pumps = [c for c in tier.consumers if isinstance(c, Pump)]
        assert len(tier.consumers) == 2 and len(pumps) == 2
        assert all(pump.sent <= tier.stats.frames for pump in pumps)
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
    await eventually(lambda: all(w.load == 0 and not w.pumps for w in pool.workers))
    await eventually(lambda: not tier.running)
