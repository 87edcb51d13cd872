"""Every HTTP connection has a deadline, and there are never more of them than the fd limit allows.

aiohttp reads request headers with no deadline of its own, and accepts connections until the
process runs out of file descriptors (then nothing works: not /healthz, not a new viewer, not
the cameras). `make_runner` gives an AppRunner whose connections are tracked:

- a connection that is not serving a request (it has not finished sending a request's headers,
  or it is an idle keep-alive one) is closed `header_timeout` seconds after it became so;
- at most `cap` connections are open; one more closes the connection that has waited longest
  without a request (a slow-header one) rather than being refused, so /healthz and playing
  viewers keep working under a flood;
- a connection whose response has not moved for `header_timeout` seconds (a client that sends
  requests and never reads the answers) is closed too, and every connection's kernel send
  buffer is SEND_BUFFER at most, so one that does not read holds little.

Connections serving a request (a websocket, an MJPEG stream, a WHEP offer) are bounded by their
handlers: `read_body` here, the signaling and MJPEG time-outs, and the pending-session bound.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import resource
import socket
import struct
import termios
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .config import Config
from .seams import aiohttp as aiohttp_seam

logger = logging.getLogger(__name__)

#: how often connections are checked against their deadline
SWEEP_INTERVAL = 0.5
#: file descriptors kept out of the connection cap at the least: cameras, capture and encoder
#: threads' files, WebRTC UDP sockets (a few per peer), log files, the listening sockets
FD_RESERVE = 64
#: seconds aiohttp keeps reading (and dropping) the rest of a body a handler did not read
LINGERING_TIME = 2.0
#: a limit to aim for when the hard limit is "unlimited"
UNLIMITED_TARGET = 65536
#: the most connections by default however high the fd limit: plenty for a camera server, and
#: what a flood of slow-header connections may cost stays in tens of MB
DEFAULT_MAX_CONNECTIONS = 4096
#: the kernel's send buffer for a connection (outputs that stream set smaller ones of their own)
SEND_BUFFER = 256 * 1024


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_cap(fd_limit: int) -> int:
    """The most HTTP connections for an open-file limit: half of it (a WebRTC viewer holds a
    websocket and UDP sockets besides), never within FD_RESERVE of it, and at most
    DEFAULT_MAX_CONNECTIONS."""
    return max(8, min(fd_limit // 2, fd_limit - FD_RESERVE, DEFAULT_MAX_CONNECTIONS))


class ConnectionTracker:
    """The open connections, and those not serving a request in the order they became so."""

    def __init__(self, cap: int, header_timeout: float) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.open: set[TrackedHandler] = set()
        #: connections not serving a request, by when they started waiting (oldest first)
        self.waiting: OrderedDict[TrackedHandler, float] = OrderedDict()
        #: connections serving a request whose unsent bytes have not gone down, and since when
        self.stalled: dict[TrackedHandler, tuple[int, float]] = {}
        #: counters, for tests and logs
        self.timed_out = 0
        self.stalls = 0
        self.evicted = 0
        self.refused = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._reported = 0.0

    def opened(self, handler: TrackedHandler) -> None:
        self.open.add(handler)
        self.waiting[handler] = time.monotonic()
        if len(self.open) > self.cap:
            # the oldest connection without a request makes room; if every other one is
            # serving a request, that is this new one (refused)
            victim = next(iter(self.waiting))
            if victim is handler:
                self.refused += 1
            else:
                self.evicted += 1
            self._close(victim, "connection limit reached")
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def busy(self, handler: TrackedHandler) -> None:
        self.waiting.pop(handler, None)

    def idle(self, handler: TrackedHandler) -> None:
        if handler in self.open:
            self.waiting[handler] = time.monotonic()
            self.waiting.move_to_end(handler)

    def closed(self, handler: TrackedHandler) -> None:
        self.open.discard(handler)
        self.waiting.pop(handler, None)
        self.stalled.pop(handler, None)

    def _close(self, handler: TrackedHandler, why: str, stop_handler: bool = False) -> None:
        self.closed(handler)
        now = time.monotonic()
        if now - self._reported > 10:  # one line per 10 s however many: a flood writes no log
            self._reported = now
            logger.warning("closing connections: %s (%d timed out, %d evicted, %d refused so far; cap %d)",
                           why, self.timed_out, self.evicted, self.refused, self.cap)
        handler.abort(stop_handler)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self.header_timeout
        while self.waiting:
            handler, since = next(iter(self.waiting.items()))
            if since > deadline:
                break
            self.timed_out += 1
            self._close(handler, f"no request within {self.header_timeout:g} s")
        self._sweep_stalls()
        if self.open:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep_stalls(self) -> None:
        """Close connections serving a request whose unsent bytes have not gone down for
        `header_timeout` (a reader that stopped; a slow one drains, however slowly)."""
        now = time.monotonic()
        for handler in [h for h in self.open if h not in self.waiting]:
            unsent = unsent_bytes(handler.transport)
            if not unsent:
                self.stalled.pop(handler, None)
                continue
            previous = self.stalled.get(handler)
            if previous is None or unsent < previous[0]:
                self.stalled[handler] = (unsent, now)
            elif now - previous[1] > self.header_timeout:
                self.stalls += 1
                self._close(handler, f"a client took nothing for {self.header_timeout:g} s", stop_handler=True)
            else:
                self.stalled[handler] = (unsent, previous[1])

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class TrackedHandler(aiohttp_seam.ObservedRequestHandler):
    """aiohttp's connection protocol, telling the tracker when it serves a request and when not."""

    def __init__(self, manager: Server, tracker: ConnectionTracker, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.tracker = tracker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
        self.tracker.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.tracker.closed(self)
        super().connection_lost(exc)

    def request_began(self) -> None:
        self.tracker.busy(self)

    def request_ended(self) -> None:
        self.tracker.idle(self)

    def abort(self, stop_handler: bool = False) -> None:
        """Close at once: the kernel drops what is unsent (a slow client's buffers included).

        With `stop_handler`, the request's handler is cancelled too: one stuck writing to a client
        that never reads (a file through sendfile) would otherwise wait for the socket forever.
        """
        transport, task = self.transport, aiohttp_seam.handler_task(self)
        self.force_close()
        if transport is not None:
            transport.abort()
        if stop_handler and task is not None and not task.done():
            task.cancel()


class TrackedServer(Server):
    def __init__(self, tracker: ConnectionTracker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracker = tracker

    def __call__(self) -> RequestHandler:
        return TrackedHandler(self, self.tracker, loop=aiohttp_seam.server_loop(self), **aiohttp_seam.server_kwargs(self))

    async def shutdown(self, timeout: float | None = None) -> None:
        self.tracker.stop()
        await super().shutdown(timeout)


class ConnectionRunner(aiohttp_seam.ServerWrappingRunner):
    """An AppRunner whose connections have deadlines and a cap (see the module's docstring)."""

    def __init__(self, app: web.Application, cap: int, header_timeout: float, **kwargs: Any) -> None:
        kwargs.setdefault("lingering_time", LINGERING_TIME)
        super().__init__(app, **kwargs)
        self.tracker = ConnectionTracker(cap, header_timeout)

    def wrap_server(self, server: Server) -> Server:
        # the same server aiohttp makes for the app, with the tracking protocol
        return TrackedServer(self.tracker, server.request_handler, request_factory=server.request_factory,
                             handler_cancellation=server.handler_cancellation, loop=aiohttp_seam.server_loop(server),
                             **aiohttp_seam.server_kwargs(server))


def unsent_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Bytes written to `transport` that its client has not taken yet: asyncio's buffer, plus the
    kernel's send queue (a file response goes there directly, through sendfile)."""
    if transport is None:
        return 0
    unsent = transport.get_write_buffer_size() if isinstance(transport, asyncio.WriteTransport) else 0
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            pass  # not Linux, or the socket just closed: asyncio's buffer is what there is
    return unsent


def make_runner(app: web.Application, config: Config, **kwargs: Any) -> ConnectionRunner:
    """The runner to serve `app` with: raises the open-file limit, then caps connections below it.
    `kwargs` go to web.AppRunner (access_log, shutdown_timeout, ...)."""
    fd_limit = raise_fd_limit()
    cap = config.max_connections or connection_cap(fd_limit)
    if cap > fd_limit - FD_RESERVE:
        # kept below the limit whatever was asked: at the limit nothing works, not even /healthz
        logger.warning("--max-connections %d is too close to the open-file limit of %d: using %d",
                       cap, fd_limit, max(8, fd_limit - FD_RESERVE))
        cap = max(8, fd_limit - FD_RESERVE)
    logger.info("at most %d connections (open-file limit %d); %g s to send a request's headers",
                cap, fd_limit, config.header_timeout)
    return ConnectionRunner(app, cap, config.header_timeout, **kwargs)


def gone(request: web.BaseRequest) -> bool:
    """Whether the client of `request` has gone (aiohttp does not cancel the handler when it does)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def read_body(request: web.BaseRequest, limit: int, timeout: float,
                    headers: dict[str, str] | None = None) -> bytes:
    """The request's body, at most `limit` bytes and `timeout` seconds: 413 beyond the one, 408
    beyond the other, and the connection is not kept (aiohttp reads and drops what is left of
    the body for LINGERING_TIME at most, then closes it)."""
    if request.content_length is not None and request.content_length > limit:
        raise _closing(web.HTTPRequestEntityTooLarge(limit, request.content_length, headers=headers))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _closing(web.HTTPRequestEntityTooLarge(limit, size, headers=headers))
                chunks.append(chunk)
    except TimeoutError:
        raise _closing(web.HTTPRequestTimeout(text=f"the body did not arrive within {timeout:g} s\n",
                                              headers=headers)) from None
    return b"".join(chunks)


def _closing(response: web.HTTPException) -> web.HTTPException:
    response.force_close()
    return response
