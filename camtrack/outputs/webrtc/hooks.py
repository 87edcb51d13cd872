"""Every private attribute of aiortc and aioice that camtrack reaches into, in one place.

aiortc and aioice offer no public way to do what these hooks do: choose the local addresses
ICE offers, gather every peer's host candidates on one shared UDP socket (udpmux.py), keep
packets from strangers away from a peer's DTLS and SRTP, route FIR in its RFC 5104 form, hear
keyframe requests for pre-encoded packets, and cap what a viewer can ask to have retransmitted.
`HOOKED` names each attribute touched; `check_hooks()` (run at start-up and by tests/test_hooks.py)
fails loudly when an upgrade moves one, instead of silently turning a protection off.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aiortc.rtp
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import CandidatePair, Connection, StunProtocol
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)
from aiortc.utils import random32

from ...media.ratelimit import TokenBucket
from .icelimits import LABELS, MAX_LEARNED_ADDRESSES, MAX_REMOTE_CANDIDATES, ignored
from .udpmux import MuxTransport, UdpMux, family_of

logger = logging.getLogger(__name__)

#: (object, attribute) pairs the hooks below read or replace
HOOKED: list[tuple[Any, str]] = [
    (aioice.ice, "get_host_addresses"),
    (stun, "parse_message"),
    (StunProtocol, "datagram_received"),
    (Connection, "check_state"),
    (Connection, "data_received"),
    (CandidatePair, "remote_addr"),
    (CandidatePair.State, "SUCCEEDED"),
    (RtpRouter, "route_rtcp"),
    (RTCRtpSender, "_send_keyframe"),
    (RTCRtpSender, "_retransmit"),
    (aiortc.rtp, "RTP_HISTORY_SIZE"),
    (Connection, "get_component_candidates"),
    (aioice.ice, "server_reflexive_candidate"),
    (StunProtocol, "connection_made"),
    (StunProtocol, "connection_lost"),
    (RTCRtpSender, "_run_rtp"),
    (Connection, "request_received"),
    (Connection, "add_remote_candidate"),
]
#: attributes set in __init__ (so not on the class), by class name: tests/test_hooks.py checks
#: them on the objects of a live connection
INSTANCE_HOOKED: dict[str, list[str]] = {
    "Connection": ["_protocols", "_check_list", "_queue", "_local_username", "_nominated", "_remote_candidates",
                   "_closing"],
    "Candidate": ["_network_host"],
    "RTCIceGatherer": ["_connection"],
    "RtpRouter": ["senders"],
    "RTCRtpSender": ["_RTCRtpSender__rtp_history", "_RTCRtpSender__rtp_header_extensions_map",
                     "_RTCRtpSender__mid", "_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited",
                     "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
                     "_RTCRtpSender__octet_count", "_RTCRtpSender__packet_count", "_ssrc", "_enabled"],
    "RTCDtlsTransport": ["_rtp_router", "_tx_srtp", "_state", "_RTCDtlsTransport__tx_bytes",
                         "_RTCDtlsTransport__tx_packets"],
    # pylibsrtp's (hooks.fast_protect), on RTCDtlsTransport._tx_srtp once connected
    "Session": ["_srtp", "_cdata", "_buffer"],
    "RTCIceTransport": ["_connection"],
}

#: packets held per peer from a candidate pair that is still being checked; dropped beyond this
PENDING_PACKETS = 8
#: larger early packets are not held at all (DTLS records fit a path MTU)
PENDING_PACKET_SIZE = 2048
#: datagrams a second (and at once) a connected peer may send us: a viewer sends RTCP
#: (reports, NACK, PLI, REMB) and a few DTLS records, tens a second at most
PEER_PACKET_RATE = 200.0
PEER_PACKET_BURST = 200.0
#: NACK packets a second (and at once) a viewer may send; each may name up to RTP_HISTORY_SIZE packets
NACK_RATE = 50.0
NACK_BURST = 50.0
#: datagrams waiting for aiortc to read them; beyond this they are dropped, not queued
QUEUE_LIMIT = 256
#: one viewer's keyframe requests are honoured at most once per this many seconds (or per keyframe
#: interval, when that is shorter): a viewer whose keyframe was lost too gets the next within a
#: second, and one viewer can force at most one keyframe a second (the encoder's budget for all
#: viewers together is 2; libwebrtc's own sender takes one request per 300 ms)
KEYFRAME_REQUEST_INTERVAL = 1.0
#: a viewer's retransmissions may use this fraction of the stream's bitrate ...
RETRANSMIT_SHARE = 0.25
#: ... with bursts of up to this many bytes (a lost keyframe at 1 Mbit/s is ~20-40 KB)
RETRANSMIT_BURST = 64 * 1024
#: the most SRTP adds to a packet (libsrtp's SRTP_MAX_TRAILER_LEN)
SRTP_MAX_TRAILER = 16 + 128
#: bytes a retransmission adds to its payload on the wire: RTP header and extensions, the RTX
#: sequence number, the SRTP tag
RETRANSMIT_OVERHEAD = 48


class HookMissing(RuntimeError):
    """aiortc or aioice changed: an attribute camtrack hooks into is gone."""


def check_hooks() -> None:
    """Raise HookMissing naming the first hooked attribute that no longer exists."""
    for owner, name in HOOKED:
        if not hasattr(owner, name):
            raise HookMissing(f"{getattr(owner, '__name__', owner)}.{name} is gone: camtrack's hooks "
                              "into aiortc/aioice need updating for this version")


# --- which local addresses ICE offers ------------------------------------------------------------

def restrict_host_addresses(addresses: list[str]) -> Callable[[], None]:
    """Make ICE gather host candidates only on `addresses`; returns a function that undoes it.

    aioice decides which addresses to gather in `aioice.ice.get_host_addresses`, for the
    whole process, so this applies to every peer connection the process makes.
    """
    original = aioice.ice.get_host_addresses
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses

    def undo() -> None:
        aioice.ice.get_host_addresses = original

    return undo


# --- every peer on one UDP socket (--webrtc-port) ----------------------------------------------

def ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice Connection of each transport of `pc` (one when bundled, as camtrack's are)."""
    connections: dict[int, Connection] = {}
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport.iceGatherer._connection
        connections.setdefault(id(connection), connection)
    return list(connections.values())


