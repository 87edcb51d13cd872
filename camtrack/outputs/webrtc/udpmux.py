"""One UDP socket for every peer's ICE, DTLS and SRTP (`--webrtc-port`).

aioice opens a socket per host candidate of every peer; here each peer's host candidates are
instead virtual transports on one shared socket. An incoming datagram finds its peer the way
Pion's UDP mux does: a STUN binding request by the local ufrag in its USERNAME (each peer gets a
unique one), and everything else by the remote address that such a request, once it proved it
knows the peer's ICE password, tied to that peer (at most MAX_ROUTES addresses a peer; requests
from new ones beyond that are dropped unchecked, see icelimits.py). A STUN response goes to the
peer that sent the request (by its transaction id). Datagrams from any other address are dropped at once: strangers
cost a counter, never memory. Past the mux, each peer's `IceGate` (icegate.py) still decides what
reaches its DTLS and SRTP.

Worker processes (camtrack.workers) share the socket: each holds a copy of it and sends from it
(`adopt`), while this process alone reads it. A worker's peer is a `ForeignEndpoint` here, claimed
by its ufrag and ICE password when the worker's peer gathers. Only what this process checked is
handed to the worker: a binding request whose MESSAGE-INTEGRITY holds with that password (which
also routes its address here), what comes from an address so routed, and a STUN response to a
transaction the worker announced (`expect`) as it sent the request. A forged request is dropped
and counted; a stray response is dropped as for a peer of this process; nothing is handed to every
worker. The worker's own mux checks again and tells which addresses its peers proved
(`route_foreign`).

The hooks into aioice that make a peer use the mux are in addresses.py (`use_mux`).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import secrets
import socket
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aioice import stun
from aioice.ice import Connection, StunProtocol

from .icelimits import ignored

logger = logging.getLogger(__name__)

#: the default --webrtc-port: go2rtc's WebRTC port (8555), a port camera users already open for
#: WebRTC; MediaMTX's 8189 is left free so both can run on one box
DEFAULT_PORT = 8555
#: remote addresses one peer may be reached from (its candidates; a browser offers a handful)
MAX_ROUTES = 32
#: the kernel's buffers for the shared socket: every viewer's RTCP arrives here, every viewer's
#: video leaves from here (a keyframe to each of many viewers at once). Without the right to force
#: them, the kernel caps them at net.core.[rw]mem_max
RECEIVE_BUFFER = 4 * 1024 * 1024
SEND_BUFFER = 4 * 1024 * 1024
#: udp(7): a sendmsg control message carrying the size to split the datagram into
UDP_SEGMENT = 103
#: at most this many datagrams, and bytes, in one GSO send (the kernel's limits: 64 segments in
#: older kernels, a datagram's 64 KiB)
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
#: what a kernel or device without UDP GSO answers a GSO send (any other error is about the
#: destination, a route gone: it turns GSO off for no one)
GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})
#: Linux's socket options for buffers past those caps (not in Python's socket module)
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
#: seconds a --public-address name may take to resolve when a peer gathers its candidates
RESOLVE_TIMEOUT = 2.0
#: a peer's ICE username fragment: long enough that two peers never share one
UFRAG_LENGTH = 16
#: a worker's peer: STUN transactions (its checks, consent, STUN server queries) whose responses
#: this process waits for, at most, and for how long (aioice gives up on a request after 31.5 s)
MAX_TRANSACTIONS = 64
TRANSACTION_LIFETIME = 40.0
#: a worker's peer: checked requests from addresses past its MAX_ROUTES (its own credentials sprayed
#: from many ports) handed over at most this many a second, in bursts of at most UNPROVEN_BURST
UNPROVEN_RATE = 10.0
UNPROVEN_BURST = 20.0
#: seconds between log lines about what the hand-off to the workers refused (one per reason)
REFUSED_LOG_INTERVAL = 60.0

Address = tuple[str, int]


def family_of(host: str) -> int:
    """4 or 6, of an IP address written as one (asked for every datagram: no parsing)."""
    return 6 if ":" in host else 4


class PortTaken(OSError):
    """The --webrtc-port cannot be bound (another program has it)."""


@dataclass
class MuxStats:
    received: int = 0
    routed: int = 0
    #: from an address no peer is known at (and not a STUN message for one): dropped
    strangers: int = 0
    #: STUN for no peer of this mux (unknown ufrag, unknown transaction), or that failed its check
    stray_stun: int = 0
    #: handed to the worker process whose peer they are for
    forwarded: int = 0
    #: binding requests naming a worker's peer that failed its password check here: dropped
    forged: int = 0
    #: checked requests for a worker's peer from addresses past its routes, over its budget: dropped
    unproven: int = 0
    #: STUN requests from a new address of a peer that has MAX_ROUTES already: dropped
    over_routes: int = 0


class DirectSend:
    """Sends batches of datagrams (one picture's RTP packets) to one address straight on the
    mux's socket, with as few system calls as the platform allows.

    With Linux UDP GSO (udp(7), UDP_SEGMENT) one `sendmsg` carries a run of datagrams of one
    size (the last of the run may be shorter), which the kernel splits: a picture's FU-A
    fragments are one or two sizes, so a picture costs one or two calls instead of one per
    packet. Where GSO is refused the mux falls back to a `sendto` per datagram, for good. A full
    socket buffer drops datagrams, as the network would; nothing is queued.
    """

    def __init__(self, mux: UdpMux, sock: socket.socket, addr: Address) -> None:
        self.mux = mux
        self.addr = addr
        self._sendto = sock.sendto
        self._sendmsg = sock.sendmsg

    def __call__(self, packets: list[bytes]) -> int:
        """Send `packets` in order; returns how many were dropped."""
        addr, sendto = self.addr, self._sendto
        count = len(packets)
        dropped = 0
        start = 0
        while start < count:
            size = len(packets[start])
            end = start + 1
            if self.mux.gso:
                limit = min(count, start + GSO_MAX_SEGMENTS, start + GSO_MAX_BYTES // max(size, 1))
                while end < limit and len(packets[end]) == size:
                    end += 1
                if end < limit and len(packets[end]) < size:
                    end += 1  # the last of a run may be shorter
            try:
                if end - start == 1:
                    sendto(packets[start], addr)
                else:
                    self._sendmsg([b"".join(packets[start:end])],
                                  [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))], 0, addr)
            except BlockingIOError:
                dropped += end - start
            except OSError as exc:
                if end - start > 1 and self.mux.gso and exc.errno in GSO_REFUSED:
                    logger.info("UDP GSO refused (%s): one send per packet from now on", exc)
                    self.mux.gso = False
                    continue  # the same run again, a packet at a time
                dropped += end - start  # a route that went away: lost packets
            start = end
        return dropped


class _Transport(asyncio.DatagramTransport):
    """A datagram transport over the shared socket that is closed once (`_closed` says what that does)."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._closed()

    def abort(self) -> None:
        self.close()

    def _closed(self) -> None:
        raise NotImplementedError


class MuxTransport(_Transport):
    """What one aioice StunProtocol of a peer sees as its socket: a view of the shared one."""

    def __init__(self, endpoint: MuxEndpoint, protocol: StunProtocol, local: Address) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.protocol = protocol
        self.local = local

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing and addr is not None:
            data = bytes(data)
            if self.endpoint.mux.on_transaction is not None and is_stun_request(data):
                self.endpoint.announce(data[8:20])
            self.endpoint.mux.sendto(data, (addr[0], addr[1]))

    def direct(self, addr: Address) -> DirectSend | None:
        """A sender of batches of datagrams to `addr` straight on the shared socket (for RTP:
        no view, mux or asyncio transport per packet; see DirectSend). None once closed."""
        if self._closing:
            return None
        return self.endpoint.mux.direct(addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # no "socket": it is every peer's, and not this peer's to configure or close
        return self.local if name == "sockname" else default

    def _closed(self) -> None:
        self.endpoint.transport_closed(self)
        # aioice's StunProtocol.close() waits for connection_lost, as for a real socket
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


class SendOnlyTransport(_Transport):
    """A worker's copy of the shared socket: it sends on it, never reads it (the main process
    does, and hands the worker its peers' datagrams). A full buffer drops, as the network would."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing or addr is None:
            return
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            pass
        except OSError as exc:
            logger.debug("udp mux: cannot send to %s: %s", addr, exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def _closed(self) -> None:
        self.sock.close()  # (this process's copy: the main process's socket stays open)


#: what a worker's peer is handed: a datagram, where from, and whether that address is proven
#: (routed: the worker's backlog keeps room for those before any other)
Forward = Callable[[bytes, Address, bool], None]


@dataclass(eq=False)
class ForeignEndpoint:
    """A peer of a worker process on this socket: what arrives for it, checked here with its
    ICE `password`, goes to `forward`; `refused` counts what was not (shared by a worker's peers)."""

    ufrag: str
    password: str
    forward: Forward
    refused: Counter[str] = field(default_factory=Counter)
    remotes: set[Address] = field(default_factory=set)
    #: the STUN transactions the worker started for it, with when each expires (see UdpMux.expect)
    transactions: dict[bytes, float] = field(default_factory=dict)
    #: the budget of checked requests from addresses past its routes (UNPROVEN_RATE)
    tokens: float = UNPROVEN_BURST
    refilled: float = 0.0
    closed: bool = False

    def deliver(self, data: bytes, addr: Address, proven: bool = True) -> None:
        if not self.closed:
            self.forward(data, addr, proven)

    def spend(self, now: float) -> bool:
        """Whether one more unproven datagram may go to the worker now."""
        self.tokens = min(UNPROVEN_BURST, self.tokens + (now - self.refilled) * UNPROVEN_RATE)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class MuxEndpoint:
    """One aioice Connection on the mux: its protocols (one per address family) and its routes."""

    mux: UdpMux
    connection: Connection
    ufrag: str
    protocols: dict[int, StunProtocol] = field(default_factory=dict)
    transports: list[MuxTransport] = field(default_factory=list)
    remotes: set[Address] = field(default_factory=set)
    #: (in a worker) the transactions last announced to the main process, newest last
    announced: dict[bytes, None] = field(default_factory=dict)
    closed: bool = False

    def announce(self, transaction_id: bytes) -> None:
        """(In a worker) tell the main process a request of ours went out: it hands this worker
        the response, whatever address it comes from (once per transaction, not per retransmission)."""
        if transaction_id in self.announced or self.mux.on_transaction is None:
            return
        self.announced[transaction_id] = None
        if len(self.announced) > MAX_TRANSACTIONS:
            del self.announced[next(iter(self.announced))]
        self.mux.on_transaction(self.ufrag, transaction_id)

    def add_protocol(self, family: int, local: Address) -> StunProtocol:
        protocol = StunProtocol(self.connection)
        transport = MuxTransport(self, protocol, local)
        self.transports.append(transport)
        protocol.connection_made(transport)
        self.protocols[family] = protocol
        return protocol

    def deliver(self, data: bytes, addr: Address) -> None:
        protocol = self.protocols.get(family_of(addr[0]))
        if protocol is not None and not self.closed:
            self.mux.stats.routed += 1
            # looked up on each call: the peer's IceGate replaces it (icegate.py)
            protocol.datagram_received(data, addr)

    def owns(self, transaction_id: bytes) -> StunProtocol | None:
        for protocol in self.protocols.values():
            if transaction_id in protocol.transactions:
                return protocol
        return None

    def transport_closed(self, transport: MuxTransport) -> None:
        if all(t.is_closing() for t in self.transports):
            self.mux.remove(self)


class UdpMux(asyncio.DatagramProtocol):
    """The shared UDP socket and the routes from it to each peer."""

    def __init__(self, port: int, public_addresses: list[str] | None = None, address: str | None = None) -> None:
        self.port = port
        #: the one local address to bind, or None for all of them
        self.address = address
        #: extra host candidates (a 1:1 NAT's or a port forward's address): IP addresses or names
        self.public_addresses = list(public_addresses or [])
        self.stats = MuxStats()
        self.transport: asyncio.DatagramTransport | None = None
        #: the socket itself (see `direct`), and whether it may send with UDP GSO (DirectSend)
        self.sock: socket.socket | None = None
        self.gso = sys.platform == "linux"
        self.dual_stack = False
        self._ufrags: dict[str, MuxEndpoint | ForeignEndpoint] = {}
        self._routes: dict[Address, MuxEndpoint | ForeignEndpoint] = {}
        self._endpoints: dict[int, MuxEndpoint] = {}
        #: worker processes' peers on this socket, by ufrag (see ForeignEndpoint), and the STUN
        #: transactions they started, by id
        self._foreign: dict[str, ForeignEndpoint] = {}
        self._transactions: dict[bytes, ForeignEndpoint] = {}
        #: in a worker: told each ufrag its peers take (with its ICE password) and give up (None),
        #: each address one of them proved, and each STUN request they send (its transaction id),
        #: so the main process can check and hand it what arrives for them (see `adopt`)
        self.on_ufrag: Callable[[str, str | None], None] | None = None
        self.on_route: Callable[[str, Address], None] | None = None
        self.on_transaction: Callable[[str, bytes], None] | None = None
        #: when each reason the hand-off refused something was last logged
        self._refusals_told: dict[str, float] = {}

    # --- the socket ---

    async def open(self) -> None:
        """Bind the port on `address`, or on every address (IPv6 and IPv4 on one socket where the
        system allows): then the kernel picks each reply's source address by its routes, which is
        the address the peer reached unless the machine has several on one path (--ice-address)."""
        sock = None
        if self.address is not None:
            sock = socket.socket(socket.AF_INET6 if family_of(self.address) == 6 else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.address, self.port))
            except OSError:
                sock.close()
                raise
        elif socket.has_ipv6:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", self.port))
                self.dual_stack = True
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("0.0.0.0", self.port))
            except OSError:
                sock.close()
                raise
        for force, option, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, RECEIVE_BUFFER),
                                    (SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER)):
            try:  # past net.core.[rw]mem_max where allowed (root): this one socket carries every viewer
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
                except OSError:
                    pass
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self.sock = sock
        self.port = sock.getsockname()[1]  # (port 0: the one the system chose; tests do that)

    def adopt(self, sock: socket.socket) -> None:
        """Send on `sock`, a copy of the main process's shared socket, without reading it (a
        worker: the main process reads, and hands over what is for its peers through
        `datagram_received`)."""
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.dual_stack = (sock.family == socket.AF_INET6
                           and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        self.transport = SendOnlyTransport(sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's own datagram transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        """Close the socket, and every peer's transport still on it."""
        for endpoint in list(self._endpoints.values()):
            for transport in list(endpoint.transports):
                transport.close()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
            self.sock = None

    async def public_hosts(self) -> list[str]:
        """The public addresses as IP addresses (names resolved now: a dynamic DNS name may move)."""
        hosts: list[str] = []
        loop = asyncio.get_running_loop()
        for name in self.public_addresses:
            try:
                hosts.append(str(ipaddress.ip_address(name)))
                continue
            except ValueError:
                pass
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                logger.warning("--public-address %s does not resolve now (%s): not offered", name, exc)
                continue
            hosts += [str(info[4][0]) for info in infos if self.can_serve(str(info[4][0]))]
        return list(dict.fromkeys(hosts))

    def can_serve(self, host: str) -> bool:
        if self.address is not None:
            return family_of(host) == family_of(self.address)
        return self.dual_stack or family_of(host) == 4

    def _address(self, addr: Address) -> Address:
        """`addr` as the socket takes it (an IPv4 address mapped on a dual-stack socket)."""
        host = addr[0]
        if self.dual_stack and ":" not in host:
            host = "::ffff:" + host
        return (host, addr[1])

    def direct(self, addr: Address) -> DirectSend | None:
        """A sender of batches of datagrams to `addr` on the socket (see MuxTransport.direct)."""
        if self.sock is None or self.transport is None:
            return None
        return DirectSend(self, self.sock, self._address(addr))

    def sendto(self, data: bytes, addr: Address) -> None:
        if self.transport is None:
            return
        try:
            self.transport.sendto(data, self._address(addr))
        except OSError as exc:  # an address this socket cannot reach: as a real socket's error would be
            logger.debug("udp mux: cannot send to %s: %s", addr, exc)

    def error_received(self, exc: Exception) -> None:
        logger.debug("udp mux: %s", exc)  # ICMP unreachable from a peer that went away

    # --- peers ---

    def new_ufrag(self) -> str:
        """A local ufrag no peer of this mux has: it is how a peer's packets are found."""
        ufrag = new_ufrag()
        while ufrag in self._ufrags:
            ufrag = new_ufrag()
        return ufrag

    def register(self, connection: Connection) -> MuxEndpoint:
        """The endpoint of `connection`, made when it gathers (a connection that never gathers,
        one aiortc dropped for BUNDLE say, never has one), found by its local ufrag."""
        endpoint = self._endpoints.get(id(connection))
        if endpoint is None:
            ufrag = connection.local_username
            if ufrag in self._ufrags:  # (new_ufrag() was not asked, or another peer took it since)
                raise ValueError(f"ICE ufrag {ufrag!r} is already another peer's on the shared port")
            endpoint = MuxEndpoint(self, connection, ufrag)
            self._ufrags[ufrag] = endpoint
            self._endpoints[id(connection)] = endpoint
            if self.on_ufrag is not None:
                self.on_ufrag(ufrag, connection.local_password)
        return endpoint

    def forget(self, connection: Connection) -> None:
        """`connection` closed: forget its endpoint, if it had one."""
        endpoint = self._endpoints.get(id(connection))
        if endpoint is not None:
            self.remove(endpoint)

    def remove(self, endpoint: MuxEndpoint | ForeignEndpoint) -> None:
        """A peer closed: forget its ufrag and its routes."""
        endpoint.closed = True
        if self._ufrags.get(endpoint.ufrag) is endpoint:
            del self._ufrags[endpoint.ufrag]
        if isinstance(endpoint, MuxEndpoint):
            if self._endpoints.pop(id(endpoint.connection), None) is not None and self.on_ufrag is not None:
                self.on_ufrag(endpoint.ufrag, None)
        else:
            if self._foreign.get(endpoint.ufrag) is endpoint:
                del self._foreign[endpoint.ufrag]
            for transaction_id in endpoint.transactions:
                if self._transactions.get(transaction_id) is endpoint:
                    del self._transactions[transaction_id]
            endpoint.transactions.clear()
        for remote in endpoint.remotes:
            if self._routes.get(remote) is endpoint:
                del self._routes[remote]
        endpoint.remotes.clear()

    # --- worker processes' peers ---

    def claim(self, ufrag: str, password: str, forward: Forward, refused: Counter[str] | None = None) -> bool:
        """A worker's peer took `ufrag`, with ICE `password`: what arrives for it and passes the
        checks here goes to `forward`, and what does not is counted in `refused` (False: the ufrag is
        another peer's already, which 16 random letters and digits make as good as impossible)."""
        if ufrag in self._ufrags:
            return False
        endpoint = ForeignEndpoint(ufrag, password, forward, Counter() if refused is None else refused)
        self._ufrags[ufrag] = self._foreign[ufrag] = endpoint
        return True

    def expect(self, ufrag: str, transaction_id: bytes) -> None:
        """The worker's peer of `ufrag` sent a STUN request: its response, from wherever it comes,
        goes to that worker (the newest MAX_TRANSACTIONS of each peer, for TRANSACTION_LIFETIME)."""
        endpoint = self._foreign.get(ufrag)
        if endpoint is None or len(transaction_id) != 12:
            return
        if self._transactions.get(transaction_id, endpoint) is not endpoint:
            return  # (another peer's: 96 random bits make that as good as impossible)
        endpoint.transactions.pop(transaction_id, None)
        endpoint.transactions[transaction_id] = time.monotonic() + TRANSACTION_LIFETIME
        self._transactions[transaction_id] = endpoint
        while len(endpoint.transactions) > MAX_TRANSACTIONS:
            oldest = next(iter(endpoint.transactions))
            del endpoint.transactions[oldest]
            del self._transactions[oldest]

    def route_foreign(self, ufrag: str, remote: Address) -> None:
        """The worker's peer of `ufrag` proved `remote` (a STUN check signed with its password)."""
        endpoint = self._foreign.get(ufrag)
        if endpoint is not None:
            self._route(remote, endpoint)

    def release(self, ufrag: str) -> None:
        """The worker's peer of `ufrag` closed (or its worker went)."""
        endpoint = self._foreign.get(ufrag)
        if endpoint is not None:
            self.remove(endpoint)

    @property
    def peers(self) -> int:
        return len(self._endpoints)

    @property
    def foreign(self) -> int:
        """Worker processes' peers on this socket."""
        return len(self._foreign)

    @property
    def routes(self) -> int:
        return len(self._routes)

    def _route(self, remote: Address, endpoint: MuxEndpoint | ForeignEndpoint) -> None:
        old = self._routes.get(remote)
        if old is endpoint:
            return
        if len(endpoint.remotes) >= MAX_ROUTES:
            return
        if old is not None:
            old.remotes.discard(remote)
        self._routes[remote] = endpoint
        endpoint.remotes.add(remote)
        if self.on_route is not None and isinstance(endpoint, MuxEndpoint):
            self.on_route(endpoint.ufrag, remote)

    # --- what arrives ---

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        assert isinstance(data, bytes)
        self.stats.received += 1
        host = addr[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        remote = (host, addr[1])
        if is_stun_response(data) and remote not in self._routes and not self._expected(data[8:20]):
            # a response from an address no peer proved, to no transaction a peer started: dropped
            # before it is parsed (a flood of them costs a dict lookup each)
            self.stats.stray_stun += 1
            return
        message = parse_stun(data)
        if message is None:
            endpoint = self._routes.get(remote)
            if endpoint is None:
                self.stats.strangers += 1
            else:
                if isinstance(endpoint, ForeignEndpoint):
                    self.stats.forwarded += 1
                endpoint.deliver(data, remote)
            return
        if message.message_class == stun.Class.REQUEST:
            self._request(message, data, remote)
        elif message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            self._response(message, data, remote)
        else:
            # indications (keepalives): only from a peer's own address
            endpoint = self._routes.get(remote)
            if endpoint is not None:
                endpoint.deliver(data, remote)

    def _request(self, message: stun.Message, data: bytes, remote: Address) -> None:
        username = message.attributes.get("USERNAME")
        endpoint = self._ufrags.get(str(username).partition(":")[0]) if username else None
        if endpoint is None:
            self.stats.stray_stun += 1
            return
        if isinstance(endpoint, ForeignEndpoint):
            self._foreign_request(message, data, remote, endpoint)
            return
        if len(endpoint.remotes) >= MAX_ROUTES and self._routes.get(remote) is not endpoint:
            # a peer with all the addresses it may have gets no new one: dropped before its
            # signature is checked and aioice answers it (icelimits.py)
            self.stats.over_routes += 1
            ignored(endpoint.connection, f"requests came from more than {MAX_ROUTES} addresses on the shared "
                    "port: those from new addresses are dropped", endpoint.ufrag, "routes")
            return
        # only a request that knows the peer's password moves an address to it: anyone can
        # read a ufrag off the wire, nobody but the peer can sign with its password
        if message.check_message_integrity(endpoint.connection.local_password.encode("utf8")):
            self._route(remote, endpoint)
        else:
            self.stats.stray_stun += 1  # aioice answers it 401, as on a socket of its own
        endpoint.deliver(data, remote)

    def _expected(self, transaction_id: bytes) -> bool:
        """Whether a peer of this process or of a worker started this STUN transaction."""
        return transaction_id in self._transactions or any(e.owns(transaction_id) for e in self._endpoints.values())

    def _foreign_request(self, message: stun.Message, data: bytes, remote: Address, endpoint: ForeignEndpoint) -> None:
        """A request naming a worker's peer: checked here against its password before the worker
        sees it (a forged one would cost the worker's loop an answer each, and its backlog room)."""
        if not message.check_message_integrity(endpoint.password.encode("utf8")):
            self.stats.forged += 1
            self._refuse(endpoint, "forged", remote, self.stats.forged,
                         "binding requests naming a worker's peer that failed its password check")
            return
        self._route(remote, endpoint)
        if self._routes.get(remote) is not endpoint and not endpoint.spend(time.monotonic()):
            # its own credentials from more addresses than a peer has: a few a second get through
            self.stats.unproven += 1
            self._refuse(endpoint, "unproven", remote, self.stats.unproven,
                         f"signed binding requests for a worker's peer from more than {MAX_ROUTES} addresses, "
                         f"over {UNPROVEN_RATE:g} a second")
            return
        self.stats.forwarded += 1
        endpoint.deliver(data, remote)  # (its worker's mux checks it too, and tells the route)

    def _refuse(self, endpoint: ForeignEndpoint, reason: str, remote: Address, total: int, what: str) -> None:
        """Count what the hand-off refused, and say so in the log at most once a minute per reason."""
        endpoint.refused[reason] += 1
        now = time.monotonic()
        told = self._refusals_told.get(reason)
        if told is None or now - told >= REFUSED_LOG_INTERVAL:
            self._refusals_told[reason] = now
            logger.warning('udp mux: dropped %s (%d so far, the last from %s:%d; '
                           'camtrack_worker_datagrams_refused_total{reason="%s"})', what, total, remote[0], remote[1], reason)

    def _foreign_response(self, message: stun.Message, data: bytes, remote: Address) -> bool:
        """A response from an address no peer proved: handed to the worker whose peer started the
        transaction, if one did (True), once."""
        endpoint = self._transactions.pop(message.transaction_id, None)
        if endpoint is None:
            return False
        expires = endpoint.transactions.pop(message.transaction_id, 0.0)
        if expires < time.monotonic():
            return False
        self.stats.forwarded += 1
        endpoint.deliver(data, remote, proven=False)
        return True

    def _response(self, message: stun.Message, data: bytes, remote: Address) -> None:
        routed = self._routes.get(remote)
        if isinstance(routed, ForeignEndpoint):
            self.stats.forwarded += 1
            routed.deliver(data, remote)
            return
        endpoint = routed
        protocol = endpoint.owns(message.transaction_id) if endpoint is not None else None
        if protocol is None:
            # a response to a check (or a STUN server's answer) from an address not routed yet
            for candidate in self._endpoints.values():
                protocol = candidate.owns(message.transaction_id)
                if protocol is not None:
                    endpoint = candidate
                    break
        if (endpoint is None or protocol is None) and self._foreign_response(message, data, remote):
            return  # a worker's peer's check, answered from an address not routed yet
        if endpoint is None or protocol is None:
            self.stats.stray_stun += 1
            return
        password = endpoint.connection.remote_password
        if password is not None and message.check_message_integrity(password.encode("utf8")):
            self._route(remote, endpoint)  # the peer answered our check from there: it is its address
        endpoint.deliver(data, remote)


def is_stun_request(data: bytes) -> bool:
    """Whether `data` is a STUN request (RFC 5389: the class bits, C1 and C0, both 0)."""
    return len(data) >= 20 and data[0] < 4 and not data[0] & 0x01 and not data[1] & 0x10 \
        and data[4:8] == b"\x21\x12\xa4\x42"


def is_stun_response(data: bytes) -> bool:
    """Whether `data` is a STUN success or error response (the class bit C1 set)."""
    return len(data) >= 20 and data[0] < 4 and bool(data[0] & 0x01) and data[4:8] == b"\x21\x12\xa4\x42"


def parse_stun(data: bytes) -> stun.Message | None:
    """`data` as a STUN message (RFC 7983: first byte 0-3), or None: DTLS, SRTP or junk."""
    if len(data) < 20 or data[0] > 3:
        return None
    try:
        return stun.parse_message(data)
    except Exception:  # noqa: BLE001 - ValueError, struct.error, ...: not STUN
        return None


def new_ufrag() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(UFRAG_LENGTH))
