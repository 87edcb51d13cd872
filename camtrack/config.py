"""One settings object for the whole server."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CODECS = ("h264", "vp8")
ENCODERS = ("shared", "per-viewer")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: the page: static/ in a checkout, camtrack/static in an installed wheel
STATIC_DIR = next((p for p in (Path(__file__).resolve().parent.parent / "static",
                               Path(__file__).resolve().parent / "static") if (p / "index.html").is_file()),
                  Path(__file__).resolve().parent.parent / "static")


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
        if not NAME.match(self.name):
            raise ValueError(f"camera name {self.name!r} must be letters, digits, '-' or '_'")
        self.codec = self.codec.lower()
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")

        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even and positive, not {self.width}x{self.height}")
        if not 0 < self.fps <= 120:
            raise ValueError(f"fps must be between 0 and 120, not {self.fps}")
        if not 50_000 <= self.bitrate <= 50_000_000:
            raise ValueError(f"bitrate must be between 50000 and 50000000 bit/s, not {self.bitrate}")
        if self.keyframe_interval <= 0:
            raise ValueError("keyframe interval must be positive")
        if self.max_viewers < 0:
            raise ValueError("max viewers must be 0 (no limit) or more")
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
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.max_viewers < 0:
            raise ValueError("max viewers must be 0 (no limit) or more")
        if self.negotiation_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("time-outs must be positive")
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS needs both --cert and --key")
        if not 0 < self.mjpeg_fps <= 120:
            raise ValueError(f"MJPEG fps must be between 0 and 120, not {self.mjpeg_fps}")
        if not 1 <= self.jpeg_quality <= 100:
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
