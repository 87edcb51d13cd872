"""What a webhook that hangs or refuses costs the rest of the server: camtrack (the pattern, 320x240
at 20 fps) with no webhook, one that never answers and one whose port refuses; a WebRTC viewer
counts its pictures while 150 events are started and ended over HTTP one after another; the HTTP
calls' times and the viewer's pictures per case. Then what publishing costs: start+end pairs on an
EventBus with 64 subscribers.

    python -m bench.events [--pairs N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

import aiohttp
from aiohttp import web

from camtrack import Config, create_app
from camtrack.client import Viewer
from camtrack.events import EventBus
from camtrack.outputs.webrtc.ice import restrict_host_addresses

SECONDS = 3.0


async def hanging_webhook() -> tuple[str, web.AppRunner, asyncio.Event]:
    forever = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await forever.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook", runner, forever  # type: ignore[union-attr]


def refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/hook"


async def pictures(viewer: Viewer, seconds: float) -> int:
    assert viewer.track is not None
    track = await viewer.track
    got, end = 0, time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(track.recv(), left)
        except TimeoutError:
            break
        got += 1
    return got


async def case(way: str, pairs: int) -> None:
    hook = await hanging_webhook() if way == "hangs" else None
    target = hook[0] if hook else refused_url() if way == "refuses" else None
    config = Config(host="127.0.0.1", port=0, source="pattern", webrtc_port=0, rtsp_port=0, width=320, height=240,
                    fps=20, webhook=target, max_loop_lag=0, send_budget=0, max_picture_age=0, max_cpu=0)
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    viewer = Viewer(base + "/ws")
    try:
        await viewer.connect()
        async with aiohttp.ClientSession() as http:
            async def burst() -> list[float]:
                took = []
                for _ in range(pairs):
                    began = time.perf_counter()
                    async with http.post(base + "/api/cameras/default/events", json={"kind": "bench"}) as response:
                        event_id = (await response.json())["id"]
                    async with http.post(base + f"/api/cameras/default/events/{event_id}/end") as response:
                        await response.read()
                    took.append((time.perf_counter() - began) / 2)
                return took

            got, took = await asyncio.gather(pictures(viewer, SECONDS), burst())
        print(f"webhook {way:8s} {pairs} start+end pairs: HTTP call median {statistics.median(took) * 1000:.1f} ms, "
              f"max {max(took) * 1000:.1f} ms; viewer {got} pictures in {SECONDS:g} s at 20 fps")
    finally:
        await viewer.close()
        await runner.cleanup()
        if hook is not None:
            hook[2].set()
            await hook[1].cleanup()


async def publishing(pairs: int) -> None:
    bus = EventBus()
    for _ in range(64):
        bus.subscribe("bench")
    began = time.perf_counter()
    for _ in range(pairs):
        bus.end(bus.start("bench", "bench", source="http", details={"n": 1}).id)
    print(f"publishing: {(time.perf_counter() - began) / (2 * pairs) * 1e6:.1f} us per change to 64 subscribers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=150, help="events started and ended per case (default: 150)")
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])
    for way in ("none", "hangs", "refuses"):
        asyncio.run(case(way, args.pairs))
    asyncio.run(publishing(2000))


if __name__ == "__main__":
    main()
