"""Moving blobs counted with a background subtractor: each boxed, the count written on the picture
and returned as data, {"count": N, "boxes": [[x, y, w, h], ...]}.

    python server.py --source pattern --process examples/blobs.py:blobs
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from camtrack.processing import FrameInfo

# the background model lives as long as this load of the file (each camera loads its own)
SUBTRACTOR = cv2.createBackgroundSubtractorMOG2(history=200, varThreshold=32, detectShadows=False)
KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
#: blobs smaller than this many pixels are noise
MIN_AREA = 150


def blobs(frame: np.ndarray, info: FrameInfo) -> tuple[np.ndarray, dict[str, Any]]:
    """Boxes the moving blobs, writes their count on the frame, and returns both."""
    mask = SUBTRACTOR.apply(frame)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, KERNEL)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = [[int(v) for v in cv2.boundingRect(c)] for c in contours if cv2.contourArea(c) >= MIN_AREA]
    for x, y, w, h in boxes:
        cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 0, 255), 2)
    cv2.putText(frame, f"moving: {len(boxes)}", (10, frame.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (255, 255, 255), 2, cv2.LINE_AA)
    return frame, {"count": len(boxes), "boxes": boxes}
