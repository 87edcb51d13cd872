"""Whether a viewer still answers: when each peer last heard from its viewer (camtrack.outputs.webrtc.peer
closes one silent longer than --unresponsive-timeout)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aioice.ice import Connection, StunProtocol
from aiortc import RTCPeerConnection

from ...seams import aioice as aioice_seam
from ...seams.aiortc import ice_connections

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
        for protocol in aioice_seam.protocols(connection):
            _listen_on(protocol, connection, hearing)
    return hearing


def _listen_on(protocol: StunProtocol, connection: Connection, hearing: Hearing) -> None:
    nominated = aioice_seam.nominations(connection)

    def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
        pair = nominated.get(1)
        if pair is not None:
            remote = pair.remote_addr
            if addr[0] == remote[0] and addr[1] == remote[1]:
                hearing.last = time.monotonic()
                hearing.datagrams += 1
        deliver(data, addr)

    deliver = aioice_seam.replace_datagram_received(protocol, datagram_received)
