"""RTSP 1.0 messages as camtrack's RTSP output reads and writes them (RFC 2326): requests, responses,
the Transport header, the token checks (Basic and Digest) and the SDP of a camera.

Nothing here does I/O: the server (camtrack.outputs.rtsp.server) hands it bytes and sends what it
returns."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from ...access import token_matches
from ...media.packet import CodecInfo

#: the longest request line and headers; RTSP requests are a few hundred bytes
MAX_HEAD = 8 * 1024
#: the longest request body (GET_PARAMETER and SET_PARAMETER may carry a few lines)
MAX_BODY = 4 * 1024
#: the most headers a request may have
MAX_HEADERS = 64
#: the realm of Basic and Digest challenges
REALM = "camtrack"
#: the methods this server answers (the Public header of OPTIONS)
METHODS = ("OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER")
#: methods of RTSP that this server knows but does not do (it serves, it does not record)
REFUSED_METHODS = ("ANNOUNCE", "RECORD", "REDIRECT")

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Request Entity Too Large",
    454: "Session Not Found", 455: "Method Not Valid in This State", 459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "RTSP Version Not Supported", 551: "Option not supported",
}

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class RtspRequestError(ValueError):
    """A request the server cannot use: answered with `status` and `reason` (a sentence)."""

    def __init__(self, status: int, reason: str, *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: the connection cannot go on (the message boundaries are lost)
        self.close = close
        #: headers the answer carries (Allow, Unsupported)
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def cseq(self) -> str | None:
        value = self.headers.get("cseq")
        return value if value is not None and value.strip().isdigit() and len(value.strip()) <= 10 else None


def parse_head(head: bytes) -> Request:
    """The request line and headers (`head`, ending with the empty line); RtspRequestError if malformed."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise RtspRequestError(400, "the request is not UTF-8 text", close=True) from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise RtspRequestError(400, "an empty request", close=True)
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise RtspRequestError(400, "the request line must be METHOD URL RTSP/1.0", close=True)
    method, url, version = parts
    if not _TOKEN.match(method):
        raise RtspRequestError(400, "the method is not a word", close=True)
    if version != "RTSP/1.0":
        if version.startswith("HTTP/"):
            raise RtspRequestError(400, "this is the RTSP port: HTTP is served on the web port", close=True)
        raise RtspRequestError(505, "only RTSP/1.0 is spoken here", close=True)
    if len(lines) - 1 > MAX_HEADERS:
        raise RtspRequestError(400, f"more than {MAX_HEADERS} headers", close=True)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name.strip()) or name != name.strip():
            raise RtspRequestError(400, "a header line is not NAME: VALUE", close=True)
        if not value.strip().isprintable() and value.strip():
            raise RtspRequestError(400, f"the {name} header has control characters", close=True)
        headers[name.lower()] = value.strip()
    request = Request(method, url, headers)
    if request.cseq is None:
        raise RtspRequestError(400, "the request has no CSeq (a number)")
    return request


def content_length(request: Request) -> int:
    value = request.header("content-length", "0")
    if not value.isdigit() or len(value) > 9:
        raise RtspRequestError(400, "Content-Length is not a number", close=True)
    length = int(value)
    if length > MAX_BODY:
        raise RtspRequestError(413, f"a request body may be at most {MAX_BODY} bytes", close=True)
    return length


