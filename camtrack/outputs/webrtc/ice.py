"""ICE settings: which STUN/TURN servers to use and which local addresses to offer."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote

import ifaddr
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

from ...sources.urls import redact
from .hooks import restrict_host_addresses

__all__ = ["ice_servers_json", "parse_ice_server", "resolve_addresses", "restrict_host_addresses",
           "rtc_configuration"]


def parse_ice_server(url: str) -> RTCIceServer:
    """`stun:host[:port]` or `turn[s]:user:password@host[:port][?transport=udp|tcp]`."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"ICE server must look like stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT], not {url!r}")
    rest = rest.removeprefix("//")
    username = credential = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        username, _, credential = userinfo.partition(":")
        username, credential = unquote(username), unquote(credential)
    if scheme.startswith("turn") and not username:
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
    result: list[dict[str, str]] = []
    for server in map(parse_ice_server, ice_servers):
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
