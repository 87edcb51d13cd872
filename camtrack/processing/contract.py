"""The contract between camtrack and a user's processing function.

    def process(frame: numpy.ndarray, info: FrameInfo) -> None | numpy.ndarray | data | tuple[numpy.ndarray, data]

`frame` is the captured picture, BGR, of the camera's size: a copy the function owns (drawing on it
changes the picture every viewer gets). `info` says which camera and frame it is and when it was
captured. The function returns:

- None: the picture is the frame it got, as it drew on it (or left it);
- a BGR `numpy` array of the same shape: that picture instead;
- anything else JSON can carry (a dict, a list, a number, a string, a bool): data, kept as the
  stage's newest `Result` with the frame number it belongs to; the picture is the frame it got.
  The data is made JSON at once, on the processing thread, at most MAX_DATA characters of it and no
  NaN or Infinity (a BadReturn otherwise): that text is what every viewer gets, so a function may
  return an object it changes afterwards;
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


#: the longest JSON text of a result's data (a data channel's messages are at most 64 KiB by default);
#: longer data is a BadReturn
MAX_DATA = 60_000

#: a user's processing function (see the module's docstring)
ProcessFunction = Callable[[np.ndarray, FrameInfo], Any]


@dataclass(frozen=True)
class Result:
    """Data a processing function returned, with the frame it belongs to."""

    #: the frame number (FrameInfo.frame) the data describes
    frame: int
    #: capture time of that frame, seconds since the epoch
    time: float
    #: what the function returned, as JSON parsed back (a copy the function cannot change afterwards);
    #: None where only the text was relayed (a worker process)
    data: Any
    #: `data` as compact JSON, made once on the processing thread: what every viewer is sent
    text: str = "null"

    @property
    def size(self) -> int:
        """The length of `text`."""
        return len(self.text)


class BadReturn(Exception):
    """A processing function returned something camtrack cannot use (the message says what)."""


@dataclass(frozen=True)
class Outcome:
    """What one call gave: the picture to pass on (None: the one it was given, unchanged or drawn
    on) and the data, if it returned any."""

    picture: np.ndarray | None
    has_data: bool
    data: Any = None
    #: `data` as compact JSON (when has_data)
    text: str = "null"


def interpret(returned: Any, shape: tuple[int, ...]) -> Outcome:
    """What `returned` means under the contract for a frame of `shape`; BadReturn if it means nothing."""
    if returned is None:
        return Outcome(None, False)
    if isinstance(returned, np.ndarray):
        return Outcome(_picture(returned, shape), False)
    if isinstance(returned, tuple) and len(returned) == 2 and (returned[0] is None
                                                               or isinstance(returned[0], np.ndarray)):
        picture = None if returned[0] is None else _picture(returned[0], shape)
        return Outcome(picture, True, *_data(returned[1]))
    return Outcome(None, True, *_data(returned))


def _picture(picture: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if picture.shape != shape or picture.dtype != np.uint8:
        raise BadReturn(f"returned a picture of shape {picture.shape} and type {picture.dtype}: it must be a BGR "
                        f"uint8 array of the frame's shape {shape} (or None, having drawn on the frame)")
    return picture


def _data(data: Any) -> tuple[Any, str]:
    """`data` as JSON text, and that text parsed back (a copy of what the function returned, as
    every viewer gets it); BadReturn when JSON cannot carry it or it is longer than MAX_DATA."""
    try:
        text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise BadReturn("returned data with NaN or Infinity, which JSON cannot carry (a page's JSON.parse "
                            "refuses it): return None or a number instead (math.isfinite)") from None
        raise BadReturn(f"returned data JSON cannot carry ({exc}): return a dict, list, number, string or "
                        f"bool (numpy values as .tolist() or int())") from None
    except TypeError as exc:
        raise BadReturn(f"returned data JSON cannot carry ({exc}): return a dict, list, number, string or "
                        f"bool (numpy values as .tolist() or int())") from None
    if len(text) > MAX_DATA:
        raise BadReturn(f"returned data of {len(text)} characters as JSON, more than the {MAX_DATA} a result may "
                        f"carry (a data channel's message is at most 64 KiB): return less (fewer or rounder "
                        f"numbers), or draw it")
    return json.loads(text), text
