"""`python -m tests.stream_viewer WS_URL`: a websocket-stream viewer (the fallback: the camera's
packets over /ws, camtrack.outputs.wsvideo) for tests on shaped links (tests/shaped.py).

It asks for the stream and prints a JSON line twice a second: {"t": time.time(), "frames": messages
since the last line, "width": the newest keyframe's width, "age": [ms from capture to arrival, ...],
"tier": the tier the server last said it is on}; or {"error": "..."} once when the socket ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

from camtrack.outputs.wsvideo import parse_header


async def main(url: str) -> None:
    state = {"frames": 0, "width": 0, "tier": None}
    ages: list[int] = []

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            print(json.dumps({"t": time.time(), "frames": state["frames"], "width": state["width"],
                              "age": ages[:], "tier": state["tier"]}), flush=True)
            state["frames"] = 0
            ages.clear()

    reporting = asyncio.ensure_future(report())
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "stream"}))
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    header = parse_header(message.data)
                    state["frames"] += 1
                    if header["codec"]:
                        state["width"] = header["codec"]["width"]
                    ages.append(round((time.time() - float(header["captured"])) * 1000))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data.get("type") == "quality":
                        state["tier"] = data["tier"]
        print(json.dumps({"error": "socket closed"}), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    finally:
        reporting.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
