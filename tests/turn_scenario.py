"""The viewer side of tests/test_turn.py, run inside its network namespace.

    python -m tests.turn_scenario URL LOCAL_ADDRESS

Waits for the server, connects one aiortc viewer with the STUN/TURN servers the server's hello
names (as the page does), receives frames, and prints one JSON line: the frames, the hello's ICE
servers, and the candidate types of the pair the viewer's ICE nominated.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from camtrack.client import Viewer
from camtrack.outputs.webrtc.addresses import ice_connections
from camtrack.outputs.webrtc.ice import restrict_host_addresses


async def wait_for_server(url: str, timeout: float = 60.0) -> None:
    """Until /healthz answers (the server is a separate process that may still be starting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url.removesuffix("/ws") + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{url}: no server within {timeout:g} s")
            await asyncio.sleep(0.1)


async def main(url: str, local: str) -> dict[str, Any]:
    restrict_host_addresses([local])  # this namespace has the server's address too: not that one
    await wait_for_server(url)
    viewer = Viewer(url, hello_servers=True)
    try:
        await viewer.connect(timeout=30)
        frames = await viewer.frames(10, timeout=60)
        assert viewer.pc is not None
        (connection,) = ice_connections(viewer.pc)
        pair = connection._nominated[1]
        return {"frames": len(frames), "width": frames[-1].width, "iceServers": viewer.hello["iceServers"],
                "local": pair.local_candidate.type, "remote": pair.remote_candidate.type}
    finally:
        await viewer.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))), flush=True)
