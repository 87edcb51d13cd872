"""A hostile network against the WebRTC side: forged packets, junk, RTCP floods.

Real aiortc peers over real UDP sockets on loopback; an honest viewer watches throughout
and must not notice.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time

import pytest
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)
from av import VideoFrame

from camtrack.app import CAMERAS
from camtrack.client import Viewer
from camtrack.outputs.webrtc.icegate import PENDING_PACKETS
from camtrack.outputs.webrtc.peer import Peer
from camtrack.outputs.webrtc.rtcp import RETRANSMIT_BURST, RETRANSMIT_SHARE, PeerGuard

from .conftest import eventually


def candidate_ports(sdp: str) -> list[int]:
    """The UDP ports of the host candidates in an SDP."""
    return [int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host", sdp)]


def media_ssrc(sdp: str) -> int:
    return int(re.search(r"a=ssrc:(\d+) ", sdp).group(1))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def dtls_record(content_type: int, handshake_type: int | None = None, body: bytes = b"\x00" * 40) -> bytes:
    """A DTLS 1.2 record as a forger would write it: valid framing, nonsense inside."""
    if handshake_type is not None:
        body = (bytes([handshake_type]) + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00"
                + len(body).to_bytes(3, "big") + body)
    return bytes([content_type, 0xFE, 0xFD]) + b"\x00\x00" + b"\x00\x00\x00\x00\x00\x01" + struct.pack(
        "!H", len(body)) + body


FORGED = [
    dtls_record(22, 2),   # ServerHello
    dtls_record(22, 1),   # ClientHello
    dtls_record(21, body=b"\x02\x28"),  # fatal alert: handshake_failure
    dtls_record(22, 11),  # Certificate
]


def all_peers(app) -> list[Peer]:
    """Every peer of the first camera, connected or not."""
    camera = app[CAMERAS].first
    sessions = [s for group in camera.viewers.values() for s in group]
    sessions += [s for s, owner in app[CAMERAS].pending.items() if owner is camera]
    peers = [getattr(s, "peer", None) for s in sessions]
    return [p for p in peers if p is not None and p.guard is not None]


def guards(app, connected: bool | None = None) -> list[PeerGuard]:
    return [p.guard for p in all_peers(app) if connected is None or p.connected == connected]


async def beside_an_attacker(viewer: Viewer, attacker: Attacker) -> int:
    """Connect an honest viewer and an attacker, both playing (5 pictures each); the SSRC of the
    stream the attacker receives, for its RTCP to name."""
    await asyncio.gather(viewer.connect(), attacker.connect())
    await asyncio.gather(viewer.frames(5), attacker.frames(5))
    return media_ssrc(attacker.answer_sdp)


async def pli_flood(attacker: Attacker, ssrc: int) -> None:
    """~1000 PLI a second for stream `ssrc`, until cancelled."""
    while True:
        for _ in range(10):
            await attacker.rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=attacker.ssrc(), media_ssrc=ssrc))
        await asyncio.sleep(0.01)  # ~1000 PLI/s


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def test_forged_dtls_cannot_stop_a_handshake(serve):
    """Forged ServerHello/ClientHello/alert/Certificate records sent to the port the answer names,
    from another address, before and during the handshake: every viewer still connects."""
    url, app = await serve(width=320, height=240)
    forger = udp_socket()
    try:
        for attempt in range(5):
            viewer = Viewer(url)
            forging: list[asyncio.Task[None]] = []

            async def forge(answer: str, forging: list[asyncio.Task[None]] = forging) -> None:
                ports = candidate_ports(answer)
                assert ports, answer

                async def keep_forging() -> None:
                    while True:
                        for port in ports:
                            for record in FORGED:
                                forger.sendto(record, ("127.0.0.1", port))
                        await asyncio.sleep(0.005)

                for port in ports:  # right after the answer, before the viewer even applies it
                    for record in FORGED:
                        forger.sendto(record, ("127.0.0.1", port))
                forging.append(asyncio.ensure_future(keep_forging()))

            try:
                await viewer.connect(before_answer=forge)
                frames = await viewer.frames(5, timeout=20)
                assert frames[-1].width == 320, f"attempt {attempt}"
                assert sum(g.gates[0].stats.strangers for g in guards(app)) > 0  # the forgeries were seen, and dropped
            finally:
                for task in forging:
                    task.cancel()
                await viewer.close()
    finally:
        forger.close()


async def test_junk_at_an_unconnected_peer_costs_bounded_memory(serve):
    """UDP junk at the port of a peer that never connects: dropped at once, memory flat;
    an honest viewer keeps playing."""
    url, app = await serve(width=320, height=240, negotiation_timeout=60)
    honest = Viewer(url)
    await honest.connect()
    await honest.frames(3)
    # a viewer whose only candidate never answers: the server's peer for it waits, unconnected
    victim, dead = Viewer(url), udp_socket()
    ports = candidate_ports(await viewer_with_candidate(victim, dead.getsockname()[1]))
    # 1152 bytes that are neither STUN nor valid DTLS, half of them starting like STUN (first byte
    # 0-3), which aioice passes on to DTLS when they do not parse
    junks = [bytes(range(64, 256)) * 6, b"\x00" + bytes(range(64, 256)) * 6]
    sockets = [udp_socket() for _ in range(4)]
    before = rss_mb()
    sent = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for n, sock in enumerate(sockets):
                junk = junks[n % 2]
                for port in ports:
                    try:
                        sock.sendto(junk, ("127.0.0.1", port))
                        sent += 1
                    except BlockingIOError:
                        pass
            await asyncio.sleep(0)
        frames = await honest.frames(30, timeout=20)
        assert len(frames) == 30
    finally:
        for sock in [*sockets, dead]:
            sock.close()
    (victim_guard,) = guards(app, connected=False)
    gate = victim_guard.gates[0]
    assert sent > 5000
    assert gate.stats.strangers > 0 and gate.stats.passed == 0
    assert gate.connection._queue.qsize() == 0
    grown = rss_mb() - before
    print(f"junk: {sent} datagrams ({sent * len(junks[0]) / 1e6:.0f} MB) in 3 s, dropped {gate.stats.dropped}, "
          f"RSS +{grown:.1f} MB")
    assert grown < 40, f"RSS grew {grown:.1f} MB under junk"
    await asyncio.gather(honest.close(), victim.close())


async def test_early_packets_from_a_pair_being_checked_are_bounded(serve):
    """Packets from an address ICE is still checking (a candidate the offer named) are held,
    a few at most, and the rest dropped."""
    url, app = await serve(width=320, height=240, negotiation_timeout=60)
    attacker = udp_socket()
    port = attacker.getsockname()[1]
    viewer = Viewer(url)
    try:
        # offer a candidate that is the attacker's own socket: the server pairs with it and checks it
        await viewer_with_candidate(viewer, port)
        gate = None

        def have_gate() -> bool:
            nonlocal gate
            for guard in guards(app):
                gate = guard.gates[0]
                return gate._is_pair(gate.connection._protocols[0], ("127.0.0.1", port))
            return False

        await eventually(have_gate, timeout=10)
        server_port = gate.connection._protocols[0].local_candidate.port
        for _ in range(200):
            attacker.sendto(dtls_record(22, 2), ("127.0.0.1", server_port))
        await eventually(lambda: gate.stats.held + gate.stats.overflow >= 200, timeout=10)
        assert gate.stats.held == PENDING_PACKETS
        assert gate.stats.overflow == 200 - PENDING_PACKETS
        assert gate.connection._queue.qsize() == 0
    finally:
        attacker.close()
        await viewer.close()


async def viewer_with_candidate(viewer: Viewer, port: int) -> str:
    """Send an offer whose only candidate is 127.0.0.1:`port`; the answer (never applied)."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection

    viewer.session = aiohttp.ClientSession()
    viewer._own_session = True
    viewer.ws = await viewer.session.ws_connect(viewer.url)
    await viewer.receive("hello")
    viewer.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer.pc.addTransceiver("video", direction="recvonly")
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    sdp = re.sub(r"(a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 )\d+", rf"\g<1>{port}", viewer.pc.localDescription.sdp)
    await viewer.ws.send_json({"type": "offer", "sdp": sdp})
    return (await viewer.receive("answer"))["sdp"]


