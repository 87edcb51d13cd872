"""`python -m tests.honest_viewer WS_URL [ADDRESS]`: one honest aiortc viewer (tests/honest.py).

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


async def main(url: str, address: str = "127.0.0.1") -> None:
    restrict_host_addresses([address])
    aiortc.rtcrtpreceiver.get_decoder = lambda codec: StampingDecoder(get_decoder(codec))
    viewer = Viewer(url)
    frames: list[int] = [0]
    latencies: list[int] = []

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            print(json.dumps({"t": time.time(), "frames": frames[0], "latency": latencies[:]}), flush=True)
            frames[0] = 0
            latencies.clear()

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
    asyncio.run(main(*sys.argv[1:3]))
