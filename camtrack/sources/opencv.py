"""Cameras, files and stream URLs read through OpenCV's VideoCapture."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import time
from collections.abc import Iterator

import cv2
import numpy as np

from ..media.feeds import SourceError
from .pattern import Pacer
from .urls import redact

logger = logging.getLogger(__name__)

# OpenCV's own FFmpeg writes its errors ("[http @ 0x...] Error reading HTTP response: ...") to stderr
# unless told a level: quiet (AV_LOG_QUIET), since camtrack says what failed in one line of its own.
# Read once, when OpenCV first uses FFmpeg; OPENCV_FFMPEG_LOGLEVEL=32 in the environment brings it back.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

#: how long a stream URL may take to open, and then to give each picture (OpenCV's own default: 30 s)
STREAM_TIMEOUT = 5.0


class OpenCvSource:
    """A camera, video file or stream URL read through `cv2.VideoCapture`."""

    def __init__(self, target: int | str, kind: str, width: int, height: int, fps: float) -> None:
        self.target, self.kind = target, kind
        self.width, self.height, self.fps = width, height, fps
        self.description = f"{kind} {redact(str(target))}"
        self.capture: cv2.VideoCapture | None = None
        self.pacer: Pacer | None = None

    def open(self) -> None:
        started = time.monotonic()
        with quiet_opencv():
            if self.kind == "stream":
                milliseconds = round(STREAM_TIMEOUT * 1000)
                capture = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds])
            else:
                capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            why = ""
            if self.kind == "camera":
                why = f": {device_problem(f'/dev/video{self.target}')}"
            elif self.kind == "stream" and time.monotonic() - started >= STREAM_TIMEOUT - 0.5:
                why = f": no answer within {STREAM_TIMEOUT:g} s"
            raise SourceError(f"cannot open {self.description}{why}")
        if self.kind == "camera":
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            capture.set(cv2.CAP_PROP_FPS, self.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif self.kind == "file":
            file_fps = capture.get(cv2.CAP_PROP_FPS)
            self.pacer = Pacer(file_fps if 0 < file_fps <= 240 else self.fps)
        self.capture = capture

    def read(self) -> np.ndarray | None:
        if self.capture is None:
            return None
        if self.pacer is not None:
            self.pacer.wait()
        ok, image = self.capture.read()
        if not ok and self.kind == "file":
            # end of file: loop
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.capture.read()
        if not ok or image is None:
            return None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return image

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Hush OpenCV's own warnings (a missing camera is said once, in our log, instead)."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(level)


#: V4L2's VIDIOC_QUERYCAP (struct v4l2_capability, 104 bytes) and VIDIOC_REQBUFS (struct v4l2_requestbuffers, 20 bytes)
_VIDIOC_QUERYCAP = 0x80685600
_VIDIOC_REQBUFS = 0xC0145608
#: device_caps bits: video capture, single- or multi-planar; V4L2_CAP_DEVICE_CAPS says device_caps is filled in
_CAP_VIDEO_CAPTURE = 0x00000001 | 0x00001000
_CAP_DEVICE_CAPS = 0x80000000


def device_problem(path: str) -> str:
    """Why the V4L2 camera at `path` cannot be opened, as a person can act on it (OpenCV only says it
    did not open): not there, not allowed, not a capture device, or busy with another program."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"no such device ({path} does not exist)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied on {path} (is this user in its group, often 'video'?)"
        if exc.errno == errno.EBUSY:
            return f"{path} is busy (another program is using it)"
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            return f"no such device ({path} has no camera behind it: unplugged?)"
        return f"{path}: {exc.strerror or exc}"
    try:
        try:
            caps = bytearray(104)
            fcntl.ioctl(fd, _VIDIOC_QUERYCAP, caps)
        except OSError:
            return f"{path} is not a V4L2 video device"
        capabilities, device_caps = struct.unpack_from("<II", caps, 84)
        if not (device_caps if capabilities & _CAP_DEVICE_CAPS else capabilities) & _CAP_VIDEO_CAPTURE:
            return f"{path} is not a video capture device (a camera's metadata node? try its other /dev/video)"
        try:
            # asking for no buffers frees none, and is refused while another program streams from it
            fcntl.ioctl(fd, _VIDIOC_REQBUFS, bytearray(struct.pack("<IIII4x", 0, 1, 1, 0)))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return f"{path} is busy (another program is using it)"
        return f"{path} is there but did not start (busy, or a format it does not give?)"
    finally:
        os.close(fd)
