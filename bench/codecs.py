"""What the codec negotiated per viewer costs the server: a default (H.264) camtrack as its own
process, watched by one H.264 aiortc viewer, then also by one and by four VP8-only viewers (as
Firefox without OpenH264). The VP8 viewers share one VP8 encoder of the camera (its VP8 tier), so
the second step should cost about one VP8 encoder and the third hardly more.

    python -m bench.codecs [--seconds 8]

Prints the server process's CPU (its own user+system time over wall time, from /proc) and what
each viewer decoded per second in each step. Clients share the machine: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from camtrack.client import Viewer
from camtrack.outputs.webrtc.ice import restrict_host_addresses

ROOT = Path(__file__).resolve().parent.parent
STEPS: dict[str, list[tuple[str, ...] | None]] = {
    "1 h264": [None],
    "1 h264 + 1 vp8": [None, ("vp8",)],
    "1 h264 + 4 vp8": [None, *[("vp8",)] * 4],
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def step(url: str, pid: int, codecs: list[tuple[str, ...] | None], seconds: float) -> tuple[float, list[int]]:
    viewers = [Viewer(url, codecs=c) for c in codecs]
    counts = [0] * len(viewers)

    async def drain(index: int, viewer: Viewer) -> None:
        assert viewer.track is not None
        track = await viewer.track
        while True:
            await track.recv()  # decoded, as a browser would
            counts[index] += 1

    for viewer in viewers:
        await viewer.connect()
    tasks = [asyncio.ensure_future(drain(i, v)) for i, v in enumerate(viewers)]
    try:
        await asyncio.sleep(2)  # (started, keyframes in)
        before, cpu, start = list(counts), cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - start
        return (cpu_seconds(pid) - cpu) / wall, [round((c - b) / wall) for c, b in zip(counts, before, strict=True)]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window per step")
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port), "--source", "pattern",
         "--ice-address", "127.0.0.1", "--max-cpu", "0", "--max-loop-lag", "0", "--send-budget", "0",
         "--max-picture-age", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/ws"
        for _ in range(100):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        for label, codecs in STEPS.items():
            cpu, fps = await step(url, server.pid, codecs, args.seconds)
            print(f"{label}: server CPU {cpu:.2f} cores; viewers decoded {fps} frames/s", flush=True)
            await asyncio.sleep(2)  # (the tier lets go of its encoder)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