class Attacker(Viewer):
    """A connected viewer that also writes RTCP of its own choosing."""

    def receiver(self):
        return self.pc.getTransceivers()[0].receiver

    async def rtcp(self, packet) -> None:
        await self.receiver()._send_rtcp(packet)

    def ssrc(self) -> int:
        return self.receiver()._RTCRtpReceiver__rtcp_ssrc

    async def received_bytes(self) -> int:
        stats = await self.pc.getStats()
        return sum(s.bytesReceived for s in stats.values() if s.type == "transport")


async def watch_keyframes(app, seconds: float) -> tuple[int, int]:
    """(keyframes, bytes) the shared encoder made in the next `seconds`."""
    stats = app[CAMERAS].first.encoder.stats
    keyframes, sent = stats.keyframes, stats.bytes
    await asyncio.sleep(seconds)  # a measuring window, not a wait for readiness
    return stats.keyframes - keyframes, stats.bytes - sent


async def test_a_pli_flood_does_not_raise_anyones_keyframe_rate(serve):
    url, app = await serve(width=320, height=240, keyframe_interval=1.0)
    honest, attacker = Viewer(url), Attacker(url)
    ssrc = await beside_an_attacker(honest, attacker)
    base_keyframes, base_bytes = await watch_keyframes(app, 5.0)
    flooding = asyncio.ensure_future(pli_flood(attacker, ssrc))
    try:
        counting = asyncio.ensure_future(honest.frames(120, timeout=30))
        keyframes, sent = await watch_keyframes(app, 5.0)
        frames = await counting
    finally:
        flooding.cancel()
    limiter = [g.keyframes for g in guards(app)]
    print(f"PLI flood: keyframes {base_keyframes} -> {keyframes} in 5 s, bytes {base_bytes} -> {sent} "
          f"({sent / base_bytes:.2f}x), requests dropped {sum(k.dropped for k in limiter)}")
    assert sum(k.dropped for k in limiter) > 500  # (the rest of the 5000 the gate dropped first)
    assert keyframes <= base_keyframes + 1
    assert sent <= 1.10 * base_bytes + 20_000
    assert len(frames) == 120
    await asyncio.gather(honest.close(), attacker.close())


