"""ICE settings: which STUN/TURN servers to use (with TURN credentials that expire), which local
addresses to offer, and the shared UDP port."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import unquote

import ifaddr
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcicetransport import parse_stun_turn_uri

from ...sources.urls import redact
from .addresses import restrict_host_addresses, use_mux
from .contract import PeerFactory
from .udpmux import UdpMux

__all__ = ["IceContext", "ice_servers_json", "parse_ice_server", "resolve_addresses", "restrict_host_addresses",
           "rtc_configuration", "turn_credentials"]

#: seconds a TURN credential made from --turn-secret is valid: a viewer's TURN allocation is
#: refreshed with the credential it started with, so it must outlast a long watch; a page that
#: reconnects gets a fresh one
TURN_CREDENTIAL_TTL = 24 * 3600
#: the name part of the TURN username (coturn's REST API: "<expiry>:<name>")
TURN_USER = "camtrack"


def turn_credentials(secret: str, now: float | None = None, ttl: int = TURN_CREDENTIAL_TTL) -> tuple[str, str]:
    """(username, password) for a TURN server with coturn's `use-auth-secret`: the username is
    the expiry time and a name, the password base64(HMAC-SHA1(secret, username))."""
    expiry = int(time.time() if now is None else now) + ttl
    username = f"{expiry}:{TURN_USER}"
    digest = hmac.new(secret.encode("utf8"), username.encode("utf8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


def parse_ice_server(url: str, turn_secret: bool = False) -> RTCIceServer:
    """`stun:host[:port]` or `turn[s]:user:password@host[:port][?transport=udp|tcp]`; with
    `turn_secret` (credentials made from --turn-secret) a TURN server takes no user and password."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"ICE server must look like stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT], not {url!r}")
    rest = rest.removeprefix("//")
    username = credential = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        username, _, credential = userinfo.partition(":")
        username, credential = unquote(username), unquote(credential)
    if scheme.startswith("turn") and turn_secret and username:
        raise ValueError(f"with --turn-secret, give the TURN server without USER:PASS (each viewer gets "
                         f"credentials that expire): {redact(url)!r}")
    if scheme.startswith("turn") and not username and not turn_secret:
        raise ValueError(f"TURN server needs a user and password (turn:USER:PASS@HOST): {url!r}")
    server = RTCIceServer(urls=f"{scheme}:{rest}", username=username, credential=credential)
    # what aiortc itself will make of it, now rather than at the first viewer (a 500 there)
    try:
        parsed = parse_stun_turn_uri(server.urls if isinstance(server.urls, str) else server.urls[0])
    except ValueError as exc:
        raise ValueError(f"ICE server {redact(url)!r} is not a STUN/TURN address aiortc can use ({exc})") from None
    if not 1 <= parsed["port"] <= 65535:
        raise ValueError(f"ICE server {redact(url)!r}: port must be between 1 and 65535, not {parsed['port']}")
    return server


def rtc_configuration(ice_servers: list[str]) -> RTCConfiguration:
    """An RTCConfiguration with exactly these servers (an empty list means host candidates only)."""
    return RTCConfiguration(iceServers=[parse_ice_server(url) for url in ice_servers])


def ice_servers_json(ice_servers: list[str]) -> list[dict[str, str]]:
    """The servers as a browser's RTCPeerConnection wants them."""
    return servers_json([parse_ice_server(url) for url in ice_servers])


@dataclass
class IceContext:
    """The ICE side of one server: its STUN/TURN servers, TURN credentials made for each peer
    from `turn_secret`, and the shared UDP port's mux (None: a socket per peer, --webrtc-port 0)."""

    servers: list[str]
    turn_secret: str | None = None
    mux: UdpMux | None = None
    #: what makes the viewers' peers, as camtrack.app chose: in this process (peer.LocalPeers, also
    #: when None) or in the worker processes when there are some (camtrack.workers.pool.WorkerPeers)
    peers: PeerFactory | None = None

    def ice_servers(self) -> list[RTCIceServer]:
        """The servers, each TURN server with fresh credentials if there is a secret."""
        result = []
        for url in self.servers:
            server = parse_ice_server(url, turn_secret=self.turn_secret is not None)
            if self.turn_secret is not None and is_turn(url):
                server.username, server.credential = turn_credentials(self.turn_secret)
            result.append(server)
        return result

    def rtc_configuration(self) -> RTCConfiguration:
        """For a peer camtrack makes: exactly these servers (none: host candidates only)."""
        return RTCConfiguration(iceServers=self.ice_servers())

    def browser_servers(self) -> list[dict[str, str]]:
        """The servers as a browser's RTCPeerConnection wants them."""
        return servers_json(self.ice_servers())

    def prepare(self, pc: RTCPeerConnection) -> None:
        """Put `pc` on the mux, if there is one: after its transceivers, before createOffer/Answer."""
        if self.mux is not None:
            use_mux(pc, self.mux)


def servers_json(servers: list[RTCIceServer]) -> list[dict[str, str]]:
    result: list[dict[str, str]] = []
    for server in servers:
        entry = {"urls": server.urls if isinstance(server.urls, str) else server.urls[0]}
        if server.username:
            entry["username"] = server.username
            entry["credential"] = server.credential or ""
        result.append(entry)
    return result


def resolve_addresses(names: list[str]) -> list[str]:
    """Turn a list of IP addresses and interface names into IP addresses."""
    addresses: list[str] = []
    adapters = None
    for name in names:
        try:
            addresses.append(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if adapters is None:
            adapters = ifaddr.get_adapters()
        found = [a for a in adapters if a.nice_name == name or a.name == name]
        if not found:
            raise ValueError(f"--ice-address {name!r} is neither an IP address nor a network interface")
        for adapter in found:
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    addresses.append(ip.ip)
                elif ip.ip[2] == 0:  # IPv6 without a scope (not link-local)
                    addresses.append(ip.ip[0])
    return addresses
