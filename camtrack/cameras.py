"""The cameras a server has: each one's stream, its stages, and who watches it over what."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import CameraConfig, Config
from .media.admission import Limits, Refused, Snapshot, decide
from .media.decoder import PacketDecoder
from .media.encoder import EncoderSettings, SharedEncoder
from .media.feeds import VIEWER_TRANSPORTS, FrameFeed, PacketFeed, Publisher, Transport, Viewer
from .media.jpeg import JpegEncoders
from .media.load import LoadMonitor
from .media.meters import Meter
from .media.packet import MediaKind
from .media.passthrough import PassthroughFeed
from .media.reader import BridgedReader, PacketReader
from .media.stream import CameraStream
from .media.tiers import MAIN, Tier, Tiers
from .plan import CameraPlan, plan_camera
from .sources import make_packet_source, make_source, redact

logger = logging.getLogger(__name__)


@dataclass
class Camera:
    """A named camera: its stream and the stages that read it (the shared encoder, None when
    viewers encode for themselves; the JPEG encoders), the viewers attached per transport, and
    what each transport has sent."""

    settings: CameraConfig
    #: the source spec, with `auto` resolved
    source: str
    stream: CameraStream
    #: the shared encoder (None when viewers encode for themselves, or the camera's own packets pass through)
    encoder: SharedEncoder | None
    jpeg: JpegEncoders
    #: what WebRTC viewers and the Janus publisher get: the shared encoder's packets or the camera's own
    feed: SharedEncoder | PassthroughFeed | None = None
    #: pixels decoded from a passed-through feed, while MJPEG or snapshots need them
    decoder: PacketDecoder | None = None
    viewers: dict[Transport, set[Viewer]] = field(default_factory=lambda: {t: set() for t in VIEWER_TRANSPORTS})
    meters: dict[Transport, Meter] = field(default_factory=lambda: {t: Meter() for t in Transport})
    #: the Janus publisher (camtrack.outputs.janus), when the camera is published
    publisher: Publisher | None = None
    #: sessions of this camera that are not viewers yet (Cameras.hold)
    pending: int = 0
    #: the H.264 encoder (--video-encoder) of the join bridge, and the bridge while it exists
    video_encoder: str = "auto"
    bridge: SharedEncoder | None = None
    #: viewers that joined through the bridge (camtrack_join_bridge_joins)
    bridge_joins: int = 0
    #: the server's measured load (every camera shares it; set by Cameras)
    load: LoadMonitor | None = None
    #: its packet feeds by (kind, tier): `feed`, and the tiers of other codecs (set by Cameras)
    tiers: Tiers | None = None
    #: what it was built from (camtrack.plan; set by Cameras)
    plan: CameraPlan | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def viewer_count(self) -> int:
        return sum(len(v) for v in self.viewers.values())

    def packets(self, kind: MediaKind = MediaKind.VIDEO, tier: Tier = MAIN) -> PacketFeed | None:
        """The feed of this camera's `kind` packets of `tier` (camtrack.media.tiers): MAIN is `feed`;
        a tier of another codec is encoded from the camera's pictures, made the first time it is
        asked for and shared by all its viewers. None: no such packets (audio; MAIN with
        --encoder per-viewer)."""
        if self.tiers is None:
            return self.feed if kind == MediaKind.VIDEO and tier == MAIN else None
        return self.tiers.packets(kind, tier)

    def reader(self, transport: Transport, tier: Tier = MAIN) -> PacketReader:
        """A reader of this camera's packets of `tier` for one viewer over `transport`: the shared
        encoder's, or the camera's own (bridged while the viewer joins between the camera's
        keyframes), or a tier's encoder's."""
        feed = self.packets(MediaKind.VIDEO, tier)
        if isinstance(feed, PassthroughFeed):
            return BridgedReader(feed, self.join_bridge, self.meters[transport])
        if feed is None:
            raise ValueError(f"camera {self.name} has no shared packets (--encoder per-viewer)")
        return PacketReader(feed, self.meters[transport])

    def join_bridge(self) -> SharedEncoder | None:
        """The bridge for viewers joining a passed-through camera between its keyframes: its pictures
        decoded (from the newest keyframe, at once) and encoded again, starting with a keyframe of
        the live picture (camtrack.outputs.webrtc.bridge). Made at the camera's own size the first
        time it is needed; like every stage it runs only while a viewer reads it. None for a camera
        that is not passed through."""
        if not isinstance(self.feed, PassthroughFeed) or self.decoder is None:
            return None
        codec = self.feed.codec
        size = (codec.width, codec.height)
        if not all(size):
            return None  # nothing opened yet: no size to encode at
        bridge = self.bridge
        if bridge is None or ((bridge.settings.width, bridge.settings.height) != size and not bridge.running):
            self.bridge = bridge = SharedEncoder(self.decoder, EncoderSettings(
                codec="h264", width=size[0], height=size[1], fps=self.settings.fps, bitrate=self.settings.bitrate,
                keyframe_interval=self.settings.keyframe_interval, hardware=self.video_encoder))
        self.bridge_joins += 1
        return bridge

    @property
    def state(self) -> str:
        """The source's state: of the passthrough feed's reader while it runs, else of the stream's
        capture (`idle`, `starting`, `up`, `retrying`, `stalled`)."""
        feed = self.feed
        if isinstance(feed, PassthroughFeed) and feed.running:
            return feed.state
        return self.stream.state

    @property
    def error(self) -> str | None:
        """The reason of the source's last failure (None before any), whichever reader saw it."""
        feed = self.feed
        if isinstance(feed, PassthroughFeed) and (feed.running or feed.error is not None):
            return feed.error or self.stream.error
        return self.stream.error

    @property
    def opens(self) -> int:
        """Times its source was opened: by the passthrough feed's reader and by the capture (a
        passed-through camera's stream opens only if it has to be decoded by OpenCV)."""
        feed = self.feed
        return self.stream.runs + (feed.stats.opens if isinstance(feed, PassthroughFeed) else 0)

    @property
    def watched(self) -> bool:
        """Someone reads its source now, through the capture or the passthrough feed."""
        feed = self.feed
        return bool(self.stream.consumers) or (isinstance(feed, PassthroughFeed) and bool(feed.consumers))

    def describe(self) -> dict[str, Any]:
        """The camera as /api/cameras and /healthz show it."""
        settings = self.settings
        feed = self.feed if isinstance(self.feed, PassthroughFeed) else None
        return {
            "name": self.name,
            "source": redact(self.source),
            # a passed-through camera's state is its feed's while that runs (the stream is not opened)
            "state": self.state,
            #: the reason of the source's last failure (None before any)
            "error": self.error,
            #: why a passed-through camera is refused (its size, too large access units), else None
            "problem": feed.problem if feed is not None else None,
            "width": settings.width,
            "height": settings.height,
            "fps": settings.fps,
            "codec": settings.codec,
            "bitrate": settings.bitrate,
            "mode": ("passthrough" if isinstance(self.feed, PassthroughFeed)
                     else "transcode" if self.feed is not None else "per-viewer"),
            #: why that mode (camtrack.plan): "asked for", or what `auto` found
            "reason": self.plan.reason if self.plan is not None else None,
            "viewers": {str(t): len(v) for t, v in self.viewers.items()},
            "pending": self.pending,
            # WebRTC viewers closed for sending nothing (--unresponsive-timeout), over the server's life
            "unresponsive": sum(meter.unresponsive for meter in self.meters.values()),
            "opens": self.opens,
        }

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        await self.jpeg.close()
        if self.bridge is not None:
            await self.bridge.close()
        if self.tiers is not None:
            await self.tiers.close()
        if self.decoder is not None:
            await self.decoder.close()
        if self.encoder is not None:
            await self.encoder.close()
        if isinstance(self.feed, PassthroughFeed):
            await self.feed.close()
        await self.stream.close()


