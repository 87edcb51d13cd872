"""One settings object for the whole server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CODECS = ("h264", "vp8")
ENCODERS = ("shared", "per-viewer")
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


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
    #: TLS certificate and key files; with both, the server speaks HTTPS/WSS
    cert: str | None = None
    key: str | None = None
    log_level: str = "info"
    static_dir: Path = STATIC_DIR

    def __post_init__(self) -> None:
        self.codec = self.codec.lower()
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if not 50_000 <= self.bitrate <= 50_000_000:
            raise ValueError(f"bitrate must be between 50000 and 50000000 bit/s, not {self.bitrate}")
        if self.keyframe_interval <= 0:
            raise ValueError("keyframe interval must be positive")
        if self.max_viewers < 0:
            raise ValueError("max viewers must be 0 (no limit) or more")
        if self.negotiation_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("time-outs must be positive")
        if bool(self.cert) != bool(self.key):
            raise ValueError("TLS needs both --cert and --key")
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even and positive, not {self.width}x{self.height}")
        if not 0 < self.fps <= 120:
            raise ValueError(f"fps must be between 0 and 120, not {self.fps}")
