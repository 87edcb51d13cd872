"""camtrack's own RTSP reader for H.264 cameras over TCP: access units out as soon as their last
RTP packet is in.

Why not only PyAV: FFmpeg's RTSP demuxer runs its H.264 parser over the depacketized stream, and
the parser only knows that a picture ended when the next one begins, so every picture waits one
frame interval (33 ms at 30 fps; measured 72 ms camera-to-browser against 38 ms for the pattern).
RTP says where a picture ends: the marker bit on its last packet (RFC 6184 5.1). Reading RTP here
closes each access unit on that bit, or, for a camera that never sets it, when the timestamp moves.

Scope: RTSP 1.0 (RFC 2326) over TCP with RTP interleaved in the connection, Basic and Digest
(MD5) authentication, H.264 in single NAL, STAP-A and FU-A packets (packetization-mode 0 and 1).
The camera's sound, when its camera reads it (`read_sound_of`), is set up in the same session
(`RtspSession`, shared with `camtrack.sources.rtspaudio.RtspAudioSource`: one session for picture
and sound; AAC, G.711 and Opus depacketized by `camtrack.sources.rtpaudio`).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from ..media.packet import CodecInfo
from ..media.passthrough import SourcePacket
from ..media.sizes import check_size
from .demux import DemuxSource
from .h264 import NAL_IDR, NAL_SPS, H264Converter, nal_type, parse_sps, profile_level_id
from .rtpaudio import AudioDepacketizer, AudioTrack, AudioUnsupported, Timeline, parse_audio, sender_reports
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


def _sdp_sections(sdp: str, base: str) -> tuple[list[list[str]], str]:
    """An SDP description's lines by section (the session's first, then one per m= line, each
    starting with it), and `base` resolved against the session's control URL (the last one given)."""
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
    return sections, base


def parse_sdp(sdp: str, base: str) -> VideoTrack:
    """The first video track of an SDP description, with its control URL resolved against `base`."""
    sections, base = _sdp_sections(sdp, base)
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

    def keep_session(self, setup: Response) -> None:
        """The session a SETUP answered, which later requests carry, and its timeout if it says one
        (RtspError without a session)."""
        session = setup.header("session")
        if not session:
            raise RtspError("SETUP answered without a session")
        self.session, _, rest = session.partition(";")
        match = re.search(r"timeout\s*=\s*(\d+)", rest)
        if match and int(match.group(1)) > 0:
            self.session_timeout = float(match.group(1))

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
        """As `read_channels`, for one channel (-1: none, nothing copied): its payloads, and how many
        frames and bytes there were on every channel."""
        payloads, frames, size = self.read_channels(frozenset((channel,)) if channel >= 0 else frozenset(), limit)
        return [payload for _, payload in payloads], frames, size

    def read_channels(self, channels: frozenset[int], limit: int = BATCH_FRAMES) -> tuple[list[tuple[int, bytes]], int, int]:
        """Whole interleaved frames at the front of the buffer, at most `limit` of them (reading the
        socket, in large pieces, only when there is not one whole frame): the (channel, payload) of
        those on `channels` (a session's picture, its sound and their RTCP), in the order they came,
        and how many frames and bytes there were on every channel. Those of other channels cost a
        few operations each, and no copy."""
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
        payloads: list[tuple[int, bytes]] = []
        frames = pos = 0
        with memoryview(buffer) as view:
            while frames < limit and pos + 4 <= size and buffer[pos] == 0x24:
                stop = pos + 4 + ((buffer[pos + 2] << 8) | buffer[pos + 3])
                if stop > size:
                    break
                channel = buffer[pos + 1]
                if channel in channels:
                    payloads.append((channel, bytes(view[pos + 4:stop])))
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


# -- one session, shared by a camera's picture and its sound

