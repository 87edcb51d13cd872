"""The fan-out (camtrack.outputs.webrtc.fanout): viewers in step with their feed are sent each
picture by one task per feed, with real aiortc viewers; a viewer handed back to its own loop
goes on watching and comes back; one that leaves is forgotten."""

from __future__ import annotations

import asyncio

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media.feeds import Transport
from camtrack.outputs.webrtc.fanout import fanout_for
from camtrack.outputs.webrtc.signaling import Session

from .conftest import eventually


def _peers(app):
    camera = app[CAMERAS].first
    sessions = [v for v in camera.viewers[Transport.WEBSOCKET] if isinstance(v, Session)]
    return camera, [s.peer for s in sessions if s.peer is not None]


async def test_viewers_in_step_are_sent_by_one_fanout(serve) -> None:
    url, app = await serve(width=320, height=240)
    viewers = [Viewer(url) for _ in range(3)]
    try:
        for viewer in viewers:
            await viewer.connect()
        for viewer in viewers:
            await viewer.frames(5)
        camera, peers = _peers(app)
        assert camera.feed is not None
        fanout = fanout_for(camera.feed, "video/H264")
        await eventually(lambda: fanout.members == 3, timeout=20)
        before = [p.rtp.fanned_out for p in peers]
        pictures = fanout.stats.pictures
        for viewer in viewers:
            await viewer.frames(15)  # decoded pictures keep coming, now from the fan-out
        assert all(p.rtp.fanned_out >= b + 10 for p, b in zip(peers, before, strict=True))
        # one pass per picture for the three, not three wake-ups
        assert fanout.stats.sends >= 3 * (fanout.stats.pictures - pictures) - 3
        assert all(p.rtp.dropped == 0 for p in peers)

        # handed back to their own loops (as when the fan-out falls behind): they keep watching
        # and, in step again, come back
        handed_back = sum(fanout.stats.handed_back.values())
        for member in list(fanout._members):
            fanout._hand_back(member, "test")
        assert fanout.members == 0
        for viewer in viewers:
            await viewer.frames(10)
        await eventually(lambda: fanout.members == 3, timeout=20)
        assert sum(fanout.stats.handed_back.values()) == handed_back + 3

        # one leaves: forgotten by the fan-out, the others go on
        await viewers.pop().close()
        await eventually(lambda: fanout.members == 2, timeout=20)
        for viewer in viewers:
            await viewer.frames(10)
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
    await eventually(lambda: fanout.members == 0, timeout=20)
