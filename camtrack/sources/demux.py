"""A source of encoded packets read with PyAV: RTSP(S), RTMP and HTTP(S) streams and video files
(MP4, MKV, TS, raw .h264; paced in real time and looped), as Annex-B H.264 for passthrough.

Blocking: only the passthrough feed's reader thread calls it.
"""

from __future__ import annotations

import fractions
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import av

from ..media.packet import CodecInfo
from ..media.passthrough import SourcePacket
from ..media.sizes import check_size
from .h264 import H264Converter, profile_level_id
from .rtspguard import GuardCut, RtspGuard
from .urls import redact

logger = logging.getLogger(__name__)

#: schemes read as live streams (everything else is a file, paced and looped)
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")

#: low-delay probing: the parameter sets (in extradata or the first packets) give the size at once.
#: Measured on a loopback RTSP stream: analyzeduration 0.5 s opens in 600 ms, 0.1 s in 200 ms, 0
#: ("default") in 940 ms. Not `fflags=nobuffer`: it opens in 40 ms but drops the packets read while
#: probing, the first IDR among them, and a viewer then waits for the camera's next one (a GOP).
LOW_DELAY_OPTIONS = {"probesize": "32768", "analyzeduration": "100000"}


# -- the source


def is_stream(url: str) -> bool:
    return url.lower().startswith(STREAM_SCHEMES)