def use_mux(pc: RTCPeerConnection, mux: UdpMux) -> None:
    """Put the host candidates of every ICE connection of `pc` on `mux`'s socket.

    Call after the transceivers exist and before createOffer/createAnswer: the connection's ufrag
    becomes the mux's unique one, and the description must carry that one.
    """
    for connection in ice_connections(pc):
        connection._local_username = mux.new_ufrag()
        _gather_on_mux(connection, mux)
        _leave_mux_on_close(connection, mux)


def _leave_mux_on_close(connection: Connection, mux: UdpMux) -> None:
    """Forget the peer's ufrag and routes when it closes, whatever state it was in."""
    original = connection.close

    async def close() -> None:
        try:
            await original()
        finally:
            mux.forget(connection)

    connection.close = close  # type: ignore[method-assign]


def _gather_on_mux(connection: Connection, mux: UdpMux) -> None:
    """aioice opens a socket per local address in `get_component_candidates`; this gathers host
    candidates on the mux instead (one protocol per address family, every local and public address
    announced with the mux's port), and leaves STUN (through the mux) and TURN (its own socket,
    to the TURN server) to aioice."""
    original = connection.get_component_candidates

    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        if not addresses or mux.transport is None:  # the relay-only policy, nothing to offer, or stopping
            return await original(component=component, addresses=addresses, timeout=timeout)
        endpoint = mux.register(connection)
        local = [a for a in addresses if mux.can_serve(a)]
        public = [a for a in await mux.public_hosts() if a not in local]
        candidates: list[Candidate] = []
        for host in local + public:
            family = family_of(host)
            protocol = None
            if family not in endpoint.protocols:
                if host not in local:
                    continue  # a public address of a family no local address has: nothing answers it
                protocol = endpoint.add_protocol(family, (host, mux.port))
                connection._protocols.append(protocol)
            # (the extra addresses need no protocol of their own: whatever reaches the port
            # reaches the one socket; aioice's checks go out from the first address of a family)
            candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host), component=component, transport="udp",
                priority=candidate_priority(component, "host", 65535 - len(candidates)),
                host=host, port=mux.port, type="host")
            if protocol is not None:
                protocol.local_candidate = candidate
            candidates.append(candidate)
        extra: list[asyncio.Task[Any]] = [asyncio.ensure_future(original(component=component, addresses=[],
                                                                          timeout=timeout))]
        ipv4 = endpoint.protocols.get(4)
        if connection.stun_server and ipv4 is not None:
            extra.append(asyncio.ensure_future(asyncio.wait_for(
                aioice.ice.server_reflexive_candidate(ipv4, connection.stun_server), timeout)))
        for result in await asyncio.gather(*extra, return_exceptions=True):
            if isinstance(result, list):
                candidates += result
            elif isinstance(result, tuple):
                candidates.append(result[0])
            elif isinstance(result, Exception):
                logger.debug("ICE gathering through the mux: %s", result)
        return candidates

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


