"""Log lines about clients: what a client supplied is cut short, and each client gets a few lines a second.

A client chooses the strings it sends (a 64 KiB message type, a candidate, a User-Agent) and how often it
sends them; without these limits it chooses how big the server's log grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

#: the longest part of a log line or an error message that a client supplied
CLIP = 120
#: lines about one client: this many at once, refilled at RATE a second
BURST = 5
RATE = 1.0
#: how long after the first suppressed line the summary of suppressed lines is written
SUMMARY_DELAY = 5.0
#: clients remembered at once (the oldest are forgotten, with their summaries written)
MAX_CLIENTS = 4096


def clip(value: object, limit: int = CLIP) -> str:
    """`value` as text of at most about `limit` characters, saying how long it was when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


def clip_repr(value: object, limit: int = CLIP) -> str:
    """`repr(value)`, cut short like `clip` (without building the whole repr of a huge string)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}…({len(value)} chars)"
    return clip(repr(value), limit)


class _Client:
    __slots__ = ("tokens", "stamp", "suppressed", "timer", "timer_loop")

    def __init__(self) -> None:
        self.tokens = float(BURST)
        self.stamp = time.monotonic()
        self.suppressed = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_loop: asyncio.AbstractEventLoop | None = None


class ClientLog:
    """A logger whose lines about one client (`remote`) are rate-limited; the lines dropped are
    counted and written as one summary line SUMMARY_DELAY seconds after the first was dropped."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def info(self, remote: str, message: str, *args: Any) -> None:
        self.log(logging.INFO, remote, message, *args)

    def warning(self, remote: str, message: str, *args: Any) -> None:
        self.log(logging.WARNING, remote, message, *args)

    def log(self, level: int, remote: str, message: str, *args: Any) -> None:
        """Log `message % args` (each argument clipped) unless `remote` has used up its lines."""
        if not self.logger.isEnabledFor(level):
            return
        client = self._client(remote)
        now = time.monotonic()
        client.tokens = min(float(BURST), client.tokens + (now - client.stamp) * RATE)
        client.stamp = now
        if client.tokens < 1:
            client.suppressed += 1
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a script): the count is written with the next line instead
            # (a timer of a loop that has ended since, say a test's, would never fire)
            if client.timer is None or client.timer_loop is not loop:
                client.timer = loop.call_later(SUMMARY_DELAY, self._summarize, remote, client)
                client.timer_loop = loop
            return
        client.tokens -= 1
        self.logger.log(level, message, *(a if isinstance(a, (int, float)) else clip(a) for a in args))

    def _client(self, remote: str) -> _Client:
        remote = clip(remote, 64)
        client = self._clients.get(remote)
        if client is None:
            client = self._clients[remote] = _Client()
            if len(self._clients) > MAX_CLIENTS:
                old_remote, old = self._clients.popitem(last=False)
                self._summarize(old_remote, old)
        else:
            self._clients.move_to_end(remote)
        return client

    def _summarize(self, remote: str, client: _Client) -> None:
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        if client.suppressed:
            self.logger.warning("%d more log lines about client %s suppressed (at most %d at once, %g a second)",
                                client.suppressed, remote, BURST, RATE)
            client.suppressed = 0
