"""camtrack's seams into aiortc, aioice, aiohttp and pylibsrtp (camtrack/seams/): each attribute
they touch still exists, and each seam still does what camtrack relies on it for, on live objects.

If an upgrade of one of these libraries moves an attribute, this fails and names it; if it keeps
the name but changes what it means, the behavioural checks fail (what a sender report says, that
PLI/FIR reach the keyframe hook, that the gate drops a stranger, which addresses are gathered,
that an HTTP connection is seen serving and idle), instead of a protection silently turning off.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpSrPacket

from camtrack import seams
from camtrack.outputs.webrtc import rtpsend
from camtrack.outputs.webrtc.addresses import restrict_host_addresses
from camtrack.outputs.webrtc.rtcp import KeyframeLimiter, guard_peer
from camtrack.outputs.webrtc.rtpsend import RtpFrame, fast_protect, send_rtp_once

from .conftest import eventually


def test_every_hooked_class_attribute_exists() -> None:
    seams.check_hooks()
    for owner, name in seams.HOOKED:
        assert hasattr(owner, name), f"{owner}.{name} is gone"


async def test_every_hooked_instance_attribute_exists_on_a_live_peer(loopback_ice) -> None:
    sender_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        track = VideoStreamTrack()
        sender_pc.addTransceiver(track, direction="sendonly")
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender_pc.setRemoteDescription(RTCSessionDescription(receiver_pc.localDescription.sdp, "answer"))
        sender = sender_pc.getSenders()[0]
        dtls = sender.transport
        gatherer = dtls.transport.iceGatherer
        objects = {
            "RTCIceGatherer": gatherer,
            "Connection": gatherer._connection,
            "RTCDtlsTransport": dtls,
            "RTCIceTransport": dtls.transport,
            "RtpRouter": dtls._rtp_router,
            "RTCRtpSender": sender,
            "Candidate": gatherer._connection.local_candidates[0],
        }
        for kind, names in seams.INSTANCE_HOOKED.items():
            for name in names:
                if kind in objects:
                    assert hasattr(objects[kind], name), f"{kind}.{name} is gone"
        guard = guard_peer(sender_pc, track, bitrate=1_000_000, keyframe_interval=2.0)
        assert len(guard.gates) == 1 and guard.gates[0].connection is gatherer._connection
        # the guarded pair still connects: the gate lets the validated path through
        connected = asyncio.get_running_loop().create_future()

        @sender_pc.on("connectionstatechange")
        def changed() -> None:
            if sender_pc.connectionState == "connected" and not connected.done():
                connected.set_result(True)

        await asyncio.wait_for(connected, 20)
        assert guard.gates[0].stats.passed > 0 and guard.gates[0].stats.dropped == 0
        # what exists only once DTLS is done: the SRTP session
        for name in seams.INSTANCE_HOOKED["Session"]:
            assert hasattr(dtls._tx_srtp, name), f"Session.{name} is gone"
        protect = fast_protect(dtls._tx_srtp)
        packet = bytes([0x80, 96, 0, 1]) + bytes(8) + b"payload"
        assert len(protect(packet)) > len(packet)
    finally:
        await asyncio.gather(sender_pc.close(), receiver_pc.close())


def test_keyframe_limiter_lets_one_request_through_per_interval() -> None:
    limiter = KeyframeLimiter(interval=60.0)
    assert limiter.allow()
    assert not any(limiter.allow() for _ in range(100))
    assert (limiter.allowed, limiter.dropped) == (1, 100)


def test_header_template_writes_what_aiortc_serializes() -> None:
    """camtrack's RTP loop patches a header serialized once; it must equal aiortc's own, per packet."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    ]))
    for mapping in (extensions_map, HeaderExtensionsMap()):
        template = rtpsend._HeaderTemplate(102, 0x12345678, "0", mapping)
        assert template.offset != -1
        for timestamp, abs_send_time, seq, marker in ((0, 0, 0, 0), (0xFFFFFFFF, 0xABCDEF, 65535, 1), (90000, 7, 12, 1)):
            packet = RtpPacket(102, marker, seq, timestamp, 0x12345678, b"payload")
            packet.extensions.mid = "0"
            packet.extensions.abs_send_time = abs_send_time
            first, rest = template.header(timestamp, abs_send_time)
            ours = rtpsend._HEAD.pack(first, marker << 7 | 102, seq) + rest + b"payload"
            assert ours == packet.serialize(mapping)