def open_options(url: str, *, rtsp_transport: str = "tcp", read_timeout: float = 5.0,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The options `av.open` gets for `url`: low-delay probing, and for RTSP its transport and a
    socket timeout (microseconds); `extra` overrides any of them."""
    options = dict(LOW_DELAY_OPTIONS)
    lowered = url.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        options["rtsp_transport"] = rtsp_transport
        options["timeout"] = str(round(read_timeout * 1_000_000))
    elif lowered.startswith(("http://", "https://")):
        options["timeout"] = str(round(read_timeout * 1_000_000))
        options["reconnect"] = "0"
    elif lowered.startswith(("rtmp://", "rtmps://")):
        options["rw_timeout"] = str(round(read_timeout * 1_000_000))
    if extra:
        options.update(extra)
    return options


class DemuxSource:
    """Packets of the video stream of `url` as they come, for the passthrough feed.

    Live streams are read as fast as they come; files are paced by their timestamps in real
    time and start over at their end (with timestamps that keep growing) when `loop` is true.
    After `open()`, `codec` says what the stream carries and `passthrough` whether its packets
    can go to viewers as they are (H.264 without B-frames); a stream whose packets turn out to
    come out of presentation order is marked not passthrough then.
    """

    def __init__(self, url: str, *, rtsp_transport: str = "tcp", open_timeout: float = 10.0,
                 read_timeout: float = 5.0, loop: bool = True, realtime: bool | None = None,
                 options: Mapping[str, str] | None = None, format: str | None = None) -> None:
        self.url = url
        #: PyAV's input format (None: guessed from the URL or file), "v4l2" for a camera device
        self.format = format
        self.live = is_stream(url) or format == "v4l2"
        self.loop = loop and not self.live
        self.realtime = (not self.live) if realtime is None else realtime
        self.options = open_options(url, rtsp_transport=rtsp_transport, read_timeout=read_timeout, extra=options)
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.description = _describe_url(url)
        self._container: Any = None
        self._stream: Any = None
        self._packets: Iterator[Any] | None = None
        self._converter: H264Converter | None = None
        #: the stream's codec extradata (what a decoder of a codec other than H.264 needs first)
        self.extradata: bytes | None = None
        self._codec_name = ""
        self._size = (0, 0)
        self._time_base = fractions.Fraction(1, 90000)
        self._has_b_frames = False
        self._reordered = False
        self._interrupted = threading.Event()
        #: set by `stop`, for good (the interrupt is cleared at each open: the stall watch's)
        self._stopped = threading.Event()
        #: rtsp:// goes through a guard that keeps the bounds camtrack's own reader keeps (rtspguard.py)
        self.guarded = url.lower().startswith("rtsp://")
        self._guard: RtspGuard | None = None
        # timestamps: made up where the stream has none, continued across loops
        self._frame_duration = 0
        self._next_pts = 0
        self._offset = 0
        self._max_pts: int | None = None
        self._last_pts: int | None = None
        # real-time pacing of files: the wall time and pts of the anchor packet
        self._anchor: tuple[float, int] | None = None
        #: times a file started over
        self.loops = 0

    @property
    def codec(self) -> CodecInfo:
        converter = self._converter
        sps = converter.sps if converter is not None else None
        return CodecInfo(
            self._codec_name, self._size[0], self._size[1], self._time_base,
            profile_level_id(sps) if sps is not None else None,
            converter.parameter_sets if converter is not None else (),
        )

    @property
    def passthrough(self) -> bool:
        return self._codec_name == "h264" and not self._has_b_frames and not self._reordered

    @property
    def why_not_passthrough(self) -> str | None:
        """Why the packets cannot go to viewers as they are, or None if they can."""
        if self._codec_name != "h264":
            return f"the video is {self._codec_name or 'unknown'}, not H.264"
        if self._has_b_frames or self._reordered:
            return "the H.264 has B-frames"
        return None

    def open(self) -> None:
        """Open the stream, within `open_timeout` in all for rtsp:// (the guard's deadline)."""
        self._interrupted.clear()
        if self._stopped.is_set():  # (after the clear: a stop from now on interrupts this open)
            raise OSError("stopped before it opened")
        self._close_guard()
        if self.guarded:
            self._guard = RtspGuard(self.url, open_timeout=self.open_timeout, read_timeout=self.read_timeout)
            if self._interrupted.is_set():  # (a stop that came before its guard could be cut)
                self._guard.cut("interrupted")
        try:
            self._open_container()
        except Exception as exc:
            try:
                self._raise_cut(exc)
            finally:
                self._close_guard()
            raise
        if self._guard is not None:
            self._guard.opened()
        self._anchor = None
        self._max_pts = self._last_pts = None

    def _raise_cut(self, exc: BaseException) -> None:
        """If the guard cut the connection, its reason, not what FFmpeg made of the cut."""
        guard = self._guard
        reason = None if guard is None else guard.reason or guard.late
        if reason is not None and not self._interrupted.is_set():
            self._close_guard()
            raise GuardCut(reason) from None
        if isinstance(exc, av.error.ExitError) and not self._interrupted.is_set():
            self._close_guard()
            raise GuardCut(f"no stream within the open or read timeout ({self.open_timeout:g} s, "
                           f"{self.read_timeout:g} s)") from None

    def _open_container(self) -> None:
        url, open_timeout = self.url, self.open_timeout
        if self._guard is not None:  # its deadline first: PyAV's own is a backstop
            url, open_timeout = self._guard.url, self.open_timeout + 1.0
        container = av.open(url, format=self.format, options=dict(self.options),
                            timeout=(open_timeout, self.read_timeout))
        try:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            self._codec_name = context.name
            self.extradata = context.extradata
            self._size = (context.width, context.height)
            if context.width or context.height:  # (0x0: not known yet; the SPS is checked as it comes)
                check_size(context.width, context.height, "the camera's stream")
            if stream.time_base is not None:
                self._time_base = stream.time_base
            self._has_b_frames = bool(context.has_b_frames) or context.max_b_frames > 0
            if self._codec_name == "h264":
                previous = self._converter
                self._converter = H264Converter(context.extradata)
                if previous is not None and self._converter.sps is None:  # parameter sets only in-band
                    self._converter.sps, self._converter.pps = previous.sps, previous.pps
            else:
                self._converter = None
            rate = stream.average_rate or stream.guessed_rate or fractions.Fraction(30)
            self._frame_duration = max(1, round(1 / (rate * self._time_base)))
            self._packets = container.demux(stream)
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream

    def read(self) -> SourcePacket | None:
        """The next packet (blocking; paced for files), or None when the stream ended."""
        while not self._interrupted.is_set():
            packet = self._next_packet()
            if packet is None:
                if not self.loop:
                    return None
                self._start_over()
                continue
            if packet.size == 0:
                continue  # a demuxer's flush packet
            pts = self._timestamp(packet)
            data = bytes(packet)
            if self._converter is not None:
                data, keyframe = self._converter.convert(data)
            else:
                keyframe = bool(packet.is_keyframe)
            if not data:
                continue
            if self.realtime:
                self._pace(pts)
            if self._interrupted.is_set():
                return None
            return SourcePacket(data, pts, self._time_base, keyframe)
        return None

    def _next_packet(self) -> Any:
        if self._packets is None:
            return None
        try:
            packet = next(self._packets)
        except StopIteration:
            self._raise_cut(EOFError())
            return None
        except Exception as exc:
            if self._interrupted.is_set():
                return None
            self._raise_cut(exc)
            raise
        guard = self._guard
        if guard is not None:
            if guard.reason is not None:  # what FFmpeg's parser held when the guard cut: not a picture
                if self._interrupted.is_set():
                    return None
                self._raise_cut(EOFError())
            guard.packet_out()
        return packet

    def _timestamp(self, packet: Any) -> int:
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            duration = packet.duration or self._frame_duration
            pts = self._next_pts
            self._next_pts += duration
        else:
            self._next_pts = pts + (packet.duration or self._frame_duration)
        pts = int(pts) + self._offset
        if self._max_pts is not None and pts < self._max_pts:
            if not self._reordered:
                logger.info("%s: packets come out of presentation order (B-frames)", self.description)
            self._reordered = True
        self._max_pts = pts if self._max_pts is None else max(self._max_pts, pts)
        self._last_pts = pts
        return pts

    def _start_over(self) -> None:
        """At a file's end: open it again, its timestamps continuing after the last one."""
        end = self._next_pts + self._offset
        self._close_container()
        self._open_container()
        self.loops += 1
        self._next_pts = 0
        first = self._peek_first_pts()
        self._offset = end - first

    def _peek_first_pts(self) -> int:
        """The first timestamp of the file just opened (read from its first packet, kept)."""
        assert self._packets is not None
        try:
            first = next(self._packets)
        except StopIteration:
            raise EOFError(f"{self.description} is empty") from None
        packets = self._packets

        def chained() -> Iterator[Any]:
            yield first
            yield from packets

        self._packets = chained()
        pts = first.pts if first.pts is not None else first.dts
        return int(pts) if pts is not None else 0

    def _pace(self, pts: int) -> None:
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (now, pts)
            return
        due = self._anchor[0] + float((pts - self._anchor[1]) * self._time_base)
        if due - now > 1.0 or now - due > 1.0:
            self._anchor = (now, pts)  # a jump in the file's timestamps, or far behind: no burst
            return
        if due > now:
            self._interrupted.wait(due - now)

    def stop(self) -> None:
        """Stop for good (from any thread; the feed's run stopping): `interrupt`, and any later open
        raises at once. A run makes its source anew; `interrupt` alone (the stall watch's) lets the
        source open again."""
        self._stopped.set()
        self.interrupt()

    def interrupt(self) -> None:
        """End a wait for pacing, or (rtsp://) a blocked read, early (from any thread); the next read
        returns None."""
        self._interrupted.set()
        guard = self._guard  # (once: open and close, on the reader's thread, may set it meanwhile)
        if guard is not None:
            guard.cut("interrupted")

    def close(self) -> None:
        self._close_container()
        self._close_guard()

    def _close_guard(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.close()

    def _close_container(self) -> None:
        container, self._container, self._stream, self._packets = self._container, None, None, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - closing what failed may fail too
                logger.debug("%s: closing failed", self.description, exc_info=True)


def v4l2_source(device: str, input_format: str, width: int, height: int, fps: float) -> DemuxSource:
    """A V4L2 camera asked for its own encoding (`h264` or `mjpeg`) at a size and frame rate, read
    with PyAV (OpenCV reads raw pictures only). The Raspberry Pi camera (bcm2835-v4l2) encodes H.264
    itself: its packets can pass through."""
    options = {"input_format": input_format, "video_size": f"{width}x{height}", "framerate": f"{fps:g}"}
    return DemuxSource(device, format="v4l2", options=options)


def probe(url: str, **settings: Any) -> tuple[CodecInfo, str | None]:
    """Open `url` once: what it carries, and why passthrough cannot serve it (None if it can)."""
    return probe_source(DemuxSource(url, **settings))


def probe_source(source: DemuxSource) -> tuple[CodecInfo, str | None]:
    """Open a packet source once: what it carries, and why passthrough cannot serve it (None if it can)."""
    source.open()
    try:
        return source.codec, source.why_not_passthrough
    finally:
        source.close()


def _describe_url(url: str) -> str:
    if is_stream(url) or url.startswith("/dev/"):
        return redact(url)
    return Path(url).name
