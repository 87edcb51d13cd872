"""Canny edges drawn on the picture: every viewer sees white edges on black.

    python server.py --source pattern --process examples/edge.py:edges
"""

from __future__ import annotations

import cv2
import numpy as np

from camtrack.processing import FrameInfo


def edges(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    """The frame's edges (Canny on its grey levels), as a BGR picture of the same size."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    found = cv2.Canny(cv2.GaussianBlur(grey, (5, 5), 0), 50, 150)
    return cv2.cvtColor(found, cv2.COLOR_GRAY2BGR)
