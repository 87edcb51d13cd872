"""Processing functions for bench.processing: each takes a fixed time per frame (sleeping, so the
time is the function's and not a fight for this machine's two cores) and either draws (a small
mark away from the latency stamp: the video waits for it) or returns data only (the video does
not wait for it)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from camtrack.processing import FrameInfo


def _drawn(ms: float, frame: np.ndarray) -> None:
    if ms:
        time.sleep(ms / 1000)
    frame[-8:, -8:] = 255  # (bottom right: the latency stamp is along the top)


def _data(ms: float, info: FrameInfo) -> dict[str, Any]:
    if ms:
        time.sleep(ms / 1000)
    return {"frame": info.frame, "boxes": [{"x": 10, "y": 40, "w": 50, "h": 50}]}


def drawn_0(frame: np.ndarray, info: FrameInfo) -> None:
    _drawn(0, frame)


def drawn_5(frame: np.ndarray, info: FrameInfo) -> None:
    _drawn(5, frame)


def drawn_30(frame: np.ndarray, info: FrameInfo) -> None:
    _drawn(30, frame)


def data_0(frame: np.ndarray, info: FrameInfo) -> dict[str, Any]:
    return _data(0, info)


def data_5(frame: np.ndarray, info: FrameInfo) -> dict[str, Any]:
    return _data(5, info)


def data_30(frame: np.ndarray, info: FrameInfo) -> dict[str, Any]:
    return _data(30, info)
