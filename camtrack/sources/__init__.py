"""Frame sources: where pictures come from (camera, file, stream URL, test pattern).

A source (`camtrack.media.feeds.FrameSource`) is blocking and single-threaded: `open()`, then
`read()` until it returns None, then `close()`. Only the capture thread (`camtrack.media.capture`)
calls them. `pattern.py` is the test pattern, `opencv.py` cameras, files and URLs through OpenCV,
`urls.py` the credentials in URLs; a demuxer of cameras' own encoded streams goes beside them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from ..media.feeds import FrameSource, SourceError
from ..media.packet import CodecInfo
from .opencv import OpenCvSource, device_problem, quiet_opencv
from .pattern import PatternSource
from .urls import redact, url_secrets

if TYPE_CHECKING:
    from .demux import DemuxSource
    from .rtsp import RtspSource

__all__ = ["INPUT_FORMATS", "FrameSource", "OpenCvSource", "PatternSource", "SourceError", "check_source", "device_path",
           "make_packet_source", "make_source", "redact", "resolve_auto", "url_secrets"]

logger = logging.getLogger(__name__)


_DEVICE = re.compile(r"^(?:/dev/video)?(\d+)$")
#: what a V4L2 camera may be asked for besides raw pictures (`--input-format`), read with PyAV
INPUT_FORMATS = ("raw", "h264", "mjpeg")


def device_path(spec: str) -> str | None:
    """The /dev/videoN a camera spec names (`0`, `/dev/video0`), or None if it names no camera."""
    device = _DEVICE.match(spec)
    return f"/dev/video{device.group(1)}" if device else None


def make_packet_source(spec: str, *, rtsp_transport: str = "tcp", input_format: str = "raw", width: int = 640,
                       height: int = 480, fps: float = 30.0, **settings: Any) -> RtspSource | DemuxSource:
    """The packet source for `spec`: camtrack's own RTSP reader for `rtsp://` over TCP (see
    sources/rtsp.py for why), PyAV for other streams, files and V4L2 cameras asked for H.264 or MJPEG."""
    from .demux import DemuxSource, v4l2_source
    from .rtsp import RtspSource

    device = device_path(spec)
    if device is not None:
        if input_format == "raw":
            raise SourceError(f"camera {spec} gives raw pictures: ask it for h264 or mjpeg (--input-format)")
        return v4l2_source(device, input_format, width, height, fps)
    if spec.lower().startswith("rtsp://") and rtsp_transport == "tcp":
        return RtspSource(spec, **{k: v for k, v in settings.items() if k in ("open_timeout", "read_timeout")})
    return DemuxSource(spec, rtsp_transport=rtsp_transport, **settings)


#: stream URLs whose packets camtrack reads and decodes itself in transcode mode (other URLs: OpenCV)
DECODED_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://")


def make_source(spec: str, width: int, height: int, fps: float, *, rtsp_transport: str = "tcp",
                input_format: str = "raw") -> FrameSource:
    """Build the source named by `spec` (`pattern`, a camera index or /dev/videoN, a file, a URL).

    `auto` is resolved by `resolve_auto()` first. Raises SourceError for a spec that
    cannot name anything (a missing file); opening may still fail later.
    """
    if spec == "pattern":
        return PatternSource(width, height, fps)
    device = _DEVICE.match(spec)
    if device and input_format == "raw":
        return OpenCvSource(int(device.group(1)), "camera", width, height, fps)
    if device or spec.lower().startswith(DECODED_SCHEMES):
        from .decoded import DecodedSource  # PyAV, only for cameras that give encoded video

        return DecodedSource(make_packet_source(spec, rtsp_transport=rtsp_transport, input_format=input_format,
                                                width=width, height=height, fps=fps), width, height)
    if "://" in spec:
        return OpenCvSource(spec, "stream", width, height, fps)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SourceError(f"no such video file: {spec}")
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot read video file: {spec}")
    return OpenCvSource(str(path), "file", width, height, fps)


def resolve_auto(spec: str) -> str:
    """Turn `auto` into camera 0 if it opens, else `pattern`; other specs pass through."""
    if spec != "auto":
        return spec
    with quiet_opencv():
        capture = cv2.VideoCapture(0)
    try:
        if capture.isOpened():
            logger.info("source auto: using camera 0")
            return "0"
    finally:
        capture.release()
    logger.warning("source auto: no camera found (camera 0 does not open), serving the test pattern")
    return "pattern"


#: file names whose packets PyAV reads (a container of encoded video), for mode auto
PACKET_FILES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".m2ts", ".h264", ".264", ".flv")


def choose_mode(spec: str, mode: str, codec: str = "h264", rtsp_transport: str = "tcp", input_format: str = "raw",
                width: int = 640, height: int = 480, fps: float = 30.0, *, strict: bool = False) -> tuple[str, str]:
    """`auto` made `passthrough` or `transcode` for this source (others pass through), and why.

    `strict` (the command line, before the server starts): a file that is not there, or a stream or
    camera that cannot be reached, is a SourceError saying why, instead of `transcode` (which would
    only try again, through OpenCV, to fail the same way later)."""
    mode, why, _ = probe_mode(spec, mode, codec, rtsp_transport, input_format, width, height, fps, strict=strict)
    return mode, why


def probe_mode(spec: str, mode: str, codec: str = "h264", rtsp_transport: str = "tcp", input_format: str = "raw",
               width: int = 640, height: int = 480, fps: float = 30.0, *,
               strict: bool = False) -> tuple[str, str, CodecInfo | None]:
    """What `choose_mode` says, with what the probe found the source carries (None: not probed)."""
    if strict:
        check_file(spec)
    if mode != "auto":
        return mode, "asked for", None
    if codec != "h264":
        return "transcode", f"viewers get {codec}", None
    from .demux import is_stream, probe_source

    device = device_path(spec) is not None
    if device and input_format != "h264":
        return "transcode", "the camera is asked for MJPEG" if input_format == "mjpeg" else "it gives pictures", None
    if not (device or is_stream(spec) or spec.lower().endswith(PACKET_FILES)):
        return "transcode", "it gives pictures, not encoded video", None
    try:
        found, why = probe_source(_prober(spec, rtsp_transport, input_format, width, height, fps, open_timeout=5.0))
    except Exception as exc:  # noqa: BLE001 - PyAV cannot open it: OpenCV may (check_source says)
        reason = reason_of(exc)
        if strict and (device or is_stream(spec)) and unreachable(exc):
            if device:
                reason = device_problem(device_path(spec) or spec)
            raise SourceError(f"cannot open {redact(spec)}: {reason}") from None
        return "transcode", f"PyAV cannot read it ({reason})", None
    return ("transcode", why, found) if why else ("passthrough", "it is H.264 without B-frames", found)


#: what FFmpeg says of a stream or device that cannot be reached (OpenCV's FFmpeg would say the same)
UNREACHABLE = {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET,
               errno.ENOENT, errno.EACCES, errno.EPERM, errno.EBUSY, errno.ENODEV, errno.ENXIO, errno.EIO}


def unreachable(exc: BaseException) -> bool:
    """Whether PyAV failed to open a stream or device because it is not there, does not answer or
    refuses (not because of what it sent, which another reader might still make sense of)."""
    import av

    from .rtspguard import GuardCut

    if isinstance(exc, GuardCut):  # no answer within the time-out, or none at all (not a bound it broke)
        return any(words in str(exc) for words in ("no stream within", "cannot reach", "took nothing for"))
    if isinstance(exc, av.error.ExitError):  # PyAV's own time-out
        return True
    if isinstance(exc, (av.error.HTTPError, av.error.HTTPClientError, av.error.HTTPServerError)):  # 4xx, 5xx
        return True
    return isinstance(exc, OSError) and exc.errno in UNREACHABLE


def reason_of(exc: BaseException) -> str:
    """What went wrong, in one line, without the URL (PyAV's message repeats it, credentials and all)."""
    strerror = getattr(exc, "strerror", None)  # (OSError, and PyAV's FFmpegError)
    if isinstance(strerror, str) and strerror:
        return strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_file(spec: str) -> None:
    """A source that names a file (not the pattern, a camera or a URL) must be a readable file."""
    if spec in ("pattern", "auto") or device_path(spec) is not None or "://" in spec:
        return
    path = Path(spec).expanduser()
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise SourceError(f"no such video file: {spec}") from None
    except IsADirectoryError:
        raise SourceError(f"not a video file: {spec} is a directory") from None
    except OSError as exc:
        raise SourceError(f"cannot read video file {spec}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise SourceError(f"not a video file: {spec} is not a regular file")


def plan_probe(spec: str, mode: str, encoder: str = "shared", codec: str = "h264", rtsp_transport: str = "tcp",
               input_format: str = "raw", width: int = 640, height: int = 480, fps: float = 30.0, *,
               strict: bool = False) -> tuple[str, str, CodecInfo | None]:
    """A camera's mode, why, and what its source carries when it was probed (`auto` probes the
    source: milliseconds for a file, up to 5 s for a stream that does not answer; `strict`, the
    command line's: a source that is not there or does not answer is a SourceError)."""
    if mode == "auto" and encoder != "shared":
        if strict:
            check_file(spec)
        return "transcode", "each viewer's own encoder wants pictures", None
    return probe_mode(spec, mode, codec, rtsp_transport, input_format, width, height, fps, strict=strict)


def _prober(spec: str, rtsp_transport: str, input_format: str, width: int, height: int, fps: float,
            open_timeout: float = 10.0) -> DemuxSource:
    """PyAV's reader of `spec`, to find out what it carries: rtsp:// included, since PyAV knows every
    codec and sees B-frames before the first one arrives."""
    from .demux import DemuxSource, v4l2_source

    device = device_path(spec)
    if device is not None:
        return v4l2_source(device, input_format, width, height, fps)
    return DemuxSource(spec, rtsp_transport=rtsp_transport, open_timeout=open_timeout)


def check_source(spec: str, width: int, height: int, fps: float, mode: str = "transcode",
                 rtsp_transport: str = "tcp", input_format: str = "raw") -> None:
    """Open and close a source once, raising SourceError if it cannot give a frame (or, for
    `passthrough`, if its packets cannot go to viewers as they are)."""
    if mode == "passthrough":
        from .demux import probe_source  # PyAV's demuxer, only when asked for

        if device_path(spec) is not None and input_format != "h264":
            raise SourceError(f"camera {spec} can be passed through only when asked for H.264 (--input-format h264)")
        try:
            _, why = probe_source(_prober(spec, rtsp_transport, input_format, width, height, fps, open_timeout=5.0))
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot open {redact(spec)} for passthrough: {reason_of(exc)}") from None
        if why is not None:
            raise SourceError(f"{redact(spec)} cannot be passed through: {why} (use mode transcode)")
        return
    source = make_source(spec, width, height, fps, rtsp_transport=rtsp_transport, input_format=input_format)
    try:
        source.open()
    except OSError as exc:  # PyAV's readers: a device or camera that is not there
        raise SourceError(f"cannot open {source.description}: {exc.strerror or exc}") from None
    try:
        if source.read() is None:
            raise SourceError(f"{source.description} opened but gave no frame")
    finally:
        source.close()
