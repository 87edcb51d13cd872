"""A guard between PyAV's RTSP client and a camera: the bounds camtrack's own reader keeps, kept
for FFmpeg from outside.

FFmpeg's RTSP demuxer has no option for any of them: its H.264/H.265 parser gathers a picture until
the next one begins, so one fragmented NAL unit that never ends grows without bound (3 GB in 15 s
measured); it follows a 3xx answer's Location in a loop of its own, with no count (3 400 TCP
connections a second to a camera that redirects to itself); and a camera answering one byte at a
time keeps each of its reads alive. So PyAV is pointed at a loopback port of this guard, which
connects to the camera and relays both ways, and:

- cuts the connection when the camera sent more than `MAX_UNSEEN` bytes since the last packet came
  out of PyAV (the largest access unit camtrack's own reader takes, 16 MiB, and some room for the
  next one's start and RTP's framing): FFmpeg's read then fails and its buffers are freed;
- passes the handshake's answers on whole, and none that redirects (3xx): camtrack follows no RTSP
  redirect, as its own reader does not, so every connection to the camera is one open, paced by
  the feed's back-off;
- cuts the connection at the open deadline if PyAV has not opened the stream by then, whatever
  the camera trickles.

Each cut has a reason (`reason`) that the source raises, for the log and `/healthz`; `CUTS` counts
them by kind for /metrics. rtsp:// only: rtsps:// is encrypted to the camera, and the guard cannot
read it.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

from .urls import redact

logger = logging.getLogger(__name__)

#: bytes the camera may send with no packet coming out of PyAV (own reader: MAX_ACCESS_UNIT, 16 MiB)
MAX_UNSEEN = 18 * 1024 * 1024
#: an RTSP answer's head and body during the handshake (as camtrack's own reader: rtsp.MAX_HEAD, MAX_BODY)
MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024
#: cuts by kind, over the process's life (`camtrack_pyav_guard_cuts_total`)
CUTS: Counter[str] = Counter()
KINDS = ("oversized", "redirect", "open_timeout", "stalled", "bad_answer")


class GuardCut(OSError):
    """The guard cut PyAV's connection to the camera; the message says why, `kind` its kind."""

    def __init__(self, reason: str, kind: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind


class RtspGuard:
    """A relay on 127.0.0.1 between PyAV and the camera of `url` (see the module's docstring).

    `url` is what PyAV is given instead. Threads: its own relay thread; `packet_out()`,
    `opened()`, `cut()` and `close()` from any other.
    """

    def __init__(self, camera_url: str, *, open_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(camera_url)
        if not parts.hostname:
            raise GuardCut("no host in the URL")
        self.host, self.port = parts.hostname, parts.port or 554
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.description = redact(camera_url)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self._listener.getsockname()[1]}"
        #: where PyAV connects (the camera's user, password, path and query, the guard's port)
        self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        #: why the connection was cut (None while it is not)
        self.reason: str | None = None
        #: bytes from the camera, and that count when PyAV's latest packet came out
        self.received = 0
        self._seen = 0
        self._open_until: float | None = time.monotonic() + open_timeout
        # the handshake's answers, screened whole until the stream (interleaved data) starts
        self._screening = True
        self._held = bytearray()
        self._body_left = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"rtsp guard {self.description}", daemon=True)
        self._thread.start()

    def packet_out(self) -> None:
        """PyAV gave a packet: what came before it is no longer held."""
        self._seen = self.received

    def opened(self) -> None:
        """PyAV opened the stream: the open deadline no longer applies."""
        self._open_until = None

    @property
    def late(self) -> str | None:
        """The open deadline's reason once it has passed (None before, and once opened)."""
        return self._late() if self._left() <= 0 else None

    def cut(self, reason: str, kind: str | None = None) -> None:
        """End both connections now (PyAV's blocked read then fails), saying why."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
                if kind is not None:
                    CUTS[kind] += 1
                    logger.debug("%s: %s", self.description, reason)
            self._done.set()
            for sock in [self._listener, *self._sockets]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.cut("closed")
        self._thread.join(timeout=2.0)

    # -- the relay thread

    def _main(self) -> None:
        client = camera = None
        try:
            client = self._accept()
            if client is None:
                return
            left = self._left()
            camera = socket.create_connection((self.host, self.port), timeout=max(0.1, left))
            camera.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.append(camera)
                if self._done.is_set():
                    return
            # a side that takes nothing for a read timeout stalls the other: cut
            client.settimeout(self.read_timeout)
            camera.settimeout(self.read_timeout)
            self._relay(client, camera)
        except GuardCut as exc:
            self.cut(str(exc), exc.kind)
        except TimeoutError:
            self.cut(f"the camera or PyAV took nothing for {self.read_timeout:g} s", "stalled")
        except OSError as exc:
            if not self._done.is_set():
                self.cut(f"cannot reach the camera ({exc.strerror or exc})")
        finally:
            self._done.set()
            for sock in (client, camera, self._listener):
                if sock is not None:
                    sock.close()

    def _left(self) -> float:
        until = self._open_until
        return float("inf") if until is None else until - time.monotonic()

    def _accept(self) -> socket.socket | None:
        self._listener.settimeout(0.2)
        while not self._done.is_set():
            if self._left() <= 0:
                raise GuardCut(self._late(), "open_timeout")
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._listener.close()  # one connection: PyAV's
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.append(client)
            return client
        return None

    def _late(self) -> str:
        return f"the camera gave no stream within the open timeout ({self.open_timeout:g} s)"

    def _relay(self, client: socket.socket, camera: socket.socket) -> None:
        while not self._done.is_set():
            if self._left() <= 0:
                raise GuardCut(self._late(), "open_timeout")
            readable, _, _ = select.select([client, camera], [], [], 0.2)
            if camera in readable:
                data = camera.recv(65536)
                if not data:
                    return  # the camera ended: PyAV sees the end
                self.received += len(data)
                if self.received - self._seen > MAX_UNSEEN:
                    raise GuardCut(f"the camera sent {self.received - self._seen} bytes without a complete "
                                   f"picture (more than {MAX_UNSEEN >> 20} MiB)", "oversized")
                if self._screening and self._open_until is not None:
                    data = self._screen(data)
                elif self._screening:
                    data, self._screening = bytes(self._held) + data, False
                if data:
                    client.sendall(data)
            if client in readable:
                data = client.recv(65536)
                if not data:
                    return  # PyAV closed (after its TEARDOWN)
                camera.sendall(data)

    def _screen(self, data: bytes) -> bytes:
        """Of the camera's bytes during the handshake, what may go on to PyAV: whole answers (a
        partial one could be taken for what it is not), none that redirects; everything once
        the interleaved stream starts."""
        held = self._held
        held += data
        out = bytearray()
        while held:
            if self._body_left:
                take = min(self._body_left, len(held))
                out += held[:take]
                del held[:take]
                self._body_left -= take
                continue
            if held[:1] == b"$":  # interleaved data: the stream has begun
                self._screening = False
                out += held
                held.clear()
                break
            end = held.find(b"\r\n\r\n")
            if end < 0:
                if len(held) > MAX_HEAD:
                    raise GuardCut("an RTSP answer's head larger than 16 KiB", "bad_answer")
                break
            head = bytes(held[:end + 4])
            del held[:end + 4]
            self._check(head)
            out += head
        return bytes(out)

    def _check(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        status = lines[0].split(" ", 2)
        if len(status) >= 2 and status[0].startswith("RTSP/") and status[1].isdigit() and 300 <= int(status[1]) < 400:
            where = redact(headers.get("location", "(nowhere)"))[:120]
            raise GuardCut(f"the camera answered {status[1]} {status[2] if len(status) > 2 else ''}".rstrip()
                           + f", a redirect to {where}: camtrack follows no RTSP redirect (give the camera's "
                           "final URL)", "redirect")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise GuardCut(f"an RTSP answer with Content-Length {length[:20]!r}", "bad_answer")
        self._body_left = int(length)
