"""The parts of aiortc camtrack relies on that are not its public API (checked against aiortc 1.16).

Each function says what it relies on. Replacing a method (`replace_*`) returns the original,
which the replacement may call: the purpose modules (camtrack.outputs.webrtc.rtcp, rtpsend)
decide what to do, these only reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc.rtp
from aioice.ice import Connection
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter, RtpSender
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import HeaderExtensionsMap

#: (object, attribute) pairs read or replaced below
HOOKED: list[tuple[Any, str]] = [
    (RtpRouter, "route_rtcp"),
    (RTCRtpSender, "_send_keyframe"),
    (RTCRtpSender, "_retransmit"),
    (aiortc.rtp, "RTP_HISTORY_SIZE"),
    (RTCRtpSender, "_run_rtp"),
    (RTCDtlsTransport, "_set_role"),
]
#: attributes set in __init__ (so not on the class), by class name: tests/test_hooks.py checks
#: them on the objects of a live connection
INSTANCE_HOOKED: dict[str, list[str]] = {
    "RTCIceGatherer": ["_connection"],
    "RtpRouter": ["senders"],
    "RTCRtpSender": ["_RTCRtpSender__rtp_history", "_RTCRtpSender__rtp_header_extensions_map",
                     "_RTCRtpSender__mid", "_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited",
                     "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
                     "_RTCRtpSender__octet_count", "_RTCRtpSender__packet_count", "_ssrc", "_enabled"],
    "RTCDtlsTransport": ["_role", "_rtp_router", "_tx_srtp", "_state", "_RTCDtlsTransport__tx_bytes",
                         "_RTCDtlsTransport__tx_packets"],
    "RTCIceTransport": ["_connection"],
}

RouteRtcp = Callable[[Any], set[Any]]
SendKeyframe = Callable[[], None]
Retransmit = Callable[[int], Awaitable[None]]
RunRtp = Callable[[RTCRtpCodecParameters], Awaitable[None]]


# --- ICE under a peer connection ---------------------------------------------------------------

def ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice Connection of each transport of `pc` (one when bundled, as camtrack's are).
    Relies on: RTCIceGatherer keeping its aioice Connection in `_connection`."""
    connections: dict[int, Connection] = {}
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport.iceGatherer._connection
        connections.setdefault(id(connection), connection)
    return list(connections.values())


def ice_connection(dtls: RTCDtlsTransport) -> Connection:
    """The aioice Connection under `dtls`. Relies on: RTCIceTransport keeping it in `_connection`."""
    return dtls.transport._connection


# --- the DTLS role an answer takes ------------------------------------------------------------------

def dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    """Each DTLS transport of `pc` (one when bundled), its data channels' included."""
    transports: dict[int, RTCDtlsTransport] = {}
    for transceiver in pc.getTransceivers():
        transports.setdefault(id(transceiver.receiver.transport), transceiver.receiver.transport)
    if pc.sctp is not None:
        transports.setdefault(id(pc.sctp.transport), pc.sctp.transport)
    return list(transports.values())


def dtls_role(dtls: RTCDtlsTransport) -> str:
    """"auto", "client" or "server". Relies on: `RTCDtlsTransport._role`."""
    return str(dtls._role)


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """Make the answer `pc` creates next say `a=setup:passive`, and its DTLS transports wait for
    the remote's ClientHello (aiortc answers an `actpass` offer `active` otherwise, and as a DTLS
    client it offers only ECDSA suites: a peer with an RSA certificate, GStreamer's webrtcbin,
    fails with "no shared cipher"). Call after setRemoteDescription(offer), before createAnswer,
    when the offer said actpass. Relies on: createAnswer writing `a=setup` from each transport's
    `_role` unless it is "auto" (which it answers "client", active); `RTCDtlsTransport.start`
    accepting the handshake (`set_accept_state`) when `_role` is "server"; `_set_role`."""
    for dtls in dtls_transports(pc):
        if dtls._role == "auto":
            dtls._set_role("server")


# --- RTCP routing and the sender's answers to feedback ---------------------------------------------

def rtp_router(dtls: RTCDtlsTransport) -> RtpRouter:
    """What routes `dtls`'s incoming RTP/RTCP to receivers and senders. Relies on:
    `RTCDtlsTransport._rtp_router`."""
    return dtls._rtp_router


def replace_route_rtcp(router: RtpRouter, new: RouteRtcp) -> RouteRtcp:
    """Make `new(packet)` decide which senders/receivers get each RTCP packet (it returns the set);
    returns the original. Relies on: RTCDtlsTransport calling `self._rtp_router.route_rtcp(packet)`
    for every RTCP packet it decrypts and handing the packet to each one returned."""
    original: RouteRtcp = router.route_rtcp
    router.route_rtcp = new  # type: ignore[method-assign, assignment]
    return original


def sender_by_ssrc(router: RtpRouter, ssrc: int) -> RtpSender | None:
    """The sender whose SSRC is `ssrc`. Relies on: `RtpRouter.senders`, by SSRC."""
    return router.senders.get(ssrc)