def h264_keyframe_starts(payload: bytes) -> bool:
    """Whether an H.264 RTP payload (RFC 6184) carries the start of a keyframe: an SPS or IDR
    slice, alone, in a STAP-A, or the first fragment of an FU-A."""
    if len(payload) < 2:
        return False
    kind = payload[0] & 0x1F
    if kind in (5, 7):
        return True
    if kind == 28:
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    if kind == 24:
        at = 1
        while at + 2 < len(payload):
            size = int.from_bytes(payload[at:at + 2], "big")
            if payload[at + 2] & 0x1F in (5, 7):
                return True
            at += 2 + size
    return False


class LossyViewer(Attacker):
    """An honest viewer on a lossy link: it can lose every packet for a while (retransmissions
    included, so NACK cannot repair it), asks for a keyframe (PLI) every 200 ms until one reaches it,
    as browsers do, and notes when the first packet of each new keyframe arrives (a retransmitted
    one, RTX, does not count).

    Like a browser (libwebrtc clears its packet buffer up to a keyframe), it decodes again from the
    first keyframe after a loss even when packets before it are still missing: aiortc's jitter buffer
    would wait for them until 512 packets later: over 10 s on the low tier (about 30 packets a second),
    and a 1.5 s loss often leaves such a hole (more than camtrack.outputs.webrtc.rtcp.RETRANSMIT_BURST
    or aiortc's 128-packet history can resend)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.losing = False
        #: time.monotonic() of each keyframe's first packet, as sent (not retransmitted), and its RTP timestamp
        self.keyframes: list[float] = []
        self.keyframe_stamps: list[int] = []
        self.pli_sent = 0
        #: the RTP timestamp of the first keyframe after the last loss (None: none came yet)
        self.recovered_at: int | None = None
        #: times it skipped missing packets to decode from a keyframe on
        self.resumed = 0
        self._resume_seq: int | None = None

    async def connect(self, *args, **kwargs) -> None:
        await super().connect(*args, **kwargs)
        receiver = self.receiver()
        original = receiver._handle_rtp_packet
        jitter = receiver._RTCRtpReceiver__jitter_buffer
        media_type = int(re.search(r"a=rtpmap:(\d+) H264/90000", self.answer_sdp).group(1))
        rtx = re.search(rf"a=fmtp:(\d+) apt={media_type}\b", self.answer_sdp)
        rtx_type = int(rtx.group(1)) if rtx else None

        def before_resume(seq: int) -> bool:
            return self._resume_seq is not None and 0 < (self._resume_seq - seq) & 0xFFFF < 0x8000

        async def handle_rtp_packet(packet, arrival_time_ms):
            if self.losing:
                return
            if packet.payload_type == media_type and h264_keyframe_starts(packet.payload):
                self.keyframes.append(time.monotonic())
                self.keyframe_stamps.append(packet.timestamp)
                origin, seq = jitter._origin, packet.sequence_number
                ahead = (seq - origin) & 0xFFFF if origin is not None else 0
                if 0 < ahead < jitter.capacity and any(
                        jitter._packets[(origin + i) % jitter.capacity] is None for i in range(ahead)):
                    jitter.remove(ahead)  # the frames before it cannot be completed: decode from here
                    self._resume_seq, self.resumed = seq, self.resumed + 1
            elif packet.payload_type == media_type and before_resume(packet.sequence_number):
                return  # older than the keyframe it resumed at: of no more use
            elif packet.payload_type == rtx_type and len(packet.payload) >= 2 and before_resume(
                    int.from_bytes(packet.payload[:2], "big")):
                return  # (a retransmission of such a packet)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle_rtp_packet

    async def frames_after_recovery(self, count: int, timeout: float = 10.0) -> list[VideoFrame]:
        """`count` pictures decoded from the first keyframe after the last loss on: it plays again
        (pictures decoded before the loss, still queued, do not count)."""
        assert self.recovered_at is not None, "no keyframe came after the loss"
        origin = self.receiver()._RTCRtpReceiver__timestamp_mapper._origin
        first = (self.recovered_at - origin) % (1 << 32)
        fresh = []
        async with asyncio.timeout(timeout):
            track = await self.track
            while len(fresh) < count:
                frame = await track.recv()
                if (frame.pts - first) % (1 << 32) < (1 << 31):
                    fresh.append(frame)
        return fresh

    async def pli(self) -> None:
        self.pli_sent += 1
        await self.rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.ssrc(), media_ssrc=media_ssrc(self.answer_sdp)))

    async def lose_and_recover(self, losing: float = 1.5, timeout: float = 6.0) -> float:
        """Lose everything for `losing` seconds while asking for keyframes, then go on asking every
        200 ms: the seconds from the end of the loss to the next keyframe that arrives (or `timeout`)."""
        self.losing = True
        self.recovered_at = None
        began = time.monotonic()
        while time.monotonic() - began < losing:
            await self.pli()
            await asyncio.sleep(0.2)
        self.losing = False
        ended = time.monotonic()
        while time.monotonic() - ended < timeout:
            await self.pli()
            for _ in range(4):  # every 200 ms, looking every 50 ms
                if any(t > ended for t in self.keyframes):
                    at = next(i for i, t in enumerate(self.keyframes) if t > ended)
                    self.recovered_at = self.keyframe_stamps[at]
                    return self.keyframes[at] - ended
                await asyncio.sleep(0.05)
        return timeout


@pytest.mark.slow
async def test_a_viewer_whose_keyframe_was_lost_gets_another_within_a_second(serve):
    """--keyframe-interval 20: an honest viewer that loses everything for 1.5 s (the keyframe it
    was sent for its first PLI included) and keeps asking gets a keyframe within about a second
    of the loss ending, not at the next periodic one (up to 20 s later); and an attacker's PLI
    flood meanwhile makes no more keyframes than the shared budget."""
    url, app = await serve(width=320, height=240, keyframe_interval=20.0)
    viewer, attacker = LossyViewer(url), Attacker(url)
    ssrc = await beside_an_attacker(viewer, attacker)
    stats = app[CAMERAS].first.encoder.stats
    waits = []
    for _ in range(2):
        waits.append(await viewer.lose_and_recover())
        await viewer.frames_after_recovery(10)  # it plays again
    flooding = asyncio.ensure_future(pli_flood(attacker, ssrc))
    try:
        keyframes, began = stats.keyframes, time.monotonic()
        for _ in range(2):
            waits.append(await viewer.lose_and_recover())
        flooded = time.monotonic() - began
        made = stats.keyframes - keyframes
        frames = await viewer.frames_after_recovery(30)
    finally:
        flooding.cancel()
    limiter = [g.keyframes for g in guards(app)]
    print(f"lossy viewer, --keyframe-interval 20: keyframe {', '.join(f'{w:.2f}' for w in waits)} s after the loss "
          f"ended (PLI every 200 ms, {viewer.pli_sent} sent; {viewer.resumed} times it decoded again from a "
          f"keyframe past missing packets); with a PLI flood beside it {made} keyframes in {flooded:.1f} s; "
          f"requests allowed {[k.allowed for k in limiter]}, dropped {[k.dropped for k in limiter]}")
    assert max(waits) < 1.5, waits
    # one forced keyframe a second per viewer asking (two here), and never over the encoder's budget
    assert made <= 2 * flooded + 2
    assert made <= stats.forced_keyframes + 1
    assert len(frames) == 30
    await asyncio.gather(viewer.close(), attacker.close())


async def test_fir_in_rfc5104_form_is_honoured(serve):
    """FIR with media SSRC 0 and the sender's SSRC in the FCI asks for a keyframe."""
    url, app = await serve(width=320, height=240, keyframe_interval=30.0)
    viewer = Attacker(url)
    await viewer.connect()
    await viewer.frames(5)
    stats = app[CAMERAS].first.encoder.stats
    await eventually(lambda: stats.frames > 10)
    for guard in guards(app):  # a PLI the client sent while starting may have used this viewer's one request
        guard.keyframes.reset()
    before = stats.forced_keyframes
    fci = struct.pack("!LB3x", media_ssrc(viewer.answer_sdp), 1)
    await viewer.rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=viewer.ssrc(), media_ssrc=0, fci=fci))
    await eventually(lambda: stats.forced_keyframes > before, timeout=5)
    await viewer.close()


