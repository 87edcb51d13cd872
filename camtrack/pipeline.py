"""A camera's pipeline, built once from its plan (camtrack.plan) by `build_pipeline`: the one place
that knows which concrete stages a mode is made of.

    plan ──► build_pipeline ──► Pipeline
                                 ├─ source: SourceStatus   (state, error, opens, frames/packets, failures, watched)
                                 ├─ frames: a frame feed   (what JPEG, encoders, tiers and per-viewer encoders
                                 │                          read: the --process stage's when there is one)
                                 ├─ processing             (the --process stage: camtrack.processing, or None;
                                 │                          passed through: it reads the decoder, for its data)
                                 ├─ jpeg: the JPEG encoders of `frames`
                                 ├─ packets(kind, tier)    (the main feed and the tiers: camtrack.media.tiers)
                                 ├─ reader(meter, tier)    (a viewer's reader: bridged on a camera's own packets)
                                 ├─ outputs                (background outputs: Janus; a recorder, motion next)
                                 └─ close()

Its parts are the same whatever the mode: what reads a camera (the app's endpoints, the outputs)
asks these and never which stages make them.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Protocol

from .config import CameraConfig, Config
from .media.audio import AudioFeed
from .media.decoder import PacketDecoder
from .media.encoder import EncoderSettings, SharedEncoder, even
from .media.feeds import BackgroundOutput, FrameFeed, PacketFeed
from .media.jpeg import JpegEncoders
from .media.meters import Meter
from .media.packet import MediaKind
from .media.passthrough import PassthroughFeed
from .media.reader import BridgedReader, PacketReader
from .media.stream import CameraStream
from .media.tiers import MAIN, Quality, Tier, Tiers
from .plan import CameraPlan
from .processing import Chain, ChainStage, FunctionFile, Masks, MotionDetector, Overlay, ProcessFunction, ProcessingStage
from .sources import make_packet_source, make_source
from .sources.alsa import alsa_device, use_system_alsa_config
from .sources.audio import audio_source_factory, known_audio_codec


class Closing(Protocol):
    """A part of a pipeline that `close()` stops."""

    async def close(self) -> None: ...


class SourceStatus:
    """What a camera's source is doing, whichever thread reads it (the capture thread of its
    stream, the reader thread of its own packets): the same type in every mode."""

    def __init__(self, stream: CameraStream, packets: PassthroughFeed | None = None,
                 decoder: PacketDecoder | None = None) -> None:
        self._stream = stream
        self._packets = packets
        self._decoder = decoder

    @property
    def state(self) -> str:
        """`idle`, `starting`, `up`, `retrying` or `stalled`: of the reader of the camera's own
        packets while it runs, else of the capture."""
        packets = self._packets
        if packets is not None and packets.running:
            return packets.state
        return self._stream.state

    @property
    def error(self) -> str | None:
        """The reason of the source's last failure (None before any), whichever reader saw it."""
        packets = self._packets
        if packets is not None and (packets.running or packets.error is not None):
            return packets.error or self._stream.error
        return self._stream.error

    @property
    def problem(self) -> str | None:
        """Why the camera's own packets are refused (its size, too large access units), else None."""
        return self._packets.problem if self._packets is not None else None

    @property
    def opens(self) -> int:
        """Times the source was opened, by the capture and by the reader of its packets."""
        return self._stream.runs + (self._packets.stats.opens if self._packets is not None else 0)

    @property
    def watched(self) -> bool:
        """Someone reads the source now."""
        return bool(self._stream.consumers) or (self._packets is not None and bool(self._packets.consumers))

    @property
    def frames(self) -> int:
        """Pictures captured (decoded by the capture thread) over the server's life."""
        return self._stream.frames

    @property
    def decoded(self) -> int:
        """Pictures decoded from the camera's own packets (for MJPEG, snapshots, tiers)."""
        return self._decoder.frames if self._decoder is not None else 0

    @property
    def packets(self) -> int | None:
        """The camera's own packets passed on; None when its source gives pictures."""
        return self._packets.stats.packets if self._packets is not None else None

    @property
    def failures(self) -> int:
        """Times the source failed (then retried), whichever reader saw it."""
        failures = self._stream.failures
        return (failures.count if failures else 0) + (self._packets.stats.failures if self._packets else 0)

    @property
    def stalls(self) -> int:
        """Of those, times it stayed connected but gave no picture."""
        failures = self._stream.failures
        return (failures.stalls if failures else 0) + (self._packets.stats.stalls if self._packets else 0)

    def detail(self) -> dict[str, Any] | None:
        """What /healthz shows of the reader of the camera's own packets (None: it has none)."""
        packets = self._packets
        if packets is None:
            return None
        stats = packets.stats
        return {"running": packets.running, "viewers": len(packets.consumers), "packets": stats.packets,
                "keyframes": stats.keyframes, "reopenings": stats.reopenings, "problem": packets.problem,
                "refused": stats.refused, "oversize": stats.oversize, "filler_bytes": stats.filler_bytes,
                "ring_bytes": packets.ring_bytes, "failures": stats.failures, "stalls": stats.stalls}


