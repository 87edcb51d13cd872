"""What processing costs, in one run (issue 21):

1. the stage alone: the pattern (640x480 at 30 fps) through a ProcessingStage for some seconds, each
   processed picture's age when a reader gets it (capture to processed), and the process's CPU;
2. glass-to-glass latency at one WebRTC viewer (an aiortc viewer decoding every picture and reading
   its latency stamp, bench.run's rows) with no function, then functions taking 0, 5 and 30 ms a
   frame that draw (bench/functions.py: the video waits for them) and that return data only (the
   video does not wait);
3. server CPU with 1 and with 16 viewers, with no function and with examples/edge.py (a real
   OpenCV filter drawn for every viewer): what processing adds must not grow with the viewers;
4. the age of a data function's results when the page draws them, in Chromium over WebRTC
   (bench.browser: the server and Chromium in a private network namespace; needs root), and how
   many pictures carried their own frame's data.

    python -m bench.processing [--seconds S] [--quick]

Part 1 with a function of your choosing: `--stage-only --work MS [--draws]` (a function that sleeps
MS and returns data; with --draws it also draws: drawn mode, else data mode, docs/processing.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import cv2
import numpy as np

from bench.overlay import data_channel_rows
from camtrack.media.stream import CameraStream
from camtrack.processing import FrameInfo, ProcessingStage
from camtrack.sources.pattern import PatternSource


async def measure(seconds: float, work: float | None = None, draws: bool = False) -> None:
    def function(frame: np.ndarray, info: FrameInfo) -> dict[str, int] | None:
        if work is None:
            return None  # (nothing: data mode, the input's pictures given on)
        time.sleep(work / 1000)
        if draws:
            frame[:8, :8] = (1, 2, 3)
        return {"frame": info.frame}

    stream = CameraStream("bench", lambda: PatternSource(640, 480, 30), linger=0)
    stage = ProcessingStage(stream, "bench", function)
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
    print(f"{stage.mode} mode, function {'none' if work is None else f'{work:g} ms'}: captured {stream.frames}, "
          f"given on {stage.stats.processed + stage.stats.forwarded + stage.stats.passed}, calls {stage.stats.calls}; "
          f"capture to picture: p50 {np.median(ages) * 1000:.1f} ms, p95 {np.percentile(ages, 95) * 1000:.1f} ms; "
          f"CPU {100 * cpu / seconds:.0f} % of a core, capture included")
    image = np.zeros((480, 640, 3), np.uint8)
    began = time.perf_counter()
    for _ in range(500):
        cv2.cvtColor(image.copy(), cv2.COLOR_BGR2YUV_I420)
    print(f"the stage's own work per picture (copy for the function, I420 for the encoders): "
          f"{(time.perf_counter() - began) / 500 * 1000:.2f} ms")


def served_rows(seconds: float, kinds: tuple[str, ...] = ("drawn", "data")) -> None:
    """Parts 2 and 3: server.py rows (bench.run.measure) with --process functions."""
    from bench.run import measure

    print("\nlatency at 1 viewer (640x480, 30 fps, shared H.264 encoder):")
    print("| function | fps | latency p50 ms | latency p95 ms | server CPU % |")
    print("|---|---|---|---|---|")
    plain = None
    for name in ("none", *(f"{kind}_{ms}" for kind in kinds for ms in (0, 5, 30))):
        extra = () if name == "none" else ("--process", f"bench/functions.py:{name}")
        row = measure("shared", "h264", 640, 480, 1, seconds, extra=extra)
        p50, p95 = row.latency_p50, row.latency_p95
        if name == "none":
            plain = p50
        added = "" if plain is None or p50 is None or name == "none" else f" ({p50 - plain:+.0f})"
        print(f"| {name} | {row.fps_mean:.1f} | {p50 if p50 is None else round(p50)}{added} | "
              f"{p95 if p95 is None else round(p95)} | {row.server_cpu:.0f} |", flush=True)
    print("\nserver CPU with 1 and 16 viewers (examples/edge.py draws for all of them):")
    print("| function | viewers | server CPU % | fps min | fps mean |")
    print("|---|---|---|---|---|")
    for name, extra in (("none", ()), ("edge.py", ("--process", "examples/edge.py:edges"))):
        for viewers in (1, 16):
            row = measure("shared", "h264", 640, 480, viewers, seconds, stamped=False, extra=extra)
            print(f"| {name} | {viewers} | {row.server_cpu:.0f} | {row.fps_min:.1f} | {row.fps_mean:.1f} |",
                  flush=True)
    print("\nserver CPU with 1 and 16 viewers of a data function (bench/functions.py:data_0), their "
          "results sent on data channels or not (bench.overlay):")
    data_channel_rows(seconds)
    drawn_age(seconds)


def drawn_age(seconds: float) -> None:
    """Part 4: data ages when drawn in Chromium (WebRTC), for data functions of 0, 5 and 30 ms."""
    from bench.browser import measure as in_chromium

    print("\ndata drawn by the page in Chromium over WebRTC (age: page clock minus the frame's capture):")
    print("| function | pictures | with their own frame's data | age p50 ms | age p95 ms | video latency p50 ms |")
    print("|---|---|---|---|---|---|")
    for name in ("data_0", "data_5", "data_30"):
        (row,) = in_chromium(seconds, ("--process", f"bench/functions.py:{name}"), modes=("webrtc",))
        ages = sorted(row.data_ages)
        if not ages:
            print(f"| {name} | {row.frames} | 0 | - | - | {row.p50:.0f} |", flush=True)
            continue
        p50, p95 = ages[len(ages) // 2], ages[min(len(ages) - 1, round(0.95 * (len(ages) - 1)))]
        print(f"| {name} | {len(ages)} | {row.data_own} | {p50:.0f} | {p95:.0f} | {row.p50:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds measured per row")
    parser.add_argument("--quick", action="store_true", help="the stage alone and one function (CI-sized)")
    parser.add_argument("--stage-only", action="store_true", help="part 1 only")
    parser.add_argument("--chromium-only", action="store_true", help="part 4 only")
    parser.add_argument("--work", type=float, default=None, help="part 1: a function taking MS ms (a sleep)")
    parser.add_argument("--draws", action="store_true", help="part 1: that function draws (drawn mode)")
    args = parser.parse_args()
    if args.chromium_only:
        drawn_age(args.seconds)
        return
    asyncio.run(measure(args.seconds, args.work, args.draws))
    if args.stage_only:
        return
    if args.quick:
        from bench.run import measure as served

        row = served("shared", "h264", 640, 480, 1, args.seconds, extra=("--process", "bench/functions.py:drawn_5"))
        print(f"drawn_5 at 1 viewer: {row.fps_mean:.1f} fps, latency p50 {row.latency_p50} ms")
        return
    served_rows(args.seconds)


if __name__ == "__main__":
    main()