#: a session's sound waiting for its reader may take at most this many bytes (then the oldest goes)
MAX_AUDIO_QUEUE = 256 * 1024
#: a session's picture waiting for its reader: beyond this many bytes it is dropped (then from
#: the next IDR on), never piled up
MAX_VIDEO_QUEUE = 2 * MAX_ACCESS_UNIT
#: the sound channel's packets and bytes in a second, and its broken packets, beyond any camera's
#: (AAC at 48 kHz is 47 packets a second, G.711 at 10 ms 100, Opus at 2.5 ms 400; 8 channels of
#: 16-bit 48 kHz PCM 768 KB): beyond them the sound of the session is cut, its picture goes on
MAX_AUDIO_PACKETS_PER_SECOND = 1000
MAX_AUDIO_BYTES_PER_SECOND = 1024 * 1024
MAX_AUDIO_BAD_PER_SECOND = 100
#: the interleaved channels camtrack asks for: picture on 0 (RTCP 1), sound on 2 (RTCP 3)
VIDEO_CHANNEL, AUDIO_CHANNEL = 0, 2

#: rtsp:// URLs whose sound camtrack reads (set by `read_sound_of`: a camera with --audio other than
#: off); a session of one of them sets up its audio track beside its video
_SOUND: set[str] = set()
_SESSIONS: dict[str, list[RtspSession]] = {}
_SESSIONS_LOCK = threading.Lock()


def read_sound_of(url: str, wanted: bool = True) -> None:
    """Whether the sessions of `url` set up its sound beside its picture (`--audio` not off)."""
    with _SESSIONS_LOCK:
        if wanted:
            _SOUND.add(url)
        else:
            _SOUND.discard(url)


def parse_sdp_audio(sdp: str, base: str) -> tuple[AudioTrack | None, str | None]:
    """The audio track of an SDP description camtrack's reader reads, or None and why not (None:
    the description has no audio)."""
    sections, base = _sdp_sections(sdp, base)

    def resolve(control: str) -> str:
        return _resolve(base, control) if control and control != "*" else base

    try:
        return parse_audio(sections[1:], resolve), None
    except AudioUnsupported as exc:
        return None, str(exc)