# --- only the viewer's own path reaches DTLS and SRTP --------------------------------------------

def is_stun(data: bytes) -> bool:
    """Whether aioice will take `data` as a STUN message (it authenticates those itself).

    The first byte (0-3, RFC 7983) is not enough: aioice hands whatever fails to parse as STUN
    to DTLS's queue, so a datagram counts as STUN here only if it parses as one.
    """
    if not data or data[0] > 3:
        return False
    try:
        stun.parse_message(data)
    except Exception:  # noqa: BLE001 - ValueError, struct.error, ...: not STUN, so the gate's
        return False
    return True


@dataclass
class GateStats:
    passed: int = 0
    #: from an address that is no candidate pair of this peer
    strangers: int = 0
    #: early packets beyond PENDING_PACKETS, or too large to hold
    overflow: int = 0
    #: over the connected peer's rate, or aiortc's queue was full
    flood: int = 0
    held: int = 0
    #: signed ICE checks ignored: from a new address beyond MAX_LEARNED_ADDRESSES (icelimits.py)
    checks_ignored: int = 0
    #: trickled candidates ignored beyond MAX_REMOTE_CANDIDATES
    candidates_ignored: int = 0

    @property
    def dropped(self) -> int:
        return self.strangers + self.overflow + self.flood


@dataclass
class IceGate:
    """Stands between one aioice Connection's sockets and its DTLS/SRTP.

    aioice hands every non-STUN datagram that reaches a candidate's port to DTLS, whoever sent
    it (one forged ServerHello or alert ends a handshake) and queues them without bound before
    the peer connects (junk at the port grows memory for good). The gate passes data only from
    the remote address of a candidate pair that ICE has validated (its check succeeded);
    holds a few packets from a pair still being checked and releases them when it succeeds
    (a DTLS client may start as soon as *its* check succeeded); drops everything else; and
    holds a connected peer to a packet rate, so an RTCP flood costs bounded CPU. Signed checks
    teach aioice at most MAX_LEARNED_ADDRESSES addresses the peer did not signal, and it takes at
    most MAX_REMOTE_CANDIDATES trickled candidates (icelimits.py).
    """

    connection: Connection
    #: what the log calls this peer
    label: str = ""
    stats: GateStats = field(default_factory=GateStats)
    #: addresses not signalled whose signed checks reached aioice (its peer-reflexive candidates)
    learned: set[tuple[str, int]] = field(default_factory=set)
    _valid: set[tuple[int, tuple[str, int]]] = field(default_factory=set)
    _pending: list[tuple[StunProtocol, bytes, tuple[str, int]]] = field(default_factory=list)
    _bucket: TokenBucket = field(default_factory=lambda: TokenBucket(PEER_PACKET_BURST, PEER_PACKET_RATE))
    #: each socket's own datagram_received, which the gate calls for what it lets through
    _deliver: dict[int, Callable[[bytes, tuple[str, int]], None]] = field(default_factory=dict)

    def install(self) -> None:
        connection = self.connection
        for protocol in connection._protocols:
            self._wrap_protocol(protocol)
        original_check_state = connection.check_state

        def check_state(pair: CandidatePair, state: CandidatePair.State) -> None:
            original_check_state(pair, state)
            key = (id(pair.protocol), pair.remote_addr)
            if state == CandidatePair.State.SUCCEEDED:
                self._valid.add(key)
                self._release(pair.protocol, pair.remote_addr)
            elif state == CandidatePair.State.FAILED:
                self._valid.discard(key)

        connection.check_state = check_state  # type: ignore[method-assign]
        self._bound_checks()

    def _bound_checks(self) -> None:
        """aioice learns a peer-reflexive candidate and a pair, re-sorts its check list and starts
        a triggered check for each new address a signed check comes from, without a bound: here a
        signed check from one more new address than MAX_LEARNED_ADDRESSES gets no answer and
        teaches aioice nothing (a viewer that moves for good makes a new offer: a new peer, with
        bounds of its own). Trickled candidates are bounded too: each is a pair and a sort."""
        connection = self.connection
        if self.label:
            LABELS[connection] = self.label
        original = connection.request_received
        learned = self.learned

        def request_received(message: stun.Message, addr: tuple[str, int], protocol: StunProtocol) -> None:
            remote = (addr[0], addr[1])
            if remote not in learned and not connection._closing and not any(
                    c._network_host == remote[0] and c.port == remote[1] for c in connection._remote_candidates):
                # (unsigned ones go on to aioice, which answers them 401 and learns nothing)
                if message.check_message_integrity(connection.local_password.encode("utf8")):
                    if len(learned) >= MAX_LEARNED_ADDRESSES:
                        self.stats.checks_ignored += 1
                        ignored(connection, f"signed checks came from more than {MAX_LEARNED_ADDRESSES} addresses "
                                "it did not signal: those from new addresses are ignored (someone holding its ICE "
                                "credentials may be flooding it)", connection.local_username, "learned")
                        return
                    learned.add(remote)
            original(message, addr, protocol)

        connection.request_received = request_received  # type: ignore[method-assign]
        add_remote_candidate = connection.add_remote_candidate

        async def add_bounded(remote_candidate: Candidate | None) -> None:
            if remote_candidate is not None and len(connection._remote_candidates) >= MAX_REMOTE_CANDIDATES:
                self.stats.candidates_ignored += 1
                ignored(connection, f"it signalled more than {MAX_REMOTE_CANDIDATES} candidates: further ones are "
                        "ignored", connection.local_username, "signalled")
                return
            await add_remote_candidate(remote_candidate)

        connection.add_remote_candidate = add_bounded  # type: ignore[method-assign]

    def _wrap_protocol(self, protocol: StunProtocol) -> None:
        deliver = protocol.datagram_received
        protocol_id = id(protocol)

        def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
            assert isinstance(data, bytes)
            if is_stun(data):
                deliver(data, addr)
                return
            remote = (addr[0], addr[1])
            if (protocol_id, remote) in self._valid:
                if not self._bucket.take() or self.connection._queue.qsize() >= QUEUE_LIMIT:
                    self.stats.flood += 1
                    return
                self.stats.passed += 1
                deliver(data, remote)
            elif len(self._pending) >= PENDING_PACKETS or len(data) > PENDING_PACKET_SIZE:
                self.stats.overflow += 1
            elif self._is_pair(protocol, remote):
                self.stats.held += 1
                self._pending.append((protocol, data, remote))
            else:
                self.stats.strangers += 1

        self._deliver[protocol_id] = deliver
        protocol.datagram_received = datagram_received  # type: ignore[method-assign]

    def _is_pair(self, protocol: StunProtocol, remote: tuple[str, int]) -> bool:
        """Whether ICE knows `remote` as this socket's partner (a pair it is checking)."""
        return any(p.protocol is protocol and p.remote_addr == remote for p in self.connection._check_list)

    def _release(self, protocol: StunProtocol, remote: tuple[str, int]) -> None:
        keep = []
        for item in self._pending:
            if item[0] is protocol and item[2] == remote:
                self._deliver[id(protocol)](item[1], remote)
                self.stats.passed += 1
            else:
                keep.append(item)
        self._pending = keep


