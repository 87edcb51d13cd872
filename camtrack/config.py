"""One settings object for the whole server."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

CODECS = ("h264", "vp8")
ENCODERS = ("shared", "per-viewer")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: the largest frame: 8K UHD
MAX_WIDTH, MAX_HEIGHT = 7680, 4320
#: the longest interval or time-out in seconds: longer ones are typos, not intentions
MAX_SECONDS = 3600.0
#: more viewers than this is not a home camera server (and each costs a socket, the fd limit is ~1024)
MAX_VIEWERS = 10_000
#: the page: static/ in a checkout, camtrack/static in an installed wheel
STATIC_DIR = next((p for p in (Path(__file__).resolve().parent.parent / "static",
                               Path(__file__).resolve().parent / "static") if (p / "index.html").is_file()),
                  Path(__file__).resolve().parent.parent / "static")


def whole(what: str, value: object) -> int:
    """`value` if it is an int (a bool is not one: TOML `true` must not pass as 1), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return value


def real(what: str, value: object) -> float:
    """`value` if it is a finite int or float, else ValueError (nan and inf pass every comparison test)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return value


def text(what: str, value: object, optional: bool = False) -> str | None:
    """`value` if it is a string (or None when `optional`), else ValueError."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    return value


def strings(what: str, value: object) -> list[str]:
    """`value` if it is a list of strings, else ValueError."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of strings, not {value!r}")
    return value


def seconds(what: str, value: object, positive: bool = True) -> float:
    """A finite duration, more than 0 (or at least 0 unless `positive`), at most MAX_SECONDS."""
    value = real(what, value)
    if not (value > 0 if positive else value >= 0) or value > MAX_SECONDS:
        raise ValueError(f"{what} must be {'positive' if positive else '0 or more'} and at most "
                         f"{MAX_SECONDS:g} s, not {value!r}")
    return value


@dataclass
class CameraConfig:
    """One camera: its name (in URLs), its source and how it is encoded."""

    name: str
    source: str
    width: int = 640
    height: int = 480
    fps: float = 30.0
    codec: str = "h264"
    bitrate: int = 1_000_000
    keyframe_interval: float = 2.0
    #: at most this many viewers of this camera at once, over every transport; 0: no limit
    max_viewers: int = 0
    #: publish to a Janus VideoRoom: "janus:http://HOST:8088/janus", its room, pin and display name
    publish: str | None = None
    janus_room: int | None = None
    janus_pin: str | None = None
    janus_display: str | None = None

    def __post_init__(self) -> None:
        # types first: a TOML file can put any type anywhere, and a wrong one must not reach a comparison
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ValueError(f"camera name {self.name!r} must be letters, digits, '-' or '_'")
        if not text("source", self.source):
            raise ValueError("source must not be empty")
        self.codec = text("codec", self.codec).lower()
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        width, height = whole("width", self.width), whole("height", self.height)
        if not (0 < width <= MAX_WIDTH and 0 < height <= MAX_HEIGHT) or width % 2 or height % 2:
            raise ValueError(f"width and height must be even and positive, at most {MAX_WIDTH}x{MAX_HEIGHT}, "
                             f"not {width}x{height}")
        # below 0.1 fps the pacer sleeps for minutes and the page looks dead
        if not 0.1 <= real("fps", self.fps) <= 120:
            raise ValueError(f"fps must be between 0 and 120 (at least 0.1), not {self.fps}")
        if not 50_000 <= whole("bitrate", self.bitrate) <= 50_000_000:
            raise ValueError(f"bitrate must be between 50000 and 50000000 bit/s, not {self.bitrate}")
        if not 0 < real("keyframe interval", self.keyframe_interval) <= 600:
            raise ValueError(f"keyframe interval must be positive and at most 600 s, not {self.keyframe_interval}")
        if not 0 <= whole("max viewers", self.max_viewers) <= MAX_VIEWERS:
            raise ValueError(f"max viewers must be 0 (no limit) or more, at most {MAX_VIEWERS}, not {self.max_viewers}")
        text("publish", self.publish, optional=True)
        text("janus pin", self.janus_pin, optional=True)
        text("janus display", self.janus_display, optional=True)
        # Janus keeps room ids as signed 64-bit integers and has no room 0
        if self.janus_room is not None and not 0 < whole("janus room", self.janus_room) < 2**63:
            raise ValueError(f"janus room must be between 1 and {2**63 - 1}, not {self.janus_room}")
        if self.publish is not None:
            if not self.publish.startswith("janus:http"):
                raise ValueError(f"publish must look like janus:http://HOST:8088/janus, not {self.publish!r}")
            if self.janus_room is None:
                raise ValueError("publishing to Janus needs a room (--janus-room)")

    @property
    def janus_url(self) -> str | None:
        """The Janus HTTP API address of `publish`."""
        return self.publish.removeprefix("janus:") if self.publish else None


@dataclass
class Config:
    """Everything a camtrack server is built from; `create_app(config)` reads nothing else."""

    host: str = "0.0.0.0"
    port: int = 8080
    source: str = "auto"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    codec: str = "h264"
    #: "shared": one encoder for every viewer; "per-viewer": aiortc encodes for each
    encoder: str = "shared"
    #: target bitrate of the shared encoder, bits per second
    bitrate: int = 1_000_000
    #: seconds between periodic keyframes of the shared encoder
    keyframe_interval: float = 2.0
    ice_servers: list[str] = field(default_factory=list)
    ice_addresses: list[str] = field(default_factory=list)
    #: seconds a source stays open after its last viewer leaves
    linger: float = 3.0
    #: seconds a peer may stay "disconnected" before it is closed
    disconnect_timeout: float = 10.0
    #: at most this many viewers (websockets) at once; 0 means no limit
    max_viewers: int = 0
    #: seconds a peer may take to reach "connected" before it is closed
    negotiation_timeout: float = 15.0
    #: seconds a websocket may stay open with no peer (and say nothing useful) before it is closed
    idle_timeout: float = 30.0
    #: when set, watching needs this token (?token=, an "auth" message, or a bearer header)
    token: str | None = None
    #: origins, besides the server's own, whose pages may open the websocket ("*" for any)
    allow_origins: list[str] = field(default_factory=list)
    #: names, besides the machine's own names and addresses, that requests may carry in Host ("*" for any)
    allow_hosts: list[str] = field(default_factory=list)
    #: TLS certificate and key files; with both, the server speaks HTTPS/WSS
    cert: str | None = None
    key: str | None = None
    #: publish every camera to Janus (cameras may override): see CameraConfig
    publish: str | None = None
    janus_room: int | None = None
    janus_pin: str | None = None
    janus_display: str | None = None
    #: the cameras; when empty, one camera named "default" from the fields above
    cameras: list[CameraConfig] = field(default_factory=list)
    #: most frames a second an MJPEG client gets, and the JPEG quality it gets unless it asks
    mjpeg_fps: float = 15.0
    jpeg_quality: int = 80
    log_level: str = "info"
    static_dir: Path = STATIC_DIR
    #: most HTTP connections open at once; 0: half the open-file limit (camtrack.connections)
    max_connections: int = 0
    #: seconds a client has to send a request's headers (or a WHEP offer's body); idle keep-alive too
    header_timeout: float = 10.0
    #: most sessions that are not viewers yet (a websocket without a connected peer, a WHEP offer
    #: not connected yet); one more closes the oldest of the client with the most of them
    max_pending: int = 64

    def __post_init__(self) -> None:
        # the per-camera settings are checked by CameraConfig, the default camera's included
        text("host", self.host)
        # 0 asks the system for a free port (tests do); the command line insists on 1..65535
        if not 0 <= whole("port", self.port) <= 65535:
            raise ValueError(f"port must be between 1 and 65535, not {self.port}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        strings("ice servers", self.ice_servers)
        strings("ice addresses", self.ice_addresses)
        strings("allowed origins", self.allow_origins)
        strings("allowed hosts", self.allow_hosts)
        if not 0 <= whole("max connections", self.max_connections) <= 1_000_000:
            raise ValueError(f"max connections must be 0 (from the open-file limit) to 1000000, not {self.max_connections}")
        seconds("header timeout", self.header_timeout)
        if not 1 <= whole("max pending", self.max_pending) <= 100_000:
            raise ValueError(f"max pending must be between 1 and 100000, not {self.max_pending}")
        seconds("linger", self.linger, positive=False)
        seconds("disconnect timeout", self.disconnect_timeout)
        seconds("negotiation timeout", self.negotiation_timeout)
        seconds("idle timeout", self.idle_timeout)
        if not 0 <= whole("max viewers", self.max_viewers) <= MAX_VIEWERS:
            raise ValueError(f"max viewers must be 0 (no limit) or more, at most {MAX_VIEWERS}, not {self.max_viewers}")
        # an empty token would silently mean "no token"; whitespace cannot travel in a bearer header
        if text("token", self.token, optional=True) is not None and (
                not self.token or not self.token.isprintable() or any(c.isspace() for c in self.token)):
            raise ValueError("token must be a non-empty string without spaces or control characters")
        text("cert", self.cert, optional=True)
        text("key", self.key, optional=True)
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS needs both --cert and --key")
        if not 0.1 <= real("MJPEG fps", self.mjpeg_fps) <= 120:
            raise ValueError(f"MJPEG fps must be between 0.1 and 120, not {self.mjpeg_fps}")
        if not 1 <= whole("JPEG quality", self.jpeg_quality) <= 100:
            raise ValueError(f"JPEG quality must be between 1 and 100, not {self.jpeg_quality}")
        if not self.cameras:
            self.cameras = [self.camera("default", self.source)]
        if self.encoder != "shared" and any(c.publish for c in self.cameras):
            raise ValueError("publishing to Janus sends the shared encoder's packets: use --encoder shared")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must differ: {', '.join(names)}")

    def camera(self, name: str, source: str, **settings) -> CameraConfig:
        """A camera with this server's defaults for whatever `settings` leaves out."""
        defaults = dict(width=self.width, height=self.height, fps=self.fps, codec=self.codec,
                        bitrate=self.bitrate, keyframe_interval=self.keyframe_interval, publish=self.publish,
                        janus_room=self.janus_room, janus_pin=self.janus_pin, janus_display=self.janus_display)
        return CameraConfig(name=name, source=source, **{**defaults, **settings})