class Cameras:
    """All cameras of a server, in configured order, and the viewer limits across them.

    A viewer is a peer that connected, or an MJPEG client; the limits (--max-viewers and each
    camera's) count viewers only. A session that is not one yet (a websocket, a WHEP offer) is
    *pending*: pending sessions have their own bound, `max_pending`, and at that bound the
    oldest pending session of the client with the most of them is closed to make room. So
    sockets that never become viewers can neither lock viewers out nor pile up."""

    def __init__(self, config: Config, plans: Mapping[str, CameraPlan] | None = None) -> None:
        self.max_viewers = config.max_viewers
        self.max_pending = config.max_pending
        #: pending sessions, oldest first, with their camera
        self.pending: OrderedDict[Viewer, Camera] = OrderedDict()
        #: pending sessions closed to make room, over the server's life
        self.pending_evicted = 0
        self.load = LoadMonitor(Limits(config.max_loop_lag, config.send_budget, config.max_picture_age, config.max_cpu),
                                lambda: self.viewer_count)
        self.by_name: dict[str, Camera] = {}
        for settings in config.cameras:
            # the command line made the plan before the server started (cli.prepare_camera); an
            # embedding program's Config gets the same plan here
            plan = (plans or {}).get(settings.name) or plan_camera(settings, config)
            source, mode = plan.source, plan.mode
            stream = CameraStream(
                settings.name,
                functools.partial(make_source, source, settings.width, settings.height, settings.fps,
                                  rtsp_transport=settings.rtsp_transport, input_format=settings.input_format),
                linger=config.linger,
            )
            encoder = decoder = None
            feed: SharedEncoder | PassthroughFeed | None = None
            frames: FrameFeed = stream
            jpeg = JpegEncoders(stream, config.mjpeg_fps)
            if mode == "passthrough":
                # the camera's own H.264 for WebRTC; pixels for MJPEG and snapshots are decoded from
                # it, only while someone asks for them (the source is opened once either way)
                packets = functools.partial(make_packet_source, source, rtsp_transport=settings.rtsp_transport,
                                            input_format=settings.input_format, width=settings.width,
                                            height=settings.height, fps=settings.fps)
                feed = PassthroughFeed(settings.name, packets, linger=config.linger,
                                       size=(settings.width, settings.height))
                frames = decoder = PacketDecoder(feed, settings.name)
                jpeg = JpegEncoders(decoder, config.mjpeg_fps)
            elif config.encoder == "shared":
                feed = encoder = SharedEncoder(stream, EncoderSettings(
                    codec=settings.codec, width=settings.width, height=settings.height, fps=settings.fps,
                    bitrate=settings.bitrate, keyframe_interval=settings.keyframe_interval,
                    hardware=config.video_encoder))
            # tiers of another codec: at the configured size when transcoded, at the camera's own
            # (0x0: the decoded pictures') when passed through
            size = (0, 0) if mode == "passthrough" else (settings.width, settings.height)
            tiers = Tiers(feed, frames, EncoderSettings(
                width=size[0], height=size[1], fps=settings.fps, bitrate=settings.bitrate,
                keyframe_interval=settings.keyframe_interval, hardware=config.video_encoder))
            self.by_name[settings.name] = Camera(settings, source, stream, encoder, jpeg, feed=feed, decoder=decoder,
                                                 video_encoder=config.video_encoder, load=self.load, tiers=tiers,
                                                 plan=plan)

    def __iter__(self) -> Iterator[Camera]:
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

    def admission(self, camera: Camera, measured: bool = True) -> Refused | None:
        """Whether one more viewer of `camera` may come (None) or why not (camtrack.media.admission):
        the server's and the camera's limits and (if `measured`, for newcomers) the load the server
        measures (camtrack.media.load). A refusal for the load is counted (its kind, for /metrics)."""
        refused = decide(Snapshot(self.viewer_count, self.max_viewers, camera.viewer_count,
                                  camera.settings.max_viewers, self.load.measure() if measured else None))
        if refused is not None and refused.kind.measured:
            self.load.refuse(refused)
            logger.debug("server full: %s", refused.reason)
        return refused

    def admit(self, camera: Camera, viewer: Viewer) -> Refused | None:
        """Count `viewer` in (no longer pending), unless the server or the camera is full (a peer
        that got through admission and connected is not refused for the load it found since):
        None when it is in, else why not."""
        if (refused := self.admission(camera, measured=False)) is not None:
            return refused
        self.release(viewer)
        camera.viewers[viewer.transport].add(viewer)
        return None

    def leave(self, camera: Camera, viewer: Viewer) -> None:
        """`viewer` is no viewer (and no pending session) any more."""
        camera.viewers[viewer.transport].discard(viewer)
        self.release(viewer)

    def hold(self, camera: Camera, session: Viewer) -> None:
        """Count `session` as pending; at the bound, close the oldest pending session of the
        client with the most of them (one client flooding closes its own sessions first)."""
        if session in self.pending:
            return
        self.pending[session] = camera
        camera.pending += 1
        while len(self.pending) > self.max_pending:
            most = Counter(s.remote for s in self.pending).most_common(1)[0][0]
            victim = next(s for s in self.pending if s.remote == most)
            self.release(victim)
            self.pending_evicted += 1
            victim.end(f"too many pending sessions (at most {self.max_pending})")

    def release(self, session: Viewer) -> None:
        """`session` is not pending any more (it became a viewer or ended)."""
        camera = self.pending.pop(session, None)
        if camera is not None:
            camera.pending -= 1

    @property
    def everyone(self) -> list[Viewer]:
        """Every viewer and pending session of every camera."""
        return [v for camera in self for group in camera.viewers.values() for v in group] + list(self.pending)

    async def close(self) -> None:
        # at once, not one after another: a camera slow to let go must not hold up the others
        await asyncio.gather(*(camera.close() for camera in self))
