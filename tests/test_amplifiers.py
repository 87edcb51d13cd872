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
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Generic, TypeVar

import aiohttp
import pytest

from .honest import ROOT, CamtrackProcess, HonestPair, Watched, honest_pair

pytestmark = pytest.mark.timeout(110)
T = TypeVar("T")

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


def report(what: str, windows: dict[str, Watched]) -> None:
    for name, seen in windows.items():
        print(f"{what} {name}: {seen}")


@dataclass
class Attacked(Generic[T]):
    """What an attack did: its own result, the server's CPU while it ran (cores) and how long it
    took, the honest viewers' windows during it and in the 3 s after, and the server's RSS at its end."""

    result: T
    cores: float
    seconds: float
    during: dict[str, Watched]
    rss_peak: float
    after: dict[str, Watched]


async def attack(server: CamtrackProcess, honest: HonestPair, run: Awaitable[T], *, skip: float = 0.5,
                 window: float = 0.0) -> Attacked[T]:
    """Run the attack `run`, then read the viewers' window from `skip` s into it to its end (at least
    `window` s long) and the 3 s after, and report both."""
    began = time.time()
    cpu = CpuWindow(server.pid)
    result = await run
    cores = cpu.cores()
    seconds = time.time() - began
    await asyncio.sleep(max(0.0, window - seconds))  # (a window long enough to read fps in)
    during = honest.windows(began + skip)
    rss_peak = server.rss_mb()
    report("during", during)
    after = await honest.watch(3)
    report("after", after)
    return Attacked(result, cores, seconds, during, rss_peak, after)


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


@pytest.mark.slow  # (a camtrack process of its own, or seconds of pacing)
async def test_join_churn_on_a_passed_through_camera_shares_one_bridge():
    """Joins of the websocket stream at 100 a second for 5 s, each between the camera's keyframes
    (4 s apart), each reading one picture and leaving: the join bridge (decode from the keyframe,
    encode again) runs once for all of them instead of once each."""
    async with CameraProcess() as camera, CamtrackProcess(
            "--camera", f"a={camera.url}", "--camera", "b=pattern", "--width", "320", "--height", "240") as server:
        modes = {c["name"]: c["mode"] for c in (await server.json("/api/cameras"))["cameras"]}
        assert modes == {"a": "passthrough", "b": "transcode"}, modes
        async with honest_pair(server, "a", "b", control=True) as honest:
            rss_before = server.rss_mb()
            cpu = CpuWindow(server.pid)
            baseline = await honest.take_baseline(3)
            idle_cpu = cpu.cores()
            report("baseline", baseline)
            bridge_runs = await server.metric("camtrack_join_bridge_runs_total", camera="a")

            churned = await attack(server, honest, churn(server.ws("a"), rate=100, seconds=5))
            (tried, pictures), churn_cpu = churned.result, churned.cores
            print(f"server CPU: idle {idle_cpu:.2f} cores, during the churn {churn_cpu:.2f} cores; {tried} joins, "
                  f"{pictures} pictures; RSS {rss_before:.0f} -> {churned.rss_peak:.0f} -> {server.rss_mb():.0f} MB")
            assert server.alive()
            assert pictures >= 0.9 * tried, (tried, pictures)  # every joiner was served
            assert churn_cpu < 0.5, f"the churn cost {churn_cpu:.2f} cores (idle {idle_cpu:.2f})"
            honest.check(churned.during, "during the churn")
            honest.check(churned.after, "after the churn")
            assert server.rss_mb() < rss_before + 50
            # visible: the joins went through the bridge, started a few times, not once per join
            joins = await server.metric("camtrack_join_bridge_joins_total", camera="a")
            runs = await server.metric("camtrack_join_bridge_runs_total", camera="a") - bridge_runs
            print(f"bridge: {joins:.0f} joins bridged, {runs:.0f} runs")
            assert joins >= 0.5 * tried and runs <= 10, (joins, runs)


# -- /metrics pipelined ------------------------------------------------------------------------------

