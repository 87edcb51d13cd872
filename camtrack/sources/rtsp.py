"""camtrack's own RTSP reader for H.264 cameras over TCP: access units out as soon as their last
RTP packet is in.

Why not only PyAV: FFmpeg's RTSP demuxer runs its H.264 parser over the depacketized stream, and
the parser only knows that a picture ended when the next one begins, so every picture waits one
frame interval (33 ms at 30 fps; measured 72 ms camera-to-browser against 38 ms for the pattern).
RTP says where a picture ends: the marker bit on its last packet (RFC 6184 5.1). Reading RTP here
closes each access unit on that bit, or, for a camera that never sets it, when the timestamp moves.

Scope: RTSP 1.0 (RFC 2326) over TCP with RTP interleaved in the connection, Basic and Digest
(MD5) authentication, H.264 in single NAL, STAP-A and FU-A packets (packetization-mode 0 and 1).
Anything else (other codecs, UDP, `rtsps://`, an unknown authentication) is `RtspUnsupported`, and
`RtspSource` then reads the camera with PyAV instead, saying so once in the log, for that opening
only (the next tries its own reader again); PyAV reads it through `rtspguard.RtspGuard`, which
keeps the same bounds.

Blocking and single-threaded like every source; `interrupt()` may come from any thread.
"""

from __future__ import annotations

import base64
import binascii
import fractions
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from ..media.packet import CodecInfo
from ..media.passthrough import SourcePacket
from ..media.sizes import check_size
from .demux import DemuxSource
from .h264 import NAL_IDR, NAL_SPS, H264Converter, nal_type, parse_sps, profile_level_id
from .urls import redact

logger = logging.getLogger(__name__)

USER_AGENT = "camtrack"
#: an RTSP response's head (status line and headers) and body may be at most this long
MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024
#: an access unit may be at most this large (a 4K IDR at a high bitrate is a few MB)
MAX_ACCESS_UNIT = 16 * 1024 * 1024
#: RTP packet types that carry H.264 NAL units in pieces (RFC 6184)
STAP_A, FU_A = 24, 28
#: what one NAL unit costs in memory besides its bytes (a bytes object and its place in a list):
#: counted against MAX_ACCESS_UNIT, so an access unit of millions of one-byte NAL units is bounded too
NAL_OVERHEAD = 64
#: bytes asked of the socket at once: a flood is parsed in bulk, not a read per packet
RECV_SIZE = 256 * 1024
#: interleaved packets parsed in one go before the reader looks at the time and its budget
BATCH_FRAMES = 1024
#: interleaved packets (every channel) in one second beyond any camera: 50 Mbit/s of video in
#: 1400-byte RTP packets is 4 500 a second; more than this is a flood, and the session is cut
MAX_FRAMES_PER_SECOND = 20_000
#: over at least TINY_FRAMES packets within a second, an average packet shorter than MIN_AVERAGE_FRAME
#: bytes (a 12-byte RTP header and a few bytes of payload; a camera's video averages hundreds) is a
#: flood of tiny packets, and the session is cut
TINY_FRAMES = 1000
MIN_AVERAGE_FRAME = 32
#: the reader's share of a core while packets pour in: once it has worked (CPU time) PACE_AFTER
#: seconds within PACE_WINDOW, it sleeps as long as it worked, letting the GIL and the core go to the
#: other threads (the event loop, the other cameras); a camera's ordinary stream never gets there
PACE_AFTER = 0.0005
PACE_WINDOW = 0.05


class RtspError(OSError):
    """The camera answered something camtrack cannot use (an error status, a broken message)."""


class RtspUnsupported(RtspError):
    """What camtrack's RTSP reader does not handle; PyAV's reader may."""


class RtspFlood(RtspError):
    """The camera sends packets at a rate or of a size no camera does (see MAX_FRAMES_PER_SECOND)."""


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""
    #: every WWW-Authenticate header (a camera may offer Basic and Digest at once)
    challenges: list[str] = field(default_factory=list)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class VideoTrack:
    """The H.264 video of a DESCRIBE answer."""

    control: str
    payload_type: int
    clock_rate: int
    parameter_sets: list[bytes] = field(default_factory=list)


# -- SDP