def test_fast_protect_encrypts_as_pylibsrtp_does() -> None:
    """The same key and packets through pylibsrtp's own protect and camtrack's give the same bytes."""
    import os

    from pylibsrtp import Policy, Session

    key = os.urandom(30)
    ours = fast_protect(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
    theirs = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    for seq in range(5):
        packet = bytes([0x80, 96]) + (1000 + seq).to_bytes(2, "big") + bytes(8) + os.urandom(1000 + seq)
        assert ours(packet) == theirs.protect(packet)
    with pytest.raises(ValueError):
        ours(bytes(1500))


def test_history_answers_nacks_with_what_was_sent() -> None:
    """A sender's history rebuilds each packet of a picture (sequence number, marker, payload)."""
    from aiortc.rtp import RTP_HISTORY_SIZE

    history = rtpsend._History(payload_type=102, ssrc=7)
    history.mid = "0"
    payloads = [b"a", b"bb", b"ccc"]
    first = 65534  # the numbers wrap inside the picture
    for i in range(3):
        history.sent[(first + i) % RTP_HISTORY_SIZE] = (first, 9000, payloads, 1234)
    got = [history.get((first + i) % RTP_HISTORY_SIZE) for i in range(3)]
    assert [(p.sequence_number, p.marker, p.payload, p.timestamp, p.ssrc) for p in got] == [
        (65534, 0, b"a", 9000, 7), (65535, 0, b"bb", 9000, 7), (0, 1, b"ccc", 9000, 7)]
    assert all(p.extensions.mid == "0" and p.extensions.abs_send_time == 1234 for p in got)
    assert history.get((first + 3) % RTP_HISTORY_SIZE) is None and history.get(-1) is None
    assert len(history.values()) == 3


def test_ntp_now_agrees_with_aiortcs_clock() -> None:
    from aiortc import clock

    # read between two readings of aiortc's clock (one after the other, a loaded machine may
    # preempt the test between them for longer than any bound on their difference), within 1 ms
    # (aiortc's keeps microseconds)
    before = clock.current_ntp_time()
    now = rtpsend._ntp_now()
    after = clock.current_ntp_time()
    ms = (1 << 32) // 1000
    assert before - ms <= now <= after + ms, (before, now, after)


async def test_viewers_share_one_packetization_and_camtracks_rtp_loop_sends(serve) -> None:
    """Two viewers of the shared encoder: each picture is packetized once (its payloads cached
    on the packet, for both), and camtrack's RTP loop, not aiortc's, sent them."""
    from camtrack.app import CAMERAS
    from camtrack.client import Viewer
    from camtrack.media.feeds import Transport
    from camtrack.outputs.webrtc.signaling import Session

    url, app = await serve(width=320, height=240)
    viewers = [Viewer(url), Viewer(url)]
    for viewer in viewers:
        await viewer.connect()
    for viewer in viewers:
        await viewer.frames(10)
    camera = app[CAMERAS].first
    sessions = [v for v in camera.viewers[Transport.WEBSOCKET] if isinstance(v, Session)]
    peers = [s.peer for s in sessions if s.peer is not None]
    assert len(peers) == 2 and all(p.rtp is not None and p.rtp.packets > 10 for p in peers)
    assert camera.feed is not None
    packed = [p for p in camera.feed._ring if p.shared]
    assert packed and all(list(p.shared) == ["video/H264"] for p in packed)
    await asyncio.gather(*(v.close() for v in viewers))


# --- behavioural checks, one per seam ---------------------------------------------------------------

class KeyframeTrack(VideoStreamTrack):
    """A sendonly track that only counts the keyframe requests that reach it (no frame is encoded:
    the tests below send with camtrack's own loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def request_keyframe(self) -> None:
        self.requests += 1


class Pair:
    """A sending aiortc peer (camtrack's RTP loop in place of aiortc's, fed from `frames`) and a
    receiving one that records the RTP and RTCP reaching it, connected on loopback."""

    def __init__(self) -> None:
        self.sender_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.receiver_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = KeyframeTrack()
        self.frames: asyncio.Queue[RtpFrame] = asyncio.Queue()
        self.rtp: list[Any] = []
        self.sender_reports: list[RtcpSrPacket] = []

    async def next_frame(self, codec: Any) -> RtpFrame:
        return await self.frames.get()

    async def connect(self, before: Callable[[RTCPeerConnection], None] = lambda pc: None) -> None:
        self.sender_pc.addTransceiver(self.track, direction="sendonly")
        self.sender = self.sender_pc.getSenders()[0]
        self.stats = send_rtp_once(self.sender, self.next_frame)
        await self.sender_pc.setLocalDescription(await self.sender_pc.createOffer())
        before(self.sender_pc)  # (after gathering, before any check: where camtrack guards a peer)
        await self.receiver_pc.setRemoteDescription(self.sender_pc.localDescription)
        receiver = self.receiver_pc.getReceivers()[0]
        handle_rtcp = receiver._handle_rtcp_packet

        async def rtp(packet: Any, arrival_time_ms: int) -> None:
            self.rtp.append(packet)  # recorded, not decoded (the payloads are not video)

        async def rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                self.sender_reports.append(packet)
            await handle_rtcp(packet)

        receiver._handle_rtp_packet = rtp
        receiver._handle_rtcp_packet = rtcp
        await self.receiver_pc.setLocalDescription(await self.receiver_pc.createAnswer())
        await self.sender_pc.setRemoteDescription(
            RTCSessionDescription(self.receiver_pc.localDescription.sdp, "answer"))
        await eventually(lambda: self.sender_pc.connectionState == "connected"
                         and self.receiver_pc.connectionState == "connected", timeout=20)

    async def viewer_rtcp(self, packet: Any) -> None:
        """Send `packet` (RTCP) from the receiving peer to the sender, over SRTCP."""
        await self.receiver_pc.getReceivers()[0].transport._send_rtp(bytes(packet))

    async def close(self) -> None:
        await asyncio.gather(self.sender_pc.close(), self.receiver_pc.close())


@asynccontextmanager
async def connected_pair(before: Callable[[RTCPeerConnection], None] = lambda pc: None) -> AsyncIterator[Pair]:
    pair = Pair()
    try:
        await pair.connect(before)
        yield pair
    finally:
        await pair.close()


async def test_a_sender_report_tells_what_camtracks_rtp_loop_sent(loopback_ice) -> None:
    """seams.aiortc: after N pictures sent through RtpStream, aiortc's own sender report (and
    getStats) counts their packets and payload octets and carries the last picture's NTP and RTP
    times; the viewer got every packet, numbered in order, marked at each picture's end, with
    timestamps 90 kHz apart as the pictures' were."""
    async with connected_pair() as pair:
        pictures = [[bytes([i, j]) * (100 + 10 * j) for j in range(1 + i % 3)] for i in range(12)]
        frames = []
        for i, payloads in enumerate(pictures):
            frame = RtpFrame(payloads, timestamp=3000 * i, captured=0.0)
            frames.append(frame)
            pair.frames.put_nowait(frame)
        packets = sum(map(len, pictures))
        octets = sum(len(p) for payloads in pictures for p in payloads)
        await eventually(lambda: len(pair.rtp) == packets)
        assert (pair.stats.frames, pair.stats.packets) == (len(pictures), packets)
        # what the viewer got
        first = pair.rtp[0]
        assert [p.payload for p in pair.rtp] == [p for payloads in pictures for p in payloads]
        assert [p.sequence_number for p in pair.rtp] == [(first.sequence_number + i) & 0xFFFF for i in range(packets)]
        assert [p.marker for p in pair.rtp] == [int(j == len(payloads) - 1) for payloads in pictures
                                                for j in range(len(payloads))]
        stamps = [p.timestamp for p in pair.rtp if p.marker]
        assert [(t - stamps[0]) & 0xFFFFFFFF for t in stamps] == [f.timestamp for f in frames]
        assert len({p.ssrc for p in pair.rtp}) == 1
        # what aiortc's RTCP says about it (its reports go out every 0.5-1.5 s)
        await eventually(lambda: any(r.sender_info.packet_count == packets for r in pair.sender_reports))
        report = next(r for r in pair.sender_reports if r.sender_info.packet_count == packets)
        assert report.ssrc == first.ssrc
        assert report.sender_info.octet_count == octets
        assert report.sender_info.ntp_timestamp == frames[-1].ntp
        assert report.sender_info.rtp_timestamp == stamps[-1]
        stats = await pair.sender.getStats()
        outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
        assert (outbound.packetsSent, outbound.bytesSent) == (packets, octets)


