"""--webrtc-port: every viewer's ICE, DTLS and SRTP on one UDP socket of the server.

Real aiortc viewers over real UDP on loopback, a real forger on the same port.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket

import aiohttp
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from camtrack.app import CAMERAS, ICE
from camtrack.client import Viewer
from camtrack.outputs.webrtc.addresses import ice_connections
from camtrack.outputs.webrtc.udpmux import MuxTransport, UdpMux

from .conftest import eventually
from .test_hostile_rtc import FORGED, all_peers, udp_socket

VIEWERS = 16


def free_udp_port() -> int:
    """A UDP port nothing listens on now (on every address, as the mux binds it)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        return int(sock.getsockname()[1])


def udp_inodes_of_this_process(pid: int | str = "self") -> set[int]:
    """The inodes of every UDP socket this process (or process `pid`) holds (/proc/PID/fd and
    /proc/net/udp[6])."""
    udp: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            next(lines)
            udp |= {int(line.split()[9]) for line in lines}
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and int(match[1]) in udp:
            mine.add(int(match[1]))
    return mine


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def pc_udp_inodes(pc: RTCPeerConnection) -> set[int]:
    """The UDP sockets of an aiortc peer made here (a test viewer: a socket per candidate)."""
    found = set()
    for connection in ice_connections(pc):
        for protocol in connection._protocols:
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                found.add(os.fstat(sock.fileno()).st_ino)
    return found


