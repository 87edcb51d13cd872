"""The cameras a server has: each one's stream, its stages, and who watches it over what."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import CameraConfig, Config
from .media.admission import Limits, Refused, Snapshot, decide
from .media.decoder import PacketDecoder
from .media.encoder import SharedEncoder
from .media.feeds import VIEWER_TRANSPORTS, BackgroundOutput, FrameFeed, PacketFeed, Transport, Viewer
from .media.jpeg import JpegEncoders
from .media.load import LoadMonitor
from .media.meters import Meter
from .media.packet import MediaKind
from .media.reader import PacketReader
from .media.stream import CameraStream
from .media.tiers import MAIN, Tier, Tiers
from .outputs.directory import Camera as OutputCamera
from .pipeline import Pipeline, build_pipeline
from .plan import CameraPlan, plan_camera
from .processing import ProcessingStage
from .sources import redact

logger = logging.getLogger(__name__)


@dataclass
class Camera:
    """A named camera: its settings, its plan and the pipeline built from it (camtrack.pipeline),
    the viewers attached per transport, and what each transport has sent."""

    settings: CameraConfig
    plan: CameraPlan
    pipeline: Pipeline
    viewers: dict[Transport, set[Viewer]] = field(default_factory=lambda: {t: set() for t in VIEWER_TRANSPORTS})
    meters: dict[Transport, Meter] = field(default_factory=lambda: {t: Meter() for t in Transport})
    #: sessions of this camera that are not viewers yet (Cameras.hold)
    pending: int = 0
    #: the server's measured load (every camera shares it; set by Cameras)
    load: LoadMonitor | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def viewer_count(self) -> int:
        return sum(len(v) for v in self.viewers.values())

    @property
    def frames(self) -> FrameFeed:
        """Its pictures, for readers of pixels (JPEG, per-viewer encoders)."""
        return self.pipeline.frames

    @property
    def jpeg(self) -> JpegEncoders:
        """Its JPEG encoders, by quality."""
        return self.pipeline.jpeg

    def packets(self, kind: MediaKind = MediaKind.VIDEO, tier: Tier = MAIN) -> PacketFeed | None:
        """The feed of this camera's `kind` packets of `tier` (camtrack.media.tiers): MAIN is its own
        (the shared encoder's, or its H.264 passed through); a tier of another codec is encoded from
        the camera's pictures, made the first time it is asked for and shared by all its viewers.
        None: no such packets (audio; MAIN with --encoder per-viewer)."""
        return self.pipeline.packets(kind, tier)

    def reader(self, transport: Transport, tier: Tier = MAIN) -> PacketReader:
        """A reader of this camera's packets of `tier` for one viewer over `transport` (bridged
        while the viewer joins a camera's own packets between their keyframes)."""
        return self.pipeline.reader(self.meters[transport], tier)

    def qualities(self) -> tuple[str, ...]:
        """The qualities a viewer may be on: "main" and the camera's lower tiers (docs/quality.md)."""
        return self.pipeline.tiers.available()

    # -- the pipeline's stages, as they were named before it (tests and benchmarks reach them)

    @property
    def feed(self) -> PacketFeed | None:
        """The MAIN packets (`packets()`)."""
        return self.pipeline.packets()

    @property
    def stream(self) -> CameraStream:
        return self.pipeline.stream

    @property
    def tiers(self) -> Tiers:
        return self.pipeline.tiers

    @property
    def encoder(self) -> SharedEncoder | None:
        return self.pipeline.encoder

    @property
    def decoder(self) -> PacketDecoder | None:
        return self.pipeline.decoder

    @property
    def processing(self) -> ProcessingStage | None:
        return self.pipeline.processing

    @property
    def bridge(self) -> SharedEncoder | None:
        return self.pipeline.bridge.encoder if self.pipeline.bridge is not None else None

    @property
    def publisher(self) -> BackgroundOutput | None:
        return self.pipeline.outputs.get("janus")

    @publisher.setter
    def publisher(self, publisher: BackgroundOutput) -> None:
        """(Not started: `pipeline.start_output` starts what it adds.)"""
        self.pipeline.outputs["janus"] = publisher

    def describe(self) -> dict[str, Any]:
        """The camera as /api/cameras and /healthz show it."""
        settings, source = self.settings, self.pipeline.source
        return {
            "name": self.name,
            "source": redact(self.plan.source),
            # a passed-through camera's state is its packet reader's while that runs
            "state": source.state,
            #: the reason of the source's last failure (None before any)
            "error": source.error,
            #: why a passed-through camera is refused (its size, too large access units), else None
            "problem": source.problem,
            "width": settings.width,
            "height": settings.height,
            "fps": settings.fps,
            "codec": settings.codec,
            "bitrate": settings.bitrate,
            "mode": self.plan.mode,
            #: why that mode (camtrack.plan): "asked for", or what `auto` found
            "reason": self.plan.reason,
            "viewers": {str(t): len(v) for t, v in self.viewers.items()},
            "pending": self.pending,
            # WebRTC viewers closed for sending nothing (--unresponsive-timeout), over the server's life
            "unresponsive": sum(meter.unresponsive for meter in self.meters.values()),
            "opens": source.opens,
            #: the --process function: its state (ok, failing, stalled, idle), last error, counts
            "processing": self.processing.describe() if self.processing is not None else None,
            #: the camera's sound (docs/audio.md): its state (idle, starting, up, retrying), the reason
            #: of its source's last failure, failures so far; None: it has none
            "audio": self._describe_audio(),
        }

    def _describe_audio(self) -> dict[str, Any] | None:
        feed = self.pipeline.audio
        if feed is None:
            return None
        return {"state": feed.state, "error": feed.error, "failures": feed.stats.failures}

    async def close(self) -> None:
        await self.pipeline.close()


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
        self.pending: OrderedDict[Viewer, OutputCamera] = OrderedDict()
        #: pending sessions closed to make room, over the server's life
        self.pending_evicted = 0
        self.load = LoadMonitor(Limits(config.max_loop_lag, config.send_budget, config.max_picture_age, config.max_cpu),
                                lambda: self.viewer_count)
        self.by_name: dict[str, Camera] = {}
        for settings in config.cameras:
            # the command line made the plan before the server started (cli.prepare_camera); an
            # embedding program's Config gets the same plan here
            plan = (plans or {}).get(settings.name) or plan_camera(settings, config)
            self.by_name[settings.name] = Camera(settings, plan, build_pipeline(settings, plan, config), load=self.load)

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

    def admission(self, camera: OutputCamera, measured: bool = True) -> Refused | None:
        """Whether one more viewer of `camera` may come (None) or why not (camtrack.media.admission):
        the server's and the camera's limits and (if `measured`, for newcomers) the load the server
        measures (camtrack.media.load). A refusal for the load is counted (its kind, for /metrics)."""
        refused = decide(Snapshot(self.viewer_count, self.max_viewers, camera.viewer_count,
                                  camera.settings.max_viewers, self.load.measure() if measured else None))
        if refused is not None and refused.kind.measured:
            self.load.refuse(refused)
            logger.debug("server full: %s", refused.reason)
        return refused

    def admit(self, camera: OutputCamera, viewer: Viewer) -> Refused | None:
        """Count `viewer` in (no longer pending), unless the server or the camera is full (a peer
        that got through admission and connected is not refused for the load it found since):
        None when it is in, else why not."""
        if (refused := self.admission(camera, measured=False)) is not None:
            return refused
        self.release(viewer)
        camera.viewers[viewer.transport].add(viewer)
        return None

    def leave(self, camera: OutputCamera, viewer: Viewer) -> None:
        """`viewer` is no viewer (and no pending session) any more."""
        camera.viewers[viewer.transport].discard(viewer)
        self.release(viewer)

    def hold(self, camera: OutputCamera, session: Viewer) -> None:
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