class JoinBridge:
    """The bridge for viewers joining a camera's own packets between its keyframes: its pictures
    decoded (from the newest keyframe, at once) and encoded again, starting with a keyframe of the
    live picture (camtrack.media.reader.BridgedReader). Made at the camera's size the first time it
    is needed; like every stage it runs only while a viewer reads it."""

    def __init__(self, feed: PacketFeed, decoder: PacketDecoder, settings: EncoderSettings) -> None:
        self.feed = feed
        self.decoder = decoder
        self.settings = settings
        #: the bridge's encoder, once made
        self.encoder: SharedEncoder | None = None
        #: viewers that joined through it (camtrack_join_bridge_joins)
        self.joins = 0

    @property
    def runs(self) -> int:
        """Times the bridge started (joins in a row share a run)."""
        return self.encoder.stats.runs if self.encoder is not None else 0

    def __call__(self) -> SharedEncoder | None:
        codec = self.feed.codec
        size = (codec.width, codec.height)
        if not all(size):
            return None  # nothing opened yet: no size to encode at
        bridge = self.encoder
        if bridge is None or ((bridge.settings.width, bridge.settings.height) != size and not bridge.running):
            self.encoder = bridge = SharedEncoder(self.decoder, EncoderSettings(
                codec="h264", width=size[0], height=size[1], fps=self.settings.fps, bitrate=self.settings.bitrate,
                keyframe_interval=self.settings.keyframe_interval, hardware=self.settings.hardware))
        self.joins += 1
        return bridge

    async def close(self) -> None:
        if self.encoder is not None:
            await self.encoder.close()