def replace_send_keyframe(sender: RTCRtpSender, new: SendKeyframe) -> SendKeyframe:
    """Make `new()` answer each PLI and FIR that reaches `sender`; returns the original (which flags
    aiortc's own encoder). Relies on: `RTCRtpSender._handle_rtcp_packet` calling
    `self._send_keyframe()` for both."""
    original: SendKeyframe = sender._send_keyframe
    sender._send_keyframe = new  # type: ignore[method-assign]
    return original


def replace_retransmit(sender: RTCRtpSender, new: Retransmit) -> Retransmit:
    """Make `new(sequence_number)` answer each sequence number a NACK names; returns the original.
    Relies on: `_handle_rtcp_packet` awaiting `self._retransmit(seq)` per lost number."""
    original: Retransmit = sender._retransmit
    sender._retransmit = new  # type: ignore[method-assign, assignment]
    return original


def rtp_history(sender: RTCRtpSender) -> Any:
    """What `sender` sent lately: `.get(sequence_number % RTP_HISTORY_SIZE)` gives an RtpPacket or
    None. Relies on: `RTCRtpSender.__rtp_history`, which `_retransmit` reads."""
    return sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]


def set_rtp_history(sender: RTCRtpSender, history: Any) -> None:
    """Make `history` (anything with `.get(key)` and `.values()`) what `_retransmit` resends from and
    `getStats` counts. Relies on: `RTCRtpSender.__rtp_history`."""
    sender._RTCRtpSender__rtp_history = history  # type: ignore[attr-defined]


# --- camtrack's own RTP loop in place of aiortc's ----------------------------------------------------

def replace_run_rtp(sender: RTCRtpSender, new: RunRtp) -> RunRtp:
    """Make `new(codec)` the sender's RTP loop; returns the original. Relies on: `RTCRtpSender.send`
    starting `self._run_rtp(codec)` as a task, and `stop()` waiting for `__rtp_exited` (see
    `rtp_started`)."""
    original: RunRtp = sender._run_rtp
    sender._run_rtp = new  # type: ignore[method-assign, assignment]
    return original


def rtp_started(sender: RTCRtpSender) -> asyncio.Event:
    """The event an RTP loop sets when it starts. Relies on: `RTCRtpSender.__rtp_started`."""
    return sender._RTCRtpSender__rtp_started  # type: ignore[attr-defined, no-any-return]


def rtp_exited(sender: RTCRtpSender) -> asyncio.Event:
    """The event an RTP loop sets when it ends (`stop()` waits for it). Relies on:
    `RTCRtpSender.__rtp_exited`."""
    return sender._RTCRtpSender__rtp_exited  # type: ignore[attr-defined, no-any-return]


def mid(sender: RTCRtpSender) -> str | None:
    """The MID header extension's value. Relies on: `RTCRtpSender.__mid`."""
    return sender._RTCRtpSender__mid  # type: ignore[attr-defined, no-any-return]


def ssrc(sender: RTCRtpSender) -> int:
    """The sender's SSRC. Relies on: `RTCRtpSender._ssrc`."""
    return sender._ssrc


def header_extensions_map(sender: RTCRtpSender) -> HeaderExtensionsMap:
    """The negotiated header extensions' ids. Relies on: `RTCRtpSender.__rtp_header_extensions_map`."""
    return sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined, no-any-return]


def sending(sender: RTCRtpSender) -> bool:
    """Whether the sender may send (aiortc's loop skips pictures otherwise). Relies on:
    `RTCRtpSender._enabled`."""
    return sender._enabled


def dtls_connected(dtls: RTCDtlsTransport) -> bool:
    """Whether DTLS is connected (without making the `state` string). Relies on:
    `RTCDtlsTransport._state`."""
    return dtls._state is DtlsState.CONNECTED


def tx_srtp(dtls: RTCDtlsTransport) -> Any:
    """The pylibsrtp Session that protects what `dtls` sends (once connected). Relies on:
    `RTCDtlsTransport._tx_srtp`."""
    return dtls._tx_srtp


def record_sent(sender: RTCRtpSender, dtls: RTCDtlsTransport, ntp: int, rtp_timestamp: int, octet_count: int,
                packet_count: int, wire_bytes: int, wire_packets: int) -> None:
    """Note what camtrack's loop sent as aiortc's loop would: the last picture's NTP and RTP times
    and the totals, which aiortc's sender reports (RTCP SR) and getStats read, and what went on the
    wire through `dtls` (added). Relies on: `RTCRtpSender.__ntp_timestamp`, `__rtp_timestamp`,
    `__octet_count`, `__packet_count` and `RTCDtlsTransport.__tx_bytes`, `__tx_packets`."""
    sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count = octet_count  # type: ignore[attr-defined]
    sender._RTCRtpSender__packet_count = packet_count  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__tx_bytes += wire_bytes  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__tx_packets += wire_packets  # type: ignore[attr-defined]
