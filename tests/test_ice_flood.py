"""Issue 18, item 1: a peer-reflexive candidate flood from someone who holds a peer's ICE credentials.

A viewer knows its peer's ICE ufrag and password (they are in its answer). Binding requests
signed with them from thousands of source ports each taught aioice a peer-reflexive candidate and
a pair, re-sorted its check list and started a triggered check: the event loop pinned for tens of
seconds, RSS growing, every peer closed once its consent checks starved. Here camtrack runs as its
own process with an honest viewer of camera a and one of camera b (tests/honest.py); the attacker
gets credentials the honest way (its own /ws session, connected; or a WHEP answer alone, before any
DTLS) and sends signed requests from many source ports, on loopback, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

import aiohttp
import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection

from camtrack.client import Viewer

from .conftest import eventually
from .honest import CONTROL, CamtrackProcess, honest_pair

#: the flood: one signed request from each of this many source ports, over about FLOOD_SECONDS
FLOOD_PORTS = int(os.environ.get("CAMTRACK_FLOOD_PORTS", "16000"))
FLOOD_SECONDS = 6.0
#: where the attacker's source ports come from (below the ephemeral range: nobody's sockets)
FIRST_PORT = 12000
#: the server's memory may grow this much during and after the flood
RSS_BOUND_MB = 40.0
#: ... and this much CPU time (seconds) beyond what serving its viewers takes meanwhile
FLOOD_CPU_BOUND = 3.0
SERVER_ARGS = ("--camera", "a=pattern", "--camera", "b=pattern", "--width", "320", "--height", "240")


@dataclass
class Credentials:
    """What an answer tells its viewer: the server's ICE ufrag and password, its candidate's port,
    and the viewer's own ufrag (the other half of a check's USERNAME)."""

    ufrag: str
    password: str
    port: int
    own_ufrag: str


def credentials(offer: str, answer: str) -> Credentials:
    port = re.search(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", answer)
    assert port is not None, answer
    return Credentials(re.search(r"a=ice-ufrag:(\S+)", answer)[1], re.search(r"a=ice-pwd:(\S+)", answer)[1],
                       int(port[1]), re.search(r"a=ice-ufrag:(\S+)", offer)[1])


def signed_requests(creds: Credentials, count: int = 64) -> list[bytes]:
    """Binding requests as a controlling peer's checks, signed with the server's password."""
    requests = []
    for _ in range(count):
        message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        message.attributes["USERNAME"] = f"{creds.ufrag}:{creds.own_ufrag}"
        message.attributes["PRIORITY"] = 1853824767
        message.attributes["ICE-CONTROLLING"] = int.from_bytes(os.urandom(8), "big")
        message.add_message_integrity(creds.password.encode())
        message.add_fingerprint()
        requests.append(bytes(message))
    return requests


def flood(creds: Credentials, ports: int, seconds: float, stop: threading.Event) -> int:
    """One signed request from each of `ports` source ports (each bound, used once, closed), paced
    over `seconds`; returns how many were sent. Runs in a thread: the test's loop stays free."""
    requests = signed_requests(creds)
    target = ("127.0.0.1", creds.port)
    began = time.monotonic()
    sent = 0
    for index in range(ports):
        if stop.is_set():
            break
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", FIRST_PORT + index))
                sock.sendto(requests[index % len(requests)], target)
                sent += 1
            except OSError:
                continue  # a port someone has: skip it
        ahead = began + seconds * (index + 1) / ports - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return sent