def guard_ice(pc: RTCPeerConnection, label: str = "") -> list[IceGate]:
    """Put an IceGate on each ICE connection of `pc`; call after setLocalDescription (gathering).
    `label` is what the log calls the peer."""
    gates = []
    for connection in ice_connections(pc):
        gate = IceGate(connection, label)
        gate.install()
        gates.append(gate)
    return gates


# --- whether the viewer still answers ------------------------------------------------------------

@dataclass
class Hearing:
    """When a peer last heard from its viewer: any datagram from the remote address of the
    selected (nominated) candidate pair counts (RTCP reports and feedback, STUN consent checks and
    the answers to the server's, DTLS). A live viewer is heard every second or so (browsers and
    aiortc send RTCP reports every 0.5-1.5 s) and at least every 4-6 s (consent answers)."""

    last: float = field(default_factory=time.monotonic)
    #: datagrams heard from the viewer
    datagrams: int = 0

    def heard(self) -> None:
        """Start the silence clock again (as if the viewer just spoke)."""
        self.last = time.monotonic()

    def silence(self) -> float:
        """Seconds since the viewer was last heard."""
        return time.monotonic() - self.last


def listen(pc: RTCPeerConnection) -> Hearing:
    """Note every datagram that reaches a socket of `pc` from its selected pair's remote address;
    call after setLocalDescription (gathering)."""
    hearing = Hearing()
    for connection in ice_connections(pc):
        for protocol in connection._protocols:
            _listen_on(protocol, connection, hearing)
    return hearing