def parse_sdp(sdp: str, base: str) -> VideoTrack:
    """The first video track of an SDP description, with its control URL resolved against `base`."""
    session_control = ""
    sections: list[list[str]] = [[]]
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    for line in sections[0]:
        if line.startswith("a=control:"):
            session_control = line[len("a=control:"):].strip()
    if session_control and session_control != "*":
        base = _resolve(base, session_control)
    for section in sections[1:]:
        media = section[0][2:].split()
        if not media or media[0] != "video" or len(media) < 4:
            continue
        payload_types = media[3:]
        codecs: dict[str, tuple[str, int]] = {}
        fmtp: dict[str, str] = {}
        control = ""
        for line in section[1:]:
            if line.startswith("a=rtpmap:"):
                pt, _, what = line[len("a=rtpmap:"):].partition(" ")
                name, _, rest = what.partition("/")
                rate = rest.split("/")[0]
                codecs[pt] = (name.upper(), int(rate) if rate.isdigit() else 90000)
            elif line.startswith("a=fmtp:"):
                pt, _, params = line[len("a=fmtp:"):].partition(" ")
                fmtp[pt] = params
            elif line.startswith("a=control:"):
                control = line[len("a=control:"):].strip()
        for pt in payload_types:
            name, clock = codecs.get(pt, ("", 90000))
            if name != "H264":
                continue
            track = VideoTrack(_resolve(base, control) if control and control != "*" else base, int(pt), clock)
            for param in fmtp.get(pt, "").split(";"):
                key, _, value = param.strip().partition("=")
                if key.lower() == "sprop-parameter-sets":
                    for item in value.split(","):
                        try:
                            nal = base64.b64decode(item.strip(), validate=True)
                        except (binascii.Error, ValueError):
                            continue
                        if nal:
                            track.parameter_sets.append(nal)
                elif key.lower() == "packetization-mode" and value.strip() not in ("0", "1"):
                    raise RtspUnsupported(f"H.264 packetization-mode {value.strip()}")
            return track
        names = ", ".join(sorted({codecs.get(pt, (f"payload type {pt}", 0))[0] for pt in payload_types}))
        raise RtspUnsupported(f"the camera's video is {names or 'unnamed'}, not H.264")
    raise RtspError("the camera's description has no video")


def _resolve(base: str, control: str) -> str:
    if "://" in control:
        return control
    return base + ("" if base.endswith("/") or control.startswith("/") else "/") + control