async def whep_credentials(server: CamtrackProcess, camera: str) -> tuple[Credentials, RTCPeerConnection]:
    """A WHEP answer alone: the offer is posted, the answer read, nothing more (no ICE, no DTLS)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.base}/cameras/{camera}/whep", data=offer, headers={"Content-Type": "application/sdp"}) as response:
        assert response.status == 201, await response.text()
        answer = await response.text()
    return credentials(offer, answer), pc


@dataclass
class Sampled:
    """The server seen from outside during the attack: RSS and how late /healthz answered."""

    rss_peak: float = 0.0
    healthz_worst: float = 0.0
    healthz_failures: int = 0


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample(server: CamtrackProcess, until: asyncio.Event, seen: Sampled) -> None:
    while not until.is_set():
        seen.rss_peak = max(seen.rss_peak, server.rss_mb())
        began = time.monotonic()
        try:
            status, _ = await server.get("/healthz", timeout=3)
            if status >= 500:
                seen.healthz_failures += 1
        except OSError:
            seen.healthz_failures += 1
        seen.healthz_worst = max(seen.healthz_worst, time.monotonic() - began)
        await asyncio.sleep(0.2)


async def attacked(*server_args: str, whep: bool) -> None:
    # (with a control viewer of an unattacked camtrack beside: the honest viewers are held to what
    # the flood did to them beyond what the machine's load, the flooding thread's included, did to it)
    async with CamtrackProcess(*SERVER_ARGS, *server_args) as server, \
            honest_pair(server, "a", "b", control=True) as honest:
        attacker: Viewer | None = None
        double: Viewer | None = None
        attacker_pc: RTCPeerConnection | None = None
        try:
            if whep:
                creds, attacker_pc = await whep_credentials(server, "a")
            else:
                # a viewer of camera a that really connects, then floods with its own credentials
                attacker = Viewer(server.ws("a"))
                await attacker.connect()
                assert attacker.pc is not None
                creds = credentials(attacker.pc.localDescription.sdp, attacker.answer_sdp)
                await attacker.frames(5)
                # and its double on the control server, which connects the same and sends nothing
                assert honest.control is not None
                double = Viewer(honest.control.url)
                await double.connect()
                await double.frames(5)
            cpu_idle = cpu_seconds(server.pid)
            await asyncio.sleep(3.0)
            honest.baseline = honest.windows(time.time() - 3.0)
            cpu_rate = (cpu_seconds(server.pid) - cpu_idle) / 3.0  # (serving the viewers)
            rss_before = server.rss_mb()
            seen = Sampled(rss_peak=rss_before)
            done = asyncio.Event()
            sampling = asyncio.ensure_future(sample(server, done, seen))
            stop = threading.Event()
            began = time.time()
            cpu_before = cpu_seconds(server.pid)
            try:
                sent = await asyncio.to_thread(flood, creds, FLOOD_PORTS, FLOOD_SECONDS, stop)
            finally:
                stop.set()
            flood_end = time.time()
            await asyncio.sleep(3.0)  # what the flood left behind (checks, their retransmissions)
            during = honest.windows(began, time.time())
            cpu_during = cpu_seconds(server.pid) - cpu_before
            flood_cpu = cpu_during - cpu_rate * (time.time() - began)
            settled = time.time()
            await asyncio.sleep(4.5)
            after = honest.windows(settled, settled + 4.0)
            done.set()
            await sampling
            rss_after = server.rss_mb()
            cpu_after = cpu_seconds(server.pid) - cpu_before - cpu_during
            ignored = await server.metric("camtrack_ice_ignored_total")
            log = server.log()
            print(f"\nflood: {sent} signed requests from as many ports in {flood_end - began:.1f} s "
                  f"({'WHEP answer alone' if whep else 'connected ws viewer'}, {' '.join(server_args) or 'shared port'})")
            for name in ("a", "b", CONTROL):
                print(f"  viewer {name}: before {honest.baseline[name]}; during {during[name]}; after {after[name]}")
            print(f"  server RSS before {rss_before:.0f} MB, peak {seen.rss_peak:.0f} MB, after {rss_after:.0f} MB; "
                  f"/healthz slowest {seen.healthz_worst * 1000:.0f} ms, failures {seen.healthz_failures}; "
                  f"checks ignored {ignored:.0f}; server CPU {cpu_during:.1f} s in the {during['a'].seconds:.0f} s "
                  f"of the flood and 3 s after ({flood_cpu:.1f} s more than serving the viewers takes), "
                  f"{cpu_after:.1f} s in the next {time.time() - settled:.0f} s")
            assert sent > FLOOD_PORTS // 2
            for viewer in honest.viewers.values():
                assert viewer.error is None, viewer.error
            honest.check(during, "during the flood")
            honest.check(after, "after the flood")
            assert seen.rss_peak - rss_before < RSS_BOUND_MB, (rss_before, seen.rss_peak)
            assert rss_after - rss_before < RSS_BOUND_MB, (rss_before, rss_after)
            assert seen.healthz_worst < 1.0 and seen.healthz_failures == 0, seen
            # the flood cost the server a little CPU, not a core for its duration
            assert flood_cpu < FLOOD_CPU_BOUND, (flood_cpu, cpu_during, cpu_rate)
            # visible: a metric, and one log line for the one peer attacked
            assert ignored > 0
            lines = [line for line in log.splitlines() if "ICE limit reached for" in line]
            assert len(lines) == 1, lines
            # the honest viewers' peers did not close (the viewer of a is alive and watching, above;
            # the attacker's own peer, also of a, may have been cut off)
            assert "of b left" not in log and log.count("of b: connected") == 1, log
        finally:
            if attacker is not None:
                await attacker.close(bye=False)
            if double is not None:
                await double.close(bye=False)
            if attacker_pc is not None:
                await attacker_pc.close()


@pytest.mark.slow  # (a camtrack process of its own: see tests/conftest.py)
@pytest.mark.parametrize("port_mode", ["shared", "per-peer"])
async def test_a_connected_viewer_flooding_its_own_credentials_harms_nobody_else(loopback_ice, port_mode: str) -> None:
    await attacked(*(("--webrtc-port", "0") if port_mode == "per-peer" else ()), whep=False)


@pytest.mark.slow
@pytest.mark.parametrize("port_mode", ["shared", "per-peer"])
async def test_a_whep_answer_alone_is_not_enough_to_pin_the_loop(loopback_ice, port_mode: str) -> None:
    await attacked(*(("--webrtc-port", "0") if port_mode == "per-peer" else ()), whep=True)


def flood_quickly(creds: Credentials, ports: int) -> int:
    return flood(creds, ports, 1.0, threading.Event())


@pytest.mark.parametrize("port_mode", ["shared", "per-peer"])
async def test_a_peer_learns_a_few_addresses_at_most(serve, port_mode: str) -> None:
    """In process: what aioice keeps of a connected peer's flood of signed checks is bounded, the
    rest is counted and logged once, and the peer itself stays connected."""
    from camtrack.app import ICE
    from camtrack.outputs.webrtc import icelimits
    from camtrack.outputs.webrtc.udpmux import MAX_ROUTES

    from .test_hostile_rtc import all_peers
    from .test_udpmux import free_udp_port

    url, app = await serve(webrtc_port=free_udp_port() if port_mode == "shared" else 0)
    viewer = Viewer(url)
    try:
        await viewer.connect()
        await viewer.frames(3)
        assert viewer.pc is not None
        creds = credentials(viewer.pc.localDescription.sdp, viewer.answer_sdp)
        (peer,) = all_peers(app)
        assert peer.guard is not None
        (gate,) = peer.guard.gates
        connection = gate.connection
        signalled = len(connection._remote_candidates)
        before = (icelimits.STATS.learned, icelimits.STATS.routes)
        sent = await asyncio.to_thread(flood_quickly, creds, 300)
        assert sent > 250
        mux = app[ICE].mux
        if mux is None:  # a socket of its own: aioice hears every check, learns a few
            await eventually(lambda: gate.stats.checks_ignored >= sent - 50)  # (a socket buffer may drop some)
            assert icelimits.STATS.learned - before[0] == gate.stats.checks_ignored
        else:  # the shared port hands aioice those of MAX_ROUTES addresses, drops the rest unchecked
            await eventually(lambda: mux.stats.over_routes >= sent - MAX_ROUTES - 50)
            assert icelimits.STATS.routes - before[1] == mux.stats.over_routes
            assert gate.stats.checks_ignored <= MAX_ROUTES
        await asyncio.sleep(0.5)
        assert len(connection._remote_candidates) <= signalled + icelimits.MAX_LEARNED_ADDRESSES
        assert len(connection._check_list) <= signalled + icelimits.MAX_LEARNED_ADDRESSES
        assert len(gate.learned) == icelimits.MAX_LEARNED_ADDRESSES
        await viewer.frames(10)  # the flooding viewer itself still plays
        assert peer.pc.connectionState == "connected"
    finally:
        await viewer.close()


@pytest.mark.slow  # (about 5 s: the trickle keeps to the socket's message rate)
async def test_a_viewer_trickling_endless_candidates_is_bounded(serve) -> None:
    """Each trickled candidate is a pair and a sort of aioice's check list: a peer takes a bounded
    number, and the rest are counted. (An offer that trickles: no end-of-candidates in it.)"""
    from camtrack.outputs.webrtc import icelimits

    from .test_hostile_rtc import all_peers

    url, app = await serve()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = "".join(line + "\r\n" for line in pc.localDescription.sdp.splitlines()
                    if not line.startswith(("a=candidate", "a=end-of-candidates")))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert (await ws.receive_json())["type"] == "hello"
            await ws.send_json({"type": "offer", "sdp": offer})
            assert (await ws.receive_json())["type"] == "answer"
            (peer,) = all_peers(app)
            assert peer.guard is not None
            (gate,) = peer.guard.gates
            before = icelimits.STATS.signalled
            extra = icelimits.MAX_REMOTE_CANDIDATES + 6
            for index in range(extra):  # (within the socket's message rate: signaling.MESSAGE_RATE)
                await ws.send_json({"type": "candidate", "sdpMid": "0",
                                    "candidate": f"candidate:{index} 1 udp 2113937151 127.0.0.1 {20000 + index} typ host"})
                await asyncio.sleep(0.06)
            await eventually(lambda: len(gate.connection._remote_candidates) + gate.stats.candidates_ignored >= extra)
            assert len(gate.connection._remote_candidates) == icelimits.MAX_REMOTE_CANDIDATES
            assert icelimits.STATS.signalled - before == gate.stats.candidates_ignored == 6
            assert len(gate.connection._check_list) <= icelimits.MAX_REMOTE_CANDIDATES
    finally:
        await pc.close()