async def test_pli_and_fir_in_both_forms_reach_the_keyframe_hook(loopback_ice) -> None:
    """seams.aiortc: a viewer's PLI, its FIR by media SSRC, and its FIR in RFC 5104's form (media
    SSRC 0, the sender's SSRC in the FCI) each reach the track's request_keyframe, through the
    limiter; and a NACK flood past the budget is dropped before aiortc sees it."""
    guards = []
    async with connected_pair(lambda pc: guards.append(guard_peer(pc, pc.getSenders()[0].track, 1_000_000, 0.0))) as pair:
        (guard,) = guards
        ssrc = pair.sender._ssrc
        viewer = pair.receiver_pc.getReceivers()[0]._RTCRtpReceiver__rtcp_ssrc
        await pair.viewer_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=viewer, media_ssrc=ssrc))
        await eventually(lambda: pair.track.requests == 1)
        await pair.viewer_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=viewer, media_ssrc=ssrc,
                                              fci=struct.pack("!LBxxx", ssrc, 1)))
        await eventually(lambda: pair.track.requests == 2)
        await pair.viewer_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=viewer, media_ssrc=0,
                                              fci=struct.pack("!LBxxx", ssrc, 2)))
        await eventually(lambda: pair.track.requests == 3)
        assert (guard.keyframes.allowed, guard.keyframes.dropped) == (3, 0)
        # a limiter of a second lets the next one wait
        guard.keyframes.interval = 60.0
        await pair.viewer_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=viewer, media_ssrc=ssrc))
        await eventually(lambda: guard.keyframes.dropped == 1)
        assert pair.track.requests == 3


