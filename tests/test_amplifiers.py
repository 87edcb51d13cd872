"""Cheap amplifiers (issue 18, item 7): work a client can trigger for free costs less than it asks.

Each test runs camtrack as its own process with an honest viewer of the attacked camera and one of
another camera (tests/honest.py), takes a baseline, attacks (bounded in count and time), and checks
the viewers during and after, the server's CPU and memory, and that the fault shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aiohttp
import pytest

from .honest import ROOT, CamtrackProcess, HonestViewer, Watched, assert_unharmed

pytestmark = pytest.mark.timeout(110)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuWindow:
    """A process's CPU over a stretch of wall time, in cores."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.began = time.monotonic()
        self.cpu = cpu_seconds(pid)

    def cores(self) -> float:
        return (cpu_seconds(self.pid) - self.cpu) / (time.monotonic() - self.began)


class CameraProcess:
    """`python -m tests.rtsp_server`: a live RTSP camera of the stamped pattern, its own process
    (so that its encoding competes with the server like any camera on the machine would not)."""

    def __init__(self, size: str = "320x240") -> None:
        self.size = size
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def __aenter__(self) -> CameraProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.rtsp_server", "--size", self.size, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        self.url = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().strip()
        assert self.url.startswith("rtsp://"), self.url
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def viewers(server: CamtrackProcess, *cameras: str) -> list[HonestViewer]:
    started = [HonestViewer(server.ws(camera)) for camera in cameras]
    await asyncio.gather(*(v.start() for v in started))
    return started


async def stop(started: list[HonestViewer]) -> None:
    await asyncio.gather(*(v.stop() for v in started))


def report(what: str, windows: dict[str, Watched]) -> None:
    for name, seen in windows.items():
        print(f"{what} {name}: {seen}")


# -- joins on a passed-through camera --------------------------------------------------------------

async def join_once(http: aiohttp.ClientSession, url: str) -> bool:
    """Open /ws, ask for the websocket stream, read one picture, close. True if a picture came."""
    try:
        async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            hello = await asyncio.wait_for(ws.receive_json(), 5)
            if hello.get("type") != "hello":
                return False
            await ws.send_str(json.dumps({"type": "stream"}))
            message = await asyncio.wait_for(ws.receive(), 5)
            return message.type == aiohttp.WSMsgType.BINARY
    except (aiohttp.ClientError, TimeoutError, ConnectionError):
        return False


async def churn(url: str, rate: float, seconds: float, at_once: int = 32) -> tuple[int, int]:
    """Joins at `rate` a second for `seconds` (at most `at_once` open together): (tried, pictures)."""
    gate = asyncio.Semaphore(at_once)
    loop = asyncio.get_running_loop()
    began = loop.time()
    results: list[bool] = []

    async def one() -> None:
        async with gate:
            results.append(await join_once(http, url))

    async with aiohttp.ClientSession() as http:
        tasks = []
        for i in range(round(rate * seconds)):
            delay = began + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    return len(results), sum(results)


async def test_join_churn_on_a_passed_through_camera_shares_one_bridge():
    """Joins of the websocket stream at 100 a second for 5 s, each between the camera's keyframes
    (4 s apart), each reading one picture and leaving: the join bridge (decode from the keyframe,
    encode again) runs once for all of them instead of once each."""
    async with CameraProcess() as camera, CamtrackProcess(
            "--camera", f"a={camera.url}", "--camera", "b=pattern", "--width", "320", "--height", "240") as server:
        modes = {c["name"]: c["mode"] for c in (await server.json("/api/cameras"))["cameras"]}
        assert modes == {"a": "passthrough", "b": "transcode"}, modes
        honest = await viewers(server, "a", "b")
        try:
            rss_before = server.rss_mb()
            cpu = CpuWindow(server.pid)
            baseline = {name: await_ for name, await_ in zip("ab", await asyncio.gather(*(v.watch(3) for v in honest)))}
            idle_cpu = cpu.cores()
            report("baseline", baseline)
            bridge_runs = await server.metric("camtrack_join_bridge_runs_total", camera="a")

            began = time.time()
            cpu = CpuWindow(server.pid)
            tried, pictures = await churn(server.ws("a"), rate=100, seconds=5)
            churn_cpu = cpu.cores()
            during = {name: v.window(began + 0.5) for name, v in zip("ab", honest)}
            rss_peak = server.rss_mb()
            report("during", during)
            after = {name: seen for name, seen in zip("ab", await asyncio.gather(*(v.watch(3) for v in honest)))}
            report("after", after)
            print(f"server CPU: idle {idle_cpu:.2f} cores, during the churn {churn_cpu:.2f} cores; "
                  f"{tried} joins, {pictures} pictures; RSS {rss_before:.0f} -> {rss_peak:.0f} -> {server.rss_mb():.0f} MB")
            assert server.alive()
            assert pictures >= 0.9 * tried, (tried, pictures)  # every joiner was served
            assert churn_cpu < 0.5, f"the churn cost {churn_cpu:.2f} cores (idle {idle_cpu:.2f})"
            for name in "ab":
                assert_unharmed(baseline[name], during[name], f"viewer of {name} during the churn")
                assert_unharmed(baseline[name], after[name], f"viewer of {name} after the churn")
            assert server.rss_mb() < rss_before + 50
            # visible: the joins went through the bridge, started a few times, not once per join
            joins = await server.metric("camtrack_join_bridge_joins_total", camera="a")
            runs = await server.metric("camtrack_join_bridge_runs_total", camera="a") - bridge_runs
            print(f"bridge: {joins:.0f} joins bridged, {runs:.0f} runs")
            assert joins >= 0.5 * tried and runs <= 10, (joins, runs)
        finally:
            await stop(honest)
