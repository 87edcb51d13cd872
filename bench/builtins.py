"""What the built-ins cost per 640x480 picture (camtrack.processing): a mask of two polygons (on the
capture thread), the overlay, and the motion detector on the pattern's moving pictures and on a still
one; each timed over the same 300 pattern pictures, the median and p95 of a call.

    python -m bench.builtins [--width 640 --height 480]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from camtrack.processing import FrameInfo, Masks, MotionDetector, Overlay
from camtrack.sources.pattern import PatternSource


def timed(what: str, pictures: list[np.ndarray], call: Callable[[np.ndarray, int], object]) -> None:
    times = []
    for i, picture in enumerate(pictures):
        began = time.perf_counter()
        call(picture, i)
        times.append(time.perf_counter() - began)
    ms = np.array(times) * 1000
    print(f"{what}: {np.median(ms):.3f} ms a picture (p95 {np.percentile(ms, 95):.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    width, height = args.width, args.height
    source = PatternSource(width, height, 1000)
    source.open()
    pictures = [source.read() for _ in range(300)]
    print(f"{len(pictures)} pattern pictures of {width}x{height}")
    masks = Masks(["100,60 300,60 300,300 100,300", "70%,5% 95%,5% 95%,40%"], width, height)
    timed("masks (a rectangle and a triangle)", [p.copy() for p in pictures], lambda p, i: masks(p))
    overlay = Overlay("%Y-%m-%d %H:%M:%S {camera}")
    now = time.time()
    timed("overlay", [p.copy() for p in pictures], lambda p, i: overlay(p, FrameInfo("porch", i, now + i / 30)))
    motion = MotionDetector()
    timed("motion, the moving pattern", pictures, lambda p, i: motion(p, None))
    still = MotionDetector()
    timed("motion, a still picture", [pictures[0]] * len(pictures), lambda p, i: still(p, None))


if __name__ == "__main__":
    main()