class Pipeline:
    """A camera's media graph (see the module's docstring). The attributes `stream`, `main`,
    `encoder` and `decoder` are its concrete stages, for tests and benchmarks: nothing else reads
    them."""

    def __init__(self, plan: CameraPlan, source: SourceStatus, frames: FrameFeed, jpeg: JpegEncoders, tiers: Tiers,
                 stages: list[Closing], *, stream: CameraStream, main: PacketFeed | None = None,
                 encoder: SharedEncoder | None = None, decoder: PacketDecoder | None = None,
                 bridge: JoinBridge | None = None, processing: ProcessingStage | None = None) -> None:
        self.plan = plan
        self.source = source
        self.frames = frames
        self.jpeg = jpeg
        self.tiers = tiers
        #: the join bridge of a camera whose own packets are read (None: its packets are encoded here)
        self.bridge = bridge
        #: the user's function on every frame (--process): `frames` when transcoded; on a camera whose
        #: own H.264 passes through, a reader of its decoded pictures (its data shown, not its drawing)
        self.processing = processing
        #: background outputs by name ("janus"), started with `start_output`
        self.outputs: dict[str, BackgroundOutput] = {}
        #: what `close` stops, in order: from the viewers' end to the source's
        self._stages = stages
        self.stream = stream
        self.main = main
        self.encoder = encoder
        self.decoder = decoder
        #: the camera's sound (camtrack.media.audio), or None: it has none (--audio off)
        self.audio: AudioFeed | None = None

    def packets(self, kind: MediaKind = MediaKind.VIDEO, tier: Tier = MAIN) -> PacketFeed | None:
        """The feed of the camera's `kind` packets of `tier` (camtrack.media.tiers); None: none
        (MAIN when each viewer encodes its own; audio when the camera has none)."""
        if kind == MediaKind.AUDIO:
            # MAIN: what every listener can take (Opus: the camera's own, or encoded once); a tier of
            # the camera's own G.711 codec (pcmu, pcma): its packets passed through untouched
            if self.audio is None or tier.quality is not None:
                return None
            if tier == MAIN or tier.codec == "opus":
                return self.audio
            return self.audio.passed_feed(tier.codec)
        return self.tiers.packets(kind, tier)

    def reader(self, meter: Meter | None = None, tier: Tier = MAIN) -> PacketReader:
        """A viewer's reader of the camera's packets of `tier`, counted in `meter`: bridged while
        the viewer joins a camera's own packets between their keyframes."""
        feed = self.packets(MediaKind.VIDEO, tier)
        if feed is None:
            raise ValueError(f"camera {self.stream.name} has no shared packets (--encoder per-viewer)")
        if self.bridge is not None and feed is self.bridge.feed:
            return BridgedReader(feed, self.bridge, meter)
        return PacketReader(feed, meter)

    def encoders(self) -> dict[str, SharedEncoder]:
        """The shared encoders that make the camera's packets, by codec (its main feed's when it is
        encoded here, and its tiers'; not the join bridge's)."""
        found = dict(self.tiers.encoders)
        if self.encoder is not None:
            found[self.encoder.settings.codec] = self.encoder
        return found

    def quality_encoders(self) -> dict[str, SharedEncoder]:
        """The lower quality tiers' encoders made so far, by tier name ("low", "low-vp8")."""
        return {str(tier): encoder for tier, encoder in self.tiers.quality_encoders.items()}

    def start_output(self, name: str, output: BackgroundOutput) -> None:
        """Run `output` beside the camera's viewers until the pipeline closes."""
        self.outputs[name] = output
        output.start()

    async def close(self) -> None:
        """Stop every part now (server shutdown): outputs first, then stages from the viewers'
        end to the source's."""
        await asyncio.gather(*(output.stop() for output in self.outputs.values()))
        for stage in self._stages:
            await stage.close()
        if self.audio is not None:
            await self.audio.close()


def build_pipeline(settings: CameraConfig, plan: CameraPlan, config: Config) -> Pipeline:
    """The pipeline of the camera `settings` as `plan` says: nothing runs until something reads it."""
    pipeline = _build_video(settings, plan, config)
    sound = audio_source_factory(plan.source, settings.audio, rtsp_transport=settings.rtsp_transport)
    if alsa_device(settings.talk) is not None:
        use_system_alsa_config()  # (now, before the camera's threads run: it may set the environment)
    if sound is not None:
        pipeline.audio = AudioFeed(settings.name, sound, linger=config.linger,
                                   own_codec=known_audio_codec(plan.source, settings.audio))
    return pipeline


