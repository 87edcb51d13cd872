"""Server-Sent Events (`text/event-stream`): a response that streams events to a client, generic over
what the events are: a camera's processing results (camtrack.outputs.data) and the event bus's
changes (camtrack.events.api). The one writer of both.

The next event is asked of its source only once the previous one was written, so nothing queues in
the writer but what the socket holds (a small send buffer, aiohttp's write buffer). What the source
answers makes the two kinds of stream:
- *newest wins* (the data): the source gives the newest when asked, so a slow client skips to it;
- *in order, bounded* (the events): the source is a queue of its own bound that keeps every change
  in order while the client reads (and loses its oldest, counted, when the client does not); at
  the end the writer writes what it holds still (`pending`) before the response ends.
A comment line every HEARTBEAT seconds without an event keeps proxies from closing the stream; a
client that takes nothing for STALL_TIMEOUT seconds (or the stream's own `stall_timeout`) is cut
off. `EventStreams` is the server's streams, of both kinds: at most `limit` at once (one more is a
503 that says so), ended at shutdown.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..connections import gone
from ..logs import ClientLog
from ..media.feeds import FeedClosed

logger = logging.getLogger(__name__)
log = ClientLog(logger)

#: event streams open at once, server-wide, of both endpoints together, at most (each holds a
#: connection and a little memory: an events client up to camtrack.events.api.STREAM_QUEUE changes)
MAX_CLIENTS = 64
#: seconds without an event before a comment line is sent (proxies close idle streams: nginx after 60 s)
HEARTBEAT = 15.0
#: a client whose socket has taken nothing for this many seconds is cut off
STALL_TIMEOUT = 20.0
#: the kernel's send buffer of an event stream: a few events, so a slow client skips to the newest
SEND_BUFFER = 64 * 1024
#: seconds between checks that the client is still there while no event comes
POLL = 1.0
#: what a client waits before reconnecting after the stream ended (the `retry:` field), in ms
RETRY_MS = 2000
#: at shutdown, seconds the streams are given to end before the server closes what is left
SHUTDOWN_GRACE = 1.0


@dataclass(frozen=True)
class Event:
    """One event: `data` (any text; each of its lines a `data:` line), its `event` type (None: a
    "message", what EventSource.onmessage gets) and its `id` (the client's Last-Event-ID)."""

    data: str
    event: str | None = None
    id: str | None = None

    def encode(self) -> bytes:
        lines = [] if self.event is None else [f"event: {_field(self.event)}"]
        if self.id is not None:
            lines.append(f"id: {_field(self.id)}")
        lines += [f"data: {line}" for line in self.data.splitlines() or [""]]
        return ("\n".join(lines) + "\n\n").encode()


def _field(value: str) -> str:
    """A one-line field value (a line break would start a field of the client's choosing)."""
    return value.replace("\r", " ").replace("\n", " ")


class SourceEnded(Exception):
    """What a source raises when it has no more events (FeedClosed does too): the stream ends cleanly."""


#: a source: the next event, waiting for one
Source = Callable[[], Awaitable[Event]]
#: an in-order source's events ready now, oldest first (None: no more): written before the stream ends
Pending = Callable[[], Event | None]


class SseStats:
    """Counters /metrics shows."""

    def __init__(self) -> None:
        #: streams opened, refused (at the cap), cut off (took nothing for STALL_TIMEOUT s)
        self.opened = 0
        self.refused = 0
        self.cut_off = 0
        #: events written, and heartbeat comments
        self.events = 0
        self.heartbeats = 0


class EventStreams:
    """The server's event streams: the cap on how many are open, and their end at shutdown."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_CLIENTS if limit is None else limit
        self.stats = SseStats()
        self.open: set[EventStream] = set()
        self.closing = False

    async def serve(self, request: web.Request, source: Source, what: str,
                    headers: Mapping[str, str] | None = None, *, pending: Pending | None = None,
                    stall_timeout: float | None = None) -> web.StreamResponse:
        """Stream `source`'s events to the client of `request` until it goes, stalls (takes nothing
        for `stall_timeout` s, STALL_TIMEOUT by default), the source ends (SourceEnded, FeedClosed)
        or the server shuts down; then what `pending` gives (an in-order source's queue) is written
        before the end. `what` names the stream in the log. 503 when `limit` streams are open already."""
        self.check(request, what, headers)
        stream = EventStream(request, what, STALL_TIMEOUT if stall_timeout is None else stall_timeout)
        self.open.add(stream)
        self.stats.opened += 1
        try:
            return await stream.run(source, self.stats, headers or {}, pending)
        finally:
            self.open.discard(stream)

    def check(self, request: web.Request, what: str, headers: Mapping[str, str] | None = None) -> None:
        """503 (saying why) if one more stream may not open now: `limit` are open, or the server stops."""
        if not self.closing and len(self.open) < self.limit:
            return
        self.stats.refused += 1
        why = "the server is shutting down" if self.closing else f"{self.limit} event streams are open, the most at once"
        remote = request.remote or "?"
        log.warning(remote, "refused event stream %s for %s: %s", what, remote, why)
        raise web.HTTPServiceUnavailable(text=f"refused: {why}; try again later\n",
                                         headers={**(headers or {}), "Retry-After": "10"})

    async def shutdown(self, app: web.Application | None = None) -> None:
        """End every stream (the server stops): each ends its response, within SHUTDOWN_GRACE s."""
        self.closing = True
        streams = list(self.open)
        for stream in streams:
            stream.end("server shutting down")
        if streams:
            done = asyncio.gather(*(stream.done.wait() for stream in streams))
            try:
                await asyncio.wait_for(done, SHUTDOWN_GRACE)
            except TimeoutError:
                logger.warning("some event streams did not end within %g s; closing them", SHUTDOWN_GRACE)


class EventStream:
    """One client's stream (`EventStreams.serve`)."""

    def __init__(self, request: web.Request, what: str, stall_timeout: float = STALL_TIMEOUT) -> None:
        self.request = request
        self.what = what
        self.stall_timeout = stall_timeout
        self.remote = request.remote or "?"
        self.sent = 0
        self.reason: str | None = None
        self.stop = asyncio.Event()
        self.done = asyncio.Event()

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()

    async def run(self, source: Source, stats: SseStats, headers: Mapping[str, str],
                  pending: Pending | None = None) -> web.StreamResponse:
        request = self.request
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers={
            **headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-store",  # (always UTF-8)
            "X-Accel-Buffering": "no",  # (nginx: pass each event on at once)
        })
        stop = asyncio.ensure_future(self.stop.wait())
        getting: asyncio.Future[Event] | None = None
        log.info(self.remote, "event stream %s opened by %s", self.what, self.remote)
        try:
            await response.prepare(request)
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            await self._write(response, f": camtrack {self.what}\nretry: {RETRY_MS}\n\n".encode())
            last = loop.time()
            while not self.stop.is_set():
                if gone(request):
                    self.end("went away")
                    break
                if getting is None:
                    getting = asyncio.ensure_future(source())
                waiting: list[asyncio.Future[Any]] = [getting, stop]
                await asyncio.wait(waiting, timeout=min(POLL, max(0.0, last + HEARTBEAT - loop.time())),
                                   return_when=asyncio.FIRST_COMPLETED)
                if getting.done():
                    try:
                        event = getting.result()
                    except (SourceEnded, FeedClosed):
                        self.end("its source closed")
                        break
                    finally:
                        getting = None
                    await self._send(response, event, stats)
                    last = loop.time()
                elif not self.stop.is_set() and loop.time() - last >= HEARTBEAT:
                    await self._write(response, b": keep-alive\n\n")
                    stats.heartbeats += 1
                    last = loop.time()
            self.end(self.reason or "ended")
            await self._flush(response, getting, pending, stats)
        except _Stalled:
            stats.cut_off += 1
            self.end(f"stalled: took nothing for {self.stall_timeout:g} s")
            if request.transport is not None:
                request.transport.abort()  # (what is queued for it is dropped, not sent)
        except ConnectionError as exc:
            self.end(f"went away ({type(exc).__name__})")
        except asyncio.CancelledError:
            self.end("went away")
            raise
        finally:
            stop.cancel()
            if getting is not None:
                getting.cancel()
            log.info(self.remote, "event stream %s of %s ended: %s (%d events)", self.what, self.remote,
                     self.reason, self.sent)
            self.done.set()
        return response

    async def _send(self, response: web.StreamResponse, event: Event, stats: SseStats) -> None:
        await self._write(response, event.encode())
        self.sent += 1
        stats.events += 1

    async def _flush(self, response: web.StreamResponse, getting: asyncio.Future[Event] | None,
                     pending: Pending | None, stats: SseStats) -> None:
        """At the end, to a client still there: the event the source gave as the stream ended, then
        what an in-order source holds still (the last changes of a bus that closes)."""
        if gone(self.request):
            return
        if getting is not None and getting.done() and not getting.cancelled() and getting.exception() is None:
            await self._send(response, getting.result(), stats)
        while pending is not None and not gone(self.request) and (event := pending()) is not None:
            await self._send(response, event, stats)

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        # the write waits while the socket and aiohttp's buffer are full: that long without progress is a stall
        try:
            await asyncio.wait_for(response.write(data), self.stall_timeout)
        except TimeoutError:
            raise _Stalled from None


class _Stalled(Exception):
    """A write took nothing for the stream's stall time-out."""
