"""The worker wire keyed by (camera, kind, tier) (camtrack.workers.wire.FeedKey): a worker whose
viewers watch two tiers of one camera is relayed each tier apart, by its own pump, into its own
relayed feed; a keyframe request reaches the tier it came from; the last viewer of a tier stops its
pump and its encoder. Both ends in this process (the main process's WorkerProcess and the worker's
Worker, over a real socket pair), real encoders."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import av
import pytest

from camtrack import Config
from camtrack.cameras import Cameras
from camtrack.media.feeds import Transport
from camtrack.media.packet import MediaKind
from camtrack.media.tiers import MAIN, Tier
from camtrack.outputs.webrtc.ice import IceContext
from camtrack.workers import wire
from camtrack.workers.pool import RemotePeer, WorkerPool
from camtrack.workers.process import Worker

from .conftest import eventually

VP8 = Tier(codec="vp8")


def test_a_feed_key_crosses_the_wire_as_it_is():
    for key in (wire.FeedKey("porch"), wire.FeedKey("porch", MediaKind.VIDEO, VP8),
                wire.FeedKey("a-b_1", MediaKind.AUDIO, Tier(codec="opus"))):
        assert wire.FeedKey.parse(key.wire) == key
    assert wire.FeedKey("porch").wire == "porch/video/main"
    with pytest.raises(ValueError):
        wire.FeedKey.parse("porch")


async def decodes(feed: Any) -> str:
    """The codec a fresh keyframe run of a relayed feed decodes as (its packets' CodecInfo)."""
    await eventually(lambda: bool(feed.start_packets()), timeout=10, interval=0.02)
    run = feed.start_packets()
    assert run and run[0].keyframe
    decoder = av.CodecContext.create(run[0].codec.codec, "r")
    frames = [f for p in run for f in decoder.decode(av.Packet(bytes(p.packet)))]
    assert frames and (frames[-1].width, frames[-1].height) == (320, 240)
    return str(run[0].codec.codec)


async def test_each_tier_of_a_camera_is_relayed_to_a_worker_apart():
    config = Config(source="pattern", codec="h264", width=320, height=240, linger=0.2, workers=1,
                    keyframe_interval=0.5)
    cameras = Cameras(config)
    camera = cameras.first
    pool = WorkerPool(config, cameras, 1, [], None)
    process = pool.workers[0]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    main_reader, main_writer = await asyncio.open_unix_connection(sock=ours)
    worker_reader, worker_writer = await asyncio.open_unix_connection(sock=theirs)
    process._writer = main_writer  # (what WorkerProcess.start connects to a worker process)
    worker = Worker(worker_writer, config, IceContext([], None))
    serving = asyncio.ensure_future(worker.serve(worker_reader))
    try:
        main = RemotePeer(process, camera, Transport.WEBSOCKET, "a", lambda reason: None)
        tier = RemotePeer(process, camera, Transport.WHEP, "b", lambda reason: None, tier=VP8)
        also = RemotePeer(process, camera, Transport.WEBSOCKET, "c", lambda reason: None, tier=VP8)
        keys = {wire.FeedKey("default"), wire.FeedKey("default", MediaKind.VIDEO, VP8)}
        assert set(process.pumps) == keys and main.feed_key.tier == MAIN  # one pump per feed, not per viewer
        names = {key.wire for key in keys}
        await eventually(lambda: set(worker.feeds) == names
                         and all(feed.received >= 10 for feed in worker.feeds.values()))
        assert await decodes(worker.feeds["default/video/main"]) == "h264"
        assert await decodes(worker.feeds["default/video/vp8"]) == "vp8"
        # received is counted per camera, over its feeds (what /metrics reads)
        assert worker.received() == {"default": sum(f.received for f in worker.feeds.values())}
        assert process.describe()["cameras"] == ["default"] and process.describe()["feeds"] == sorted(names)
        # a keyframe request from the worker reaches the feed it came from
        encoder, vp8 = camera.packets(MediaKind.VIDEO, MAIN), camera.packets(MediaKind.VIDEO, VP8)
        assert encoder is not None and vp8 is not None and encoder is not vp8
        asked = (encoder.stats.keyframe_requests, vp8.stats.keyframe_requests)  # type: ignore[attr-defined]
        worker.send({"t": "keyframe", "feed": "default/video/vp8"})
        message = await asyncio.wait_for(_next_control(main_reader, "keyframe", "default/video/vp8"), 10)
        process._message(message)
        assert vp8.stats.keyframe_requests == asked[1] + 1  # type: ignore[attr-defined]
        assert encoder.stats.keyframe_requests == asked[0]  # type: ignore[attr-defined]
        # the tier's last viewer leaves: its pump stops, the worker drops its feed, its encoder stops
        process.remove(tier)
        assert set(process.pumps) == keys
        process.remove(also)
        assert set(process.pumps) == {wire.FeedKey("default")}
        await eventually(lambda: set(worker.feeds) == {"default/video/main"})
        await eventually(lambda: not vp8.running)  # type: ignore[attr-defined]
        assert encoder.running  # type: ignore[attr-defined]
        process.remove(main)
        assert not process.pumps
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        main_writer.close()
        worker_writer.close()
        await cameras.close()


async def _next_control(reader: asyncio.StreamReader, kind: str, feed: str) -> dict[str, Any]:
    """The next control message of type `kind` about `feed` the worker sent (others skipped)."""
    while True:
        message = await wire.read(reader)
        if isinstance(message, dict) and message["t"] == kind and message.get("feed") == feed:
            return message