def _listen_on(protocol: StunProtocol, connection: Connection, hearing: Hearing) -> None:
    deliver = protocol.datagram_received
    nominated = connection._nominated

    def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
        pair = nominated.get(1)
        if pair is not None:
            remote = pair.remote_addr
            if addr[0] == remote[0] and addr[1] == remote[1]:
                hearing.last = time.monotonic()
                hearing.datagrams += 1
        deliver(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign]


# --- RTCP: keyframe requests and retransmissions, limited per viewer -----------------------------

@dataclass
class RtcpPolice:
    """What one peer's RTCP may ask of the server, past the gate's packet rate."""

    nack_budget: TokenBucket = field(default_factory=lambda: TokenBucket(NACK_BURST, NACK_RATE))
    #: NACK packets dropped over the budget, and NACK lists cut to what a sender keeps
    nacks_dropped: int = 0
    nacks_cut: int = 0


def police_rtcp(dtls: RTCDtlsTransport) -> RtcpPolice:
    """Route FIR in its RFC 5104 form too (media SSRC 0, the sender's SSRC in each FCI entry:
    aiortc routes feedback by its media SSRC only, so that form was dropped); hold NACKs to
    NACK_RATE a second and to the RTP_HISTORY_SIZE newest numbers a sender can resend at all
    (one datagram can list thousands, each a retransmission aiortc would look up in turn)."""
    router = dtls._rtp_router
    original = router.route_rtcp
    police = RtcpPolice()

    def route_rtcp(packet: Any) -> set[Any]:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            if not police.nack_budget.take():
                police.nacks_dropped += 1
                return set()
            if len(packet.lost) > RTP_HISTORY_SIZE:
                police.nacks_cut += 1
                packet.lost = list(dict.fromkeys(packet.lost))[-RTP_HISTORY_SIZE:]
        recipients = original(packet)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
            fci = packet.fci
            for offset in range(0, len(fci) - 7, 8):
                (ssrc,) = struct.unpack_from("!L", fci, offset)
                sender = router.senders.get(ssrc)
                if sender is not None:
                    recipients.add(sender)
        return recipients

    router.route_rtcp = route_rtcp  # type: ignore[method-assign]
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
            original = sender._send_keyframe

            def send_keyframe(original: Callable[[], None] = original) -> None:
                if limiter is not None and not limiter.allow():
                    return
                original()
                if request is not None:
                    request()

            sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


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
    original = sender._retransmit
    history: dict[int, Any] = sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]

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

    sender._retransmit = retransmit  # type: ignore[method-assign]
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
    """Everything above for one sending peer; call after setLocalDescription. `label` is what
    the log calls the peer."""
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


