"""Who may watch: the shared token, the Origin check (websocket and WHEP) and the Host check (every route)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import ifaddr
from aiohttp import web

from .cameras import Camera, Cameras
from .logs import clip_repr

logger = logging.getLogger(__name__)


def token_matches(expected: str | None, given: str | None) -> bool:
    """True when no token is configured, or `given` equals it (compared in constant time)."""
    if not expected:
        return True
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass"))


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer …` header, if any."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_token(request: web.Request, expected: str | None, headers: Mapping[str, str] | None = None) -> None:
    """For HTTP endpoints that serve video: 401 unless the bearer token (or ?token=) matches."""
    if not expected:
        return
    given = bearer_token(request) or request.query.get("token")
    if not token_matches(expected, given):
        raise web.HTTPUnauthorized(
            text="unauthorized: this server needs a token (Authorization: Bearer TOKEN)\n",
            headers={"WWW-Authenticate": 'Bearer realm="camtrack"', **(headers or {})},
        )


def find_camera(request: web.Request, cameras: Cameras, token: str | None, name: str | None, *,
                headers: Mapping[str, str] | None = None, auth_later: bool = False) -> Camera:
    """The camera a request for video names, checked in one order everywhere: the token (401),
    then the camera (404; `name` None is the first camera).

    With `auth_later` (the websocket, whose client may send its token in an `auth` message) a
    missing token passes, a wrong one in the URL does not.
    """
    if not (auth_later and "token" not in request.query and not bearer_token(request)):
        require_token(request, token, headers)
    camera = cameras.get(name)
    if camera is None:
        raise web.HTTPNotFound(text=f"no camera {clip_repr(name)}\n", headers=headers)
    return camera


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """Same-origin, listed, or no Origin at all (a non-browser client)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if "*" in allowed or origin.rstrip("/") in (a.rstrip("/") for a in allowed):
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


_said: set[tuple[str, str]] = set()


def first_time(kind: str, value: str) -> bool:
    """Whether a refusal of this kind and value is new (logged), for the first 1000 of them; a flood logs nothing."""
    if len(_said) >= 1000 or (kind, value) in _said:
        return False
    _said.add((kind, value))
    return True


def cors_headers(request: web.Request, allowed: list[str], **extra: str) -> dict[str, str]:
    """The CORS headers of a WHEP response, or 403 for a browser page of an origin not allowed.

    The rule is the websocket's (`origin_allowed`): no Origin (not a browser), same-origin, or listed
    in --allow-origin. An allowed origin is echoed (with `Vary: Origin`); `*` in the list grants any.
    """
    origin = request.headers.get("Origin")
    if not origin_allowed(request, allowed):
        shown = (origin or '')[:100]
        if first_time("origin", shown):
            logger.warning("refused %s %s from %s: origin %r not allowed (see --allow-origin); said once per origin",
                           request.method, request.path[:100], request.remote, shown)
        raise web.HTTPForbidden(
            text=f"origin {shown} not allowed: start camtrack with --allow-origin {shown} to let its pages in\n",
            headers={"Vary": "Origin"})
    headers = {"Vary": "Origin", **extra}
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    return headers


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name or address of a Host header: no port, no brackets, no zone, lower case, no final dot."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.partition("%")[0].rstrip(".")


def _interface_addresses() -> set[str]:
    addresses = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                addresses.add(str(ipaddress.ip_address(address.partition("%")[0])))
            except ValueError:
                pass
    return addresses


class HostCheck:
    """Which Host headers this server answers: its own names and addresses, plus --allow-host.

    A page of another website that makes its name resolve to this server (DNS rebinding) is then
    same-origin in the browser's eyes, but the request still carries that website's name in Host.
    """

    #: seconds the interfaces' addresses are kept before they are read again
    INTERFACES_TTL = 5.0

    def __init__(self, listen_host: str = "0.0.0.0", allowed: list[str] | None = None) -> None:
        allowed = [host_name(a) if a != "*" else a for a in allowed or []]
        self.any = "*" in allowed
        self.suffixes = tuple(a[1:] for a in allowed if a.startswith("*."))
        self.names = {"localhost", *(a for a in allowed if not a.startswith("*"))}
        if listen_host not in ("", "0.0.0.0", "::"):
            self.names.add(host_name(listen_host))
        hostname = socket.gethostname().lower().rstrip(".")
        if hostname:
            self.names.update({hostname, f"{hostname.partition('.')[0]}.local", hostname.partition(".")[0]})
        self._addresses: set[str] = set()
        self._read_at = -self.INTERFACES_TTL

    def add_fqdn(self) -> None:
        """Add the machine's fully qualified name (may ask DNS: call it off the event loop)."""
        fqdn = socket.getfqdn().lower().rstrip(".")
        if fqdn and fqdn != "localhost":
            self.names.add(fqdn)

    def addresses(self) -> set[str]:
        """The interfaces' addresses, read again when older than INTERFACES_TTL."""
        now = time.monotonic()
        if now - self._read_at >= self.INTERFACES_TTL:
            try:
                self._addresses = _interface_addresses()
            except OSError:
                pass
            self._read_at = now
        return self._addresses

    def allows(self, header: str | None) -> bool:
        if header is None or self.any:
            return True  # no Host at all: HTTP/1.0, not a browser
        host = host_name(header)
        if host in self.names or (self.suffixes and host.endswith(self.suffixes)):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or str(address) in self.addresses()

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def check_host(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            header = request.headers.get("Host")
            if not self.allows(header):
                shown = host_name(header or '')[:100]
                if first_time("host", shown):  # said once per name: a flood does not fill the log
                    logger.warning("refused requests for Host %r (from %s): not a name of this server; "
                                   "if it is one, start camtrack with --allow-host %s", shown, request.remote, shown)
                raise web.HTTPMisdirectedRequest(
                    text=f"{shown!r} is not a name of this server: if it is one, start camtrack with "
                         f"--allow-host {shown}\n")
            return await handler(request)

        return check_host
