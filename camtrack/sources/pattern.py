"""The built-in test pattern: moving colour bars, the frame number, the time and a latency stamp."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from ..media import stamp
from .audio import beeping


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
        if beeping(time.time()):  # the tone's beep (camtrack.sources.audio): lip-sync is read from both
            x0, y0, x1, y1 = mark_box(w, h)
            image[y0:y1, x0:x1] = 255
        stamp.write_stamp(image, stamp.now_ms())
        return image

    def close(self) -> None:
        pass


def mark_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Where the pattern shows its beep mark (x0, y0, x1, y1): a white square in the top-right corner
    while the test tone beeps (the first 100 ms of every whole second)."""
    side = max(8, min(width, height) // 10)
    return width - side - 8, 32, width - 8, 32 + side  # (below the latency stamp's row of cells)


def shows_mark(image: np.ndarray) -> bool:
    """Whether a decoded BGR picture of the pattern shows the beep mark."""
    x0, y0, x1, y1 = mark_box(image.shape[1], image.shape[0])
    inner = image[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    return bool(inner.size) and float(inner.mean()) > 200


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
