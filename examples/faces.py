"""Faces found with the Haar cascade that opencv-python ships (nothing to download), boxed on the
picture and returned as data: [{"x", "y", "w", "h"}, ...]. It needs OpenCV 4 (opencv-python-headless<5):
OpenCV 5 no longer ships the cascades in opencv-python, and loading this file then says so.

    python server.py --source /dev/video0 --process examples/faces.py:faces
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from camtrack.processing import FrameInfo

CASCADE_FILE = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
if not hasattr(cv2, "CascadeClassifier") or not CASCADE_FILE.is_file():
    # OpenCV 4 wheels ship the Haar cascades; OpenCV 5 moved them out of opencv-python (to contrib)
    raise ImportError(f"this OpenCV ({cv2.__version__}) has no Haar cascades: faces.py needs "
                      "opencv-python-headless 4.x (pip install 'opencv-python-headless<5')")
# loaded once per load of this file (saving it loads it again)
CASCADE = cv2.CascadeClassifier(str(CASCADE_FILE))
#: detection runs on a copy this many times smaller: about 4x faster, faces down to ~60 px still found
SCALE = 2


def faces(frame: np.ndarray, info: FrameInfo) -> list[dict[str, Any]]:
    """Draws a green box round each face and returns the boxes (in the frame's pixels)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    small = cv2.equalizeHist(cv2.resize(grey, (grey.shape[1] // SCALE, grey.shape[0] // SCALE)))
    boxes = []
    for x, y, w, h in CASCADE.detectMultiScale(small, scaleFactor=1.2, minNeighbors=5, minSize=(24, 24)):
        x, y, w, h = (int(v) * SCALE for v in (x, y, w, h))
        cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 255, 0), 2)
        boxes.append({"x": x, "y": y, "w": w, "h": h})
    return boxes