# -- authentication


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in re.finditer(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', rest)}
    return scheme.lower(), params


@dataclass
class Credentials:
    """A user and password from the URL, and how the camera asked for them (set by a 401)."""

    user: str
    password: str
    scheme: str = ""
    params: dict[str, str] = field(default_factory=dict)
    count: int = 0

    def learn(self, challenges: list[str]) -> None:
        found = [_challenge(c) for c in challenges]
        digest = [p for s, p in found if s == "digest"]
        if digest:
            algorithm = digest[0].get("algorithm", "MD5").upper()
            if algorithm != "MD5":
                raise RtspUnsupported(f"Digest authentication with {algorithm}")
            self.scheme, self.params, self.count = "digest", digest[0], 0
        elif any(s == "basic" for s, _ in found):
            self.scheme, self.params = "basic", {}
        else:
            raise RtspUnsupported(f"authentication {', '.join(s for s, _ in found) or '(none named)'}")

    def header(self, method: str, uri: str) -> str | None:
        if self.scheme == "basic":
            return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.scheme != "digest":
            return None
        realm, nonce = self.params.get("realm", ""), self.params.get("nonce", "")
        ha1 = _md5(f"{self.user}:{realm}:{self.password}")
        ha2 = _md5(f"{method}:{uri}")
        fields = [f'username="{self.user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
        qops = [q.strip() for q in self.params.get("qop", "").split(",") if q.strip()]
        if "auth" in qops:
            self.count += 1
            cnonce = os.urandom(8).hex()
            response = _md5(f"{ha1}:{nonce}:{self.count:08x}:{cnonce}:auth:{ha2}")
            fields += ["qop=auth", f"nc={self.count:08x}", f'cnonce="{cnonce}"']
        else:
            response = _md5(f"{ha1}:{nonce}:{ha2}")
        fields.append(f'response="{response}"')
        if "opaque" in self.params:
            fields.append(f'opaque="{self.params["opaque"]}"')
        return "Digest " + ", ".join(fields)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


# -- the connection


class RtspConnection:
    """One RTSP session over TCP: requests and their answers, then RTP interleaved in it."""

    def __init__(self, url: str, *, open_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "rtsp":
            raise RtspUnsupported(f"{parts.scheme}:// (camtrack reads rtsp:// itself)")
        if not parts.hostname:
            raise RtspError("no host in the URL")
        self.host, self.port = parts.hostname, parts.port or 554
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port:
            netloc += f":{parts.port}"
        #: the URL without its user and password, as requests name it
        self.url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.credentials = (Credentials(unquote(parts.username or ""), unquote(parts.password or ""))
                            if parts.username is not None else None)
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.session = ""
        self.session_timeout = 60.0
        self.methods: set[str] = set()
        #: while opening: the time.monotonic() by which the session must be set up
        self.deadline: float | None = None
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._cseq = 0
        self._closed = threading.Event()

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.open_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        if self._closed.is_set():  # interrupted while connecting
            self.close()
            raise RtspError("interrupted")

    def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> Response:
        """Send a request and wait for its answer, answering one authentication challenge."""
        for attempt in range(3):
            self._send(method, url, headers or {})
            response = self._read_response()
            if response.status != 401 or self.credentials is None or not response.challenges:
                break
            # answered again after credentials were sent: only a stale nonce is worth another try
            stale = any("stale=true" in c.lower().replace('"', "") for c in response.challenges)
            if attempt == 2 or (attempt == 1 and not stale) or (attempt == 0 and self.credentials.scheme and not stale):
                break
            self.credentials.learn(response.challenges)
        if response.status == 401:
            raise RtspError("401 Unauthorized (check the user and password in the URL)")
        if response.status >= 300:
            raise RtspError(f"{method}: {response.status} {response.reason}".strip())
        return response

    def send_only(self, method: str, url: str) -> None:
        """A request whose answer is not waited for (keep-alive, TEARDOWN)."""
        self._send(method, url, {})

    def send_interleaved(self, channel: int, packet: bytes) -> None:
        """One RTP or RTCP packet to the camera, interleaved on `channel` (a back-channel's sound),
        after dropping whatever the camera sent meanwhile (its RTCP: nothing is read from it)."""
        sock = self._socket()
        sock.setblocking(False)
        try:
            while sock.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            sock.settimeout(self.read_timeout)
        sock.sendall(b"$" + bytes([channel]) + len(packet).to_bytes(2, "big") + packet)

    def _send(self, method: str, url: str, headers: dict[str, str]) -> None:
        self._cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._cseq}", f"User-Agent: {USER_AGENT}"]
        if self.credentials is not None:
            auth = self.credentials.header(method, url)
            if auth:
                lines.append(f"Authorization: {auth}")
        if self.session:
            lines.append(f"Session: {self.session}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock = self._socket()
        sock.settimeout(self.open_timeout)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.settimeout(self.read_timeout)

    def _read_response(self) -> Response:
        """The next RTSP response; interleaved data in front of it is dropped (in bulk, and at most
        MAX_FRAMES_PER_SECOND frames of it: a camera does not flood before it answers)."""
        dropped = 0
        while True:
            first = self._peek(1)
            if first == b"$":
                dropped += self.read_frames(-1)[1]  # no channel: nothing copied
                if dropped > MAX_FRAMES_PER_SECOND:
                    raise RtspFlood(f"packet flood: more than {MAX_FRAMES_PER_SECOND} interleaved packets "
                                    "before the answer to a request")
                continue
            return self._read_message()

    def _read_message(self) -> Response:
        head = self._read_head()
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        challenges: list[str] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            if key == "www-authenticate":
                challenges.append(value.strip())
            headers[key] = value.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise RtspError(f"bad Content-Length {length[:20]!r}")
        body = self._read_exact(int(length))
        if len(status_line) < 2 or not status_line[0].startswith("RTSP/"):
            # a request from the camera (some send GET_PARAMETER or ANNOUNCE): not ours to answer
            return Response(0, lines[0][:80], headers, body, challenges)
        if not status_line[1].isdigit():
            raise RtspError(f"bad status line {lines[0][:80]!r}")
        return Response(int(status_line[1]), status_line[2] if len(status_line) > 2 else "", headers, body, challenges)

    def read_frames(self, channel: int, limit: int = BATCH_FRAMES) -> tuple[list[bytes], int, int]:
        """Whole interleaved frames at the front of the buffer, at most `limit` of them (reading the
        socket, in large pieces, only when there is not one whole frame): the payloads of those on
        `channel`, and how many frames and bytes there were on every channel. Those of other
        channels (RTCP) cost a few operations each, and no copy."""
        buffer = self._buffer
        while True:
            size = len(buffer)
            if size >= 4 and buffer[0] == 0x24:  # "$"
                need = 4 + ((buffer[2] << 8) | buffer[3])
                if size >= need:
                    break
                self._fill(need)
            elif size == 0 or buffer[0] == 0x24:
                self._fill(4)
            else:
                self._skip_message()
        payloads: list[bytes] = []
        frames = pos = 0
        with memoryview(buffer) as view:
            while frames < limit and pos + 4 <= size and buffer[pos] == 0x24:
                stop = pos + 4 + ((buffer[pos + 2] << 8) | buffer[pos + 3])
                if stop > size:
                    break
                if buffer[pos + 1] == channel:
                    payloads.append(bytes(view[pos + 4:stop]))
                frames += 1
                pos = stop
        del buffer[:pos]
        return payloads, frames, pos

    def _skip_message(self) -> None:
        """At something that is not an interleaved frame: an RTSP message (read, and failed on if it
        ends the session), or bytes up to the next '$' (a camera that lost its framing)."""
        first = self._peek(1)
        if first in (b"R", b"G", b"O", b"A", b"S", b"P", b"T"):
            message = self._read_message()  # an answer to a keep-alive, or a request from the camera
            if message.status == 454:
                raise RtspError(f"the camera ended the session ({message.status} {message.reason[:60]})")
            if message.status == 0 and message.reason.upper().startswith("TEARDOWN"):
                raise RtspError("the camera tore the session down (TEARDOWN)")
            return
        index = self._buffer.find(b"$")
        del self._buffer[:index if index >= 0 else len(self._buffer)]
        if index < 0:
            self._fill(1)

    def read_interleaved_raw(self) -> tuple[int, bytes]:
        head = self._read_exact(4)
        channel, length = head[1], int.from_bytes(head[2:4], "big")
        return channel, self._read_exact(length)

    def _socket(self) -> socket.socket:
        if self._sock is None or self._closed.is_set():
            raise RtspError("not connected")
        return self._sock

    def _fill(self, count: int) -> None:
        sock = self._socket()
        while len(self._buffer) < count:
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                # a camera answering a byte at a time never lets a read time out: the whole opening has this long
                raise RtspError(f"the camera did not answer within the open timeout ({self.open_timeout:g} s)")
            chunk = sock.recv(max(RECV_SIZE, count - len(self._buffer)))
            if not chunk:
                raise EOFError("the camera closed the connection")
            self._buffer += chunk

    def _peek(self, count: int) -> bytes:
        self._fill(count)
        return bytes(self._buffer[:count])

    def _read_exact(self, count: int) -> bytes:
        self._fill(count)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _read_head(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[:end + 4]
                return head
            if len(self._buffer) > MAX_HEAD:
                raise RtspError("an RTSP message head larger than 16 KiB")
            self._fill(len(self._buffer) + 1)

    def interrupt(self) -> None:
        """Wake a blocked read (from any thread): it then fails, and the connection is done."""
        self._closed.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


# -- H.264 out of RTP


class Depacketizer:
    """H.264 access units out of RTP packets (RFC 6184): each one ends on the marker bit, or when
    the timestamp moves on for a camera that never sets it. After a lost packet, pictures are
    dropped until the next IDR (they would be decoded against what never came)."""

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        self.lost = 0
        self._nals: list[bytes] = []
        self._size = 0
        self._fragment: bytearray | None = None
        self._timestamp: int | None = None
        self._seq: int | None = None
        self._broken = True  # until the first IDR

    def push(self, packet: bytes) -> list[tuple[int, list[bytes]]]:
        """Access units (RTP timestamp, NAL units) that this packet completed."""
        if len(packet) < 12 or packet[0] >> 6 != 2:
            return []
        if packet[1] & 0x7F != self.payload_type:
            return []
        marker = bool(packet[1] & 0x80)
        seq = int.from_bytes(packet[2:4], "big")
        timestamp = int.from_bytes(packet[4:8], "big")
        offset = 12 + 4 * (packet[0] & 0x0F)
        if packet[0] & 0x10:  # header extension
            if len(packet) < offset + 4:
                return []
            offset += 4 + 4 * int.from_bytes(packet[offset + 2:offset + 4], "big")
        end = len(packet)
        if packet[0] & 0x20 and end > offset:  # padding
            end -= packet[-1]
        payload = packet[offset:end]
        done: list[tuple[int, list[bytes]]] = []
        if self._seq is not None and seq != (self._seq + 1) & 0xFFFF:
            if ((seq - self._seq) & 0xFFFF) > 0x8000:
                return []  # older than what came already (a duplicate or late packet)
            self.lost += 1
            self._drop()
            self._broken = True
        self._seq = seq
        if self._timestamp is not None and timestamp != self._timestamp and (self._nals or self._fragment):
            done += self._finish()
        self._timestamp = timestamp
        if payload:
            self._take(payload)
        if marker:
            done += self._finish()
        return done

    def _take(self, payload: bytes) -> None:
        kind = payload[0] & 0x1F
        if kind == STAP_A:
            pos = 1
            while pos + 2 <= len(payload):
                size = int.from_bytes(payload[pos:pos + 2], "big")
                pos += 2
                if size == 0 or pos + size > len(payload):
                    break
                self._add(payload[pos:pos + size])
                pos += size
        elif kind == FU_A:
            if len(payload) < 2:
                return
            start, end = payload[1] & 0x80, payload[1] & 0x40
            if start:
                self._fragment = bytearray([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
            elif self._fragment is None:
                return  # the middle of a NAL unit whose start was lost
            self._fragment += payload[2:]
            if len(self._fragment) + NAL_OVERHEAD + self._size > MAX_ACCESS_UNIT:
                self._drop()
                self._broken = True
                return
            if end:
                self._add(bytes(self._fragment))
                self._fragment = None
        elif 1 <= kind <= 23:
            self._add(payload)
        # other types (STAP-B, MTAP, FU-B) belong to packetization-mode 2, refused at DESCRIBE

    def _add(self, nal: bytes) -> None:
        if self._size + len(nal) + NAL_OVERHEAD > MAX_ACCESS_UNIT:
            self._drop()
            self._broken = True
            return
        self._nals.append(nal)
        self._size += len(nal) + NAL_OVERHEAD

    def _finish(self) -> list[tuple[int, list[bytes]]]:
        nals, timestamp = self._nals, self._timestamp
        self._drop()
        if not nals or timestamp is None:
            return []
        if self._broken:
            if not any(nal_type(n) == NAL_IDR for n in nals):
                return []
            self._broken = False
        return [(timestamp, nals)]

    def _drop(self) -> None:
        self._nals, self._size, self._fragment = [], 0, None


# -- the source


class RtspSource:
    """Access units of an H.264 RTSP camera, read over TCP by camtrack itself (see the module's
    docstring); a camera it cannot read this way is read with PyAV (`DemuxSource`) instead."""

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0) -> None:
        self.url = url
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.description = redact(url)
        self.live = True
        self.lost = 0
        #: why camtrack's reader left the camera to PyAV last (said once in the log)
        self._unsupported = ""
        self._connection: RtspConnection | None = None
        self._track: VideoTrack | None = None
        self._depacketizer: Depacketizer | None = None
        self._converter = H264Converter(None)
        self._ready: deque[SourcePacket] = deque()
        self._time_base = fractions.Fraction(1, 90000)
        self._size = (0, 0)
        self._reorder: int | None = None
        self._reordered = False
        self._first: int | None = None
        self._last: int | None = None
        self._extended = 0
        self._max_pts: int | None = None
        self._keepalive_at = 0.0
        self._channel = 0
        self._interrupted = threading.Event()
        #: the flood guard's window: when it began, and the packets and bytes within it
        self._window_start = 0.0
        self._window_frames = 0
        self._window_bytes = 0
        #: the reader's own CPU time since `_busy_since` (see PACE_AFTER)
        self._busy_since = 0.0
        self._busy = 0.0
        #: why the last read gave None (the stream ended), for the log and the camera's state
        self.end_reason: str | None = None
        #: PyAV's reader, once this camera turned out to need it
        self.fallback: DemuxSource | None = None

    @property
    def codec(self) -> CodecInfo:
        if self.fallback is not None:
            return self.fallback.codec
        sps = self._converter.sps
        return CodecInfo("h264", self._size[0], self._size[1], self._time_base,
                         profile_level_id(sps) if sps is not None else None, self._converter.parameter_sets)

    @property
    def passthrough(self) -> bool:
        return self.why_not_passthrough is None

    @property
    def extradata(self) -> bytes | None:
        """What a decoder needs before the first packet: nothing for H.264 in Annex-B."""
        return self.fallback.extradata if self.fallback is not None else None

    @property
    def why_not_passthrough(self) -> str | None:
        if self.fallback is not None:
            return self.fallback.why_not_passthrough
        if self._reordered or (self._reorder or 0) > 0:
            return "the H.264 has B-frames"
        return None

    def open(self) -> None:
        # each opening tries camtrack's own reader first: a camera that needed PyAV once (a
        # description it could not read) is not left to PyAV for the rest of the feed's run
        self.close()
        self.fallback = None
        self._interrupted.clear()
        try:
            self._open()
        except RtspUnsupported as exc:
            self.close()
            if str(exc) != self._unsupported:  # said once, not at every reopening
                logger.info("%s: %s; reading it with PyAV instead", self.description, exc)
                self._unsupported = str(exc)
            self.fallback = DemuxSource(self.url, rtsp_transport="tcp", open_timeout=self.open_timeout,
                                        read_timeout=self.read_timeout)
            self.fallback.open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        connection = RtspConnection(self.url, open_timeout=self.open_timeout, read_timeout=self.read_timeout)
        self._connection = connection
        deadline = connection.deadline = time.monotonic() + self.open_timeout
        connection.connect()
        options = connection.request("OPTIONS", connection.url)
        connection.methods = {m.strip().upper() for m in options.header("public").split(",") if m.strip()}
        described = connection.request("DESCRIBE", connection.url, {"Accept": "application/sdp"})
        base = described.header("content-base") or described.header("content-location") or connection.url
        track = parse_sdp(described.body.decode("utf-8", "replace"), base)
        setup = connection.request("SETUP", track.control, {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"})
        session = setup.header("session")
        if not session:
            raise RtspError("SETUP answered without a session")
        connection.session, _, rest = session.partition(";")
        match = re.search(r"timeout\s*=\s*(\d+)", rest)
        if match and int(match.group(1)) > 0:
            connection.session_timeout = float(match.group(1))
        transport = setup.header("transport")
        if "interleaved" not in transport.lower() and "tcp" not in transport.lower():
            raise RtspUnsupported(f"the camera answered SETUP with transport {transport[:60]!r}, not TCP")
        interleaved = re.search(r"interleaved\s*=\s*(\d+)", transport)
        self._channel = int(interleaved.group(1)) if interleaved else 0
        # aggregate control: PLAY names the presentation (the base URL), not the track
        connection.request("PLAY", base, {"Range": "npt=0.000-"})
        self._track, self._depacketizer = track, Depacketizer(track.payload_type)
        self._time_base = fractions.Fraction(1, track.clock_rate)
        self._ready.clear()
        self._first = self._last = self._max_pts = None
        self._window_start, self._window_frames, self._window_bytes = time.monotonic(), 0, 0
        self.end_reason = None
        self._keepalive_at = time.monotonic() + connection.session_timeout / 2
        for nal in track.parameter_sets:
            self._learn(nal)
        # the size comes from an SPS: from the description, else from the stream's first ones
        while self._converter.sps is None:
            if time.monotonic() > deadline:
                raise RtspError("no H.264 parameter sets within the open timeout")
            self._read_units()
            while self._ready and self._converter.sps is None:
                self._ready.popleft()  # before any SPS: nothing a viewer could decode
        connection.deadline = None  # open: from now on each read has read_timeout

    def _learn(self, nal: bytes) -> None:
        if nal_type(nal) != NAL_SPS:
            self._converter.convert_nals([nal])
            return
        try:
            info = parse_sps(nal)
        except ValueError as exc:
            logger.debug("%s: unreadable SPS (%s)", self.description, exc)
            return
        # a size beyond the limits is refused here (SizeRefused), before anything is made at it;
        # an in-band SPS changing the size is checked again, as each one comes
        check_size(info.width, info.height, "the camera's SPS")
        self._converter.convert_nals([nal])
        self._size, self._reorder = (info.width, info.height), info.max_reorder_frames

    def read(self) -> SourcePacket | None:
        """The next access unit, as soon as its last packet is in; None when the camera ended."""
        if self.fallback is not None:
            return self.fallback.read()
        try:
            while not self._ready:
                if self._interrupted.is_set():
                    return None
                self._read_units()
        except EOFError as exc:
            self.end_reason = str(exc) or "the camera closed the connection"
            return None
        except OSError:
            if self._interrupted.is_set():
                return None
            raise
        return self._ready.popleft()

    def _read_units(self) -> None:
        connection, depacketizer = self._connection, self._depacketizer
        if connection is None or depacketizer is None:
            raise RtspError("not open")
        cpu = time.thread_time()
        payloads, frames, size = connection.read_frames(self._channel)
        now = time.monotonic()
        self._guard(frames, size, now)
        if now >= self._keepalive_at:
            # some cameras end a session that only receives; GET_PARAMETER is the usual keep-alive
            connection.send_only("GET_PARAMETER" if "GET_PARAMETER" in connection.methods else "OPTIONS",
                                 connection.url)
            self._keepalive_at = now + connection.session_timeout / 2
        # RTCP and other tracks were left out by read_frames
        for data in payloads:
            for timestamp, nals in depacketizer.push(data):
                for nal in nals:
                    if nal_type(nal) == NAL_SPS:
                        self._learn(nal)
                payload, keyframe = self._converter.convert_nals(nals)
                if payload:
                    self._ready.append(SourcePacket(payload, self._pts(timestamp), self._time_base, keyframe))
        self.lost = depacketizer.lost
        self._pace(now, time.thread_time() - cpu)

    def _pace(self, now: float, spent: float) -> None:
        """Packets pouring in (a flood until the guard cuts it, a huge picture): at most half a
        core, and the GIL let go about as long as it was held, so that the event loop and the
        other cameras' threads keep going."""
        if now - self._busy_since > PACE_WINDOW:
            self._busy_since, self._busy = now, 0.0
        self._busy += spent
        if self._busy > PACE_AFTER:
            time.sleep(self._busy)
            self._busy_since, self._busy = time.monotonic(), 0.0

    def _guard(self, frames: int, size: int, now: float) -> None:
        """Cut a session whose packets come at a rate, or of a size, no camera sends
        (MAX_FRAMES_PER_SECOND, MIN_AVERAGE_FRAME), before it costs more than a moment of a core."""
        if now - self._window_start >= 1.0:
            self._window_start, self._window_frames, self._window_bytes = now, 0, 0
        self._window_frames += frames
        self._window_bytes += size
        count = self._window_frames
        if count > MAX_FRAMES_PER_SECOND:
            # (the same words every time: the log says a reason once, not once per reopening)
            raise RtspFlood(f"packet flood: more than {MAX_FRAMES_PER_SECOND} interleaved packets within a second "
                            "(a camera sends a few thousand at most)")
        if count >= TINY_FRAMES and self._window_bytes < MIN_AVERAGE_FRAME * count:
            raise RtspFlood(f"packet flood: {TINY_FRAMES} or more interleaved packets within a second, of under "
                            f"{MIN_AVERAGE_FRAME} bytes on average (a camera's are hundreds)")

    def _pts(self, timestamp: int) -> int:
        """RTP's 32-bit timestamps unwrapped, from 0 at the first picture."""
        if self._last is None or self._first is None:
            self._first = self._last = timestamp
            self._extended = 0
        else:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            self._extended += delta - (1 << 32) if delta >= 1 << 31 else delta
            self._last = timestamp
        pts = self._extended
        if self._max_pts is not None and pts < self._max_pts and not self._reordered:
            logger.info("%s: pictures come out of presentation order (B-frames)", self.description)
            self._reordered = True
        self._max_pts = pts if self._max_pts is None else max(self._max_pts, pts)
        return pts

    def interrupt(self) -> None:
        self._interrupted.set()
        if self.fallback is not None:
            self.fallback.interrupt()
        connection = self._connection
        if connection is not None:
            connection.interrupt()

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.session and not self._interrupted.is_set():
            try:
                connection.send_only("TEARDOWN", connection.url)
            except OSError:
                pass  # the camera is gone already
        connection.close()