# --- RTP: each picture packetized once, sent to every viewer --------------------------------------

@dataclass
class RtpFrame:
    """One picture as RTP payloads (shared by every viewer: never modified), its 90 kHz
    timestamp (before the viewer's random origin), its capture time (seconds since the epoch) and
    the NTP time it is sent at (32.32; read once for every viewer of one pass: abs-send-time's
    unit is 3.8 us, and a pass over hundreds of viewers takes a few ms)."""

    payloads: Sequence[bytes]
    timestamp: int
    captured: float
    ntp: int = field(default_factory=lambda: _ntp_now())


_HEAD = struct.Struct("!BBH")
#: seconds from the NTP epoch (1900) to the Unix epoch
_NTP_UNIX = 2208988800


def _ntp_now() -> int:
    """The NTP time now, 32.32 fixed point: what aiortc's clock gives, without its datetimes
    (a few microseconds per call, paid per viewer and picture)."""
    now = time.time()
    return (int(now) + _NTP_UNIX) << 32 | int((now % 1.0) * 4294967296.0)


class _History:
    """What a sender sent lately, for NACKs: aiortc's `__rtp_history` keeps an RtpPacket per
    packet sent; this keeps, per sequence number, the picture it belonged to (one tuple shared by
    the picture's packets) and makes the RtpPacket only when one is asked for again."""

    def __init__(self, payload_type: int = 0, ssrc: int = 0) -> None:
        self.payload_type, self.ssrc = payload_type, ssrc
        #: by sequence number modulo RTP_HISTORY_SIZE: (first sequence number, timestamp,
        #: payloads, abs-send-time) of its picture (the RTP loop writes it directly)
        self.sent: list[tuple[int, int, Sequence[bytes], int] | None] = [None] * RTP_HISTORY_SIZE
        #: the MID header extension's value
        self.mid: str | None = None

    def get(self, key: int) -> RtpPacket | None:
        if not 0 <= key < RTP_HISTORY_SIZE:
            return None
        sent = self.sent[key]
        if sent is None:
            return None
        first, timestamp, payloads, abs_send_time = sent
        index = (key - first) % RTP_HISTORY_SIZE
        if index >= len(payloads):
            return None
        marker = 1 if index == len(payloads) - 1 else 0
        packet = RtpPacket(self.payload_type, marker, (first + index) & 0xFFFF, timestamp, self.ssrc, payloads[index])
        packet.extensions = HeaderExtensions(mid=self.mid, abs_send_time=abs_send_time)
        return packet

    def values(self) -> list[RtpPacket]:
        """Every packet held (as aiortc's dict has them)."""
        return [p for p in map(self.get, range(RTP_HISTORY_SIZE)) if p is not None]


def fast_protect(session: Any) -> Callable[[bytes], bytes]:
    """pylibsrtp `Session.protect` without its per-call checks and allocations (a third of its
    cost per packet): the session's own buffer, one length cell, libsrtp called directly."""
    from pylibsrtp import Error
    from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

    srtp, cdata, buffer = session._srtp[0], session._cdata, session._buffer
    limit = len(cdata) - SRTP_MAX_TRAILER
    length = ffi.new("int *")
    srtp_protect = lib.srtp_protect

    def protect(data: bytes) -> bytes:
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        buffer[0:size] = data
        status = srtp_protect(srtp, cdata, length)
        if status:
            raise Error(f"srtp_protect failed with status {status}")
        return buffer[0:length[0]]  # type: ignore[no-any-return]

    # the session owns the libsrtp context and buffer used above: it lives as long as this does
    protect.session = session  # type: ignore[attr-defined]
    return protect


