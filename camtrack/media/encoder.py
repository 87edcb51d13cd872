"""The shared encoder: each captured frame encoded once, the packets handed to every viewer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fractions
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np
from av import VideoFrame
from av.video.frame import PictureType

from .feeds import FeedClosed, FrameFeed
from .frame import VIDEO_TIME_BASE, Frame, PtsClock
from .packet import CodecInfo, EncodedPacket
from .ratelimit import TokenBucket
from .ring import Read
from .stage import Stage

logger = logging.getLogger(__name__)

TIME_BASE = VIDEO_TIME_BASE
#: packets the encoder's ring holds: a viewer joining just after a forced keyframe starts from
#: it at once, and a viewer up to this many packets behind catches up rather than resyncing
JOIN_FRAMES = 8
#: a keyframe made less than this long ago (and still in the ring) answers a keyframe request:
#: a viewer's PLI that crossed it in flight, or a newcomer, starts from it instead of forcing
#: another one frame later (libwebrtc's encoder feedback drops requests within 300 ms likewise)
KEYFRAME_ANSWERS = 0.25
#: the H.264 the shared encoder writes: constrained baseline (level 3.1), which every browser plays
H264_PROFILE = "42e01f"


def h264_profile(settings: EncoderSettings) -> str:
    """The profile-level-id of what `_codec_context` makes: constrained baseline, level 3.1 up to
    720p and 4.0 above."""
    return H264_PROFILE if settings.width * settings.height <= 1280 * 720 else "42e028"


class EncoderClosed(FeedClosed):
    """The encoder stopped while a viewer waited for a packet."""


@dataclass(frozen=True)
class EncoderSettings:
    """How a shared encoder encodes: codec, size, rate and its keyframe rules."""

    codec: str = "h264"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    bitrate: int = 1_000_000
    #: seconds between periodic keyframes, so a lost request cannot freeze a viewer for long
    keyframe_interval: float = 2.0
    #: forced keyframes (joins, PLI/FIR) come at most this often ...
    keyframe_min_interval: float = 0.1
    #: ... and, over any time, at most this many a second with bursts of `forced_keyframe_burst`:
    #: viewers joining and leaving in a loop cannot make everyone pay for a keyframe each time
    forced_keyframe_rate: float = 2.0
    forced_keyframe_burst: int = 3
    #: an H.264 hardware encoder: "auto" (the first of HARDWARE_H264 that opens here, else libx264),
    #: "libx264", or one of HARDWARE_H264
    hardware: str = "auto"
    #: encode at most this many frames a second, skipping the others (0: every frame that comes; a
    #: quality tier's lower frame rate, camtrack.media.tiers)
    frame_limit: float = 0.0
    #: with a size of 0x0 (follows_input): the input's size times this (a quality tier of a camera
    #: whose size is known only once it opens)
    scale: float = 1.0

    @property
    def follows_input(self) -> bool:
        """A size of 0x0: encode at the size of the pictures that come (a camera's own, decoded;
        camtrack.media.tiers), starting again with a keyframe when it changes."""
        return not (self.width and self.height)


#: upper bounds of the encode-time histogram, seconds
ENCODE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass
class EncoderStats:
    """Counters an operator (and the tests) can read."""

    frames: int = 0
    keyframes: int = 0
    forced_keyframes: int = 0
    keyframe_requests: int = 0
    bytes: int = 0
    encode_seconds: float = 0.0
    #: times the encoder started (its first viewer came after none)
    runs: int = 0
    #: encodes that took at most ENCODE_BUCKETS[i] seconds (not cumulative; the last is +Inf)
    encode_buckets: list[int] = field(default_factory=lambda: [0] * (len(ENCODE_BUCKETS) + 1))

    def record_encode(self, seconds: float) -> None:
        self.encode_seconds += seconds
        for i, bound in enumerate(ENCODE_BUCKETS):
            if seconds <= bound:
                self.encode_buckets[i] += 1
                return
        self.encode_buckets[-1] += 1


#: H.264 hardware encoders FFmpeg may have, in the order "auto" tries them: a Raspberry Pi 0-4's
#: (v4l2m2m), NVIDIA's, Intel's Quick Sync (fed NV12 frames from memory), AMD's
HARDWARE_H264 = ("h264_v4l2m2m", "h264_nvenc", "h264_qsv", "h264_amf")
#: encoders a user may name that camtrack cannot feed: VA-API takes only frames already on the GPU
#: (hwupload), which PyAV cannot make, and PyAV's own FFmpeg is built without it (on Intel: h264_qsv)
UNUSABLE_H264 = {"h264_vaapi": "VA-API encoders take only GPU frames, which PyAV cannot hand them; on Intel "
                               "use h264_qsv"}
#: what makes each of them turn a forced keyframe into an IDR (a viewer can only start at one) and
#: keep no frames back
HARDWARE_OPTIONS = {
    "h264_nvenc": {"forced-idr": "1", "zerolatency": "1", "bf": "0"},
    "h264_qsv": {"forced_idr": "1", "async_depth": "1", "look_ahead": "0"},
    "h264_amf": {"usage": "lowlatency", "forced_idr": "1", "bf": "0"},
}
#: the pixel format each takes from memory (others: yuv420p)
HARDWARE_PIX_FMT = {"h264_qsv": "nv12"}


def hardware_encoder(settings: EncoderSettings, name: str) -> av.VideoCodecContext:
    """Hardware encoder `name`, opened (so that one this box lacks fails here, in milliseconds)."""
    if name in UNUSABLE_H264:
        raise ValueError(UNUSABLE_H264[name])
    if name not in av.codecs_available:
        raise ValueError(f"this FFmpeg has no {name}")
    codec = av.CodecContext.create(name, "w")
    if not isinstance(codec, av.VideoCodecContext):
        raise ValueError(f"{name} is not a video encoder")
    codec.width, codec.height, codec.pix_fmt = settings.width, settings.height, HARDWARE_PIX_FMT.get(name, "yuv420p")
    codec.bit_rate = settings.bitrate
    codec.time_base = TIME_BASE
    codec.framerate = fractions.Fraction(round(settings.fps * 1000), 1000)
    codec.gop_size = max(1, round(settings.keyframe_interval * settings.fps))
    codec.max_b_frames = 0
    codec.options = dict(HARDWARE_OPTIONS.get(name, {}))
    codec.open()
    return codec


def _h264_encoder(settings: EncoderSettings) -> av.VideoCodecContext | None:
    """The hardware encoder `settings.hardware` asks for and this box has, or None (libx264)."""
    names = HARDWARE_H264 if settings.hardware == "auto" else () if settings.hardware == "libx264" else (settings.hardware,)
    for name in names:
        try:
            codec = hardware_encoder(settings, name)
        except (av.FFmpegError, ValueError, OSError) as exc:
            if settings.hardware != "auto":
                logger.warning("hardware encoder %s does not open here (%s): encoding with libx264", name, exc)
            continue
        logger.info("encoding H.264 with the hardware encoder %s", name)
        return codec
    return None


def even(value: float) -> int:
    """`value` rounded to an even whole number, at least 2 (what 4:2:0 pictures need)."""
    return max(2, 2 * round(value / 2))


def scale_i420(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """An I420 picture (its planes stacked, as `Frame.yuv`) scaled to `width` x `height` (even), each
    plane by OpenCV's area interpolation: about 0.05 ms from 640x480 to 320x240, where libswscale
    through PyAV took a millisecond (its context made again for every frame)."""
    rows, w = yuv.shape
    h = rows * 2 // 3
    y = cv2.resize(yuv[:h], (width, height), interpolation=cv2.INTER_AREA)
    quarter = (h // 2) * (w // 2)
    flat = yuv[h:].reshape(-1)
    u = cv2.resize(flat[:quarter].reshape(h // 2, w // 2), (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    v = cv2.resize(flat[quarter:2 * quarter].reshape(h // 2, w // 2), (width // 2, height // 2),
                   interpolation=cv2.INTER_AREA)
    return np.concatenate((y.reshape(-1), u.reshape(-1), v.reshape(-1))).reshape(height * 3 // 2, width)


def _has_sps(data: bytes) -> bool:
    """Whether Annex-B `data` starts with an H.264 sequence parameter set among its first units."""
    at = data.find(b"\x00\x00\x01")
    while 0 <= at < 256 and at + 3 < len(data):
        if data[at + 3] & 0x1F == 7:
            return True
        at = data.find(b"\x00\x00\x01", at + 3)
    return False


def _codec_context(settings: EncoderSettings) -> av.VideoCodecContext:
    """A libx264 or libvpx encoder tuned for live video: no B-frames, no look-ahead (or an H.264
    hardware encoder, see EncoderSettings.hardware)."""
    gop = max(1, round(settings.keyframe_interval * settings.fps))
    if settings.codec == "h264" and (hardware := _h264_encoder(settings)) is not None:
        return hardware
    if settings.codec == "h264":
        codec = av.CodecContext.create("libx264", "w")
        codec.profile = "Baseline"  # x264 writes constrained baseline (42e0..), which Safari plays
        level = "31" if h264_profile(settings) == H264_PROFILE else "40"
        codec.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "level": level,
            "forced-idr": "1",
            "bf": "0",
            "rc-lookahead": "0",
            "sc_threshold": "0",
        }
    elif settings.codec == "vp8":
        codec = av.CodecContext.create("libvpx", "w")
        codec.qmin, codec.qmax = 2, 56
        codec.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "auto-alt-ref": "0",
            "error-resilient": "1",
            "static-thresh": "1",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
            "bufsize": str(settings.bitrate),
            "maxrate": str(settings.bitrate),
            "minrate": str(settings.bitrate // 4),
        }
    else:
        raise ValueError(f"unknown codec {settings.codec!r}")
    codec.width, codec.height = settings.width, settings.height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = settings.bitrate
    codec.time_base = TIME_BASE
    codec.framerate = fractions.Fraction(round(settings.fps * 1000), 1000)
    codec.gop_size = gop
    codec.max_b_frames = 0
    codec.thread_count = 1 if settings.width * settings.height <= 640 * 480 else 2
    return codec


class SharedEncoder(Stage[FrameFeed, EncodedPacket]):
    """Encodes a frame feed once for all its viewers, off the event loop.

    Viewers attach and detach; the encoder (and through it the camera) runs only while
    at least one is attached. A newcomer asks for a keyframe; its ring holds the last
    JOIN_FRAMES packets, so a newcomer inside the keyframe rate limit starts at once from
    the newest keyframe, and a viewer a few packets behind catches up instead of resyncing.
    """

    #: a keyframe comes when asked for (see request_keyframe)
    makes_keyframes = True

    def __init__(self, input: FrameFeed, settings: EncoderSettings) -> None:
        super().__init__(input, f"encoder {settings.codec}", EncoderClosed, ring_size=JOIN_FRAMES)
        self.settings = settings
        self.stats = EncoderStats()
        self._codec = CodecInfo(settings.codec, settings.width, settings.height, TIME_BASE,
                                h264_profile(settings) if settings.codec == "h264" else None)
        self._seq = 0
        self._keyframe_wanted = False
        self._last_keyframe = 0.0
        self._last_forced = 0.0
        self._forced_budget = TokenBucket(settings.forced_keyframe_burst, settings.forced_keyframe_rate)
        #: the FFmpeg encoder of the current (or last) run: libx264, libvpx or a hardware one
        self.backend: str | None = None

    @property
    def codec(self) -> CodecInfo:
        return self._codec

    def request_keyframe(self) -> None:
        """Make one of the next frames a keyframe (rate-limited; see EncoderSettings), unless one
        made moments ago answers the request (see KEYFRAME_ANSWERS)."""
        self.stats.keyframe_requests += 1
        if not self._recent_keyframe_run():
            self._keyframe_wanted = True

    def start_packets(self) -> list[EncodedPacket]:
        """Where a new viewer starts: the run from a keyframe made moments ago, or nothing (and
        a keyframe is requested)."""
        run = self._recent_keyframe_run()
        if not run:
            self.request_keyframe()
        return run

    def _recent_keyframe_run(self) -> list[EncodedPacket]:
        """The newest keyframe and what followed, when it is under KEYFRAME_ANSWERS old and
        still in the ring; else empty. Without this, a request arriving just after a periodic
        keyframe forced a second one a frame later: a PLI flood timed against the periodic
        clock could nearly double everyone's keyframe rate."""
        if time.monotonic() - self._last_keyframe >= KEYFRAME_ANSWERS:
            return []
        return self._ring.since(lambda p: p.keyframe)

    async def next_packet(self, after: int = 0) -> Read[EncodedPacket]:
        """The packet after number `after` while held, else the newest (see Ring.next)."""
        return await self.next(after)

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        self.stats.runs += 1
        follows = self.settings.follows_input
        codec = None if follows else self._open_codec(self.settings)
        clock = PtsClock()
        after = 0
        # a lower frame rate: frames closer than this to the last one encoded are skipped (with a
        # little slack, so that a camera's jitter does not skip a frame a limit at its own rate keeps)
        spacing = 0.9 / self.settings.frame_limit if self.settings.frame_limit else 0.0
        last_encoded = -1e9
        logger.info("encoder %s %dx%d started (%d bit/s)", self.settings.codec, self.settings.width,
                    self.settings.height, self.settings.bitrate)
        while True:
            frame = await self.input.next_frame(after)
            after = frame.seq
            if spacing and frame.monotonic - last_encoded < spacing:
                continue
            last_encoded = frame.monotonic
            pts = clock.pts(frame.monotonic)
            force = self._should_force(time.monotonic())
            if follows:
                height, width = frame.bgr.shape[:2]
                if self.settings.scale != 1.0:
                    width, height = even(width * self.settings.scale), even(height * self.settings.scale)
                if codec is None or (codec.width, codec.height) != (width, height):
                    # the first picture, or a camera that came back at another size: a new encoder,
                    # starting with a keyframe (what came before cannot predict this)
                    codec = self._open_codec(dataclasses.replace(self.settings, width=width, height=height))
                    force = True
            assert codec is not None
            encoded = await loop.run_in_executor(executor, self._encode, codec, frame, pts, force)
            if encoded is not None:
                self._add(*encoded)

    def _open_codec(self, settings: EncoderSettings) -> av.VideoCodecContext:
        codec = _codec_context(settings)
        self.backend = codec.name
        if settings is not self.settings:  # (the input's size: what the packets now carry)
            self._codec = dataclasses.replace(self._codec, width=settings.width, height=settings.height,
                                              profile_level_id=h264_profile(settings) if settings.codec == "h264"
                                              else None)
        return codec

    def _stopped(self) -> None:
        logger.info("encoder %s stopped", self.settings.codec)

    def _should_force(self, now: float) -> bool:
        if now - self._last_keyframe >= self.settings.keyframe_interval:
            return True
        # a request over the budget waits (it stays wanted) rather than being lost
        return (self._keyframe_wanted and now - self._last_forced >= self.settings.keyframe_min_interval
                and self._forced_budget.take())

    def _encode(self, codec: av.VideoCodecContext, frame: Frame, pts: int,
                force: bool) -> tuple[av.Packet[Any], bool, float, int] | None:
        """Runs on the encoder thread."""
        began = time.perf_counter()
        yuv = frame.yuv
        if yuv.shape[1] != codec.width or yuv.shape[0] != codec.height * 3 // 2:
            # a quality tier: scaled here, on the encoder's thread
            yuv = scale_i420(yuv, codec.width, codec.height)
        video_frame = VideoFrame.from_ndarray(yuv, format="yuv420p")
        if codec.pix_fmt != "yuv420p":
            video_frame = video_frame.reformat(format=codec.pix_fmt)  # (Quick Sync takes NV12)
        video_frame.pts = pts
        video_frame.time_base = TIME_BASE
        video_frame.pict_type = PictureType.I if force else PictureType.NONE
        packets = codec.encode(video_frame)
        if not packets:
            return None
        data = b"".join(bytes(p) for p in packets)
        keyframe = any(p.is_keyframe for p in packets)
        if keyframe and codec.extradata and not _has_sps(data):
            # a hardware encoder may give its parameter sets once, out of band: a viewer starting
            # at this keyframe needs them in front of it
            data = bytes(codec.extradata) + data
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        self.stats.record_encode(time.perf_counter() - began)
        return packet, keyframe, frame.time, len(data)

    def _add(self, packet: av.Packet[Any], keyframe: bool, captured: float, size: int) -> None:
        self._seq += 1
        encoded = EncodedPacket(self._seq, packet, keyframe, captured, size, self._codec)
        stats = self.stats
        stats.frames += 1
        stats.bytes += size
        if keyframe:
            now = time.monotonic()
            stats.keyframes += 1
            if self._keyframe_wanted:
                stats.forced_keyframes += 1
                self._last_forced = now
            self._keyframe_wanted = False
            self._last_keyframe = now
        self._publish(encoded)
