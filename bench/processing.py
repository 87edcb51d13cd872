"""What the processing stage adds around a user's function that does nothing: the pattern (640x480
at 30 fps) through a ProcessingStage for some seconds, each processed picture's age when a reader
gets it (capture to processed), and the process's CPU (capture included).

    python -m bench.processing [--seconds S]

(The latency added to WebRTC viewers by functions of 0, 5 and 30 ms and the CPU with 1 and 16
viewers are still to be measured: issue 21.)
"""

from __future__ import annotations

import argparse
import asyncio
import time

import cv2
import numpy as np

from camtrack.media.stream import CameraStream
from camtrack.processing import ProcessingStage
from camtrack.sources.pattern import PatternSource


async def measure(seconds: float) -> None:
    stream = CameraStream("bench", lambda: PatternSource(640, 480, 30), linger=0)
    stage = ProcessingStage(stream, "bench", lambda frame, info: None)
    stage.attach(reader := object())
    ages: list[float] = []
    after = 0
    cpu = time.process_time()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            frame = await stage.next_frame(after)
            after = frame.seq
            ages.append(time.monotonic() - frame.monotonic)
    finally:
        cpu = time.process_time() - cpu
        stage.detach(reader)
        await stage.close()
        await stream.close()
    print(f"captured {stream.frames}, processed {stage.stats.processed}, calls {stage.stats.calls}; capture to "
          f"processed: p50 {np.median(ages) * 1000:.1f} ms, p95 {np.percentile(ages, 95) * 1000:.1f} ms; "
          f"CPU {100 * cpu / seconds:.0f} % of a core, capture included")
    image = np.zeros((480, 640, 3), np.uint8)
    began = time.perf_counter()
    for _ in range(500):
        cv2.cvtColor(image.copy(), cv2.COLOR_BGR2YUV_I420)
    print(f"the stage's own work per picture (copy for the function, I420 for the encoders): "
          f"{(time.perf_counter() - began) / 500 * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(measure(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