class _HeaderTemplate:
    """One sender's RTP header with its extensions, serialized by aiortc once; per picture only
    the timestamp and the abs-send-time bytes are written into it (found by serializing twice
    with two different values), per packet the marker and sequence number."""

    def __init__(self, payload_type: int, ssrc: int, mid: str | None, extensions_map: HeaderExtensionsMap) -> None:
        self.payload_type, self.ssrc, self.mid, self.map = payload_type, ssrc, mid, extensions_map

        def serialized(abs_send_time: int) -> bytes:
            packet = RtpPacket(payload_type, 0, 0, 0, ssrc)
            packet.extensions.mid = mid
            packet.extensions.abs_send_time = abs_send_time
            return packet.serialize(extensions_map)

        one, other = serialized(0), serialized(0xFFFFFF)
        self.bytes = bytearray(one)
        changed = [i for i, (a, b) in enumerate(zip(one, other, strict=False)) if a != b]
        #: where abs-send-time's 3 bytes are; None when not negotiated; -1: unexpected layout
        self.offset: int | None = None
        if len(one) != len(other) or (changed and changed != list(range(changed[0], changed[0] + 3))):
            self.offset = -1
        elif changed:
            self.offset = changed[0]

    def header(self, timestamp: int, abs_send_time: int) -> tuple[int, bytes]:
        """The first byte and the bytes after the sequence number, for one picture."""
        if self.offset == -1:  # not the layout this knows: let aiortc serialize every picture
            packet = RtpPacket(self.payload_type, 0, 0, timestamp, self.ssrc)
            packet.extensions.mid = self.mid
            packet.extensions.abs_send_time = abs_send_time
            serialized = packet.serialize(self.map)
            return serialized[0], serialized[4:]
        head = self.bytes
        head[4:8] = timestamp.to_bytes(4, "big")
        if self.offset is not None:
            head[self.offset:self.offset + 3] = abs_send_time.to_bytes(3, "big")
        return head[0], bytes(head[4:])


@dataclass
class RtpSendStats:
    """What one sender's RTP did (camtrack's, see `send_rtp_once`)."""

    frames: int = 0
    packets: int = 0
    #: pictures it was handed by its feed's fan-out (camtrack.outputs.webrtc.fanout), not its own loop
    fanned_out: int = 0
    #: packets the socket would not take at once (its buffer full): dropped, as the network would
    dropped: int = 0


