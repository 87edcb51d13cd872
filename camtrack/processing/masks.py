"""Privacy masks: polygons blacked out of every picture before anything else reads it.

A camera's masks (`--mask "x1,y1 x2,y2 x3,y3"`, repeatable; `mask = [...]` in the config file) are
applied on its capture thread, before the picture's I420 conversion and before it is handed on
(camtrack.media.capture), so the processing function, JPEG, the encoders, the tiers, Janus and RTSP
never see the masked area. A polygon is three or more points `x,y`, in pixels of the camera's
picture (`--width` x `--height`) or in percent of it (`25%,10%`).

From Python: `apply_masks(frame, ["0,0 200,0 200,100 0,100"])` blacks out those polygons in place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np

#: more points than this in one polygon is a mistake (a mask is a few corners)
MAX_POINTS = 64
#: more polygons than this per camera is a mistake
MAX_MASKS = 32
_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(%?)$")

#: a polygon's points as given: (value, in percent) for x and for y
Spec = list[tuple[tuple[float, bool], tuple[float, bool]]]


class MaskError(ValueError):
    """A mask polygon that cannot be used: the message says why, in one line."""


def _number(polygon: str, text: str) -> tuple[float, bool]:
    match = _NUMBER.match(text)
    if not match:
        raise MaskError(f"mask {polygon!r}: {text!r} is not a number of pixels or a percentage (like 120 or 25%)")
    value, percent = float(match.group(1)), bool(match.group(2))
    if percent and value > 100:
        raise MaskError(f"mask {polygon!r}: {text} is more than 100%")
    return value, percent


def parse_form(polygon: str) -> Spec:
    """The points of `polygon` ("x1,y1 x2,y2 x3,y3 ..."), not yet placed in a picture; MaskError
    when it is not of that form."""
    if not isinstance(polygon, str):
        raise MaskError(f"a mask must be a string of points like \"10,10 200,10 200,120\", not {polygon!r}")
    points = polygon.split()
    if len(points) < 3:
        raise MaskError(f"mask {polygon!r} needs at least 3 points x,y separated by spaces, like \"10,10 200,10 200,120\"")
    if len(points) > MAX_POINTS:
        raise MaskError(f"mask {polygon[:40]!r}... has {len(points)} points, at most {MAX_POINTS}")
    spec: Spec = []
    for point in points:
        x, sep, y = point.partition(",")
        if not sep or "," in y:
            raise MaskError(f"mask {polygon!r}: {point!r} is not a point x,y")
        spec.append((_number(polygon, x), _number(polygon, y)))
    return spec


def polygon_points(polygon: str, width: int, height: int) -> np.ndarray:
    """`polygon` as an (N, 2) int32 array of pixel corners in a `width` x `height` picture;
    MaskError when it is malformed, leaves the picture or covers no area."""
    spec = parse_form(polygon)
    corners: list[tuple[float, float]] = []
    for (x, x_percent), (y, y_percent) in spec:
        px = x * width / 100 if x_percent else x
        py = y * height / 100 if y_percent else y
        if px > width or py > height:
            raise MaskError(f"mask {polygon!r}: the point {px:g},{py:g} is outside the {width}x{height} picture")
        corners.append((px, py))
    xs, ys = np.array([c[0] for c in corners]), np.array([c[1] for c in corners])
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    if area < 1:
        raise MaskError(f"mask {polygon!r} covers no area (its points are on one line)")
    return np.round(np.array(corners)).astype(np.int32)


def check_masks(what: str, polygons: list[str]) -> list[str]:
    """The form of a list of mask polygons (their place in the picture is checked with the camera's size)."""
    if len(polygons) > MAX_MASKS:
        raise MaskError(f"{what}: {len(polygons)} polygons, at most {MAX_MASKS}")
    for polygon in polygons:
        parse_form(polygon)
    return polygons


class Masks:
    """A camera's masks, placed in its `width` x `height` picture: called with a BGR picture, it
    blacks the polygons out (in place when the array is writable, else in a copy) and returns it."""

    def __init__(self, polygons: Sequence[str], width: int, height: int) -> None:
        self.polygons = [polygon_points(p, width, height) for p in polygons]
        self.size = (width, height)

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not image.flags.writeable:
            image = image.copy()
        fill = (0,) * image.shape[2] if image.ndim == 3 else 0
        cv2.fillPoly(image, self.polygons, fill)
        return image


def apply_masks(frame: np.ndarray, polygons: Sequence[str | Sequence[tuple[float, float]]]) -> np.ndarray:
    """Black out `polygons` of `frame` in place and return it: each polygon as camtrack's option
    writes it ("x1,y1 x2,y2 x3,y3", pixels or percent) or as a list of (x, y) pixel corners."""
    height, width = frame.shape[:2]
    placed = [polygon_points(p, width, height) if isinstance(p, str) else np.round(np.asarray(p)).astype(np.int32)
              for p in polygons]
    cv2.fillPoly(frame, placed, (0,) * frame.shape[2] if frame.ndim == 3 else 0)
    return frame
