"""Quality tiers for viewers served by worker processes (--workers 2, docs/quality.md): a real
aiortc viewer in a worker asks for the low tier and gets its size; the worker asks the main process
for the low tier's feed (a pump of its own, made at first need, stopped when its last reader there
leaves) and moves the viewer with its own TierReader, its decoded times growing across
main -> low -> main; one low encoder serves a viewer in the main process and one in a worker;
/metrics counts the worker's viewers per tier."""

from __future__ import annotations

import asyncio

import aiohttp

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.media.encoder import SharedEncoder
from camtrack.media.feeds import Transport
from camtrack.media.packet import MediaKind
from camtrack.media.quality import TierReader
from camtrack.media.tiers import MAIN, Tier
from camtrack.workers import wire
from camtrack.workers.pool import RemotePeer

from .conftest import eventually
from .test_quality import continuous
from .test_quality_substream import SUB, camera_streams  # noqa: F401 - camera_streams: a fixture
from .test_workers import pool_of
from .whep import whep

LOW = Tier(quality="low")
MAIN_KEY = wire.FeedKey("default")
LOW_KEY = wire.FeedKey("default", MediaKind.VIDEO, LOW)


async def metrics(base: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as r:
        return await r.text()


async def test_a_worker_viewer_moves_to_low_and_back_sharing_the_low_encoder_with_the_main_process(serve):
    url, app = await serve(width=640, height=480, fps=30, workers=2, ice_addresses=["127.0.0.1"])
    base = url.removesuffix("/ws")
    camera = app[CAMERAS].first
    pool = pool_of(app)
    viewer = Viewer(url)
    local = None
    try:
        await viewer.connect()
        worker = next(w for w in pool.workers if w.load == 1)
        peer = next(iter(worker.peers.values()))
        assert isinstance(peer, RemotePeer)
        told = viewer.answer["quality"]  # (from the worker's own peer)
        assert (told["tier"], told["choice"], told["qualities"]) == ("main", "auto", ["main", "low"])
        frames = await viewer.frames(15, timeout=60)
        assert {(f.width, f.height) for f in frames} == {(640, 480)}
        assert set(worker.pumps) == {MAIN_KEY}
        assert viewer.ws is not None
        await viewer.ws.send_json({"type": "quality", "quality": "low"})
        while told["tier"] != "low":
            told = await viewer.receive("quality", timeout=30)
        assert (told["choice"], told["reason"]) == ("low", "asked")
        more = await viewer.frames(30, timeout=60)
        assert (more[-1].width, more[-1].height) == (320, 240)
        frames += more
        # the worker is relayed the low tier by a pump of its own; the main tier's stopped
        await eventually(lambda: set(worker.pumps) == {LOW_KEY}, timeout=10)
        low = camera.packets(MediaKind.VIDEO, LOW)
        assert isinstance(low, SharedEncoder) and low.running and worker.pumps[LOW_KEY].feed is low
        # a viewer of the low tier in the main process shares that one encoder
        local = TierReader(camera.reader(Transport.WEBSOCKET, LOW), LOW, camera.packets, camera.qualities(),
                           camera.meters[Transport.WEBSOCKET], camera=camera.name)
        assert local.feed is low and len(camera.pipeline.tiers.quality_encoders) == 1
        encoded, _ = await asyncio.wait_for(local.next(), 20)
        assert (encoded.codec.width, encoded.codec.height) == (320, 240)
        # /metrics counts both (the worker's from its stats, once a second)
        text = ""

        async def counted() -> bool:
            nonlocal text
            text = await metrics(base)
            return 'camtrack_tier_viewers{camera="default",tier="low"} 2.0' in text

        for _ in range(20):  # (/metrics is paced: not too often)
            if await counted():
                break
            await asyncio.sleep(0.5)
        assert 'camtrack_tier_viewers{camera="default",tier="low"} 2.0' in text, text
        assert 'camtrack_tier_viewers{camera="default",tier="main"} 0.0' in text
        # (the worker's move, added to this process's: other tests here may have moved viewers too)
        assert worker.tier_moves[("default", "main", "low", "asked")] == 1
        assert 'camtrack_tier_moves_total{camera="default",from="main",to="low",why="asked"}' in text
        # back to main: the low tier's pump to the worker stops (its last reader there left), the
        # encoder goes on for the main process's viewer
        await viewer.ws.send_json({"type": "quality", "quality": "main"})
        while told["tier"] != "main":
            told = await viewer.receive("quality", timeout=30)
        more = await viewer.frames(30, timeout=60)
        assert (more[-1].width, more[-1].height) == (640, 480)
        frames += more
        continuous(frames)
        await eventually(lambda: set(worker.pumps) == {MAIN_KEY}, timeout=10)
        assert low.running
        local.close()
        local = None
        await eventually(lambda: not low.running, timeout=10)
    finally:
        if local is not None:
            local.close()
        await viewer.close()


async def test_a_whep_viewer_in_a_worker_starts_on_the_low_tier(serve):
    url, app = await serve(width=640, height=480, fps=30, workers=2, ice_addresses=["127.0.0.1"])
    camera = app[CAMERAS].first
    pool = pool_of(app)
    pc = None
    try:
        async with aiohttp.ClientSession() as http:
            pc, _, track = await whep(url, http, query="?tier=low")
            video = await asyncio.wait_for(track, 30)
            frames = [await asyncio.wait_for(video.recv(), 30) for _ in range(20)]
            assert {(f.width, f.height) for f in frames} == {(320, 240)}
            worker = next(w for w in pool.workers if w.load == 1)
            # only the low tier is relayed to its worker: the main encoder is not kept running for it
            assert set(worker.pumps) == {LOW_KEY} and MAIN not in {k.tier for k in worker.pumps}
            assert camera.encoder is not None
            await eventually(lambda: not camera.encoder.running)
    finally:
        if pc is not None:
            await pc.close()


async def test_a_worker_viewer_behind_a_narrow_link_is_moved_down_by_its_worker():
    """An honest aiortc viewer served by a worker (--workers 2) of a real camtrack process, whose
    link narrows to 400 kbit/s (tbf, tests/shaped.py): the worker's LinkWatch, beside its peer,
    moves it to the low tier from what its receiver says (not asked), and /metrics counts it there."""
    import time

    from .shaped import ShapedNet, ShapedServer, shaped_viewer

    net = ShapedNet("ctk")
    try:
        async with ShapedServer(net, "--source", "pattern", "--bitrate", "1000000", "--workers", "2") as server:
            viewer = shaped_viewer(net, "a", server.ws_for("a"))
            await viewer.start(timeout=60)
            try:
                await eventually(lambda: viewer.width == 640, timeout=30)
                net.shape(400)
                deadline = time.monotonic() + 30
                moved: list[str] = []
                while not moved:
                    assert time.monotonic() < deadline, "the viewer was not moved down within 30 s"
                    await asyncio.sleep(0.2)
                    moved = [line for line in server.log().splitlines() if "to the low tier" in line]
                # by its worker, from its link (not asked)
                assert " worker " in moved[0] and "(asked)" not in moved[0], moved
                text = ""
                for _ in range(20):
                    _status, text = await server.get("/metrics")
                    if 'camtrack_tier_viewers{camera="default",tier="low"} 1.0' in text:
                        break
                    await asyncio.sleep(1.1)  # (/metrics is paced)
                assert 'camtrack_tier_viewers{camera="default",tier="low"} 1.0' in text
                assert any(line.startswith('camtrack_tier_moves_total{camera="default",from="main",to="low",why="')
                           and 'why="asked"' not in line for line in text.splitlines())
                await eventually(lambda: viewer.width == 320, timeout=30)
            finally:
                await viewer.stop()
    finally:
        net.delete()


async def test_a_worker_viewer_moves_to_a_cameras_sub_stream_and_back(serve, camera_streams):  # noqa: F811
    """A passed-through camera whose low tier is its own sub-stream (--low-source): both relayed to
    the worker as the camera's packets (no keyframe to ask for), the viewer's times growing across
    the two streams' clocks."""
    main_url, sub_url = camera_streams
    url, app = await serve(source=main_url, mode="passthrough", width=320, height=240, low_source=sub_url,
                           workers=2, ice_addresses=["127.0.0.1"])
    pool = pool_of(app)
    viewer = Viewer(url)
    try:
        await viewer.connect()
        frames = await viewer.frames(15, timeout=60)
        assert {(f.width, f.height) for f in frames} == {(320, 240)}
        worker = next(w for w in pool.workers if w.load == 1)
        assert viewer.ws is not None
        await viewer.ws.send_json({"type": "quality", "quality": "low"})
        told = await viewer.receive("quality", timeout=30)
        while told["tier"] != "low":
            told = await viewer.receive("quality", timeout=30)
        more = await viewer.frames(30, timeout=60)
        assert (more[-1].width, more[-1].height) == SUB
        frames += more
        await eventually(lambda: set(worker.pumps) == {LOW_KEY}, timeout=10)
        assert worker.pumps[LOW_KEY].kind == "passthrough"
        await viewer.ws.send_json({"type": "quality", "quality": "main"})
        while told["tier"] != "main":
            told = await viewer.receive("quality", timeout=30)
        more = await viewer.frames(30, timeout=60)
        assert (more[-1].width, more[-1].height) == (320, 240)
        frames += more
        continuous(frames)
        await eventually(lambda: set(worker.pumps) == {MAIN_KEY}, timeout=10)
    finally:
        await viewer.close()