def candidates(sdp: str) -> list[tuple[str, int]]:
    return [(m[1], int(m[2])) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", sdp)]


def mux_of(app) -> UdpMux:
    mux = app[ICE].mux
    assert mux is not None
    return mux


async def test_sixteen_viewers_play_through_one_udp_socket(serve):
    port = free_udp_port()
    url, app = await serve(width=320, height=240, webrtc_port=port)
    mux = mux_of(app)
    assert mux.port == port
    viewers = [Viewer(url) for _ in range(VIEWERS)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        for viewer in viewers:
            assert candidates(viewer.answer_sdp) == [("127.0.0.1", port)], viewer.answer_sdp
        results = await asyncio.gather(*(v.frames(10, timeout=60) for v in viewers))
        assert all(len(frames) == 10 and frames[-1].width == 320 for frames in results)
        # the server's peers have no socket of their own: every one of their transports is the mux
        peers = all_peers(app)
        assert len(peers) == VIEWERS
        for peer in peers:
            protocols = [p for c in ice_connections(peer.pc) for p in c._protocols]
            assert protocols and all(isinstance(p.transport, MuxTransport) for p in protocols)
        # and the process holds the viewers' own sockets and exactly one more: the mux's
        assert mux.transport is not None
        server_socket = inode(mux.transport.get_extra_info("socket"))
        viewer_sockets = set().union(*(pc_udp_inodes(v.pc) for v in viewers))
        assert len(viewer_sockets) == VIEWERS
        assert udp_inodes_of_this_process() - viewer_sockets == {server_socket}
        assert mux.peers == VIEWERS and mux.routes == VIEWERS
        # RTP went straight to the socket, a picture's packets batched with UDP GSO (Linux), and
        # the viewers decoded what the kernel split
        assert mux.gso
        assert all(p.rtp is not None and p.rtp.packets > 10 and p.rtp.dropped == 0 for p in peers)
        async with aiohttp.ClientSession() as http, http.get(url.removesuffix("/ws") + "/healthz") as r:
            webrtc = (await r.json())["webrtc"]
        assert webrtc["port"] == port and webrtc["peers"] == VIEWERS and webrtc["routes"] == VIEWERS
        print(f"mux: {mux.stats}")
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
    # a peer's closing removes its ufrag and routes
    await eventually(lambda: mux.peers == 0 and mux.routes == 0, timeout=20)


async def test_forged_packets_on_the_shared_port_break_no_handshake(serve):
    """DTLS records (ServerHello, ClientHello, alert, Certificate), junk, and STUN binding requests
    that carry a viewer's real ufrag but not its password, sent to the shared port before and
    throughout 16 handshakes: every viewer connects and plays."""
    port = free_udp_port()
    url, app = await serve(width=320, height=240, webrtc_port=port)
    mux = mux_of(app)
    forger = udp_socket()
    junk = [*FORGED, bytes(range(64, 256)) * 4, b"\x00" + bytes(range(64, 256)) * 4]
    ufrags: list[str] = []

    async def keep_forging() -> None:
        while True:
            for record in junk:
                forger.sendto(record, ("127.0.0.1", port))
            for ufrag in ufrags:
                forger.sendto(stolen_ufrag_request(ufrag), ("127.0.0.1", port))
            await asyncio.sleep(0.002)

    for record in junk:  # before anyone is there
        forger.sendto(record, ("127.0.0.1", port))
    forging = asyncio.ensure_future(keep_forging())

    async def before_answer(answer: str) -> None:
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)
        assert ufrag is not None
        ufrags.append(ufrag[1])
        for record in junk:  # right after the answer, before the viewer even applies it
            forger.sendto(record, ("127.0.0.1", port))
        forger.sendto(stolen_ufrag_request(ufrag[1]), ("127.0.0.1", port))

    viewers = [Viewer(url) for _ in range(VIEWERS)]
    try:
        await asyncio.gather(*(v.connect(before_answer=before_answer) for v in viewers))
        results = await asyncio.gather(*(v.frames(10, timeout=60) for v in viewers))
        assert all(len(frames) == 10 for frames in results)
        await eventually(lambda: mux.stats.stray_stun > VIEWERS, timeout=10)
        assert mux.routes == VIEWERS
        forger_address = forger.getsockname()
    finally:
        forging.cancel()
        forger.close()
        await asyncio.gather(*(v.close() for v in viewers))
    print(f"forged: {mux.stats}")
    assert forger_address not in mux._routes  # no forged request moved a route to the forger

    assert mux.stats.strangers > 100  # the forgeries were seen, and dropped at the mux
    assert all(p.guard is None or p.guard.gates[0].stats.strangers == 0 for p in all_peers(app))


def stolen_ufrag_request(ufrag: str) -> bytes:
    """A binding request naming a peer's ufrag (anyone on the path can read it) signed with a
    password that is not the peer's."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{ufrag}:evil"
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(b"not the password of anyone here")
    return bytes(request)


async def test_port_zero_keeps_a_socket_per_peer(serve):
    url, app = await serve(width=320, height=240, webrtc_port=0)
    assert app[ICE].mux is None
    viewers = [Viewer(url) for _ in range(2)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        await asyncio.gather(*(v.frames(3) for v in viewers))
        ports = [candidates(v.answer_sdp)[0][1] for v in viewers]
        assert ports[0] != ports[1]
        for peer in all_peers(app):
            assert all(p.transport.get_extra_info("socket") is not None
                       for c in ice_connections(peer.pc) for p in c._protocols)
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


async def test_whep_and_a_public_address_on_the_shared_port(serve):
    """A WHEP viewer plays through the mux, and the answer also offers the --public-address
    (an address of TEST-NET-3: nothing answers there, and the loopback candidate still wins)."""
    port = free_udp_port()
    url, app = await serve(width=320, height=240, webrtc_port=port, public_addresses=["203.0.113.7"])
    mux = mux_of(app)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    track = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url.removesuffix("/ws") + "/whep", data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
        assert candidates(answer) == [("127.0.0.1", port), ("203.0.113.7", port)], answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        video = await asyncio.wait_for(track, 20)
        frames = [await asyncio.wait_for(video.recv(), 20) for _ in range(10)]
        assert frames[-1].width == 320
        assert mux.peers == 1 and len(app[CAMERAS].first.viewers["whep"]) == 1
    finally:
        await pc.close()


def test_a_taken_webrtc_port_is_one_line_and_status_1():
    """Another program on the UDP port: status 1 and one line naming the option, as for the HTTP port."""
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy, socket.socket() as http:
        busy.bind(("0.0.0.0", 0))
        http.bind(("127.0.0.1", 0))
        port, http_port = busy.getsockname()[1], http.getsockname()[1]
        http.close()
        done = subprocess.run([sys.executable, "-m", "camtrack", "--source", "pattern", "--host", "127.0.0.1",
                               "--port", str(http_port), "--webrtc-port", str(port)],
                              env={k: v for k, v in os.environ.items() if k != "CAMTRACK_TOKEN"},
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [f"camtrack: error: cannot bind the WebRTC UDP port {port} (--webrtc-port): "
                      "Address already in use"], done.stderr


async def test_no_socket_is_left_after_peers_that_never_gathered_and_a_stop(loopback_ice):
    """Refused offers, viewers that vanish, a stop: the mux forgets every peer and its socket closes."""
    from aiohttp import web

    from camtrack import Config, create_app
    from camtrack.connections import make_runner

    before = udp_inodes_of_this_process()
    # (the RTSP output off: its UDP pair is not the mux's socket this counts)
    config = Config(host="127.0.0.1", port=0, source="pattern", width=320, height=240, linger=0.5,
                    webrtc_port=free_udp_port(), rtsp_port=0)
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws"  # type: ignore[union-attr]
    mux = mux_of(app)
    try:
        assert len(udp_inodes_of_this_process() - before) == 1
        async with aiohttp.ClientSession() as http:
            for _ in range(5):  # an offer the server refuses (no video): its peer never gathers
                async with http.ws_connect(url) as ws:
                    await ws.receive_json(timeout=10)
                    await ws.send_json({"type": "offer", "sdp": "v=0\r\n"})
                    assert (await ws.receive_json(timeout=10))["type"] == "error"
        viewers = [Viewer(url) for _ in range(3)]
        await asyncio.gather(*(v.connect() for v in viewers))
        await asyncio.gather(*(v.frames(3) for v in viewers))
        await asyncio.gather(*(v.close(bye=False) for v in viewers))  # gone without a word
        await eventually(lambda: mux.peers == 0 and mux.routes == 0, timeout=30)
    finally:
        await asyncio.wait_for(runner.cleanup(), 30)
    assert app[ICE].mux is None and mux.transport is None
    await eventually(lambda: udp_inodes_of_this_process() == before, timeout=10)


async def test_junk_from_strangers_at_the_shared_port_costs_no_memory(serve):
    """Seconds of junk at the shared port from addresses no peer owns: dropped on arrival, no
    route made, memory flat, and a viewer plays through it."""
    from .test_hostile_rtc import rss_mb

    port = free_udp_port()
    url, app = await serve(width=320, height=240, webrtc_port=port)
    mux = mux_of(app)
    honest = Viewer(url)
    await honest.connect()
    await honest.frames(3)
    sockets = [udp_socket() for _ in range(4)]
    junks = [bytes(range(64, 256)) * 6, b"\x00" + bytes(range(64, 256)) * 6, FORGED[0]]
    before, sent = rss_mb(), 0
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            for n, sock in enumerate(sockets):
                try:
                    sock.sendto(junks[n % len(junks)], ("127.0.0.1", port))
                    sent += 1
                except BlockingIOError:
                    pass
            await asyncio.sleep(0)
        frames = await honest.frames(30, timeout=30)
    finally:
        for sock in sockets:
            sock.close()
        await honest.close()
    grown = rss_mb() - before
    print(f"junk at the mux: {sent} datagrams in 3 s, {mux.stats}, RSS +{grown:.1f} MB")
    assert len(frames) == 30
    assert sent > 5000 and mux.stats.strangers > 1000
    assert grown < 40, f"RSS grew {grown:.1f} MB under junk"


async def test_a_batch_of_datagrams_arrives_as_sent_with_gso_and_without(loopback_ice):
    """DirectSend: runs of one size (the last shorter) go in one GSO call each; a receiver gets
    every datagram, in order, byte for byte; the same without GSO."""
    mux = UdpMux(0, address="127.0.0.1")
    await mux.open()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    try:
        sizes = [1201, 1201, 1200, 1200, 1200, 300, 40, 40, 1300]
        for gso in (True, False):
            mux.gso = gso
            packets = [bytes([i]) * size for i, size in enumerate(sizes)]
            send = mux.direct(receiver.getsockname())
            assert send is not None and send(packets) == 0
            assert [receiver.recv(2048) for _ in packets] == packets
            assert mux.gso == gso  # (loopback takes GSO: it was not turned off)
        # a destination the socket may not send to (broadcast, EACCES): those packets are lost,
        # and GSO stays on for everyone else
        mux.gso = True
        send = mux.direct(("255.255.255.255", 9))
        assert send is not None and send([b"x" * 100] * 3) == 3 and mux.gso
    finally:
        receiver.close()
        mux.close()


async def test_public_addresses_by_name_are_resolved_when_a_peer_gathers():
    mux = UdpMux(0, ["localhost", "203.0.113.9"])  # (localhost: /etc/hosts, no DNS query leaves)
    hosts = await mux.public_hosts()
    assert "127.0.0.1" in hosts and "203.0.113.9" in hosts
