"""Processing results to every viewer on its own connection (camtrack.outputs.results): a real aiortc
viewer's data channel, each result stamped with the RTP timestamp of the picture it describes; the
websocket fallback's messages; hostile channels. The page's drawing is tests/test_overlay_page.py."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media import stamp
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
