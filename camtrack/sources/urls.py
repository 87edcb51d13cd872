"""Credentials in source and publish URLs: found, so they can be kept out of logs and endpoints."""

from __future__ import annotations

import re

#: query parameters whose values are secrets (case-insensitive; also any name containing one of SECRET_PARTS)
SECRET_PARAMS = frozenset({"user", "username", "usr", "login", "password", "pass", "passwd", "pwd", "pw", "token",
                           "key", "secret", "auth", "apikey", "signature", "sig", "credential", "credentials",
                           "session", "sid", "code"})
SECRET_PARTS = ("pass", "pwd", "token", "secret", "key", "auth", "signature", "credential")
_QUERY_PARAM = re.compile(r"(?P<name>[^&;=#\s]*)=(?P<value>[^&;#\s]*)")


def is_secret_param(name: str) -> bool:
    """Whether a URL's query parameter `name` carries a credential."""
    name = name.lower()
    return name in SECRET_PARAMS or any(part in name for part in SECRET_PARTS)


def url_secrets(spec: str) -> list[str]:
    """The credentials in a URL: its user-info (user and password) and the values of secret query parameters."""
    _, sep, rest = spec.partition("://")
    if not sep:
        return []
    authority, tail = _split_authority(rest)
    found = []
    if "@" in authority:
        user, _, password = authority.rpartition("@")[0].partition(":")
        found += [user, password]
    query = tail.partition("?")[2].partition("#")[0]
    found += [m["value"] for m in _QUERY_PARAM.finditer(query) if is_secret_param(m["name"])]
    return [value for value in found if value]


def _split_authority(rest: str) -> tuple[str, str]:
    """`user:pass@host:port` and what follows it (`/path?query#fragment`), split at the first / ? or #."""
    end = min((i for i in map(rest.find, "/?#") if i != -1), default=len(rest))
    return rest[:end], rest[end:]


def redact(spec: str) -> str:
    """A source spec (or any URL) fit for logs and APIs: its user-info and secret query values replaced by ***."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        return spec
    authority, tail = _split_authority(rest)
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        query = _QUERY_PARAM.sub(lambda m: f"{m['name']}=***" if is_secret_param(m["name"]) else m[0], query)
        tail = f"{path}?{query}{hash_}{fragment}"
    return f"{scheme}://{authority}{tail}"
