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

from .logs import clip_repr
from .outputs.directory import Camera, Cameras

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


#: the port a URL of this scheme means when it names none
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(header: str) -> tuple[str, int | None]:
    """A Host header (or a URL's netloc) as its name (`host_name`) and its port, None when it names none."""
    value = header.strip()
    port = ""
    if value.startswith("["):
        port = value.partition("]")[2].removeprefix(":")
    elif value.count(":") == 1:
        port = value.partition(":")[2]
    return host_name(value), int(port) if port.isdigit() and len(port) <= 5 else None


def origin_matches_host(origin: str, host: str) -> bool:
    """Whether a page of `origin` ("https://name:port") is this server's, reached with `host` in its Host header.

    As a browser sends them: the same name, and the same port, the scheme's default standing for a
    port not named. As a proxy sends them: a Host with no port (nginx's `$host`, a proxy on a port
    other than 443) matches the name on any port; the browser names the port whenever it is not the
    default, so a Host without one has had it taken off on the way.
    """
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return False
    origin_name, origin_port = split_host(parts.netloc)
    host_part, port = split_host(host)
    if not origin_name or origin_name != host_part:
        return False
    return port is None or port == (origin_port or DEFAULT_PORTS[parts.scheme])


def request_hosts(request: web.Request) -> list[str]:
    """The names the request was sent to: its Host, and the Host a trusted proxy says it was sent to."""
    hosts = [request.host]
    if request.get(VIA_PROXY):
        hosts += forwarded_values(request.headers, "X-Forwarded-Host", "host")
    return hosts


#: why a page's Origin is refused, % (its Origin, the Host it was sent to, the option that lets it in)
REFUSAL = ("its page's Origin %s is not the server it was sent to (Host %s) nor an --allow-origin: behind a proxy, "
           "pass the browser's Host on (nginx: proxy_set_header Host $http_host), or start camtrack with %s")


def origin_refusal(request: web.Request, allowed: list[str]) -> tuple[str, str, str] | None:
    """Why a browser page may not open the websocket or WHEP, as REFUSAL's arguments (what was compared),
    or None if it may: same-origin (`origin_matches_host`), listed in --allow-origin, or no Origin at
    all (a non-browser client)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if "*" in allowed or origin.rstrip("/") in (a.rstrip("/") for a in allowed):
        return None
    hosts = request_hosts(request)
    if any(origin_matches_host(origin, host) for host in hosts):
        return None
    shown = origin[:100] if origin[:100].isprintable() and " " not in origin[:100] else "ORIGIN"
    return clip_repr(origin[:100]), " or ".join(clip_repr(h[:100]) for h in hosts), f"--allow-origin {shown}"


#: set on a request that came through a trusted proxy (its remote is the client the proxy named)
VIA_PROXY = web.RequestKey("via_proxy", bool)
#: the most hops of a forwarding header read (a proxy chain is a few; a longer list is someone's padding)
MAX_HOPS = 32


def forwarded_values(headers: Mapping[str, str], legacy: str, parameter: str) -> list[str]:
    """The hops of `legacy` (X-Forwarded-For, X-Forwarded-Host), else of RFC 7239 Forwarded's `parameter`, in order.

    X-Forwarded-For first: the header nginx, Caddy, Traefik, HAProxy and Apache set or append to, so a
    Forwarded a client made up and a proxy passed on untouched does not count when they set it.
    """
    getall = getattr(headers, "getall", None)
    lines = getall(legacy, []) if getall else ([headers[legacy]] if legacy in headers else [])
    if lines:
        return [v.strip() for v in ",".join(lines).split(",")][-MAX_HOPS:]
    lines = getall("Forwarded", []) if getall else ([headers["Forwarded"]] if "Forwarded" in headers else [])
    values = []
    for element in ",".join(lines).split(","):
        value = ""  # an element without the parameter is a hop that did not say
        for pair in element.split(";"):
            key, _, raw = pair.partition("=")
            if key.strip().lower() == parameter:
                value = raw.strip().strip('"')
        values.append(value)
    return values[-MAX_HOPS:] if lines else []


def hop_address(value: str) -> str | None:
    """The IP address of one hop ("192.0.2.1", "192.0.2.1:4711", "[2001:db8::1]:4711"), None if it names none."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value.partition("%")[0]))
    except ValueError:
        return None  # "unknown", an obfuscated "_hidden", junk


class TrustedProxies:
    """--trusted-proxy: whose forwarding headers name the client, and which client they name.

    Only a request whose peer is a trusted proxy is read; its hops are walked from the right (the
    hop its proxy added last) past every trusted proxy, and the first other address is the client.
    A hop that names no address stops the walk at the proxy that passed it on. From anyone else the
    headers are ignored: a forged X-Forwarded-For changes nothing.
    """

    def __init__(self, networks: list[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, address: str | None) -> bool:
        if not address or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The client's address: `peer`, or the one a trusted `peer`'s headers name."""
        if not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_values(headers, "X-Forwarded-For", "for")):
            address = hop_address(hop)
            if address is None:
                break
            client = address
            if not self.trusts(address):
                break
        return client

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def forwarded_client(request: web.Request,
                                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if not self.trusts(request.remote):
                return await handler(request)
            client = self.client(request.remote, request.headers)
            forwarded = request.clone(remote=client or "?")
            forwarded[VIA_PROXY] = True
            return await handler(forwarded)

        return forwarded_client


def origin_check(allowed: list[str]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`POST /ws`: the websocket's Origin check alone, so that the page can say why it is refused
    (a browser shows a page nothing of a refused websocket; it sends its Origin with a POST)."""
    async def handler(request: web.Request) -> web.Response:
        refusal = origin_refusal(request, allowed)
        if refusal is not None:
            raise web.HTTPForbidden(text=f"refused: {REFUSAL % refusal}\n")
        return web.Response(status=204)

    return handler


_said: set[tuple[str, str]] = set()


def first_time(kind: str, value: str) -> bool:
    """Whether a refusal of this kind and value is new (logged), for the first 1000 of them; a flood logs nothing."""
    if len(_said) >= 1000 or (kind, value) in _said:
        return False
    _said.add((kind, value))
    return True


def cors_headers(request: web.Request, allowed: list[str], **extra: str) -> dict[str, str]:
    """The CORS headers of a WHEP response, or 403 for a browser page of an origin not allowed.

    The rule is the websocket's (`origin_refusal`): no Origin (not a browser), same-origin, or listed
    in --allow-origin. An allowed origin is echoed (with `Vary: Origin`); `*` in the list grants any.
    """
    origin = request.headers.get("Origin")
    refusal = origin_refusal(request, allowed)
    if refusal is not None:
        shown = (origin or '')[:100]
        if first_time("origin", shown):
            logger.warning("refused %s %s from %s: " + REFUSAL + " (said once per origin)",
                           request.method, request.path[:100], request.remote, *refusal)
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
