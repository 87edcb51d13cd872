"""Who may watch: the shared token and the websocket's Origin check."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web


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


def require_token(request: web.Request, expected: str | None) -> None:
    """For HTTP endpoints that serve video: 401 unless the bearer token (or ?token=) matches."""
    if not expected:
        return
    given = bearer_token(request) or request.query.get("token")
    if not token_matches(expected, given):
        raise web.HTTPUnauthorized(
            text="unauthorized: this server needs a token (Authorization: Bearer TOKEN)\n",
            headers={"WWW-Authenticate": 'Bearer realm="camtrack"'},
        )


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """Same-origin, listed, or no Origin at all (a non-browser client)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if "*" in allowed or origin.rstrip("/") in (a.rstrip("/") for a in allowed):
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
