"""Viewers that stop answering: they must not hold --max-viewers' places for long.

A viewer frozen right after it connected (its peer answers nothing any more: no RTCP, no STUN
consent, no bye; its websocket stays open) kept its place until aioice's consent expired, about
33 s; with `--max-viewers 3` three of them locked every newcomer out for that long.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from camtrack.client import Viewer

from .conftest import eventually
from .honest import CamtrackProcess, HonestViewer, assert_unharmed

#: (a camtrack process of its own, and seconds of silence: out of the fast lane)
pytestmark = pytest.mark.slow


def freeze(viewer: Viewer) -> asyncio.Task[None]:
    """Make `viewer`'s peer answer nothing from now on (no RTCP, no STUN, no DTLS, no bye), as a
    frozen tab or a client that got its connection and went silent; its websocket stays open and
    answers pings (the task returned reads it)."""
    assert viewer.pc is not None and viewer.ws is not None
    for transceiver in viewer.pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.transport.sendto = lambda *args: None
            protocol.datagram_received = lambda *args: None
    ws = viewer.ws

    async def keep_socket() -> None:
        async for _ in ws:  # (aiohttp answers the server's pings while someone reads)
            pass

    return asyncio.ensure_future(keep_socket())


async def newcomer(server: CamtrackProcess, deadline: float) -> tuple[HonestViewer, int]:
    """An honest viewer that tries again after each 'server full' until it plays (or `deadline`),
    and how many times it was refused."""
    refused = 0
    while True:
        viewer = HonestViewer(server.ws())
        try:
            return await viewer.start(timeout=max(1.0, deadline - time.monotonic())), refused
        except RuntimeError:
            await viewer.stop()
            if time.monotonic() > deadline:
                raise
            refused += 1
            # (1.5 s: each try logs two lines about 127.0.0.1, which the frozen viewers' "left" lines
            # share, at most 1 a second after a burst of 5: tries every 0.5 s, about 1.2 s apart
            # with their start, used it up and the "left" lines were suppressed: a full CI run)
            await asyncio.sleep(1.5)


async def test_frozen_viewers_do_not_lock_a_newcomer_out(loopback_ice):
    async with CamtrackProcess("--source", "pattern", "--width", "320", "--height", "240",
                               "--max-viewers", "3") as server:
        frozen = [Viewer(server.ws()) for _ in range(3)]
        readers: list[asyncio.Task[None]] = []
        try:
            for viewer in frozen:
                await viewer.connect()
                await viewer.frames(3)
            assert await server.metric("camtrack_viewers") == 3
            rss_before = server.rss_mb()
            readers = [freeze(viewer) for viewer in frozen]
            frozen_at = time.monotonic()
            honest, refused = await newcomer(server, frozen_at + 45)
            waited = time.monotonic() - frozen_at
            try:
                baseline = await honest.watch(3)
                print(f"3 frozen viewers, --max-viewers 3: the newcomer played {waited:.1f} s after they froze "
                      f"(refused {refused} times), then {baseline}; RSS {rss_before:.0f} -> {server.rss_mb():.0f} MB")
                assert waited < 15, f"the newcomer waited {waited:.1f} s for a place"
                # (it plays: 20 fps at least in its first 3 s, with nothing to compare with on a loaded
                # machine; the bar of 25 held with 0.7 fps to spare under load, 25.7 fps with 2 busy
                # loops beside, load average 10 on the 2 cores)
                assert_unharmed(baseline, baseline, "the newcomer", min_fps=20.0)
                assert await server.metric("camtrack_viewers_unresponsive_total") == 3
                cameras = await server.json("/api/cameras")
                assert cameras["cameras"][0]["unresponsive"] == 3, cameras
                # (one line at least: the log holds each client address to a few lines a second, and
                # all three are 127.0.0.1)
                assert "left: unresponsive: nothing came from it for 8 s" in server.log(), server.log()[-3000:]
                assert server.rss_mb() < rss_before + 40
            finally:
                await honest.stop()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*(viewer.close(bye=False) for viewer in frozen), return_exceptions=True)


async def test_a_stalled_event_loop_closes_no_live_viewer(serve):
    """The server's loop stands still for longer than --unresponsive-timeout (here the whole test
    process's: the viewer's too): the silence check that runs late looks again instead of closing a
    viewer whose datagrams are only unread; a frozen one is still closed."""
    from camtrack.app import CAMERAS
    from camtrack.media.feeds import Transport

    url, app = await serve(width=320, height=240, unresponsive_timeout=2.0)
    live, frozen = Viewer(url), Viewer(url)
    await asyncio.gather(live.connect(), frozen.connect())
    await asyncio.gather(live.frames(5), frozen.frames(5))
    camera = app[CAMERAS].first
    meter = camera.meters[Transport.WEBSOCKET]
    reader = freeze(frozen)
    try:
        time.sleep(3.0)  # noqa: ASYNC251 - the point: nothing runs, nothing is read
        assert len(await live.frames(60, timeout=10)) == 60
        await eventually(lambda: meter.unresponsive == 1, timeout=10)
        assert camera.viewer_count == 1
    finally:
        reader.cancel()
    await asyncio.gather(live.close(), frozen.close(bye=False))
