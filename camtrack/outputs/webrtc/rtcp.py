"""What a viewer's RTCP may ask of the server: keyframe requests (PLI/FIR, in both FIR forms) reach
the track within a limit, NACKs within a rate and a share of the bitrate; and `guard_peer`, which
puts these, the ICE gate (icegate.py) and the silence clock (hearing.py) on one peer.

aiortc handles RTCP itself; the hooks that change that reach it through camtrack.seams.aiortc.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    unpack_remb_fci,
)

from ...media.ratelimit import TokenBucket
from ...seams import aiortc as aiortc_seam
from .hearing import Hearing, listen
from .icegate import IceGate, guard_ice

#: NACK packets a second (and at once) a viewer may send; each may name up to RTP_HISTORY_SIZE packets
NACK_RATE = 50.0
NACK_BURST = 50.0
#: one viewer's keyframe requests are honoured at most once per this many seconds (or per keyframe
#: interval, when that is shorter): a viewer whose keyframe was lost too gets the next within a
#: second, and one viewer can force at most one keyframe a second (the encoder's budget for all
#: viewers together is 2; libwebrtc's own sender takes one request per 300 ms)
KEYFRAME_REQUEST_INTERVAL = 1.0
#: a viewer's retransmissions may use this fraction of the stream's bitrate ...
RETRANSMIT_SHARE = 0.25
#: ... with bursts of up to this many bytes (a lost keyframe at 1 Mbit/s is ~20-40 KB)
RETRANSMIT_BURST = 64 * 1024
#: bytes a retransmission adds to its payload on the wire: RTP header and extensions, the RTX
#: sequence number, the SRTP tag
RETRANSMIT_OVERHEAD = 48


# --- RTCP: keyframe requests and retransmissions, limited per viewer -----------------------------

@dataclass
class RtcpPolice:
    """What one peer's RTCP may ask of the server, past the gate's packet rate."""

    nack_budget: TokenBucket = field(default_factory=lambda: TokenBucket(NACK_BURST, NACK_RATE))
    #: NACK packets dropped over the budget, and NACK lists cut to what a sender keeps
    nacks_dropped: int = 0
    nacks_cut: int = 0
    #: the receiver's estimated maximum bitrate (REMB, bit/s) when it sends one, and the packets its
    #: NACKs named (docs/quality.md: what its link loses, seen before any retransmission)
    remb: int | None = None
    nacked: int = 0


def police_rtcp(dtls: RTCDtlsTransport) -> RtcpPolice:
    """Route FIR in its RFC 5104 form too (media SSRC 0, the sender's SSRC in each FCI entry:
    aiortc routes feedback by its media SSRC only, so that form was dropped); hold NACKs to
    NACK_RATE a second and to the RTP_HISTORY_SIZE newest numbers a sender can resend at all
    (one datagram can list thousands, each a retransmission aiortc would look up in turn)."""
    router = aiortc_seam.rtp_router(dtls)
    police = RtcpPolice()

    def route_rtcp(packet: Any) -> set[Any]:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            if not police.nack_budget.take():
                police.nacks_dropped += 1
                return set()
            if len(packet.lost) > RTP_HISTORY_SIZE:
                police.nacks_cut += 1
                packet.lost = list(dict.fromkeys(packet.lost))[-RTP_HISTORY_SIZE:]
            police.nacked += len(packet.lost)
        recipients = original(packet)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            with contextlib.suppress(ValueError, struct.error):
                police.remb = unpack_remb_fci(packet.fci)[0]
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
            fci = packet.fci
            for offset in range(0, len(fci) - 7, 8):
                (ssrc,) = struct.unpack_from("!L", fci, offset)
                sender = aiortc_seam.sender_by_ssrc(router, ssrc)
                if sender is not None:
                    recipients.add(sender)
        return recipients

    original = aiortc_seam.replace_route_rtcp(router, route_rtcp)
    return police


@dataclass
class KeyframeLimiter:
    """One viewer's keyframe requests (PLI/FIR): the first at once, then one per `interval`
    (`keyframe_request_interval`: KEYFRAME_REQUEST_INTERVAL, or the keyframe interval when shorter).

    A viewer whose loss NACK cannot repair asks again until a keyframe reaches it (browsers every
    200 ms or so); if the keyframe it was sent is lost as well, its next one comes within
    `interval`, not a whole keyframe interval later (users set 10-20 s). What a viewer flooding
    requests can cost the others is bounded twice: by this (one forced keyframe a second at most,
    and since a forced keyframe restarts the encoder's periodic clock, none more than periodic
    ones when the keyframe interval is a second or less), and by the encoder's budget for all
    viewers together (EncoderSettings: 2 a second, at most one per 100 ms).
    """

    interval: float
    allowed: int = 0
    dropped: int = 0
    _last: float | None = None

    def reset(self) -> None:
        """Forget the last request: the next one is let through."""
        self._last = None

    def allow(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self.dropped += 1
            return False
        self._last = now
        self.allowed += 1
        return True


def keyframe_request_interval(keyframe_interval: float) -> float:
    """Seconds between one viewer's keyframe requests that are honoured (see KeyframeLimiter)."""
    return min(keyframe_interval, KEYFRAME_REQUEST_INTERVAL)


