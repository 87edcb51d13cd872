"""The parts of aioice camtrack relies on that are not its public API (checked against aioice 0.13).

Each function says what it relies on. Replacing a method (`replace_*`) returns the original,
which the replacement calls: the purpose modules (camtrack.outputs.webrtc.addresses, icegate,
hearing) decide what to do, these only reach.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import CandidatePair, Connection, StunProtocol

#: (object, attribute) pairs read or replaced below (camtrack.seams.check_hooks checks them)
HOOKED: list[tuple[Any, str]] = [
    (aioice.ice, "get_host_addresses"),
    (stun, "parse_message"),
    (StunProtocol, "datagram_received"),
    (Connection, "check_state"),
    (Connection, "data_received"),
    (CandidatePair, "remote_addr"),
    (CandidatePair.State, "SUCCEEDED"),
    (Connection, "get_component_candidates"),
    (aioice.ice, "server_reflexive_candidate"),
    (StunProtocol, "connection_made"),
    (StunProtocol, "connection_lost"),
    (Connection, "request_received"),
    (Connection, "add_remote_candidate"),
]
#: attributes set in __init__ (so not on the class), by class name: tests/test_hooks.py checks
#: them on the objects of a live connection
INSTANCE_HOOKED: dict[str, list[str]] = {
    "Connection": ["_protocols", "_check_list", "_queue", "_local_username", "_nominated", "_remote_candidates",
                   "_closing"],
    "Candidate": ["_network_host"],
}

HostAddresses = Callable[[bool, bool], list[str]]
Datagram = Callable[[bytes | str, tuple[Any, ...]], None]
CheckState = Callable[[CandidatePair, CandidatePair.State], None]
RequestReceived = Callable[[stun.Message, tuple[str, int], StunProtocol], None]
AddRemoteCandidate = Callable[[Candidate | None], Awaitable[None]]
ComponentCandidates = Callable[..., Awaitable[list[Candidate]]]
Close = Callable[[], Awaitable[None]]


def replace_host_addresses(choose: HostAddresses) -> HostAddresses:
    """Make `choose(use_ipv4, use_ipv6)` the addresses every Connection of the process gathers host
    candidates on; returns the function it replaces. Relies on: `Connection.gather_candidates`
    calling the module-level `aioice.ice.get_host_addresses` by name, at each gathering."""
    original: HostAddresses = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = choose  # type: ignore[assignment]
    return original


def set_local_username(connection: Connection, ufrag: str) -> None:
    """Give `connection` the ICE ufrag `ufrag`. Relies on: the ufrag lives in `_local_username`
    (read by `local_username`, which aiortc writes into the description, and by the checks)."""
    connection._local_username = ufrag


def protocols(connection: Connection) -> list[StunProtocol]:
    """The connection's own list of its sockets' protocols (the list itself: appending one makes the
    connection read it, send checks from it and close it). Relies on: `Connection._protocols`."""
    return connection._protocols


def nominations(connection: Connection) -> dict[int, CandidatePair]:
    """The nominated pair by component (the live dict: aioice clears it, never replaces it).
    Relies on: `Connection._nominated`, where aioice's own `send`/`sendto` look."""
    return connection._nominated


def check_list(connection: Connection) -> list[CandidatePair]:
    """The pairs ICE checks or checked. Relies on: `Connection._check_list`."""
    return connection._check_list


def queued(connection: Connection) -> int:
    """Datagrams waiting for DTLS/SRTP to read them. Relies on: `Connection._queue`, the
    asyncio.Queue `data_received` puts every non-STUN datagram in and `recvfrom` reads."""
    return connection._queue.qsize()


def is_closing(connection: Connection) -> bool:
    """Whether `close()` has begun. Relies on: `Connection._closing`."""
    return connection._closing


def remote_candidate_count(connection: Connection) -> int:
    """How many remote candidates the connection holds (signalled and learned ones). Relies on:
    `Connection._remote_candidates`."""
    return len(connection._remote_candidates)


def has_remote_candidate(connection: Connection, host: str, port: int) -> bool:
    """Whether (host, port) is the address of a remote candidate the connection holds. Relies on:
    `Connection._remote_candidates` and `Candidate._network_host` (the host as a network address,
    as datagrams' sources are compared with)."""
    return any(c._network_host == host and c.port == port for c in connection._remote_candidates)


def server_reflexive_candidate(protocol: StunProtocol, stun_server: tuple[str, int]) -> Awaitable[tuple[Candidate, None]]:
    """Ask `stun_server`, through `protocol`, for the server-reflexive candidate. Relies on: the
    module-level `aioice.ice.server_reflexive_candidate(protocol, stun_server)` (a coroutine)."""
    return aioice.ice.server_reflexive_candidate(protocol, stun_server)


def replace_get_component_candidates(connection: Connection, new: ComponentCandidates) -> ComponentCandidates:
    """Make `new(component=, addresses=, timeout=)` gather the connection's candidates; returns the
    original. Relies on: `Connection.gather_candidates` calling `self.get_component_candidates`
    with those keywords, once per component, and putting what it returns in `local_candidates`."""
    original: ComponentCandidates = connection.get_component_candidates
    connection.get_component_candidates = new  # type: ignore[method-assign, assignment]
    return original


def replace_close(connection: Connection, new: Close) -> Close:
    """Make `new()` what closing the connection runs; returns the original. Relies on: aiortc's
    RTCIceTransport.stop() awaiting `connection.close()` looked up on the instance."""
    original: Close = connection.close
    connection.close = new  # type: ignore[method-assign, assignment]
    return original


def replace_check_state(connection: Connection, new: CheckState) -> CheckState:
    """Make `new(pair, state)` run on every change of a pair's state; returns the original. Relies
    on: aioice setting a pair's state only through `self.check_state(pair, state)`."""
    original: CheckState = connection.check_state
    connection.check_state = new  # type: ignore[method-assign, assignment]
    return original


def replace_request_received(connection: Connection, new: RequestReceived) -> RequestReceived:
    """Make `new(message, addr, protocol)` handle each STUN request; returns the original. Relies
    on: StunProtocol.datagram_received calling `self.receiver.request_received(...)` for requests,
    before their integrity is checked (the original checks it and learns peer-reflexive candidates)."""
    original: RequestReceived = connection.request_received
    connection.request_received = new  # type: ignore[method-assign, assignment]
    return original


def replace_add_remote_candidate(connection: Connection, new: AddRemoteCandidate) -> AddRemoteCandidate:
    """Make `new(candidate)` take each trickled remote candidate; returns the original. Relies on:
    aiortc's RTCIceTransport.addRemoteCandidate awaiting `connection.add_remote_candidate`."""
    original: AddRemoteCandidate = connection.add_remote_candidate
    connection.add_remote_candidate = new  # type: ignore[method-assign, assignment]
    return original


def replace_datagram_received(protocol: StunProtocol, new: Datagram) -> Datagram:
    """Make `new(data, addr)` receive every datagram that reaches the protocol's socket; returns the
    original (which parses STUN and hands the rest to `Connection.data_received`). Relies on: the
    transport (asyncio's, or camtrack's udpmux) calling `protocol.datagram_received` looked up on
    the instance."""
    original: Datagram = protocol.datagram_received
    protocol.datagram_received = new  # type: ignore[method-assign, assignment]
    return original
