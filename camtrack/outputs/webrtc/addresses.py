"""Which local addresses and port ICE offers: only the chosen addresses (--ice-address), and every
peer's host candidates on the one shared UDP socket (--webrtc-port, udpmux.py).

aioice decides both for itself (a socket per local address of the machine, for every peer); the
hooks that change that reach it through camtrack.seams.aioice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection
from aiortc import RTCPeerConnection

from ...seams import aioice as aioice_seam
from ...seams.aiortc import ice_connections
from .udpmux import UdpMux, family_of

__all__ = ["ice_connections", "restrict_host_addresses", "use_mux"]

logger = logging.getLogger(__name__)


# --- which local addresses ICE offers ------------------------------------------------------------

def restrict_host_addresses(addresses: list[str]) -> Callable[[], None]:
    """Make ICE gather host candidates only on `addresses`; returns a function that undoes it.

    aioice decides which addresses to gather in `aioice.ice.get_host_addresses`, for the
    whole process, so this applies to every peer connection the process makes.
    """
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    original = aioice_seam.replace_host_addresses(get_host_addresses)

    def undo() -> None:
        aioice_seam.replace_host_addresses(original)

    return undo


# --- every peer on one UDP socket (--webrtc-port) ----------------------------------------------

def use_mux(pc: RTCPeerConnection, mux: UdpMux) -> None:
    """Put the host candidates of every ICE connection of `pc` on `mux`'s socket.

    Call after the transceivers exist and before createOffer/createAnswer: the connection's ufrag
    becomes the mux's unique one, and the description must carry that one.
    """
    for connection in ice_connections(pc):
        aioice_seam.set_local_username(connection, mux.new_ufrag())
        _gather_on_mux(connection, mux)
        _leave_mux_on_close(connection, mux)


def _leave_mux_on_close(connection: Connection, mux: UdpMux) -> None:
    """Forget the peer's ufrag and routes when it closes, whatever state it was in."""
    async def close() -> None:
        try:
            await original()
        finally:
            mux.forget(connection)

    original = aioice_seam.replace_close(connection, close)


def _gather_on_mux(connection: Connection, mux: UdpMux) -> None:
    """aioice opens a socket per local address in `get_component_candidates`; this gathers host
    candidates on the mux instead (one protocol per address family, every local and public address
    announced with the mux's port), and leaves STUN (through the mux) and TURN (its own socket,
    to the TURN server) to aioice."""
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
                aioice_seam.protocols(connection).append(protocol)
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
                aioice_seam.server_reflexive_candidate(ipv4, connection.stun_server), timeout)))
        for result in await asyncio.gather(*extra, return_exceptions=True):
            if isinstance(result, list):
                candidates += result
            elif isinstance(result, tuple):
                candidates.append(result[0])
            elif isinstance(result, Exception):
                logger.debug("ICE gathering through the mux: %s", result)
        return candidates

    original = aioice_seam.replace_get_component_candidates(connection, get_component_candidates)