async def test_a_nack_flood_gets_a_capped_share_of_the_stream(serve):
    """NACKs for the last 128 packets, 200 times a second: the attacker gets little more than the
    stream itself, and the honest viewer keeps every frame."""
    url, app = await serve(width=320, height=240, bitrate=500_000)
    honest, attacker = Viewer(url), Attacker(url)
    ssrc = await beside_an_attacker(honest, attacker)
    senders = [p.pc.getSenders()[0] for p in all_peers(app)]

    async def flood() -> None:
        while True:
            for sender in senders:
                history = sender._RTCRtpSender__rtp_history
                lost = sorted(p.sequence_number for p in history.values())
                packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=attacker.ssrc(), media_ssrc=ssrc)
                packet.lost = lost
                await attacker.rtcp(packet)
            await asyncio.sleep(1 / 200)

    honest_before, attacker_before = await honest_bytes(honest), await attacker.received_bytes()
    began = time.monotonic()
    flooding = asyncio.ensure_future(flood())
    try:
        frames = await honest.frames(150, timeout=30)
    finally:
        flooding.cancel()
    elapsed = time.monotonic() - began
    honest_got = await honest_bytes(honest) - honest_before
    attacker_got = await attacker.received_bytes() - attacker_before
    caps = [g.retransmits[0] for g in guards(app)]
    # what the cap allows on top of the stream: a share of the bitrate, and one burst
    allowed = RETRANSMIT_SHARE * 500_000 / 8 * elapsed + RETRANSMIT_BURST
    print(f"NACK flood: attacker {attacker_got} B vs honest {honest_got} B in {elapsed:.1f} s "
          f"({attacker_got / honest_got:.2f}x, cap allows +{allowed:.0f} B); "
          f"retransmissions refused {sum(c.refused for c in caps)}, sent {[c.sent_bytes for c in caps]}")
    assert len(frames) == 150
    assert sum(c.refused for c in caps) > 0
    assert attacker_got - honest_got < 1.2 * allowed
    await asyncio.gather(honest.close(), attacker.close())


async def honest_bytes(viewer: Viewer) -> int:
    stats = await viewer.pc.getStats()
    return sum(s.bytesReceived for s in stats.values() if s.type == "transport")


async def test_an_rtcp_flood_is_cut_at_the_gate(serve):
    """Thousands of RTCP packets a second: the gate drops what is over the rate."""
    url, app = await serve(width=320, height=240)
    honest, attacker = Viewer(url), Attacker(url)
    ssrc = await beside_an_attacker(honest, attacker)
    gates = [g.gates[0] for g in guards(app)]
    packet = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=attacker.ssrc(), media_ssrc=ssrc))
    transport = attacker.receiver().transport
    for n in range(3000):  # ~2000 a second, paced so the kernel's receive buffer does not drop them first
        await transport._send_rtp(packet)
        if n % 10 == 9:
            await asyncio.sleep(0.005)
    await eventually(lambda: sum(g.stats.flood for g in gates) > 1000, timeout=10)
    assert len(await honest.frames(30)) == 30
    await asyncio.gather(honest.close(), attacker.close())
