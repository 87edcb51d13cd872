"""Only the viewer's own path reaches a peer's DTLS and SRTP: the ICE gate, and the bounds on
what a peer's ICE checks and trickled candidates may cost (the counts are in icelimits.py).

The gate stands between aioice's sockets and the rest; it reaches aioice through
camtrack.seams.aioice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import CandidatePair, Connection, StunProtocol
from aiortc import RTCPeerConnection

from ...media.ratelimit import TokenBucket
from ...seams import aioice as aioice_seam
from ...seams.aiortc import ice_connections
from .icelimits import LABELS, MAX_LEARNED_ADDRESSES, MAX_REMOTE_CANDIDATES, ignored

#: packets held per peer from a candidate pair that is still being checked; dropped beyond this
PENDING_PACKETS = 8
#: larger early packets are not held at all (DTLS records fit a path MTU)
PENDING_PACKET_SIZE = 2048
#: datagrams a second (and at once) a connected peer may send us: a viewer sends RTCP
#: (reports, NACK, PLI, REMB) and a few DTLS records, tens a second at most
PEER_PACKET_RATE = 200.0
PEER_PACKET_BURST = 200.0
#: datagrams waiting for aiortc to read them; beyond this they are dropped, not queued
QUEUE_LIMIT = 256


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
        for protocol in aioice_seam.protocols(connection):
            self._wrap_protocol(protocol)

        def check_state(pair: CandidatePair, state: CandidatePair.State) -> None:
            original_check_state(pair, state)
            key = (id(pair.protocol), pair.remote_addr)
            if state == CandidatePair.State.SUCCEEDED:
                self._valid.add(key)
                self._release(pair.protocol, pair.remote_addr)
            elif state == CandidatePair.State.FAILED:
                self._valid.discard(key)

        original_check_state = aioice_seam.replace_check_state(connection, check_state)
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
        learned = self.learned

        def request_received(message: stun.Message, addr: tuple[str, int], protocol: StunProtocol) -> None:
            remote = (addr[0], addr[1])
            if remote not in learned and not aioice_seam.is_closing(connection) and not aioice_seam.has_remote_candidate(
                    connection, remote[0], remote[1]):
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

        original = aioice_seam.replace_request_received(connection, request_received)

        async def add_bounded(remote_candidate: Candidate | None) -> None:
            if remote_candidate is not None and aioice_seam.remote_candidate_count(connection) >= MAX_REMOTE_CANDIDATES:
                self.stats.candidates_ignored += 1
                ignored(connection, f"it signalled more than {MAX_REMOTE_CANDIDATES} candidates: further ones are "
                        "ignored", connection.local_username, "signalled")
                return
            await add_remote_candidate(remote_candidate)

        add_remote_candidate = aioice_seam.replace_add_remote_candidate(connection, add_bounded)

    def _wrap_protocol(self, protocol: StunProtocol) -> None:
        protocol_id = id(protocol)

        def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
            assert isinstance(data, bytes)
            if is_stun(data):
                deliver(data, addr)
                return
            remote = (addr[0], addr[1])
            if (protocol_id, remote) in self._valid:
                if not self._bucket.take() or aioice_seam.queued(self.connection) >= QUEUE_LIMIT:
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

        deliver = self._deliver[protocol_id] = aioice_seam.replace_datagram_received(protocol, datagram_received)

    def _is_pair(self, protocol: StunProtocol, remote: tuple[str, int]) -> bool:
        """Whether ICE knows `remote` as this socket's partner (a pair it is checking)."""
        return any(p.protocol is protocol and p.remote_addr == remote for p in aioice_seam.check_list(self.connection))

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


