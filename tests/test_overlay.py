"""Processing results to every viewer on its own connection (camtrack.outputs.results): a real aiortc
viewer's data channel, each result stamped with the RTP timestamp of the picture it describes; the
websocket fallback's messages; hostile channels. The page's drawing is tests/test_overlay_page.py."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import numpy as np
import pytest

from camtrack.app import CAMERAS, ICE
from camtrack.client import Viewer
from camtrack.media import stamp
from camtrack.outputs.wsvideo import parse_header
from camtrack.processing import FrameInfo

from .conftest import eventually


def stamping(frame: np.ndarray, info: FrameInfo) -> dict[str, Any]:
    """Data naming the frame it was made from: the pattern's latency stamp read from it."""
    return {"stamp": stamp.read_stamp(frame), "boxes": [{"x": 10, "y": 20, "w": 100, "h": 50, "label": "a"}]}


def mapper_origin(viewer: Viewer) -> int:
    """The RTP timestamp aiortc's receiver counts its frames' pts from (its first packet's): a private
    part of aiortc, read here only to check what the server says against what the viewer received."""
    assert viewer.pc is not None
    receiver = viewer.pc.getReceivers()[0]
    origin: int = receiver._RTCRtpReceiver__timestamp_mapper._origin  # type: ignore[attr-defined]
    return origin


@pytest.mark.slow
async def test_results_arrive_on_the_data_channel_with_the_rtp_timestamp_of_their_picture(serve):
    url, app = await serve(width=640, height=480, fps=20, process_function=stamping)
    viewer = Viewer(url, data=True)
    try:
        await viewer.connect()
        frames = await viewer.frames(60)
        await eventually(lambda: len([m for m in viewer.messages if m["type"] == "data"]) >= 20)
        origin = mapper_origin(viewer)
        by_stamp = {stamp.read_stamp(f.to_ndarray(format="bgr24")): (origin + f.pts) & 0xFFFFFFFF for f in frames}
        data = [m for m in viewer.messages if m["type"] == "data"]
        matched = [m for m in data if m["data"]["stamp"] in by_stamp]
        print(len(data), len(matched), data[:2])
        assert len(matched) >= 10
        assert all(m["rtp"] == by_stamp[m["data"]["stamp"]] for m in matched)
        status = [m for m in viewer.messages if m["type"] == "processing"]
        print(status[-1])
    finally:
        await viewer.close()


async def test_the_websocket_fallback_gets_the_results_naming_each_pictures_pts(serve):
    url, app = await serve(width=320, height=240, fps=20, process_function=stamping)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "stream"})
        pts_by_capture: dict[int, int] = {}
        data: list[dict[str, Any]] = []
        status: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            while len(data) < 30 or not status:
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.BINARY:
                    header = parse_header(message.data)
                    pts_by_capture[round(header["captured"] * 1_000_000)] = header["pts"]
                elif message.type == aiohttp.WSMsgType.TEXT:
                    parsed = json.loads(message.data)
                    (data if parsed["type"] == "data" else status).append(parsed)
                else:
                    raise AssertionError(f"socket closed: {message.type}")
        # every result names the presentation time of the picture of its frame, sent before it
        for m in data:
            assert m["pts"] == pts_by_capture[round(m["time"] * 1_000_000)], m
        assert [m["frame"] for m in data] == sorted({m["frame"] for m in data})
        assert status[-1]["state"] == "ok" and status[-1]["function"].endswith("stamping")


async def test_a_hostile_viewers_channels_and_messages_are_bounded(serve, caplog):
    caplog.set_level(logging.INFO, "camtrack.outputs.webrtc.datachannel")
    url, app = await serve(width=320, height=240, fps=20, process_function=stamping)
    camera = app[CAMERAS].first
    honest, hostile = Viewer(url, data=True), Viewer(url, data=True)
    try:
        await asyncio.gather(honest.connect(), hostile.connect())
        await asyncio.gather(honest.frames(5), hostile.frames(5))
        await eventually(lambda: any(m["type"] == "data" for m in hostile.messages))
        assert hostile.pc is not None
        channel = hostile.channel
        assert channel is not None
        # messages on the channel: ignored, then the channel is closed
        for i in range(40):
            channel.send(f"junk {i}" * 100)
        await eventually(lambda: channel.readyState == "closed", timeout=10)
        # more channels: each closed as it opens; past a few the peer is ended
        extra = [hostile.pc.createDataChannel(f"extra{i}") for i in range(6)]
        await eventually(lambda: hostile.pc.connectionState in ("closed", "failed")
                         or hostile.ws is None or hostile.ws.closed or extra[0].readyState == "closed", timeout=10)
        bye = await hostile.receive("bye", timeout=10)
        assert bye["type"] == "bye"
        said = caplog.text
        assert "messages on its data channel (none is expected); closing it" in said, said
        assert "data channels; ending it" in said, said
        # the honest viewer saw nothing of it
        before = len(honest.messages)
        await honest.frames(20)
        await eventually(lambda: len(honest.messages) > before + 5)
        assert camera.processing is not None and camera.processing.running
    finally:
        await asyncio.gather(honest.close(), hostile.close(bye=False))


@pytest.mark.slow
async def test_a_viewer_in_a_worker_process_gets_the_results_with_its_own_rtp_timestamps(serve):
    url, app = await serve(width=320, height=240, fps=20, process_function=stamping, workers=2,
                           ice_addresses=["127.0.0.1"])
    viewer = Viewer(url, data=True)
    try:
        await viewer.connect()
        frames = await viewer.frames(40, timeout=60)
        await eventually(lambda: sum(m["type"] == "data" for m in viewer.messages) >= 20, timeout=20)
        await eventually(lambda: any(m["type"] == "processing" and m["rate"] for m in viewer.messages), timeout=20)
        workers = app[ICE].peers.pool.workers
        assert sum(w.load for w in workers) == 1, "the viewer's peer is not in the worker"
        origin = mapper_origin(viewer)
        by_stamp = {stamp.read_stamp(f.to_ndarray(format="bgr24")): (origin + f.pts) & 0xFFFFFFFF for f in frames}
        matched = [m for m in viewer.messages if m["type"] == "data" and m["data"]["stamp"] in by_stamp]
        assert len(matched) >= 10
        assert all(m["rtp"] == by_stamp[m["data"]["stamp"]] for m in matched)
        status = [m for m in viewer.messages if m["type"] == "processing" and m["rate"]][-1]
        assert status["state"] == "ok" and 10 <= status["rate"] <= 30, status
    finally:
        await viewer.close()
