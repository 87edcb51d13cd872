"""camtrack's hooks into aiortc/aioice private attributes: each one still exists.

If an upgrade of aiortc or aioice moves one of these, this fails and names it, instead of a
protection (the ICE gate, the RTCP limits) silently turning off.
"""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack

from camtrack.outputs.webrtc import hooks


def test_every_hooked_class_attribute_exists() -> None:
    hooks.check_hooks()
    for owner, name in hooks.HOOKED:
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
        for kind, names in hooks.INSTANCE_HOOKED.items():
            for name in names:
                if kind in objects:
                    assert hasattr(objects[kind], name), f"{kind}.{name} is gone"
        guard = hooks.guard_peer(sender_pc, track, bitrate=1_000_000, keyframe_interval=2.0)
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
        for name in hooks.INSTANCE_HOOKED["Session"]:
            assert hasattr(dtls._tx_srtp, name), f"Session.{name} is gone"
        protect = hooks.fast_protect(dtls._tx_srtp)
        packet = bytes([0x80, 96, 0, 1]) + bytes(8) + b"payload"
        assert len(protect(packet)) > len(packet)
    finally:
        await asyncio.gather(sender_pc.close(), receiver_pc.close())


def test_keyframe_limiter_lets_one_request_through_per_interval() -> None:
    limiter = hooks.KeyframeLimiter(interval=60.0)
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
        template = hooks._HeaderTemplate(102, 0x12345678, "0", mapping)
        assert template.offset != -1
        for timestamp, abs_send_time, seq, marker in ((0, 0, 0, 0), (0xFFFFFFFF, 0xABCDEF, 65535, 1), (90000, 7, 12, 1)):
            packet = RtpPacket(102, marker, seq, timestamp, 0x12345678, b"payload")
            packet.extensions.mid = "0"
            packet.extensions.abs_send_time = abs_send_time
            first, rest = template.header(timestamp, abs_send_time)
            ours = hooks._HEAD.pack(first, marker << 7 | 102, seq) + rest + b"payload"
            assert ours == packet.serialize(mapping)


def test_fast_protect_encrypts_as_pylibsrtp_does() -> None:
    """The same key and packets through pylibsrtp's own protect and camtrack's give the same bytes."""
    import os

    from pylibsrtp import Policy, Session

    key = os.urandom(30)
    ours = hooks.fast_protect(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
    theirs = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    for seq in range(5):
        packet = bytes([0x80, 96]) + (1000 + seq).to_bytes(2, "big") + bytes(8) + os.urandom(1000 + seq)
        assert ours(packet) == theirs.protect(packet)
    with pytest.raises(ValueError):
        ours(bytes(1500))


def test_history_answers_nacks_with_what_was_sent() -> None:
    """A sender's history rebuilds each packet of a picture (sequence number, marker, payload)."""
    from aiortc.rtp import RTP_HISTORY_SIZE

    history = hooks._History(payload_type=102, ssrc=7)
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

    assert abs(hooks._ntp_now() - clock.current_ntp_time()) < (1 << 32) // 100  # within 10 ms


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
