"""The RTSP server: every camera at rtsp://HOST:PORT/PREFIX NAME, from the packets WebRTC viewers get.

One TCP connection is one client and (after SETUP) one session of one camera, counted as a viewer
over `Transport.RTSP` once it PLAYs (pending while it DESCRIBEs and SETs UP, as a WebRTC offer is).
Its pictures come from a `PacketReader` of the camera (as the websocket fallback's do), packetized
once for every viewer (the WebRTC payloads: camtrack.outputs.webrtc.fanout.rtp_frame, aiortc's
H.264 packetizer, RFC 6184 with STAP-A and FU-A, and VP8's, RFC 7741); per client only the 12-byte
RTP header is written. Over TCP the packets go interleaved in the RTSP connection; over UDP from the
server's pair of UDP ports to the client's address (the one its TCP connection comes from: never
elsewhere) and the ports it asked for.

Never a queue per client: over TCP a picture is written only while the connection's unsent bytes
are under MAX_BACKLOG; a client behind that skips pictures up to the next keyframe it can take
whole, and one that takes nothing for STALL_TIMEOUT is cut off. Over UDP a picture the socket
refuses is dropped the same way. The reading of the camera goes on for the others regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ...logs import ClientLog, clip
from ...media.admission import Refused
from ...media.feeds import FeedClosed, Transport, Viewer
from ...media.packet import EncodedPacket
from ...media.ratelimit import TokenBucket
from ...media.reader import PacketReader
from ...media.tiers import MAIN, TIER_CODECS, Tier
from ..webrtc.fanout import rtp_frame
from . import messages
from .messages import PAYLOAD_TYPE, Request, RtspRequestError

logger = logging.getLogger(__name__)
log = ClientLog(logger)

#: a TCP client whose unsent bytes (in the server's buffer) exceed this skips to the next keyframe
MAX_BACKLOG = 256 * 1024
#: the kernel's send buffer of a client's connection (it doubles it): with MAX_BACKLOG, what a
#: client that does not read can hold of the server's memory
SEND_BUFFER = 128 * 1024
#: a client that has taken no picture for this long (its connection full) is cut off
STALL_TIMEOUT = 5.0
#: the session time-out announced (Session: ID;timeout=N): a UDP client must send a request or an
#: RTCP report this often (FFmpeg, VLC and GStreamer send one every half of it)
SESSION_TIMEOUT = 60
#: how long DESCRIBE and PLAY wait for the camera's first picture
FIRST_PICTURE_TIMEOUT = 10.0
#: seconds between RTCP sender reports to each client
SENDER_REPORT_EVERY = 5.0
#: connections at once, in all and from one address
MAX_CONNECTIONS = 256
MAX_PER_ADDRESS = 32
#: requests a client may send at once, refilled at REQUEST_RATE a second (keep-alives are one a
#: few seconds); interleaved frames it sends (RTCP reports) likewise
REQUEST_BURST, REQUEST_RATE = 30, 5.0
FRAME_BURST, FRAME_RATE = 200, 50.0
#: wrong credentials a connection may try before it is closed
MAX_AUTH_FAILURES = 10
#: UDP datagrams read per wake-up from each of the server's UDP sockets
UDP_BATCH = 64
#: NTP's epoch (1900) in Unix time
NTP_EPOCH = 2_208_988_800

_H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=PAYLOAD_TYPE,
                              parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1",
                                          "profile-level-id": "42e01f"})
_VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=PAYLOAD_TYPE)


class RtspCamera(Protocol):
    """What the RTSP output needs of a camera: its name and a reader of its packets per transport
    and tier (MAIN: its own packets; a codec's: encoded once for all who ask for it; ValueError,
    saying why, when it has no such packets to share: each WebRTC viewer encodes its own)."""

    @property
    def name(self) -> str: ...

    def reader(self, transport: Transport, tier: Tier = MAIN) -> PacketReader: ...


C = TypeVar("C", bound=RtspCamera)


class RtspCameras(Protocol[C]):
    """What the RTSP output needs of the server's cameras: finding one by name, and the viewer
    limits (admission of a newcomer, counting a viewer in and out, pending sessions)."""

    def get(self, name: str | None) -> C | None: ...

    def admission(self, camera: C, measured: bool = True) -> Refused | None: ...

    def admit(self, camera: C, viewer: Viewer) -> Refused | None: ...

    def leave(self, camera: C, viewer: Viewer) -> None: ...

    def hold(self, camera: C, session: Viewer) -> None: ...


@dataclass(frozen=True)
class RtspSettings:
    host: str = "0.0.0.0"
    #: the TCP port (0: any free one)
    port: int = 8554
    #: the path before every camera's name, "/" or "/PREFIX/"
    prefix: str = "/"
    token: str | None = None
    #: a connection that has sent no request (and does not play) for this long is closed
    idle_timeout: float = 30.0
    #: a request must arrive whole within this time of its first byte
    header_timeout: float = 10.0


@dataclass
class RtspStats:
    connections: int = 0
    #: connections closed at once: too many in all or from one address
    refused: int = 0
    auth_failures: int = 0
    #: bad requests answered 4xx
    bad_requests: int = 0
    sessions: int = 0
    #: pictures skipped for clients that could not take them, and clients cut off for stalling
    skipped: int = 0
    cut_off: int = 0


class RtspServer(Generic[C]):
    """Serves every camera of `cameras` over RTSP (start() binds, stop() ends every client)."""

    def __init__(self, cameras: RtspCameras[C], settings: RtspSettings) -> None:
        self.cameras = cameras
        self.settings = settings
        self.stats = RtspStats()
        self.clients: set[RtspClient[C]] = set()
        self._server: asyncio.Server | None = None
        self._udp: tuple[socket.socket, socket.socket] | None = None
        #: UDP clients by their RTCP address (RTCP reports renew their sessions)
        self._udp_clients: dict[tuple[str, int], RtspClient[C]] = {}

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def udp_ports(self) -> tuple[int, int]:
        assert self._udp is not None
        return int(self._udp[0].getsockname()[1]), int(self._udp[1].getsockname()[1])

    async def start(self) -> None:
        """Listen (OSError if the port is taken)."""
        host = self.settings.host or None
        self._server = await asyncio.start_server(self._connected, host, self.settings.port,
                                                  limit=messages.MAX_HEAD, reuse_address=True)
        try:
            self._udp = _udp_pair(self.settings.host or "0.0.0.0")
        except OSError:
            self._server.close()
            raise
        loop = asyncio.get_running_loop()
        for sock in self._udp:
            loop.add_reader(sock.fileno(), self._udp_readable, sock)

    async def stop(self) -> None:
        """Stop listening, end every client."""
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.end("server shutting down")
        if self.clients:
            waiting = [asyncio.ensure_future(c.closed()) for c in list(self.clients)]
            _, late = await asyncio.wait(waiting, timeout=1.0)
            for task in late:
                task.cancel()
        if self._udp is not None:
            loop = asyncio.get_running_loop()
            for sock in self._udp:
                loop.remove_reader(sock.fileno())
                sock.close()
            self._udp = None

    def sessions(self) -> Iterator[RtspClient[C]]:
        return (c for c in self.clients if c.playing)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if peer else "?"
        self.stats.connections += 1
        same = Counter(c.remote for c in self.clients)[remote]
        if len(self.clients) >= MAX_CONNECTIONS or same >= MAX_PER_ADDRESS:
            self.stats.refused += 1
            log.warning(remote, "RTSP connection from %s refused: %s", remote,
                        "too many connections" if same < MAX_PER_ADDRESS else "too many from this address")
            writer.transport.abort()
            return
        client = RtspClient(self, reader, writer, remote)
        self.clients.add(client)
        try:
            await client.run()
        finally:
            self.clients.discard(client)

    def send_udp(self, rtcp: bool, data: bytes, address: tuple[str, int]) -> bool:
        """One datagram from the server's RTP (or RTCP) port; False if the socket did not take it."""
        if self._udp is None:
            return False
        try:
            self._udp[1 if rtcp else 0].sendto(data, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # (an ICMP error of an earlier datagram: the client went away; its session times out)
        return True

    def watch_udp(self, address: tuple[str, int], client: RtspClient[C] | None) -> None:
        if client is None:
            self._udp_clients.pop(address, None)
        else:
            self._udp_clients[address] = client

    def _udp_readable(self, sock: socket.socket) -> None:
        for _ in range(UDP_BATCH):
            try:
                _, address = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            client = self._udp_clients.get((address[0], address[1]))
            if client is not None:
                client.heard = time.monotonic()


def _udp_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on consecutive ports, the first even (RTP, RTCP), as RTSP clients expect."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, 0))
            port = rtp.getsockname()[1]
            if port % 2 == 0 and port < 65535:
                rtcp = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    rtcp.bind((host, port + 1))
                except OSError:
                    rtcp.close()
                else:
                    for sock in (rtp, rtcp):
                        sock.setblocking(False)
                    rtp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
                    return rtp, rtcp
        except OSError:
            pass
        rtp.close()
    raise OSError("no free pair of UDP ports for RTSP over UDP")


@dataclass
class _Session:
    """A client's SETUP: its camera, id, transport and what it has sent."""

    camera: RtspCamera
    id: str
    tcp: bool
    channels: tuple[int, int] = (0, 1)
    #: UDP: where its RTP and RTCP go
    rtp_to: tuple[str, int] = ("", 0)
    rtcp_to: tuple[str, int] = ("", 0)
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    seq: int = field(default_factory=lambda: secrets.randbits(16))
    timestamp_origin: int = field(default_factory=lambda: secrets.randbits(32))
    packets: int = 0
    octets: int = 0
    #: the timeline (RtspClient._timeline): added to the reader's times, the last picture's
    #: timestamp (before the origin) and its own time
    offset: int = 0
    last_timestamp: int | None = None
    last_raw: int = 0
    last_report: float = 0.0


class RtspClient(Generic[C]):
    """One RTSP connection and its session: a `Viewer` over `Transport.RTSP` once it plays."""

    def __init__(self, server: RtspServer[C], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 remote: str) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer
        self.remote = remote
        self.reason: str | None = None
        self.camera: C | None = None
        self.session: _Session | None = None
        self.playing = False
        #: the camera's packets it asked for (?codec=h264 or vp8), else its own
        self.tier = MAIN
        #: the first keyframe DESCRIBE read (its SPS and PPS)
        self._keyframe: bytes | None = None
        #: PAUSEd after playing (a viewer still)
        self.paused = False
        #: the reader that keeps the camera running between DESCRIBE (or SETUP) and PLAY
        self._held: PacketReader | None = None
        self._playback: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._nonce = secrets.token_hex(16)
        self._authorized = not self.settings.token
        self._auth_failures = 0
        self._requests = TokenBucket(REQUEST_BURST, REQUEST_RATE)
        self._frames = TokenBucket(FRAME_BURST, FRAME_RATE)
        self.heard = time.monotonic()
        #: pictures skipped (behind), and whether it waits for a keyframe to go on
        self.skipped = 0
        self.sent = 0
        self._skipping = False
        self._stalled_since: float | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- Viewer --------------------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        return Transport.RTSP

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.info(self.remote, "RTSP client %s%s ends: %s", self.remote,
                     f" of {self.camera.name}" if self.camera is not None else "", reason)
        if self._playback is not None and self._playback is not asyncio.current_task():
            self._playback.cancel()
        self.writer.transport.abort()

    async def closed(self) -> None:
        await self._done.wait()

    # ---- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while self.reason is None:
                if not await self._next_message():
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one client's bug must not reach asyncio's handler
            logger.exception("RTSP client %s failed", self.remote)
        finally:
            self.end(self.reason or "disconnected")
            await self._cleanup()

    async def _cleanup(self) -> None:
        if self._playback is not None:
            self._playback.cancel()
            await asyncio.gather(self._playback, return_exceptions=True)
        self._release_held()
        session = self.session
        if session is not None and not session.tcp:
            self.server.watch_udp(session.rtcp_to, None)
        if self.camera is not None:
            self.server.cameras.leave(self.camera, self)
        self._done.set()

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def _silence(self) -> tuple[float | None, str]:
        """How long the client may say nothing (None: for ever), and what it is told after that."""
        session = self.session
        if session is not None and (self.playing or self.paused):
            if session.tcp and self.playing:
                return None, ""  # (the connection itself says it is there; a stall is the sender's)
            return SESSION_TIMEOUT, f"session timed out: nothing for {SESSION_TIMEOUT} s"
        return self.settings.idle_timeout, f"idle for {self.settings.idle_timeout:g} s"

    async def _next_message(self) -> bool:
        """Read and handle one request or interleaved frame; False at the end of the connection."""
        allowed, why = self._silence()
        wait = None if allowed is None else max(0.1, self.heard + allowed - time.monotonic())
        try:
            first = await asyncio.wait_for(self.reader.readexactly(1), wait)
        except TimeoutError:
            allowed, why = self._silence()
            if allowed is not None and time.monotonic() - self.heard >= allowed:
                self.end(why)
                return False
            return True
        except asyncio.IncompleteReadError:
            return False
        if first == b"$":
            return await self._interleaved()
        try:
            head = first + await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.settings.header_timeout)
        except TimeoutError:
            await self._refuse(RtspRequestError(408, f"a request must come whole within "
                                                     f"{self.settings.header_timeout:g} s", close=True), None)
            return False
        except asyncio.LimitOverrunError:
            await self._refuse(RtspRequestError(413, f"a request's head may be at most {messages.MAX_HEAD} bytes",
                                                close=True), None)
            return False
        except asyncio.IncompleteReadError:
            return False
        cseq = None
        try:
            request = messages.parse_head(head)
            cseq = request.cseq
            length = messages.content_length(request)
            if length:
                request.body = await asyncio.wait_for(self.reader.readexactly(length), self.settings.header_timeout)
            if not self._requests.take():
                raise RtspRequestError(503, "too many requests; closing", close=True)
            self.heard = time.monotonic()
            await self._handle(request)
        except RtspRequestError as exc:
            await self._refuse(exc, cseq)
            return not exc.close and self.reason is None
        except TimeoutError:
            await self._refuse(RtspRequestError(408, "the request's body did not come in time", close=True), cseq)
            return False
        return self.reason is None

    async def _interleaved(self) -> bool:
        """An interleaved frame from the client ($, channel, length, data): its RTCP reports."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(3), self.settings.header_timeout)
            channel, length = header[0], struct.unpack("!H", header[1:])[0]
            await asyncio.wait_for(self.reader.readexactly(length), self.settings.header_timeout)
        except TimeoutError:
            self.end("an interleaved frame did not come whole in time")
            return False
        if not self._frames.take():
            self.end("flooded the connection with interleaved frames")
            return False
        if self.session is not None and channel == self.session.channels[1]:
            self.heard = time.monotonic()
        return True

    async def _refuse(self, exc: RtspRequestError, cseq: str | None) -> None:
        self.server.stats.bad_requests += 1
        log.info(self.remote, "RTSP request from %s refused (%d): %s", self.remote, exc.status, exc.reason)
        self._write(self._error_bytes(exc, cseq))
        if exc.close:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.end(f"bad request: {exc.reason}")

    def _error_bytes(self, exc: RtspRequestError, cseq: str | None) -> bytes:
        if exc.status != 401:
            return messages.error(exc.status, cseq, exc.reason, exc.headers)
        lines = messages.error(exc.status, cseq, exc.reason)
        # two WWW-Authenticate headers (Digest, then Basic): added by hand, a dict holds one
        head, sep, body = lines.partition(b"\r\n\r\n")
        stale = "old nonce" in exc.reason
        extra = "".join(f"\r\nWWW-Authenticate: {c}" for c in messages.challenges(self._nonce, stale))
        return head + extra.encode() + sep + body

    def _write(self, data: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    # ---- requests ------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> None:
        method = request.method
        if request.header("require"):
            raise RtspRequestError(551, "no options are supported here (Require)",
                                   headers={"Unsupported": clip(request.header("require"), 100)})
        if method == "OPTIONS":
            self._reply(request, {"Public": ", ".join(messages.METHODS)})
        elif method in ("GET_PARAMETER", "SET_PARAMETER"):
            self._check_session(request, needed=False)
            self._reply(request, self._session_header())
        elif method == "DESCRIBE":
            await self._describe(request)
        elif method == "SETUP":
            await self._setup(request)
        elif method == "PLAY":
            await self._play(request)
        elif method == "PAUSE":
            await self._pause(request)
        elif method == "TEARDOWN":
            self._check_session(request, needed=False)
            await self._teardown()
            self._reply(request, {})
        elif method in messages.REFUSED_METHODS:
            raise RtspRequestError(405, f"{method} is not served here: this server only sends cameras "
                                        f"(DESCRIBE, SETUP, PLAY)", headers={"Allow": ", ".join(messages.METHODS)})
        else:
            raise RtspRequestError(501, f"unknown method {clip(method, 40)}")

    def _reply(self, request: Request, headers: dict[str, str], body: bytes = b"",
               content_type: str = "text/plain; charset=utf-8") -> None:
        self._write(messages.response(200, request.cseq, headers, body, content_type))

    def _session_header(self) -> dict[str, str]:
        return {"Session": f"{self.session.id};timeout={SESSION_TIMEOUT}"} if self.session is not None else {}

    def _check_session(self, request: Request, needed: bool = True) -> None:
        given = request.header("session").partition(";")[0].strip()
        if self.session is None:
            if needed or given:
                raise RtspRequestError(454 if given else 455, "no such session" if given else "SETUP comes first")
            return
        if given and given != self.session.id:
            raise RtspRequestError(454, "no such session on this connection")

    def _authorize(self, request: Request) -> None:
        token = self.settings.token
        if self._authorized or not token:
            return
        verdict = messages.check_credentials(token, request, self._nonce)
        if verdict.ok:
            self._authorized = True
            return
        if request.header("authorization"):
            self._auth_failures += 1
            self.server.stats.auth_failures += 1
            if self._auth_failures > MAX_AUTH_FAILURES:
                raise RtspRequestError(403, "too many wrong credentials; closing", close=True)
        reason = ("an old nonce: try again" if verdict.stale else
                  "this server needs the token: rtsp://USER:TOKEN@HOST... (Digest or Basic)")
        raise RtspRequestError(401, reason)

    def _camera_of(self, request: Request) -> C:
        target = messages.parse_url(request.url, self.settings.prefix)
        if target is None:
            raise RtspRequestError(404, f"no camera at this path: the cameras are at "
                                        f"rtsp://HOST:PORT{self.settings.prefix}NAME")
        camera = self.server.cameras.get(target.name)
        if camera is None or not target.name:
            raise RtspRequestError(404, f"no camera {clip(target.name, 64)!r}")
        if self.camera is not None and camera is not self.camera:
            raise RtspRequestError(459, "one camera per connection: open another connection for another")
        codecs = target.query.get("codec")
        if codecs:
            if codecs[0] not in TIER_CODECS:
                raise RtspRequestError(400, f"codec must be one of {', '.join(TIER_CODECS)}, not "
                                            f"{clip(codecs[0], 20)!r}")
            if self.tier.codec not in (None, codecs[0]):
                raise RtspRequestError(459, "one codec per connection")
            self.tier = Tier(codecs[0])
        return camera

    def _reader(self, camera: C) -> PacketReader:
        try:
            return camera.reader(Transport.RTSP, self.tier)
        except ValueError as exc:  # (no packets to share: --encoder per-viewer)
            raise RtspRequestError(503, f"{exc}: ask for a codec, ?codec=h264") from None

    def _take(self, camera: C) -> None:
        """Hold `camera` for this client (pending until it plays): 503 if the server is full."""
        if self._held is None and not self.playing:
            self._held = self._reader(camera)
        if self.camera is None:
            refused = self.server.cameras.admission(camera)
            if refused is not None:
                self._release_held()
                raise RtspRequestError(503, refused.text)
            self.camera = camera
            self.server.cameras.hold(camera, self)

    async def _first_picture(self, reader: PacketReader) -> tuple[EncodedPacket, int | None]:
        try:
            return await asyncio.wait_for(reader.next(), FIRST_PICTURE_TIMEOUT)
        except TimeoutError:
            raise RtspRequestError(503, f"the camera sent no picture within {FIRST_PICTURE_TIMEOUT:g} s") from None
        except FeedClosed:
            raise RtspRequestError(503, "the camera stopped") from None

    def _base_url(self, request: Request) -> str:
        url = request.url.partition("?")[0]
        return url if url.endswith("/") else url + "/"

    async def _describe(self, request: Request) -> None:
        self._authorize(request)
        if self.playing or self.paused:
            # (its reader is the playback's now; a client re-DESCRIBEs after a TEARDOWN)
            raise RtspRequestError(455, "DESCRIBE comes before SETUP and PLAY (TEARDOWN first)")
        camera = self._camera_of(request)
        self._take(camera)
        assert self._held is not None
        first, _ = await self._first_picture(self._held)
        if first.keyframe:  # (its parameter sets go in the SDP; a second DESCRIBE reads on past it)
            self._keyframe = bytes(first.packet)
        sockname = self.writer.get_extra_info("sockname")
        address = str(sockname[0]) if sockname else "0.0.0.0"
        body = messages.sdp(camera.name, first.codec, self._keyframe, secrets.randbits(62), address)
        self._reply(request, {"Content-Base": self._base_url(request)}, body, "application/sdp")

    async def _setup(self, request: Request) -> None:
        self._authorize(request)
        camera = self._camera_of(request)
        self._check_session(request, needed=False)
        if self.playing:
            raise RtspRequestError(455, "already playing: SETUP comes before PLAY")
        spec = messages.parse_transport(request.header("transport"))
        self._take(camera)
        session = self.session
        if session is not None and not session.tcp:
            self.server.watch_udp(session.rtcp_to, None)
        session = self.session = _Session(camera, session.id if session else secrets.token_hex(8), spec.tcp)
        if spec.tcp:
            session.channels = spec.channels
            transport = f"RTP/AVP/TCP;unicast;interleaved={spec.channels[0]}-{spec.channels[1]}"
        else:
            rtp_port, rtcp_port = self.server.udp_ports
            session.rtp_to = (self.remote, spec.client_ports[0])
            session.rtcp_to = (self.remote, spec.client_ports[1])
            self.server.watch_udp(session.rtcp_to, self)
            sockname = self.writer.get_extra_info("sockname")
            source = f";source={sockname[0]}" if sockname else ""
            transport = (f"RTP/AVP;unicast;client_port={spec.client_ports[0]}-{spec.client_ports[1]};"
                         f"server_port={rtp_port}-{rtcp_port}{source}")
        self.server.stats.sessions += 1
        self._reply(request, {"Transport": f"{transport};ssrc={session.ssrc:08X}", **self._session_header()})

    async def _play(self, request: Request) -> None:
        self._authorize(request)
        self._check_session(request)
        session, camera = self.session, self.camera
        assert session is not None and camera is not None
        if self.playing:
            self._reply(request, {**self._session_header(), "Range": "npt=now-"})
            return
        if not self.paused:  # (a paused client is a viewer still)
            refused = self.server.cameras.admit(camera, self)
            if refused is not None:
                raise RtspRequestError(503, refused.text)
        self.paused = False
        # a fresh reader: it starts at the newest keyframe (the held one may be seconds old by now)
        try:
            reader = self._reader(camera)
        except RtspRequestError:
            self.server.cameras.leave(camera, self)
            raise
        self._release_held()
        try:
            first = await self._first_picture(reader)
        except RtspRequestError:
            reader.close()
            self.server.cameras.leave(camera, self)
            raise
        self.playing = True
        timestamp = self._timeline(session, first[0], first[1])
        session.last_timestamp = None  # (worked out again when the picture is sent)
        session.offset = 0
        track = self._base_url(request) + "trackID=0"
        self._reply(request, {**self._session_header(), "Range": "npt=now-",
                              "RTP-Info": f"url={track};seq={session.seq & 0xFFFF};rtptime={timestamp}"})
        log.info(self.remote, "RTSP client %s plays %s over %s", self.remote, camera.name,
                 "TCP" if session.tcp else "UDP")
        self._playback = asyncio.ensure_future(self._send_loop(reader, session, first))

    async def _pause(self, request: Request) -> None:
        """Stop sending, keep the session (and the place: a viewer still); PLAY starts again from a
        keyframe of the live picture."""
        self._check_session(request)
        if not self.playing:
            if self.paused:
                self._reply(request, self._session_header())
                return
            raise RtspRequestError(455, "PAUSE comes after PLAY")
        task, self._playback = self._playback, None
        self.playing = False
        self.paused = True
        self.heard = time.monotonic()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._reply(request, self._session_header())

    async def _teardown(self) -> None:
        """End the session (no viewer any more), but not the connection: clients go on using it
        after a TEARDOWN (GStreamer's rtspsrc sends a PAUSE as it shuts down, and fails with an error
        if the server has hung up), and close it themselves; an idle one is closed at --idle-timeout."""
        task, self._playback = self._playback, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._release_held()
        session, self.session = self.session, None
        if session is not None and not session.tcp:
            self.server.watch_udp(session.rtcp_to, None)
        camera, self.camera = self.camera, None
        if camera is not None:
            self.server.cameras.leave(camera, self)
        self.playing = self.paused = False
        self.heard = time.monotonic()
        log.info(self.remote, "RTSP client %s tore its session down%s", self.remote,
                 f" ({camera.name})" if camera is not None else "")

    # ---- sending -------------------------------------------------------------------------------

    @staticmethod
    def _timeline(session: _Session, encoded: EncodedPacket, own_pts: int | None) -> int:
        """The RTP timestamp of a picture: the reader's presentation time (kept growing across a
        join bridge), but never closer to the previous picture's than the pictures' own times are.

        A reader squeezes the run since a keyframe it starts with to one tick apart, so that a
        WebRTC viewer shows the newest picture at once; an RTSP client (an NVR's FFmpeg) would take
        that for thousands of pictures a second, and a recording would say so. Here the run keeps
        its own spacing (it plays at most the reader's start run, 250 ms, behind live)."""
        codec = encoded.codec
        base = codec.rtp_timestamp(own_pts if own_pts is not None else encoded.packet.pts or 0) + session.offset
        raw = codec.rtp_timestamp(encoded.packet.pts or 0)
        if session.last_timestamp is not None:
            natural = raw - session.last_raw
            floor = session.last_timestamp + (natural if 0 < natural < codec.clock_rate else 1)
            if base < floor:
                session.offset += floor - base
                base = floor
        session.last_timestamp, session.last_raw = base, raw
        return (base + session.timestamp_origin) & 0xFFFFFFFF

    async def _send_loop(self, reader: PacketReader, session: _Session,
                         first: tuple[EncodedPacket, int | None]) -> None:
        got: tuple[EncodedPacket, int | None] | None = first
        try:
            while self.reason is None:
                if got is None:
                    got = await reader.next()
                encoded, own_pts = got
                got = None
                if not self._send_picture(reader, session, encoded, own_pts):
                    return
        except FeedClosed:
            self.end("the camera stopped")
        except ConnectionError:
            self.end("disconnected")
        except Exception:  # noqa: BLE001 - a bug here must end this client, not leave it counted and silent
            logger.exception("RTSP client %s: sending failed", self.remote)
            self.end("sending failed")
        finally:
            reader.close()

    def _send_picture(self, reader: PacketReader, session: _Session, encoded: EncodedPacket,
                      own_pts: int | None) -> bool:
        """Send one picture whole, or skip it (and what follows up to a keyframe) if the client
        cannot take it now; False when the client is cut off."""
        now = time.monotonic()
        if session.tcp and self.writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            # it cannot take this picture: skip to a keyframe, and cut it off if it takes nothing for long
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since >= STALL_TIMEOUT:
                self.server.stats.cut_off += 1
                self.end(f"took no picture for {STALL_TIMEOUT:g} s")
                return False
            self._skip()
            return True
        self._stalled_since = None
        if self._skipping and not encoded.keyframe:
            self._skip()  # (it can take pictures again: the next keyframe is the one it can decode)
            return True
        codec = _VP8 if encoded.codec.codec == "vp8" else _H264
        frame = rtp_frame(reader.feed, encoded, codec, own_pts)
        timestamp = self._timeline(session, encoded, own_pts)
        if now - session.last_report >= SENDER_REPORT_EVERY:
            session.last_report = now
            self._send_rtcp(session, _sender_report(session, timestamp, frame.captured))
        last = len(frame.payloads) - 1
        chunks: list[bytes] = []
        for i, payload in enumerate(frame.payloads):
            header = struct.pack("!BBHII", 0x80, (0x80 if i == last else 0) | PAYLOAD_TYPE,
                                 session.seq & 0xFFFF, timestamp, session.ssrc)
            session.seq += 1
            session.packets += 1
            session.octets += len(payload)
            if session.tcp:
                chunks.append(struct.pack("!cBH", b"$", session.channels[0], len(header) + len(payload)))
                chunks.append(header)
                chunks.append(payload)
            elif not self.server.send_udp(False, header + payload, session.rtp_to):
                self._skip()  # the rest of this picture is lost: wait for a keyframe
                return True
        if chunks:
            self.writer.write(b"".join(chunks))
        self._skipping = False
        self.sent += 1
        return True

    def _skip(self) -> None:
        """Skip a picture, and the ones after it up to a keyframe. No keyframe is asked for: the
        periodic one comes (a camera's own cannot be asked anyway), and clients that cannot keep up
        must not raise everyone's keyframe rate (a forced keyframe is a burst for every viewer)."""
        self.skipped += 1
        self.server.stats.skipped += 1
        self._skipping = True

    def _send_rtcp(self, session: _Session, data: bytes) -> None:
        if session.tcp:
            self._write(struct.pack("!cBH", b"$", session.channels[1], len(data)) + data)
        else:
            self.server.send_udp(True, data, session.rtcp_to)


def _sender_report(session: _Session, timestamp: int, captured: float) -> bytes:
    """An RTCP sender report (its NTP time the picture's capture time) and an SDES with a CNAME."""
    ntp = int((captured + NTP_EPOCH) * (1 << 32))
    report = struct.pack("!BBHIIIIII", 0x80, 200, 6, session.ssrc, (ntp >> 32) & 0xFFFFFFFF, ntp & 0xFFFFFFFF,
                         timestamp, session.packets & 0xFFFFFFFF, session.octets & 0xFFFFFFFF)
    cname = f"camtrack-{os.getpid()}".encode()
    item = struct.pack("!BB", 1, len(cname)) + cname + b"\x00"
    item += b"\x00" * (-(len(item) + 4) % 4)
    sdes = struct.pack("!BBHI", 0x81, 202, (len(item) + 4) // 4, session.ssrc) + item
    return report + sdes
