"""Secrets never reach a log line: every record is scrubbed of the credentials camtrack knows of.

camtrack's own log lines show URLs through `sources.redact()` already; this filter is the net under
everything else, libraries included (an aiohttp client error that prints a URL, a traceback):
URLs in a message lose their user-info and secret query values, and every known secret value
(source and Janus URL credentials, --token, --janus-pin, TURN credentials) is replaced by ***.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

from .config import Config
from .outputs.webrtc.ice import parse_ice_server
from .sources import redact, url_secrets

MASK = "***"
#: secrets shorter than this are only removed from URLs, not from free text (a user "u" would eat every u)
MIN_FREE_TEXT = 3
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def with_decoded(values: Iterable[str | None]) -> set[str]:
    """The values, and their percent-decoded forms (a URL's password as a library may print it)."""
    found = set()
    for value in values:
        if value:
            found.update({value, unquote(value)})
    return found


def config_secrets(config: Config) -> set[str]:
    """Every credential in `config`: URL user-info and secret query values, the token, pins, TURN passwords."""
    values: list[str | None] = [config.token, config.turn_secret]
    for camera in config.cameras:
        values += url_secrets(camera.source)
        if camera.janus_url:
            values += url_secrets(camera.janus_url)
        values.append(camera.janus_pin)
    values += url_secrets(config.source)
    for url in (config.webhook, config.mqtt):
        values += url_secrets(url) if url else []
    for url in config.ice_servers:
        try:
            server = parse_ice_server(url, turn_secret=config.turn_secret is not None)
        except ValueError:
            continue
        values += [server.username, server.credential]
    return {str(v) for v in with_decoded(values)}


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with its URLs redacted and every one of `secrets` replaced by ***."""
    text = _URL.sub(lambda m: redact(m[0]), text)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: one secret may contain another
        if len(secret) >= MIN_FREE_TEXT:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """Rewrites each record's message (and traceback) without the secrets it knows; drops nothing."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("")
        self.secrets: set[str] = set(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler to report
            return True
        record.msg, record.args = scrub(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


#: the one filter of this process, on every root handler
_filter = SecretFilter()


def install_log_redaction(config: Config, logger: logging.Logger | None = None) -> SecretFilter:
    """Scrub the secrets of `config` from every record reaching the handlers of `logger` (the root).

    Call it once the handlers exist (after `logging.basicConfig`); calling it again adds the
    secrets of another config and reaches handlers added since. Returns the filter.
    """
    _filter.secrets |= config_secrets(config)
    for handler in (logger or logging.getLogger()).handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)
    return _filter