async def pipeline(port: int, path: str, seconds: float, connections: int = 6, batch: int = 64) -> tuple[int, int]:
    """`connections` connections each sending `batch` requests for `path` at a time (without
    waiting for answers) for `seconds`, reading every answer, connecting again when the server
    closes one; returns (answers read, connections made)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    answers = made = 0

    async def read(reader: asyncio.StreamReader) -> None:
        nonlocal answers
        tail = b""
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return
            chunk = tail + data
            answers += chunk.count(b"HTTP/1.1 ") - tail.count(b"HTTP/1.1 ")
            tail = chunk[-8:]

    async def one() -> None:
        nonlocal made
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            made += 1
            reading = asyncio.ensure_future(read(reader))
            try:
                while loop.time() < deadline and not reading.done():
                    writer.write(request * batch)
                    # the next batch once this one is sent, as a pipelining client would
                    while writer.transport.get_write_buffer_size() > 0 and loop.time() < deadline \
                            and not reading.done():
                        await asyncio.sleep(0.001)
                    await asyncio.sleep(0)
            finally:
                writer.close()
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    await asyncio.gather(*(one() for _ in range(connections)))
    return answers, made


@pytest.mark.slow  # (a camtrack process of its own, or seconds of pacing)
async def test_pipelined_metrics_cost_less_than_they_ask():
    """Six connections pipelining GET /metrics for 5 s, connecting again when closed: the body is
    rendered at most once a second and each client is paced (refused after a second, its connection
    closed), so the honest viewers keep their pictures; the pacing shows in a metric and one log
    line per client."""
    async with CamtrackProcess("--camera", "a=pattern", "--camera", "b=pattern", "--width", "320",
                               "--height", "240", "--token", "secret") as server:
        async with honest_pair(server, "a", "b", "&token=secret", control=True) as honest:
            status, body = await server.get("/metrics")
            assert status == 200 and "camtrack_viewers" in body  # open, token or not (docs/health.md: Metrics)
            rss_before = server.rss_mb()
            cpu = CpuWindow(server.pid)
            baseline = await honest.take_baseline(3)
            idle_cpu = cpu.cores()
            report("baseline", baseline)

            pipelined = await attack(server, honest, pipeline(server.port, "/metrics", 5))
            answers, made = pipelined.result
            print(f"server CPU: idle {idle_cpu:.2f} cores, during the attack {pipelined.cores:.2f} cores; {answers} answers "
                  f"on {made} connections; RSS {rss_before:.0f} -> {pipelined.rss_peak:.0f} -> {server.rss_mb():.0f} MB")
            assert server.alive()
            honest.check(pipelined.during, "during the attack")
            honest.check(pipelined.after, "after the attack")
            assert server.rss_mb() < rss_before + 50
            # the attacker's address has its turns again at once (no turn was lent ahead); the pacing shows
            status, body = await server.get("/metrics")
            assert status == 200, (status, body)
            refused = await server.metric("camtrack_metrics_paced_total", outcome="refused")
            print(f"paced: {refused:.0f} refused")
            assert refused > 0
            assert server.log().count("/metrics requests paced for 127.0.0.1") == 1  # once, not per request
            assert (await server.get("/healthz"))[0] == 200


@pytest.mark.slow  # (a camtrack process of its own, or seconds of pacing)
async def test_metrics_are_rendered_once_a_second_and_paced_per_client(serve):
    """40 requests at once from one address: 20 served at once (the same bytes, rendered once), the
    rest refused 429 after a second, with Retry-After; the address gets its next turn half a second
    later, however many were refused."""
    from camtrack.outputs import metrics

    url, _ = await serve(width=320, height=240)
    root = url.removesuffix("/ws")
    renders = 0
    original = metrics.generate_latest

    def counting(registry):  # type: ignore[no-untyped-def]
        nonlocal renders
        renders += 1
        return original(registry)

    metrics.generate_latest = counting  # type: ignore[assignment]
    try:
        async def get(http: aiohttp.ClientSession) -> tuple[int, float, str]:
            began = time.monotonic()
            async with http.get(root + "/metrics") as r:
                return r.status, time.monotonic() - began, r.headers.get("Retry-After", "")

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            answers = await asyncio.gather(*(get(http) for _ in range(40)))
            served = [seconds for status, seconds, _ in answers if status == 200]
            refused = [(seconds, retry) for status, seconds, retry in answers if status == 429]
            assert len(served) == 20 and len(refused) == 20, answers
            assert max(served) < 0.9 and all(0.9 < seconds < 3 and retry == "1" for seconds, retry in refused), answers
            assert renders == 1
            await asyncio.sleep(0.6)
            assert (await get(http))[0] == 200
    finally:
        metrics.generate_latest = original  # type: ignore[assignment]


# -- offers with hundreds of m-lines ---------------------------------------------------------------

FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)


def bloated_offer(sections: int = 200) -> str:
    """A well-formed offer of `sections` recvonly H.264 video m-lines (34 KiB for 200: under the
    64 KiB bound of an offer), each of which aiortc would answer."""
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
             "a=group:BUNDLE " + " ".join(map(str, range(sections))), "a=ice-ufrag:abcd",
             "a=ice-pwd:" + "p" * 22, FINGERPRINT, "a=setup:actpass"]
    for mid in range(sections):
        lines += ["m=video 9 UDP/TLS/RTP/SAVPF 101", "c=IN IP4 0.0.0.0", "a=recvonly", f"a=mid:{mid}", "a=rtcp-mux",
                  "a=rtpmap:101 H264/90000", "a=fmtp:101 packetization-mode=1;profile-level-id=42e01f"]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.slow  # (a camtrack process of its own, or seconds of pacing)
async def test_offers_with_hundreds_of_m_lines_are_refused_before_parsing():
    """200 WHEP offers of 200 m-lines each (8 at a time): each refused 400 by counting its lines,
    before any parsing or peer; the honest viewers keep their pictures; the refusals show."""
    async with CamtrackProcess("--camera", "a=pattern", "--camera", "b=pattern", "--width", "320",
                               "--height", "240") as server:
        async with honest_pair(server, "a", "b", control=True) as honest:
            rss_before = server.rss_mb()
            baseline = await honest.take_baseline(3)
            report("baseline", baseline)
            failures = await server.metric("camtrack_negotiation_failures_total", camera="a", transport="whep")

            offer = bloated_offer()
            statuses: list[tuple[int, str]] = []
            gate = asyncio.Semaphore(8)

            async def post(http: aiohttp.ClientSession) -> None:
                async with gate, http.post(server.base + "/cameras/a/whep", data=offer,
                                           headers={"Content-Type": "application/sdp"}) as r:
                    statuses.append((r.status, await r.text()))

            async def offers() -> None:
                async with aiohttp.ClientSession() as http:
                    await asyncio.gather(*(post(http) for _ in range(200)))

            offered = await attack(server, honest, offers(), skip=0.0, window=2.5)
            print(f"200 offers in {offered.seconds:.2f} s, server CPU {offered.cores:.2f} cores; "
                  f"RSS {rss_before:.0f} -> {server.rss_mb():.0f} MB")
            assert server.alive()
            assert len(statuses) == 200
            assert all(status == 400 and "200 m-lines; at most 8" in text for status, text in statuses), statuses[:3]
            honest.check(offered.during, "during the offers")
            honest.check(offered.after, "after the offers")
            assert server.rss_mb() < rss_before + 50
            refused = await server.metric("camtrack_negotiation_failures_total", camera="a", transport="whep")
            assert refused - failures == 200
            assert "refused whep offer from 127.0.0.1 for a: the offer has 200 m-lines" in server.log()
            assert (await server.json("/api/cameras"))["cameras"][0]["pending"] == 0  # no peer was made


async def test_offers_are_counted_before_they_are_parsed(serve):
    """/ws and WHEP: an offer over the bounds (m-lines, lines, candidates) gets a clear refusal and
    makes no peer; the socket stays usable and a real offer afterwards plays."""
    from camtrack.app import CAMERAS
    from camtrack.client import Viewer
    from camtrack.media.feeds import Transport
    from camtrack.outputs.webrtc import peer as peer_module

    url, app = await serve(width=320, height=240)
    camera = app[CAMERAS].first
    root = url.removesuffix("/ws")
    made: list[object] = []
    original = peer_module.Peer.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(self)
        original(self, *args, **kwargs)

    peer_module.Peer.__init__ = counting  # type: ignore[method-assign]
    try:
        many_lines = "v=0\r\n" + "a=x\r\n" * 1200
        many_candidates = bloated_offer(1) + "".join(
            f"a=candidate:{i} 1 udp 2130706431 127.0.0.1 {10000 + i} typ host\r\n" for i in range(100))
        cases = [(bloated_offer(9), "the offer has 9 m-lines; at most 8 are answered"),
                 (many_lines, "the offer has 1202 lines; at most 1000"),
                 (many_candidates, "the offer has 100 candidates; at most 64")]
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws:
                assert (await ws.receive_json())["type"] == "hello"
                for sdp, said in cases:
                    await ws.send_json({"type": "offer", "sdp": sdp})
                    error = await asyncio.wait_for(ws.receive_json(), 5)
                    assert error["type"] == "error" and said in error["message"], error
            for sdp, said in cases:
                async with http.post(root + "/whep", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
                    assert r.status == 400 and said in await r.text()
        assert made == []  # refused before any peer was made
        assert camera.meters[Transport.WEBSOCKET].negotiation_failures == 3
        assert camera.meters[Transport.WHEP].negotiation_failures == 3
        assert bloated_offer(8).count("m=video") == 8  # (at the bound: answered below)
    finally:
        peer_module.Peer.__init__ = original  # type: ignore[method-assign]
    viewer = Viewer(url)
    await viewer.connect()
    assert len(await viewer.frames(5)) == 5
    await viewer.close()
