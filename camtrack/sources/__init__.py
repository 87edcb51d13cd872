"""Frame sources: where pictures come from (camera, file, stream URL, test pattern).

A source is blocking and single-threaded: `open()`, then `read()` until it returns
None, then `close()`. Only the capture thread (`camtrack.media.capture`) calls them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..media import stamp

logger = logging.getLogger(__name__)


#: query parameters whose values are secrets (case-insensitive; also any name containing one of SECRET_PARTS)
SECRET_PARAMS = frozenset({"user", "username", "usr", "login", "password", "pass", "passwd", "pwd", "pw", "token",
                           "key", "secret", "auth", "apikey", "signature", "sig", "credential", "credentials",
                           "session", "sid", "code"})
SECRET_PARTS = ("pass", "pwd", "token", "secret", "key", "auth", "signature", "credential")
_QUERY_PARAM = re.compile(r"(?P<name>[^&;=#\s]*)=(?P<value>[^&;#\s]*)")


def is_secret_param(name: str) -> bool:
    """Whether a URL's query parameter `name` carries a credential."""
    name = name.lower()
    return name in SECRET_PARAMS or any(part in name for part in SECRET_PARTS)


def url_secrets(spec: str) -> list[str]:
    """The credentials in a URL: its user-info (user and password) and the values of secret query parameters."""
    _, sep, rest = spec.partition("://")
    if not sep:
        return []
    authority, tail = _split_authority(rest)
    found = []
    if "@" in authority:
        user, _, password = authority.rpartition("@")[0].partition(":")
        found += [user, password]
    query = tail.partition("?")[2].partition("#")[0]
    found += [m["value"] for m in _QUERY_PARAM.finditer(query) if is_secret_param(m["name"])]
    return [value for value in found if value]


def _split_authority(rest: str) -> tuple[str, str]:
    """`user:pass@host:port` and what follows it (`/path?query#fragment`), split at the first / ? or #."""
    end = min((i for i in map(rest.find, "/?#") if i != -1), default=len(rest))
    return rest[:end], rest[end:]


def redact(spec: str) -> str:
    """A source spec (or any URL) fit for logs and APIs: its user-info and secret query values replaced by ***."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        return spec
    authority, tail = _split_authority(rest)
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        query = _QUERY_PARAM.sub(lambda m: f"{m['name']}=***" if is_secret_param(m["name"]) else m[0], query)
        tail = f"{path}?{query}{hash_}{fragment}"
    return f"{scheme}://{authority}{tail}"


class SourceError(Exception):
    """A source cannot be opened or understood."""


class FrameSource(Protocol):
    """Anything that yields BGR frames of a fixed size."""

    description: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class Pacer:
    """Sleeps so that successive `wait()` calls return `fps` times a second."""

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps
        self.next = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        if self.next > now:
            time.sleep(self.next - now)
            self.next += self.interval
        else:
            # late: don't try to catch up with a burst
            self.next = now + self.interval


class PatternSource:
    """A moving test pattern with the frame number, the time and a latency stamp."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.description = f"test pattern {width}x{height}@{fps:g}"
        self.background = _colour_bars(width, height)
        self.count = 0
        self.pacer = Pacer(fps)

    def open(self) -> None:
        self.count = 0
        self.pacer = Pacer(self.fps)

    def read(self) -> np.ndarray:
        self.pacer.wait()
        image = self.background.copy()
        w, h = self.width, self.height
        # a ball that bounces across the lower half
        t = self.count / self.fps
        radius = max(4, h // 12)
        x = int((0.5 + 0.45 * math.sin(t * 1.3)) * w)
        y = int(h * 0.55 + 0.3 * h * abs(math.sin(t * 2.1)) * 0.9)
        cv2.circle(image, (x, min(y, h - radius)), radius, (255, 255, 255), -1)
        scale = max(0.4, h / 480)
        text = f"#{self.count}  {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}"
        origin = (8, stamp.CELL + int(30 * scale))
        (text_w, text_h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        cv2.rectangle(image, (origin[0] - 4, origin[1] - text_h - 4), (origin[0] + text_w + 4, origin[1] + base + 2),
                      (0, 0, 0), -1)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
        self.count += 1
        stamp.write_stamp(image, stamp.now_ms())
        return image

    def close(self) -> None:
        pass


def _colour_bars(width: int, height: int) -> np.ndarray:
    """SMPTE-like colour bars over a horizontal grey gradient."""
    colours = [(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0),
               (192, 0, 192), (0, 0, 192), (192, 0, 0)]  # BGR
    image = np.zeros((height, width, 3), np.uint8)
    bar_h = height * 2 // 3
    for i, colour in enumerate(colours):
        x0, x1 = i * width // len(colours), (i + 1) * width // len(colours)
        image[:bar_h, x0:x1] = colour
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    image[bar_h:] = ramp[None, :, None]
    return image


class CaptureSource:
    """A camera, video file or stream URL read through `cv2.VideoCapture`."""

    def __init__(self, target: int | str, kind: str, width: int, height: int, fps: float) -> None:
        self.target, self.kind = target, kind
        self.width, self.height, self.fps = width, height, fps
        self.description = f"{kind} {redact(str(target))}"
        self.capture: cv2.VideoCapture | None = None
        self.pacer: Pacer | None = None

    def open(self) -> None:
        with quiet_opencv():
            capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.description}")
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


_DEVICE = re.compile(r"^(?:/dev/video)?(\d+)$")


def make_source(spec: str, width: int, height: int, fps: float) -> FrameSource:
    """Build the source named by `spec` (`pattern`, a camera index or /dev/videoN, a file, a URL).

    `auto` is resolved by `resolve_auto()` first. Raises SourceError for a spec that
    cannot name anything (a missing file); opening may still fail later.
    """
    if spec == "pattern":
        return PatternSource(width, height, fps)
    device = _DEVICE.match(spec)
    if device:
        return CaptureSource(int(device.group(1)), "camera", width, height, fps)
    if "://" in spec:
        return CaptureSource(spec, "stream", width, height, fps)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SourceError(f"no such video file: {spec}")
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot read video file: {spec}")
    return CaptureSource(str(path), "file", width, height, fps)


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


def check_source(spec: str, width: int, height: int, fps: float) -> None:
    """Open and close a source once, raising SourceError if it cannot give a frame."""
    source = make_source(spec, width, height, fps)
    source.open()
    try:
        if source.read() is None:
            raise SourceError(f"{source.description} opened but gave no frame")
    finally:
        source.close()
