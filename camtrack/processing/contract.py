"""The contract between camtrack and a user's processing function.

    def process(frame: numpy.ndarray, info: FrameInfo) -> None | numpy.ndarray | data | tuple[numpy.ndarray, data]

`frame` is the captured picture, BGR, of the camera's size: a copy the function owns (drawing on it
changes the picture every viewer gets). `info` says which camera and frame it is and when it was
captured. The function returns:

- None: the picture is the frame it got, as it drew on it (or left it);
- a BGR `numpy` array of the same shape: that picture instead;
- anything else JSON can carry (a dict, a list, a number, a string, a bool): data, kept as the
  stage's newest `Result` with the frame number it belongs to; the picture is the frame it got;
- a tuple `(picture, data)`: both (the picture may be None: the frame it got).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameInfo:
    """What a processing function is told about the frame it gets."""

    #: the camera's name
    camera: str
    #: the frame's number (grows by one per captured frame, across the camera's reopenings)
    frame: int
    #: capture time, seconds since the epoch
    time: float


#: a user's processing function (see the module's docstring)
ProcessFunction = Callable[[np.ndarray, FrameInfo], Any]


@dataclass(frozen=True)
class Result:
    """Data a processing function returned, with the frame it belongs to."""

    #: the frame number (FrameInfo.frame) the data describes
    frame: int
    #: capture time of that frame, seconds since the epoch
    time: float
    #: what the function returned, JSON-able
    data: Any


class BadReturn(Exception):
    """A processing function returned something camtrack cannot use (the message says what)."""


@dataclass(frozen=True)
class Outcome:
    """What one call gave: the picture to pass on (None: the one it was given, unchanged or drawn
    on) and the data, if it returned any."""

    picture: np.ndarray | None
    has_data: bool
    data: Any = None


def interpret(returned: Any, shape: tuple[int, ...]) -> Outcome:
    """What `returned` means under the contract for a frame of `shape`; BadReturn if it means nothing."""
    if returned is None:
        return Outcome(None, False)
    if isinstance(returned, np.ndarray):
        return Outcome(_picture(returned, shape), False)
    if isinstance(returned, tuple) and len(returned) == 2 and (returned[0] is None
                                                               or isinstance(returned[0], np.ndarray)):
        picture = None if returned[0] is None else _picture(returned[0], shape)
        return Outcome(picture, True, _data(returned[1]))
    return Outcome(None, True, _data(returned))


def _picture(picture: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if picture.shape != shape or picture.dtype != np.uint8:
        raise BadReturn(f"returned a picture of shape {picture.shape} and type {picture.dtype}: it must be a BGR "
                        f"uint8 array of the frame's shape {shape} (or None, having drawn on the frame)")
    return picture


def _data(data: Any) -> Any:
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise BadReturn(f"returned data JSON cannot carry ({exc}): return a dict, list, number, string or "
                        f"bool (numpy values as .tolist() or int())") from None
    return data