def _build_video(settings: CameraConfig, plan: CameraPlan, config: Config) -> Pipeline:
    """The video part of `build_pipeline`."""
    source = plan.source
    stream = CameraStream(
        settings.name,
        functools.partial(make_source, source, settings.width, settings.height, settings.fps,
                          rtsp_transport=settings.rtsp_transport, input_format=settings.input_format),
        linger=config.linger,
        # privacy masks: on the capture thread, before anything reads the picture
        prepare=Masks(settings.masks, settings.width, settings.height) if settings.masks else None,
    )
    encoding = EncoderSettings(codec=settings.codec, width=settings.width, height=settings.height, fps=settings.fps,
                               bitrate=settings.bitrate, keyframe_interval=settings.keyframe_interval,
                               hardware=config.video_encoder)
    if plan.mode == "passthrough":
        if settings.masks:  # (plan_camera never plans this: a plan made elsewhere must not leak a masked area)
            raise ValueError(f"camera {settings.name}: masks need its pictures encoded here, not passed through")
        # the camera's own H.264 for WebRTC; pixels for MJPEG, snapshots and tiers are decoded from
        # it, only while someone asks for them (the source is opened once either way)
        packets = functools.partial(make_packet_source, source, rtsp_transport=settings.rtsp_transport,
                                    input_format=settings.input_format, width=settings.width,
                                    height=settings.height, fps=settings.fps)
        feed = PassthroughFeed(settings.name, packets, linger=config.linger, size=(settings.width, settings.height))
        decoder = PacketDecoder(feed, settings.name)
        # tiers of another codec are encoded at the camera's own size (0x0: the decoded pictures')
        tiers = Tiers(feed, decoder, EncoderSettings(width=0, height=0, fps=settings.fps, bitrate=settings.bitrate,
                                                     keyframe_interval=settings.keyframe_interval,
                                                     hardware=config.video_encoder), qualities(settings),
                      own_tiers(settings, plan, config))
        jpeg, bridge = JpegEncoders(decoder, config.mjpeg_fps), JoinBridge(feed, decoder, encoding)
        # a --process function (asked for with --mode passthrough) reads pictures decoded for it alone,
        # only while a reader of its results runs it: its data is shown, what it draws is not
        processing = processing_stage(settings, decoder, shown=False)
        return Pipeline(plan, SourceStatus(stream, feed, decoder), decoder, jpeg, tiers,
                        [*([processing] if processing is not None else []), jpeg, bridge, tiers, decoder, feed,
                         stream], stream=stream, main=feed, decoder=decoder, bridge=bridge, processing=processing)
    # (a camera with a built-in is never passed through, one with a --process function only when asked: camtrack.plan)
    processing = processing_stage(settings, stream)
    # the user's function on each frame, once for every viewer: what every encoder and JPEG reads
    frames: FrameFeed = stream if processing is None else processing
    encoder = SharedEncoder(frames, encoding) if plan.mode == "transcode" else None
    jpeg, tiers = JpegEncoders(frames, config.mjpeg_fps), Tiers(encoder, frames, encoding, qualities(settings),
                                                                      own_tiers(settings, plan, config))
    return Pipeline(plan, SourceStatus(stream), frames, jpeg, tiers,
                    [jpeg, tiers, *([encoder] if encoder is not None else []),
                     *([processing] if processing is not None else []), stream], stream=stream, main=encoder,
                    encoder=encoder, processing=processing)


def qualities(settings: CameraConfig) -> dict[str, Quality]:
    """The camera's lower quality tiers by name (camtrack.media.tiers): its low one unless
    --low-scale is 0."""
    if not settings.low_scale:
        return {}
    return {"low": Quality(scale=settings.low_scale, bitrate=settings.low_bitrate or max(50_000, settings.bitrate // 4),
                           fps=settings.low_fps)}


def own_tiers(settings: CameraConfig, plan: CameraPlan, config: Config) -> dict[str, PassthroughFeed]:
    """The camera's own streams that serve quality tiers as they are: its --low-source (when the plan
    found it H.264 without B-frames), opened only while a viewer reads the low tier."""
    low = plan.low_source
    if low is None or not settings.low_scale:
        return {}
    packets = functools.partial(make_packet_source, low, rtsp_transport=settings.rtsp_transport, width=settings.width,
                                height=settings.height, fps=settings.fps)
    size = (even(settings.width * settings.low_scale), even(settings.height * settings.low_scale))
    return {"low": PassthroughFeed(f"{settings.name} (low)", packets, linger=config.linger, size=size)}


def processing_stage(settings: CameraConfig, frames: FrameFeed, shown: bool = True) -> ProcessingStage | None:
    """The camera's processing stage on `frames` (its stream; the decoder of its own packets, where
    what the stage draws is not `shown`): its --process function, and the built-ins (--motion,
    --overlay) chained around it (camtrack.processing.chain); None when it has none."""
    function = process_function(settings)
    if not (settings.motion or settings.overlay):
        return None if function is None else ProcessingStage(frames, settings.name, function, settings.process_timeout,
                                                              settings.process_fps, shown=shown)
    chain = Chain(function, MotionDetector() if settings.motion else None,
                  Overlay(settings.overlay, settings.overlay_position) if settings.overlay else None)
    return ChainStage(frames, settings.name, chain, settings.process_timeout, settings.process_fps, shown=shown)


def process_function(settings: CameraConfig) -> ProcessFunction | None:
    """The camera's processing function: the callable an embedding program gave, else the function of
    its --process file, loaded (LoadError, one line, when it does not load), else None."""
    if settings.process_function is not None:
        return settings.process_function
    return FunctionFile(settings.process) if settings.process else None
