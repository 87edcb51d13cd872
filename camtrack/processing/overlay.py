"""The text overlay: a line of text with `strftime` codes (the frame's capture time), drawn on every
picture once for every viewer (`--overlay "%Y-%m-%d %H:%M:%S porch"`, `--overlay-position`).

From Python: `draw_text(frame, "hello", "bottom-right")` draws a line in place; `Overlay(text)` is a
processing function that draws `text` with the frame's capture time.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from .contract import FrameInfo

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: the longest overlay text: a line, not a paragraph
MAX_TEXT = 200
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def check_text(what: str, text: str) -> str:
    """An overlay text: one printable line of at most MAX_TEXT characters whose strftime codes work."""
    if not text or len(text) > MAX_TEXT or not text.isprintable():
        raise ValueError(f"{what} must be one line of 1 to {MAX_TEXT} printable characters, not {text[:60]!r}")
    try:
        time.strftime(text)
    except ValueError as exc:
        raise ValueError(f"{what} {text!r}: {exc}") from None
    return text


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts have ASCII only: anything else would be drawn as '?' marks of its own
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def draw_text(frame: np.ndarray, text: str, position: str = "top-left", *, scale: float | None = None,
              colour: tuple[int, int, int] = (255, 255, 255),
              background: tuple[int, int, int] | None = (0, 0, 0)) -> np.ndarray:
    """Draw one line of `text` on `frame` (BGR, in place) in a corner (`position`: one of POSITIONS),
    white on a black box unless told otherwise, sized to the picture (`scale`: OpenCV's font scale,
    default from the picture's height); returns `frame`."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, not {position!r}")
    height, width = frame.shape[:2]
    scale = max(0.4, height / 800) if scale is None else scale
    thickness = max(1, round(scale * 2))
    line = _ascii(text)
    (text_w, text_h), base = cv2.getTextSize(line, _FONT, scale, thickness)
    pad = max(2, round(4 * scale))
    # (clear of the corner: at 480 lines the box starts 20 lines down, below camtrack's latency stamp)
    margin = max(4, round(height / 24))
    box_w, box_h = text_w + 2 * pad, text_h + base + 2 * pad
    left = margin if position.endswith("left") else max(0, width - margin - box_w)
    top = margin if position.startswith("top") else max(0, height - margin - box_h)
    if background is not None:
        cv2.rectangle(frame, (left, top), (left + box_w, top + box_h), background, -1)
    cv2.putText(frame, line, (left + pad, top + pad + text_h), _FONT, scale, colour, thickness, cv2.LINE_AA)
    return frame


class Overlay:
    """A processing function drawing `text` on every frame, its strftime codes given the frame's
    capture time (local time), in a corner (`position`). `{camera}` in the text is the camera's name."""

    def __init__(self, text: str, position: str = "top-left") -> None:
        check_text("overlay", text)
        if position not in POSITIONS:
            raise ValueError(f"overlay position must be one of {', '.join(POSITIONS)}, not {position!r}")
        self.text = text
        self.position = position
        self._second: tuple[int, str] | None = None
        self._line = ""

    def line(self, info: FrameInfo) -> str:
        """The text for `info`'s frame (formatted again only when the second or camera changes)."""
        second = int(info.time)
        if self._second != (second, info.camera):
            self._second = (second, info.camera)
            self._line = time.strftime(self.text.replace("{camera}", info.camera), time.localtime(second))
        return self._line

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> None:
        draw_text(frame, self.line(info), self.position)
