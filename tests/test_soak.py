"""Soak: hundreds of viewer sessions of every kind against one server, then nothing is left over."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from camtrack.app import CAMERAS
from camtrack.client import Viewer

from .conftest import eventually
from .test_faults import Unpluggable

SESSIONS_TOTAL = int(os.environ.get("SOAK_SESSIONS", "200"))
CONCURRENCY = 8


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def own_threads() -> int:
    """Threads, not counting the event loop's default executor: a bounded pool (the aiohttp
    client resolves host names there) whose idle workers are kept, not leaked."""
    pool = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
    assert len(pool) <= min(32, (os.cpu_count() or 1) + 4)
    return threading.active_count() - len(pool)


def peer_connections() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


async def session(url: str, kind: int, http: aiohttp.ClientSession) -> None:
    viewer = Viewer(url, http)
    if kind == 2:  # never finishes negotiating: offers, ignores the answer, leaves or waits it out
        async with http.ws_connect(url) as ws:
            await ws.receive_json(timeout=10)
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
            await ws.receive_json(timeout=10)  # the answer, never applied
            await pc.close()
            if kind == 2 and id(ws) % 2:
                await ws.receive(timeout=20)  # the server's negotiation time-out closes it
        return
    try:
        await viewer.connect()
        await viewer.frames(3, timeout=30)
        if kind == 3:  # asks for a keyframe
            receiver = viewer.pc.getReceivers()[0]
            await receiver._send_rtcp_pli(receiver.getSynchronizationSources()[0].source)
            await viewer.frames(2, timeout=30)
    finally:
        if kind == 1:  # the socket just drops
            await viewer.ws.close()
            await viewer.pc.close()
        elif kind == 4:  # the peer goes away first, then the socket
            await viewer.pc.close()
            await asyncio.sleep(0.05)
            await viewer.ws.close()
        else:  # a clean bye
            await viewer.close()


async def test_soak(serve, capsys, caplog):
    # pytest keeps every captured log record until the test ends: at INFO (aioice logs each ICE
    # check) that alone grows memory with the session count, so keep to warnings here
    caplog.set_level(logging.WARNING)
    url, app = await serve(width=160, height=120, fps=15, codec="vp8", linger=0.3, negotiation_timeout=2,
                           keyframe_interval=1)
    camera = Unpluggable(160, 120, 15)
    app[CAMERAS].first.stream.source_factory = lambda: camera
    async with aiohttp.ClientSession() as http:
        # warm up with the same concurrency: load codecs, and let the allocator make its
        # per-thread arenas, which it keeps (growth after that is what would be a leak)
        await asyncio.gather(*(session(url, kind % 5, http) for kind in range(5 * CONCURRENCY)))
        await eventually(lambda: app[CAMERAS].viewer_count == 0 and not app[CAMERAS].first.stream.running, timeout=30)
        gc.collect()
        await asyncio.sleep(0.5)
        base = {"rss": rss_mb(), "fds": open_fds(), "threads": own_threads(),
                "tasks": len(asyncio.all_tasks())}

        started = time.monotonic()
        queue = list(range(SESSIONS_TOTAL))
        errors: list[str] = []

        async def worker() -> None:
            while queue:
                i = queue.pop()
                if i == SESSIONS_TOTAL // 2:
                    camera.plugged.clear()  # the camera drops out in the middle ...
                    asyncio.get_running_loop().call_later(1.5, camera.plugged.set)  # ... and comes back
                try:
                    await asyncio.wait_for(session(url, i % 5, http), 60)
                except Exception as exc:  # noqa: BLE001 - counted, reported below
                    errors.append(f"session {i} kind {i % 5}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        took = time.monotonic() - started

    await eventually(lambda: app[CAMERAS].viewer_count == 0, timeout=30)
    await eventually(lambda: not app[CAMERAS].first.encoder.running and not app[CAMERAS].first.stream.running, timeout=30)
    gc.collect()
    await eventually(lambda: own_threads() <= base["threads"], timeout=30)
    await eventually(lambda: len(asyncio.all_tasks()) <= base["tasks"], timeout=30)
    gc.collect()
    after = {"rss": rss_mb(), "fds": open_fds(), "threads": own_threads(),
             "tasks": len(asyncio.all_tasks()), "peers": peer_connections()}
    with capsys.disabled():
        print(f"\nsoak: {SESSIONS_TOTAL} sessions in {took:.0f} s, {len(errors)} errors; "
              f"RSS {base['rss']:.0f} -> {after['rss']:.0f} MB, fds {base['fds']} -> {after['fds']}, "
              f"threads {base['threads']} -> {after['threads']}, tasks {base['tasks']} -> {after['tasks']}, "
              f"peer connections left {after['peers']}, camera opens {camera_opens(app)}")
    assert not errors, errors[:5]
    assert after["peers"] == 0
    assert after["fds"] <= base["fds"]
    assert after["rss"] - base["rss"] < 20
    assert not app[CAMERAS].first.stream.running  # the camera is released


def camera_opens(app) -> int:
    return app[CAMERAS].first.stream.runs