def forward_keyframe_requests(pc: RTCPeerConnection, track: MediaStreamTrack,
                              limiter: KeyframeLimiter | None = None) -> None:
    """Pass the viewer's PLI/FIR to `track.request_keyframe()` (and to aiortc's own encoder),
    within `limiter`.

    aiortc turns PLI/FIR into a flag of its own encoder, which pre-encoded packets never
    see; the sender's `_send_keyframe` is where the request surfaces.
    """
    request = getattr(track, "request_keyframe", None)
    for sender in pc.getSenders():
        if sender.track is track:
            _forward_keyframe_requests(sender, request, limiter)


def _forward_keyframe_requests(sender: RTCRtpSender, request: Callable[[], None] | None,
                               limiter: KeyframeLimiter | None) -> None:
    def send_keyframe() -> None:
        if limiter is not None and not limiter.allow():
            return
        original()
        if request is not None:
            request()

    original = aiortc_seam.replace_send_keyframe(sender, send_keyframe)


@dataclass
class RetransmitCap:
    """What one viewer may have retransmitted: a share of the stream's bitrate."""

    bucket: TokenBucket
    sent_bytes: int = 0
    refused: int = 0


def cap_retransmissions(sender: RTCRtpSender, bitrate: int) -> RetransmitCap:
    """Answer NACKs only within RETRANSMIT_SHARE of `bitrate` (bit/s), so a viewer asking for
    everything again cannot make the server send it many times the stream."""
    rate = RETRANSMIT_SHARE * bitrate / 8
    cap = RetransmitCap(TokenBucket(max(RETRANSMIT_BURST, rate / 2), rate))
    history = aiortc_seam.rtp_history(sender)

    async def retransmit(sequence_number: int) -> None:
        packet = history.get(sequence_number % RTP_HISTORY_SIZE)
        if packet is None or packet.sequence_number != sequence_number:
            return  # nothing to resend (aiortc would do nothing either)
        size = RETRANSMIT_OVERHEAD + len(packet.payload)
        if not cap.bucket.take(size):
            cap.refused += 1
            return
        cap.sent_bytes += size
        await original(sequence_number)

    original = aiortc_seam.replace_retransmit(sender, retransmit)
    return cap


@dataclass
class PeerGuard:
    """The protections one peer connection carries, with their counters."""

    gates: list[IceGate]
    keyframes: KeyframeLimiter
    retransmits: list[RetransmitCap]
    rtcp: list[RtcpPolice]
    #: when the viewer was last heard (camtrack.outputs.webrtc.peer closes one silent too long)
    hearing: Hearing = field(default_factory=Hearing)

    @property
    def dropped_packets(self) -> int:
        return sum(g.stats.dropped for g in self.gates)


def guard_peer(pc: RTCPeerConnection, track: MediaStreamTrack, bitrate: int,
               keyframe_interval: float, label: str = "") -> PeerGuard:
    """The ICE gate (icegate.py), the silence clock (hearing.py) and the RTCP limits above for one
    sending peer; call after setLocalDescription. `label` is what the log calls the peer."""
    keyframes = KeyframeLimiter(keyframe_request_interval(keyframe_interval))
    forward_keyframe_requests(pc, track, keyframes)
    retransmits = []
    for sender in pc.getSenders():
        if sender.track is track:
            retransmits.append(cap_retransmissions(sender, bitrate))
    rtcp: dict[int, RtcpPolice] = {}
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if id(dtls) not in rtcp:
            rtcp[id(dtls)] = police_rtcp(dtls)
    return PeerGuard(guard_ice(pc, label), keyframes, retransmits, list(rtcp.values()), listen(pc))