class RtpStream:
    """One sender's RTP as camtrack sends it: its sequence numbers, timestamp origin, header,
    SRTP and socket, and `send()`, which hands one picture's packets to the socket, a whole
    picture without yielding. Called by the sender's own loop (`send_rtp_once`) or, while the
    viewer is in step with its feed, by the feed's fan-out, which sends every viewer's picture
    in one pass (camtrack.outputs.webrtc.fanout)."""

    def __init__(self, sender: RTCRtpSender, codec: RTCRtpCodecParameters, stats: RtpSendStats,
                 history: _History) -> None:
        self.sender = sender
        self.codec = codec
        self.stats = stats
        self._dtls = sender.transport
        self._mid: str | None = sender._RTCRtpSender__mid  # type: ignore[attr-defined]
        self._payload_type: int = codec.payloadType or 0
        self._ssrc: int = sender._ssrc
        history.payload_type, history.ssrc, history.mid = self._payload_type, self._ssrc, self._mid
        self._sent = history.sent
        self._connection = self._dtls.transport._connection
        self._sequence_number = random_sequence_number()
        self._origin = random32()
        self._octets = 0
        self._template = _HeaderTemplate(
            self._payload_type, self._ssrc, self._mid,
            sender._RTCRtpSender__rtp_header_extensions_map)  # type: ignore[attr-defined]
        self._protect: Callable[[bytes], bytes] | None = None
        #: the nominated pair the send below was found for
        self._pair: CandidatePair | None = None
        self._send_all: Callable[[list[bytes]], int] | None = None

    def _sender_for(self, pair: CandidatePair) -> Callable[[list[bytes]], int]:
        """How the pair's packets go out: straight on the shared socket, batched (udpmux.DirectSend)
        when the pair is on the UDP mux, else through aioice's transport a packet at a time."""
        if pair is not self._pair or self._send_all is None:
            transport = pair.protocol.transport
            direct = transport.direct(pair.remote_addr) if isinstance(transport, MuxTransport) else None
            if direct is None:
                sendto, remote = transport.sendto, pair.remote_addr

                def send_each(packets: list[bytes]) -> int:
                    for packet in packets:
                        sendto(packet, remote)
                    return 0

                self._send_all = send_each
            else:
                self._send_all = direct
            self._pair = pair
        return self._send_all

    def send(self, frame: RtpFrame) -> bool:
        """Hand `frame`'s packets to the socket; False when there was nothing to send (the sender
        is disabled); ConnectionError when the viewer is no longer connected."""
        sender, dtls = self.sender, self._dtls
        payloads = frame.payloads
        if not sender._enabled or not payloads:
            return False
        pair = self._connection._nominated.get(1)
        if dtls._state is not DtlsState.CONNECTED or pair is None:  # (its `state` makes a string)
            raise ConnectionError("not connected")
        send_all = self._sender_for(pair)
        protect = self._protect
        if protect is None:
            protect = self._protect = fast_protect(dtls._tx_srtp)
        payload_type, sent = self._payload_type, self._sent
        timestamp = (self._origin + frame.timestamp) & 0xFFFFFFFF
        ntp = frame.ntp
        abs_send_time = (ntp >> 14) & 0x00FFFFFF
        first, rest = self._template.header(timestamp, abs_send_time)
        first_seq = sequence_number = self._sequence_number
        picture = (first_seq, timestamp, payloads, abs_send_time)
        pack = _HEAD.pack
        last = len(payloads) - 1
        packets = []
        octets = 0
        for index, payload in enumerate(payloads):
            sent[sequence_number % RTP_HISTORY_SIZE] = picture
            packets.append(protect(pack(first, (index == last) << 7 | payload_type, sequence_number) + rest + payload))
            octets += len(payload)
            sequence_number = (sequence_number + 1) & 0xFFFF
        dropped = send_all(packets)
        self._sequence_number = sequence_number
        self._octets += octets
        stats = self.stats
        stats.frames += 1
        stats.packets += len(payloads)
        stats.dropped += dropped
        # what aiortc's loop keeps for its sender reports and statistics
        sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count = self._octets  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count = stats.packets  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_bytes += sum(map(len, packets))  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_packets += len(payloads)  # type: ignore[attr-defined]
        return True


def send_rtp_once(sender: RTCRtpSender, next_frame: Callable[[RTCRtpCodecParameters], Awaitable[RtpFrame]],
                  on_sent: Callable[[float, float, float], None] | None = None,
                  join: Callable[[RtpStream], Awaitable[None] | None] | None = None) -> RtpSendStats:
    """Replace `sender`'s RTP loop with one that sends pictures already packetized.

    aiortc's loop packetizes every picture again for every viewer, builds an RtpPacket and its
    header extensions per packet, and awaits four coroutines per packet down to the socket. This
    one takes each picture's payloads as they were packetized once for all viewers and sends
    them with an `RtpStream`. RTCP (reports, PLI/FIR, NACK through `__rtp_history`) stays
    aiortc's. `on_sent(captured, seconds, handed)` is called once a picture has been handed to
    the socket, with the CPU seconds that took and the time it was handed. After each picture, `join(stream)` may hand the stream
    to a fan-out that sends the following pictures itself: it returns what to await until the
    fan-out hands the stream back (or raises ConnectionError), or None to go on here. Call
    before the connection starts the sender.
    """
    stats = RtpSendStats()
    history = _History()
    sender._RTCRtpSender__rtp_history = history  # type: ignore[attr-defined]

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        sender._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        stream = RtpStream(sender, codec, stats, history)
        try:
            while True:
                frame = await next_frame(codec)
                began = time.thread_time()  # (CPU time: a quota's throttling is not work)
                if stream.send(frame) and on_sent is not None:
                    on_sent(frame.captured, time.thread_time() - began, time.time())
                if join is not None:
                    fanned = join(stream)
                    if fanned is not None:
                        await fanned
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:  # as aiortc's loop: RTCRtpSender.stop() waits for __rtp_exited
            logger.exception("RTP sending loop failed")
        finally:
            track = sender.track
            if track is not None:
                track.stop()
            sender._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]

    sender._run_rtp = run_rtp  # type: ignore[method-assign]
    return stats
