"""The cameras a server has: each one's stream, shared encoder, and who watches it over what."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from aiortc.mediastreams import MediaStreamTrack

from .config import CameraConfig, Config
from .media.encoder import EncoderSettings, SharedEncoder
from .sources import make_source, redact, resolve_auto
from .media.stream import CameraStream
from .outputs.webrtc.tracks import CameraTrack, EncodedTrack

#: the ways out: a websocket-negotiated peer, a WHEP peer, an MJPEG client
TRANSPORTS = ("websocket", "whep", "mjpeg")


@dataclass
class Meter:
    """What one transport has sent of one camera."""

    frames: int = 0
    bytes: int = 0
    negotiation_failures: int = 0


@dataclass
class Camera:
    """A named camera: its stream, its shared encoder (None when viewers encode for themselves),
    the viewers attached per transport, and their counters."""

    settings: CameraConfig
    #: the source spec, with `auto` resolved
    source: str
    stream: CameraStream
    encoder: SharedEncoder | None
    viewers: dict[str, set[object]] = field(default_factory=lambda: {t: set() for t in TRANSPORTS})
    meters: dict[str, Meter] = field(default_factory=lambda: {t: Meter() for t in (*TRANSPORTS, "janus")})
    #: MJPEG/snapshot encoders by JPEG quality, made on demand (camtrack.mjpeg)
    jpeg: dict[int, object] = field(default_factory=dict)
    #: the Janus publisher (camtrack.janus), when the camera is published
    publisher: object | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def viewer_count(self) -> int:
        return sum(len(v) for v in self.viewers.values())

    def make_track(self, transport: str) -> MediaStreamTrack:
        """A new video track of this camera for one WebRTC viewer."""
        if self.encoder is not None:
            return EncodedTrack(self.encoder, self.meters[transport])
        return CameraTrack(self.stream, self.meters[transport])

    def describe(self) -> dict:
        """The camera as /api/cameras and /healthz show it."""
        settings = self.settings
        return {
            "name": self.name,
            "source": redact(self.source),
            "state": self.stream.state,
            "width": settings.width,
            "height": settings.height,
            "fps": settings.fps,
            "codec": settings.codec,
            "bitrate": settings.bitrate,
            "viewers": {t: len(v) for t, v in self.viewers.items()},
            "opens": self.stream.opens,
        }

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        for jpeg in list(self.jpeg.values()):
            await jpeg.close()
        if self.encoder is not None:
            await self.encoder.close()
        await self.stream.close()


class Cameras:
    """All cameras of a server, in configured order, and the viewer limits across them."""

    def __init__(self, config: Config) -> None:
        self.max_viewers = config.max_viewers
        self.by_name: dict[str, Camera] = {}
        for settings in config.cameras:
            source = resolve_auto(settings.source)
            stream = CameraStream(
                settings.name,
                functools.partial(make_source, source, settings.width, settings.height, settings.fps),
                linger=config.linger,
            )
            encoder = None
            if config.encoder == "shared":
                encoder = SharedEncoder(stream, EncoderSettings(
                    codec=settings.codec, width=settings.width, height=settings.height, fps=settings.fps,
                    bitrate=settings.bitrate, keyframe_interval=settings.keyframe_interval))
            self.by_name[settings.name] = Camera(settings, source, stream, encoder)

    def __iter__(self):
        return iter(self.by_name.values())

    @property
    def first(self) -> Camera:
        return next(iter(self.by_name.values()))

    def get(self, name: str | None) -> Camera | None:
        """The named camera, or the first one when no name is given."""
        return self.first if name is None else self.by_name.get(name)

    @property
    def viewer_count(self) -> int:
        return sum(c.viewer_count for c in self)

    def has_room(self, camera: Camera) -> bool:
        """Whether one more viewer of `camera` fits the server's and the camera's limits."""
        if self.max_viewers and self.viewer_count >= self.max_viewers:
            return False
        return not (camera.settings.max_viewers and camera.viewer_count >= camera.settings.max_viewers)

    def admit(self, camera: Camera, transport: str, viewer: object) -> bool:
        """Count `viewer` in, unless the server or the camera is full."""
        if not self.has_room(camera):
            return False
        camera.viewers[transport].add(viewer)
        return True

    def leave(self, camera: Camera, transport: str, viewer: object) -> None:
        camera.viewers[transport].discard(viewer)

    async def close(self) -> None:
        for camera in self:
            await camera.close()
