"""`python -m tests.honest_viewer WS_URL [ADDRESS [STAMP_WIDTH]]`: one honest aiortc viewer (tests/honest.py).

Decodes every picture, reads its latency stamp, and prints a JSON line twice a second:
{"t": time.time(), "frames": pictures since the last line, "latency": [ms, ...]}; or
{"error": "..."} once if it cannot connect or its track ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import aiortc.rtcrtpreceiver
from aiortc.codecs import get_decoder

from bench.viewers import StampingDecoder, latency_of
from camtrack.client import Viewer
from camtrack.outputs.webrtc.ice import restrict_host_addresses


async def main(url: str, address: str = "127.0.0.1", stamp_width: str = "0") -> None:
    restrict_host_addresses([address])
    width = int(stamp_width) or None
    aiortc.rtcrtpreceiver.get_decoder = lambda codec: StampingDecoder(get_decoder(codec), width)
    viewer = Viewer(url)
    frames: list[int] = [0]
    latencies: list[int] = []
    #: the newest picture's width, and the longest gap between two pictures' times (90 kHz ticks)
    seen = {"width": 0, "gap": 0, "pts": -1}

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            print(json.dumps({"t": time.time(), "frames": frames[0], "latency": latencies[:],
                              "width": seen["width"], "gap": seen["gap"]}), flush=True)
            frames[0] = 0
            latencies.clear()
            seen["gap"] = 0

    reporting = asyncio.ensure_future(report())
    draining: asyncio.Future[None] | None = None
    try:
        await viewer.connect(timeout=30)
        assert viewer.track is not None and viewer.ws is not None
        # keep reading the websocket: aiohttp answers the server's pings only while it is read, and
        # the server hangs up on a viewer that has not answered for 10 s
        draining = asyncio.ensure_future(_drain(viewer.ws))
        track = await viewer.track
        while True:
            frame = await track.recv()
            frames[0] += 1
            seen["width"] = frame.width
            if seen["pts"] >= 0 and frame.pts is not None:
                seen["gap"] = max(seen["gap"], frame.pts - seen["pts"])
            seen["pts"] = frame.pts if frame.pts is not None else seen["pts"]
            latency = latency_of(frame)
            if latency is not None:
                latencies.append(latency)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    finally:
        reporting.cancel()
        if draining is not None:
            draining.cancel()
        await viewer.close(bye=False)


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