class RtspSession:
    """One RTSP session of a camera, shared by the readers of its picture (`RtspSource`) and of its
    sound (`camtrack.sources.rtspaudio.RtspAudioSource`): a camera that allows one session gives
    both, and is asked once. Opened by the first reader (`acquire`), torn down after the last
    (`release`). Whichever reader waits reads the connection for all (`wait`): the picture's units
    go to the picture's queue while it has a reader, the sound's access units (with their capture
    times on the picture's timeline) to the sound's while it has one; what nobody reads is dropped
    uncopied. Both queues are bounded in bytes."""

    def __init__(self, url: str, *, sound: bool, open_timeout: float, read_timeout: float) -> None:
        self.url = url
        self.description = redact(url)
        self.sound = sound
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.connection: RtspConnection | None = None
        self.track: VideoTrack | None = None
        self.depacketizer: Depacketizer | None = None
        self.converter = H264Converter(None)
        self.time_base = fractions.Fraction(1, 90000)
        self.size = (0, 0)
        self.reorder: int | None = None
        self.reordered = False
        #: the sound's track (None: the camera has none, or it is not read: `audio_problem` says why)
        self.audio: AudioTrack | None = None
        self.audio_problem: str | None = None
        #: why the sound of this session was cut (a flood, garbage), while its picture goes on
        self.audio_fault: str | None = None
        self.audio_depacketizer: AudioDepacketizer | None = None
        self.timeline: Timeline | None = None
        self.audio_dropped = 0
        #: readers attached, and their kinds (at most one of each)
        self.users = 0
        self.claims: set[str] = set()
        self.video_readers = 0
        self.audio_readers = 0
        self.video: deque[SourcePacket] = deque()
        self.video_bytes = 0
        self.sounds: deque[tuple[float, int, list[bytes]]] = deque()
        self.sound_bytes = 0
        #: what ended the session (every reader then fails with it)
        self.error: BaseException | None = None
        self.opened = threading.Event()
        #: held while a queue and its byte count change (the pumping thread adds, each reader takes)
        self.queues = threading.Lock()
        self._pump = threading.Lock()
        self._cond = threading.Condition()
        self._channels: frozenset[int] = frozenset()
        self._first: int | None = None
        self._last: int | None = None
        self._extended = 0
        self._max_pts: int | None = None
        self._keepalive_at = 0.0
        self._channel = VIDEO_CHANNEL
        self._audio_channel = AUDIO_CHANNEL
        self._window_start = 0.0
        self._window_frames = 0
        self._window_bytes = 0
        self._audio_window = (0.0, 0, 0, 0)
        self._busy_since = 0.0
        self._busy = 0.0
        #: whether pictures went by unread (no picture reader): the next one starts at an IDR
        self._video_skipped = False
        self._restart_video = False

    # -- opening

    def open(self) -> None:
        connection = RtspConnection(self.url, open_timeout=self.open_timeout, read_timeout=self.read_timeout)
        self.connection = connection
        deadline = connection.deadline = time.monotonic() + self.open_timeout
        connection.connect()
        options = connection.request("OPTIONS", connection.url)
        connection.methods = {m.strip().upper() for m in options.header("public").split(",") if m.strip()}
        described = connection.request("DESCRIBE", connection.url, {"Accept": "application/sdp"})
        base = described.header("content-base") or described.header("content-location") or connection.url
        sdp = described.body.decode("utf-8", "replace")
        track = parse_sdp(sdp, base)
        setup = connection.request("SETUP", track.control, {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"})
        connection.keep_session(setup)
        transport = setup.header("transport")
        if "interleaved" not in transport.lower() and "tcp" not in transport.lower():
            raise RtspUnsupported(f"the camera answered SETUP with transport {transport[:60]!r}, not TCP")
        interleaved = re.search(r"interleaved\s*=\s*(\d+)", transport)
        self._channel = int(interleaved.group(1)) if interleaved else VIDEO_CHANNEL
        if self.sound:
            self._setup_audio(connection, sdp, base)
        # aggregate control: PLAY names the presentation (the base URL), not the track
        connection.request("PLAY", base, {"Range": "npt=0.000-"})
        self.track, self.depacketizer = track, Depacketizer(track.payload_type)
        self.time_base = fractions.Fraction(1, track.clock_rate)
        channels = {self._channel, self._channel + 1}
        if self.audio is not None:
            channels |= {self._audio_channel, self._audio_channel + 1}
            self.timeline = Timeline(track.clock_rate, self.audio.clock_rate)
            self.audio_depacketizer = AudioDepacketizer(self.audio)
        self._channels = frozenset(channels)
        now = time.monotonic()
        self._window_start, self._audio_window = now, (now, 0, 0, 0)
        self._keepalive_at = now + connection.session_timeout / 2
        for nal in track.parameter_sets:
            self.learn(nal)
        # the size comes from an SPS: from the description, else from the stream's first ones
        while self.converter.sps is None:
            if time.monotonic() > deadline:
                raise RtspError("no H.264 parameter sets within the open timeout")
            self._read_batch(video=True)
            while self.video and self.converter.sps is None:
                self.video.popleft()  # before any SPS: nothing a viewer could decode
        connection.deadline = None  # open: from now on each read has read_timeout

    def _setup_audio(self, connection: RtspConnection, sdp: str, base: str) -> None:
        """SETUP the sound in the same session (interleaved on 2-3); a camera that refuses it, or a
        sound camtrack does not read, leaves the picture alone (`audio_problem` says why)."""
        audio, problem = parse_sdp_audio(sdp, base)
        if audio is None:
            self.audio_problem = problem
            return
        try:
            answer = connection.request("SETUP", audio.control,
                                        {"Transport": f"RTP/AVP/TCP;unicast;interleaved={AUDIO_CHANNEL}-{AUDIO_CHANNEL + 1}"})
        except RtspUnsupported:
            raise
        except RtspError as exc:
            self.audio_problem = f"the camera refused to set up its sound in the picture's session ({exc})"
            logger.info("%s: %s", self.description, self.audio_problem)
            return
        transport = answer.header("transport")
        interleaved = re.search(r"interleaved\s*=\s*(\d+)", transport)
        channel = int(interleaved.group(1)) if interleaved else AUDIO_CHANNEL
        if channel in (self._channel, self._channel + 1) or "tcp" not in transport.lower() and not interleaved:
            self.audio_problem = f"the camera answered the sound's SETUP with transport {transport[:60]!r}"
            return
        self._audio_channel, self.audio = channel, audio

    def learn(self, nal: bytes) -> None:
        if nal_type(nal) != NAL_SPS:
            self.converter.convert_nals([nal])
            return
        try:
            info = parse_sps(nal)
        except ValueError as exc:
            logger.debug("%s: unreadable SPS (%s)", self.description, exc)
            return
        # a size beyond the limits is refused here (SizeRefused), before anything is made at it;
        # an in-band SPS changing the size is checked again, as each one comes
        check_size(info.width, info.height, "the camera's SPS")
        self.converter.convert_nals([nal])
        self.size, self.reorder = (info.width, info.height), info.max_reorder_frames

    # -- reading, for whichever reader waits

    def wait(self, ready: Callable[[], bool], interrupted: threading.Event) -> None:
        """Until `ready()` (the caller's queue has something), the session failed (raised), or the
        caller is interrupted (returns): reading the connection itself while no other reader does."""
        while not ready():
            if interrupted.is_set():
                return
            if self.error is not None:
                raise self.error
            if self._pump.acquire(blocking=False):
                spent, now = 0.0, time.monotonic()
                try:
                    if not ready() and self.error is None:
                        cpu = time.thread_time()
                        now = self._read_batch(video=self.video_readers > 0)
                        spent = time.thread_time() - cpu
                except BaseException as exc:
                    self.error = exc
                    _forget(self)
                    raise
                finally:
                    self._pump.release()
                    with self._cond:
                        self._cond.notify_all()
                self._pace(now, spent)
            else:
                with self._cond:
                    if not ready() and self.error is None and self._pump.locked() and not interrupted.is_set():
                        self._cond.wait(0.1)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _read_batch(self, *, video: bool) -> float:
        """One batch of packets read and handed out; the time.monotonic() it was read at."""
        if video and self._restart_video and self.track is not None:
            self._restart_video = self._video_skipped = False
            self.depacketizer = Depacketizer(self.track.payload_type)
            with self.queues:
                self.video.clear()
                self.video_bytes = 0
        connection, depacketizer = self.connection, self.depacketizer
        if connection is None or depacketizer is None:
            raise RtspError("not open")
        timeline = self.timeline
        if timeline is None:
            # no sound in this session: the picture's channel alone (its RTCP and the rest left uncopied)
            pictures, frames, size = connection.read_frames(self._channel)
            now = self._after_read(connection, frames, size)
            if not video:
                self._video_skipped = True
                return now
            for data in pictures:
                units = depacketizer.push(data)
                if units:
                    self._video(units)
            return now
        payloads, frames, size = connection.read_channels(self._channels)
        now = self._after_read(connection, frames, size)
        arrived = time.time()
        sound = self.audio_readers > 0 and self.audio_fault is None
        audio_packets = audio_bytes = 0
        bad_before = self.audio_depacketizer.bad if self.audio_depacketizer is not None else 0
        for channel, data in payloads:
            if channel == self._channel:
                if timeline is not None and len(data) >= 12 and data[1] & 0x80:
                    timeline.picture(int.from_bytes(data[4:8], "big"), arrived)
                if video:
                    units = depacketizer.push(data)
                    if units:
                        self._video(units)
                else:
                    self._video_skipped = True
            elif channel == self._audio_channel:
                audio_packets += 1
                audio_bytes += len(data)
                if sound:
                    self._sound(data, arrived)
            else:  # RTCP: the sender reports that put the sound on the picture's timeline
                clock = timeline.video if channel == self._channel + 1 else timeline.audio
                for _, ntp, rtp in sender_reports(data):
                    clock.report(ntp, rtp)
        if audio_packets:
            bad = (self.audio_depacketizer.bad if self.audio_depacketizer is not None else 0) - bad_before
            self._audio_guard(audio_packets, audio_bytes, bad, now)
        return now

    def _after_read(self, connection: RtspConnection, frames: int, size: int) -> float:
        """The flood guard and the keep-alive, after each read; the time.monotonic() of the read."""
        now = time.monotonic()
        self._guard(frames, size, now)
        if now >= self._keepalive_at:
            # some cameras end a session that only receives; GET_PARAMETER is the usual keep-alive
            connection.send_only("GET_PARAMETER" if "GET_PARAMETER" in connection.methods else "OPTIONS",
                                 connection.url)
            self._keepalive_at = now + connection.session_timeout / 2
        return now

    def _video(self, units: list[tuple[int, list[bytes]]]) -> None:
        depacketizer = self.depacketizer
        assert depacketizer is not None
        for timestamp, nals in units:
            for nal in nals:
                if nal_type(nal) == NAL_SPS:
                    self.learn(nal)
            payload, keyframe = self.converter.convert_nals(nals)
            if not payload:
                continue
            if self.video_bytes + len(payload) > MAX_VIDEO_QUEUE:
                # nobody took the pictures (a reader stuck elsewhere): not piled up; the next IDR starts over
                with self.queues:
                    self.video.clear()
                    self.video_bytes = 0
                depacketizer.lost += 1
                depacketizer._broken = True
                continue
            packet = SourcePacket(payload, self._pts(timestamp), self.time_base, keyframe)
            with self.queues:
                self.video.append(packet)
                self.video_bytes += len(payload)

    def _sound(self, data: bytes, arrived: float) -> None:
        depacketizer, timeline = self.audio_depacketizer, self.timeline
        assert depacketizer is not None and timeline is not None
        for timestamp, units in depacketizer.push(data):
            size = sum(len(u) for u in units) + 64 * len(units)
            captured = timeline.sound(timestamp, arrived)
            with self.queues:
                self.sounds.append((captured, timestamp, units))
                self.sound_bytes += size
                while self.sound_bytes > MAX_AUDIO_QUEUE and self.sounds:
                    _, _, old = self.sounds.popleft()
                    self.sound_bytes -= sum(len(u) for u in old) + 64 * len(old)
                    self.audio_dropped += 1

    def _audio_guard(self, packets: int, size: int, bad: int, now: float) -> None:
        """Cut the sound (never the picture) of a camera whose sound channel floods or is garbage."""
        start, count, total, broken = self._audio_window
        if now - start >= 1.0:
            start, count, total, broken = now, 0, 0, 0
        count, total, broken = count + packets, total + size, broken + bad
        self._audio_window = (start, count, total, broken)
        fault = None
        if count > MAX_AUDIO_PACKETS_PER_SECOND:
            fault = f"sound flood: more than {MAX_AUDIO_PACKETS_PER_SECOND} audio packets within a second"
        elif total > MAX_AUDIO_BYTES_PER_SECOND:
            fault = f"sound flood: more than {MAX_AUDIO_BYTES_PER_SECOND // 1024} KiB of audio within a second"
        elif broken > MAX_AUDIO_BAD_PER_SECOND:
            fault = f"broken sound: more than {MAX_AUDIO_BAD_PER_SECOND} malformed audio packets within a second"
        if fault is not None and self.audio_fault is None:
            self.audio_fault = f"{fault}; the sound of this session is cut, its picture goes on"
            logger.warning("%s: %s", self.description, self.audio_fault)
            with self.queues:
                self.sounds.clear()
                self.sound_bytes = 0
            self._channels = frozenset({self._channel, self._channel + 1})  # not even copied any more

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
        if self._max_pts is not None and pts < self._max_pts and not self.reordered:
            logger.info("%s: pictures come out of presentation order (B-frames)", self.description)
            self.reordered = True
        self._max_pts = pts if self._max_pts is None else max(self._max_pts, pts)
        return pts

    # -- readers coming and going

    def attach(self, kind: str) -> None:
        with self._cond:
            if kind == "video":
                if self.video_readers == 0 and self._video_skipped:
                    # a picture reader joining a session that read none: from the next IDR (done
                    # by the thread that reads the connection, at its next batch)
                    self._restart_video = True
                self.video_readers += 1
            else:
                if self.audio_readers == 0:
                    with self.queues:
                        self.sounds.clear()
                        self.sound_bytes = 0
                self.audio_readers += 1

    def detach(self, kind: str) -> None:
        with self._cond:
            if kind == "video":
                self.video_readers -= 1
            else:
                self.audio_readers -= 1

    def close(self, interrupted: bool) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        if connection.session and not interrupted and self.error is None:
            try:
                connection.send_only("TEARDOWN", connection.url)
            except OSError:
                pass  # the camera is gone already
        connection.close()


def _forget(session: RtspSession) -> None:
    """A failed session is not handed to the next reader (it opens a new one)."""
    with _SESSIONS_LOCK:
        sessions = _SESSIONS.get(session.url, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            _SESSIONS.pop(session.url, None)


def acquire(url: str, kind: str, *, open_timeout: float, read_timeout: float) -> RtspSession:
    """An open session of `url` for a reader of `kind` ("video" or "audio"): one whose other reader
    has it (a session has at most one reader of each kind: a second picture reader, the capture
    beside the passthrough, gets a session of its own), else a new one (opened here; a reader of
    the other kind meanwhile waits for it)."""
    with _SESSIONS_LOCK:
        sessions = _SESSIONS.setdefault(url, [])
        session = next((s for s in sessions if s.error is None and kind not in s.claims), None)
        opener = session is None
        if session is None:
            session = RtspSession(url, sound=url in _SOUND, open_timeout=open_timeout, read_timeout=read_timeout)
            sessions.append(session)
        session.users += 1
        session.claims.add(kind)
    if opener:
        try:
            session.open()
        except BaseException as exc:
            session.error = exc
            session.opened.set()
            release(session, interrupted=True, kind=kind)
            raise
        session.opened.set()
    elif not session.opened.wait(open_timeout + 1.0) or session.error is not None:
        release(session, interrupted=True, kind=kind)
        error = session.error
        if isinstance(error, RtspError):
            raise type(error)(str(error))
        raise RtspError(f"the camera's session did not open ({error or 'timed out'})")
    session.attach(kind)
    return session


def release(session: RtspSession, *, interrupted: bool = False, kind: str) -> None:
    """A reader of `kind` is done with `session`; the last one tears it down."""
    attached = kind == "video" and session.video_readers > 0 or kind == "audio" and session.audio_readers > 0
    if attached:
        session.detach(kind)
    with _SESSIONS_LOCK:
        session.claims.discard(kind)
        session.users -= 1
        last = session.users <= 0
    if last:
        _forget(session)
    session.wake()
    if last:
        session.close(interrupted)


# -- the source


class RtspSource:
    """Access units of an H.264 RTSP camera, read over TCP by camtrack itself (see the module's
    docstring); a camera it cannot read this way is read with PyAV (`DemuxSource`) instead. Its
    session is shared with the reader of the camera's sound (`RtspSession`)."""

    def __init__(self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 5.0) -> None:
        self.url = url
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.description = redact(url)
        self.live = True
        self.lost = 0
        #: why camtrack's reader left the camera to PyAV last (said once in the log)
        self._unsupported = ""
        self._session: RtspSession | None = None
        #: the session last opened (what it learnt of the picture outlives its closing)
        self._known: RtspSession | None = None
        self._interrupted = threading.Event()
        #: set by `stop`, for good (the interrupt is cleared at each open: the stall watch's)
        self._stopped = threading.Event()
        #: why the last read gave None (the stream ended), for the log and the camera's state
        self.end_reason: str | None = None
        #: PyAV's reader, once this camera turned out to need it
        self.fallback: DemuxSource | None = None

    @property
    def session(self) -> RtspSession | None:
        """The camera's session this reader reads (shared with its sound's reader)."""
        return self._session

    @property
    def codec(self) -> CodecInfo:
        if self.fallback is not None:
            return self.fallback.codec
        session = self._known
        converter = session.converter if session is not None else H264Converter(None)
        size = session.size if session is not None else (0, 0)
        time_base = session.time_base if session is not None else fractions.Fraction(1, 90000)
        sps = converter.sps
        return CodecInfo("h264", size[0], size[1], time_base,
                         profile_level_id(sps) if sps is not None else None, converter.parameter_sets)

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
        session = self._known
        if session is not None and (session.reordered or (session.reorder or 0) > 0):
            return "the H.264 has B-frames"
        return None

    def open(self) -> None:
        # each opening tries camtrack's own reader first: a camera that needed PyAV once (a
        # description it could not read) is not left to PyAV for the rest of the feed's run
        self.close()
        self.fallback = None
        self._interrupted.clear()
        if self._stopped.is_set():  # (after the clear: a stop from now on interrupts this open)
            raise RtspError("stopped before it opened")
        self.end_reason = None
        try:
            self._session = self._known = acquire(self.url, "video", open_timeout=self.open_timeout,
                                                  read_timeout=self.read_timeout)
            if self._interrupted.is_set():
                raise RtspError("interrupted")
        except RtspUnsupported as exc:
            self.close()
            if str(exc) != self._unsupported:  # said once, not at every reopening
                logger.info("%s: %s; reading it with PyAV instead", self.description, exc)
                self._unsupported = str(exc)
            self.fallback = DemuxSource(self.url, rtsp_transport="tcp", open_timeout=self.open_timeout,
                                        read_timeout=self.read_timeout)
            if self._stopped.is_set():  # (a stop that came while it was made)
                self.fallback.stop()
            self.fallback.open()
        except BaseException:
            self.close()
            raise

    def read(self) -> SourcePacket | None:
        """The next access unit, as soon as its last packet is in; None when the camera ended."""
        if self.fallback is not None:
            return self.fallback.read()
        session = self._session
        if session is None:
            raise RtspError("not open")
        queue = session.video
        try:
            session.wait(lambda: bool(queue), self._interrupted)
        except EOFError as exc:
            self.end_reason = str(exc) or "the camera closed the connection"
            return None
        except OSError:
            if self._interrupted.is_set():
                return None
            raise
        if not queue or self._interrupted.is_set():
            return None
        with session.queues:
            packet = queue.popleft()
            session.video_bytes -= len(packet.data)
        if session.depacketizer is not None:
            self.lost = session.depacketizer.lost
        return packet

    def stop(self) -> None:
        """Stop for good (from any thread; the feed's run stopping): `interrupt`, and any later open
        raises at once. A run makes its source anew; `interrupt` alone (the stall watch's) lets the
        source open again."""
        self._stopped.set()
        fallback = self.fallback
        if fallback is not None:
            fallback.stop()
        self.interrupt()

    def interrupt(self) -> None:
        self._interrupted.set()
        fallback = self.fallback  # (once: open, on the reader's thread, may set it meanwhile)
        if fallback is not None:
            fallback.interrupt()
        session = self._session
        if session is not None:
            session.wake()
            connection = session.connection
            if connection is not None and session.users <= 1:
                connection.interrupt()  # (a session the sound reads too goes on)

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
        session, self._session = self._session, None
        if session is not None:
            release(session, interrupted=self._interrupted.is_set(), kind="video")