def response(status: int, cseq: str | None, headers: dict[str, str] | None = None, body: bytes = b"",
             content_type: str = "text/plain; charset=utf-8") -> bytes:
    """A response: its status line, CSeq (if the request had one), headers and body."""
    lines = [f"RTSP/1.0 {status} {REASONS.get(status, 'Error')}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines.append("Server: camtrack")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error(status: int, cseq: str | None, reason: str, headers: dict[str, str] | None = None) -> bytes:
    """An error response whose body says why, in one line."""
    return response(status, cseq, headers, (reason.rstrip(".") + "\n").encode())


@dataclass
class Target:
    """What a request URL names: a camera, and whether it names its (only) track."""

    name: str
    track: bool
    query: dict[str, list[str]] = field(default_factory=dict)


def parse_url(url: str, prefix: str) -> Target | None:
    """The camera an RTSP URL (rtsp://host:port/PREFIX NAME[/trackID=0]) names, else None ("*": OPTIONS)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("rtsp", "rtspt", ""):
        return None
    path = parts.path
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix):]
    name, slash, tail = rest.partition("/")
    track = False
    if slash and tail not in ("", "trackID=0", "track0"):
        return None
    if tail:
        track = True
    return Target(name, track, parse_qs(parts.query, max_num_fields=8))


@dataclass
class TransportSpec:
    """One transport of a SETUP's Transport header that this server can use."""

    tcp: bool
    #: TCP: the interleaved channels (RTP, RTCP)
    channels: tuple[int, int] = (0, 1)
    #: UDP: the client's ports (RTP, RTCP)
    client_ports: tuple[int, int] = (0, 0)


def parse_transport(header: str) -> TransportSpec:
    """The first transport of a Transport header this server can serve: RTP/AVP unicast over UDP
    or RTP/AVP/TCP interleaved. RtspRequestError(461) when none is."""
    if not header:
        raise RtspRequestError(461, "SETUP needs a Transport header")
    said = []
    for spec in header.split(",")[:8]:
        params = [p.strip() for p in spec.strip().split(";")]
        profile = params[0].upper()
        values: dict[str, str] = {}
        for param in params[1:]:
            key, _, value = param.partition("=")
            values[key.lower()] = value
        if "multicast" in values:
            said.append("multicast")
            continue
        if "mode" in values and values["mode"].strip('"').upper() not in ("PLAY", ""):
            said.append(f"mode {values['mode'][:20]}")
            continue
        if profile == "RTP/AVP/TCP":
            channels = _pair(values.get("interleaved", "0-1"), 0, 255)
            if channels is None:
                said.append("bad interleaved channels")
                continue
            return TransportSpec(True, channels=channels)
        if profile in ("RTP/AVP", "RTP/AVP/UDP"):
            ports = _pair(values.get("client_port", ""), 1, 65535)
            if ports is None:
                said.append("no client_port")
                continue
            return TransportSpec(False, client_ports=ports)
        said.append(profile[:30] or "no profile")
    raise RtspRequestError(461, "no usable transport (" + ", ".join(said) + "): this server sends RTP/AVP "
                           "over UDP unicast (client_port=N-M) or RTP/AVP/TCP interleaved")


def _pair(value: str, low: int, high: int) -> tuple[int, int] | None:
    first, dash, second = value.partition("-")
    if not first.isdigit() or len(first) > 5 or (dash and (not second.isdigit() or len(second) > 5)):
        return None
    a = int(first)
    b = int(second) if dash else a + 1
    if not (low <= a <= high and low <= b <= high):
        return None
    return a, b


# ---- who may watch ----------------------------------------------------------------------------


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def challenges(nonce: str, stale: bool = False) -> list[str]:
    """The WWW-Authenticate headers of a 401: Digest first (the token never travels), then Basic."""
    return [f'Digest realm="{REALM}", nonce="{nonce}"' + (", stale=TRUE" if stale else ""),
            f'Basic realm="{REALM}"']


def _digest_params(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in re.finditer(r'([A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)', value[:2048]):
        key, raw = match.group(1).lower(), match.group(2)
        params[key] = raw[1:-1] if raw.startswith('"') else raw
    return params


@dataclass
class Verdict:
    """Whether a request's credentials hold the token: `ok`, or why not; `stale` for an old nonce."""

    ok: bool
    why: str = ""
    stale: bool = False


def check_credentials(token: str, request: Request, nonce: str) -> Verdict:
    """Whether `request` proves it knows `token`: Basic with the token as password (any user name),
    Digest (RFC 2617 without qop, as live555, FFmpeg and GStreamer do it) of the token with
    `nonce` (the connection's), or `?token=` in its URL."""
    query = parse_qs(urlsplit(request.url).query, max_num_fields=8).get("token")
    if token and query and token_matches(token, query[0]):
        return Verdict(True)
    authorization = request.header("authorization")
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if not authorization:
        return Verdict(False, "no credentials")
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Verdict(False, "malformed Basic credentials")
        _, _, password = decoded.partition(":")
        return Verdict(True) if token and token_matches(token, password) else Verdict(False, "wrong token")
    if scheme == "digest":
        params = _digest_params(value)
        user, uri, given = params.get("username"), params.get("uri"), params.get("response", "")
        if user is None or uri is None or params.get("realm") != REALM:
            return Verdict(False, "malformed Digest credentials")
        if not hmac.compare_digest(params.get("nonce", "").encode(), nonce.encode()):
            return Verdict(False, "an old nonce", stale=True)
        expected = _md5(f"{_md5(f'{user}:{REALM}:{token}')}:{nonce}:{_md5(f'{request.method}:{uri}')}")
        if "qop" in params:  # (not offered; a client that does it anyway, RFC 2617 qop=auth)
            expected = _md5(f"{_md5(f'{user}:{REALM}:{token}')}:{nonce}:{params.get('nc', '')}:"
                            f"{params.get('cnonce', '')}:{params['qop']}:{_md5(f'{request.method}:{uri}')}")
        return Verdict(True) if hmac.compare_digest(expected.encode(), given.lower().encode()) \
            else Verdict(False, "wrong token")
    return Verdict(False, "an unknown authorization scheme")


# ---- what a camera sends ----------------------------------------------------------------------

#: the dynamic RTP payload type of every camera's video
PAYLOAD_TYPE = 96


def parameter_sets(keyframe: bytes) -> list[bytes]:
    """The SPS and PPS NAL units of an Annex-B H.264 keyframe (camtrack sends them before every IDR)."""
    found: list[bytes] = []
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", keyframe[:65536])]
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(keyframe)
        nal = keyframe[start:end].rstrip(b"\x00")
        if nal and nal[0] & 0x1F in (7, 8):
            found.append(nal)
        elif nal and nal[0] & 0x1F in (1, 5):
            break
    return found


def sdp(name: str, codec: CodecInfo, keyframe: bytes | None, session_id: int, address: str) -> bytes:
    """The session description of a camera (DESCRIBE): one video track, control trackID=0."""
    family = "IP6" if ":" in address else "IP4"
    lines = ["v=0", f"o=- {session_id} 1 IN {family} {address}", f"s=camtrack {name}",
             f"c=IN {family} {'::' if family == 'IP6' else '0.0.0.0'}", "t=0 0", "a=tool:camtrack",
             "a=control:*", "a=range:npt=now-", f"m=video 0 RTP/AVP {PAYLOAD_TYPE}"]
    if codec.codec == "vp8":
        lines.append(f"a=rtpmap:{PAYLOAD_TYPE} VP8/90000")
    else:
        sets = parameter_sets(keyframe) if keyframe is not None else [
            p.lstrip(b"\x00").removeprefix(b"\x01") for p in codec.parameter_sets]
        fmtp = ["packetization-mode=1"]
        sps = next((s for s in sets if s[0] & 0x1F == 7), None)
        if sps is not None and len(sps) >= 4:
            fmtp.append(f"profile-level-id={sps[1:4].hex()}")
        elif codec.profile_level_id:
            fmtp.append(f"profile-level-id={codec.profile_level_id}")
        if sets:
            fmtp.append("sprop-parameter-sets=" + ",".join(base64.b64encode(s).decode() for s in sets))
        lines.append(f"a=rtpmap:{PAYLOAD_TYPE} H264/90000")
        lines.append(f"a=fmtp:{PAYLOAD_TYPE} " + ";".join(fmtp))
    if codec.width and codec.height:
        lines.append(f"a=x-dimensions:{codec.width},{codec.height}")
    lines.append("a=control:trackID=0")
    return ("\r\n".join(lines) + "\r\n").encode()