async def test_the_gate_drops_a_strangers_datagram_and_hearing_counts_the_viewer(loopback_ice) -> None:
    """seams.aioice: once connected, a datagram at the peer's port from an address that is no
    candidate pair never reaches DTLS (counted as a stranger's), while the viewer's own keep
    arriving and are heard."""
    guards = []
    async with connected_pair(lambda pc: guards.append(guard_peer(pc, pc.getSenders()[0].track, 1_000_000, 2.0))) as pair:
        (guard,) = guards
        gate = guard.gates[0]
        port = gate.connection.local_candidates[0].port
        await eventually(lambda: guard.hearing.datagrams > 0, timeout=20)  # RTCP, consent checks
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for _ in range(3):
                stranger.sendto(b"\x16\xfe\xfd" + bytes(60), ("127.0.0.1", port))  # a DTLS record
            await eventually(lambda: gate.stats.strangers == 3)
        assert gate.stats.held == 0 and gate.connection._queue.qsize() == 0
        heard = guard.hearing.datagrams
        await pair.viewer_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=pair.sender._ssrc))
        await eventually(lambda: guard.hearing.datagrams > heard)
        assert guard.hearing.silence() < 5
        assert pair.sender_pc.connectionState == "connected"


async def test_the_host_address_restriction_gathers_only_the_given_addresses(loopback_ice) -> None:
    """seams.aioice: what restrict_host_addresses names is all aioice gathers on (per family), and
    undoing it restores what was there."""
    import aioice.ice

    before = aioice.ice.get_host_addresses
    undo = restrict_host_addresses(["127.0.0.1", "::1"])
    try:
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(False, True) == ["::1"]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("video", direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            hosts = {line.split()[4] for line in pc.localDescription.sdp.splitlines()
                     if line.startswith("a=candidate:")}
            assert hosts and hosts <= {"127.0.0.1", "::1"}
        finally:
            await pc.close()
    finally:
        undo()
    assert aioice.ice.get_host_addresses is before


async def test_a_connection_is_seen_serving_a_request_and_then_idle(loopback_ice) -> None:
    """seams.aiohttp: the tracker hears when a request's headers are in and when its response is
    written (it closes idle connections and those not reading, and caps their number on that)."""
    import aiohttp
    from aiohttp import web

    from camtrack.config import Config
    from camtrack.connections import make_runner

    inside = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        inside.set()
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", slow)
    runner = make_runner(app, Config(source="pattern"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    tracker = runner.tracker
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/"))
            await asyncio.wait_for(inside.wait(), 10)
            (handler,) = tracker.open
            assert handler not in tracker.waiting  # serving: no header deadline
            assert seams.aiohttp.handler_task(handler) is not None
            for name in seams.INSTANCE_HOOKED["RequestHandler"]:
                assert hasattr(handler, name), f"RequestHandler.{name} is gone"
            for name in seams.INSTANCE_HOOKED["Server"]:
                assert hasattr(runner.server, name), f"Server.{name} is gone"
            release.set()
            response = await asyncio.wait_for(request, 10)
            assert await response.text() == "ok"
            await eventually(lambda: handler in tracker.waiting)  # idle keep-alive: the deadline again
    finally:
        await runner.cleanup()


def rsa_viewer() -> RTCPeerConnection:
    """An aiortc peer whose DTLS certificate is RSA, as GStreamer's webrtcbin's is (aiortc's own
    are ECDSA): a stand-in for such clients in fast tests."""
    from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc._RTCPeerConnection__certificates = [RTCCertificate(key=key, cert=generate_certificate(key))]  # type: ignore[attr-defined]
    return pc


async def answered_by_aiortc(as_server: bool) -> tuple[str, str, list[str]]:
    """An RSA-certificate viewer's actpass offer answered by a plain aiortc peer (through the seam
    when `as_server`): the answer's setup line, the viewer's connection state once settled, and
    the answerer's DTLS roles."""
    viewer = rsa_viewer()
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        viewer.addTransceiver("video", direction="recvonly")
        await viewer.setLocalDescription(await viewer.createOffer())
        assert "a=setup:actpass" in viewer.localDescription.sdp
        server.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await server.setRemoteDescription(viewer.localDescription)
        if as_server:
            seams.aiortc.answer_as_dtls_server(server)
        await server.setLocalDescription(await server.createAnswer())
        setup = next(line for line in server.localDescription.sdp.splitlines() if line.startswith("a=setup:"))
        await viewer.setRemoteDescription(RTCSessionDescription(server.localDescription.sdp, "answer"))
        await eventually(lambda: viewer.connectionState in ("connected", "failed"), timeout=20)
        return setup, viewer.connectionState, [seams.aiortc.dtls_role(t) for t in seams.aiortc.dtls_transports(server)]
    finally:
        await asyncio.gather(viewer.close(), server.close())


async def test_the_dtls_server_seam_answers_actpass_passive_and_an_rsa_peer_connects(loopback_ice) -> None:
    """seams.aiortc.answer_as_dtls_server: the answer says a=setup:passive, the answerer's DTLS
    transport accepts the handshake, and a viewer with an RSA certificate connects. The control:
    aiortc's own answer is active and that viewer fails (its DTLS client offers ECDSA suites only:
    "no shared cipher"); if an aiortc upgrade makes the control connect, the seam is no longer needed."""
    assert await answered_by_aiortc(as_server=True) == ("a=setup:passive", "connected", ["server"])
    setup, state, roles = await answered_by_aiortc(as_server=False)
    assert (setup, roles) == ("a=setup:active", ["client"])
    assert state == "failed", "aiortc's DTLS client now accepts an RSA server: answer_as_dtls_server may go"
