"""What recording costs (camtrack.outputs.recording): the CPU of a camera with and without a recorder,
the memory of its pre-roll, and the time from an event to its clip's pre-roll being in the file.

    python -m bench.recording [--seconds S] [--rounds N]
    python -m bench.recording --kills N     # what N kill -9s mid-clip lose, and nothing else
    python -m bench.recording --viewer N    # an honest viewer's p95 latency, N servers with, N without

Two cameras, one at a time, each served by `create_app` in this process as a server would: the
test pattern (640x480 at 30 fps, the shared encoder, a keyframe every 2 s) and a passed-through
H.264 file (640x480, 30 fps, 1 Mbit/s, a keyframe every 2 s, looped). For each, windows of
`--seconds` in turn, `--rounds` times: the camera read by a reader that does nothing (what keeps it
running without a recorder), the camera with a recorder idle (keeping its pre-roll: 5 s), and the
camera with a recorder writing a clip the whole window (--post-roll 1 s, so that the clips of the
latency runs end soon). The process's CPU in each window (every
thread: capture, encoder, writing thread, event loop), as % of one core; the medians are printed.
Then: the pre-roll's bytes and packets (and the Python objects around them), and `--events` (10) events' latency: from
`event_started` until the clip's file holds, in complete fragments, every picture of its pre-roll
up to the pre-roll's newest keyframe (what a crash would no longer lose).

`--kills N`: camtrack recording the pattern in a process of its own (tests/record_process.py, a
keyframe a second) killed with SIGKILL 3 to 4.5 s into a clip, N times: how long before the kill
the last picture its `.part` file holds was captured (its latency stamp).

`--viewer N`: `server.py` serving the pattern (3 Mbit/s, a keyframe a second) N times recording all
along (`--record-segments 60`) and N times not, in turn, each watched by an honest viewer
(tests/honest.py: a decoding aiortc viewer in a process of its own) for three windows of 4 s: its
fps and p95 latency (the pattern's stamp) in each window, and the p95s of each side sorted.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web

from camtrack import Config, create_app
from camtrack.app import CAMERAS, RECORDINGS
from camtrack.connections import make_runner
from camtrack.outputs.recording import Recorder
from camtrack.outputs.recording.fmp4 import scan


def h264_file(path: Path, seconds: int = 20) -> Path:
    """A 640x480 30 fps H.264 file (1 Mbit/s, a keyframe every 2 s, no B-frames) of the pattern's kind."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.bit_rate = 1_000_000
        stream.codec_context.options = {"g": "60", "keyint_min": "60", "sc_threshold": "0", "bf": "0",
                                        "preset": "veryfast", "profile": "main"}
        for n in range(seconds * 30):
            image = np.full((480, 640, 3), 40, np.uint8)
            image[:, (n * 4) % 640:(n * 4) % 640 + 40] = (200, 120, 40)
            image[(n * 3) % 480, :] = 255
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = n, fractions.Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


async def serve(config: Config) -> tuple[web.Application, web.AppRunner]:
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return app, runner


async def window(seconds: float) -> float:
    """The process's CPU over `seconds`, % of a core."""
    began, cpu = time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    return 100 * (time.process_time() - cpu) / (time.monotonic() - began)


async def measure(name: str, source: str, mode: str, seconds: float, rounds: int, directory: Path,
                  events: int = 10) -> dict[str, Any]:
    common: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "source": source, "mode": mode, "webrtc_port": 0,
                              "rtsp_port": 0, "keyframe_interval": 2.0, "record_min_free": 0.0, "linger": 0.0,
                              "post_roll": 1.0}
    results: dict[str, list[float]] = {"camera read, no recorder": [], "recorder idle (pre-roll)": [],
                                       "recorder writing a clip": []}
    # without a recorder: a reader that does nothing keeps the camera running as a recorder would
    app, runner = await serve(Config(**common))
    feed = app[CAMERAS].first.packets()
    assert feed is not None
    feed.attach(keeper := object())
    await asyncio.sleep(3.0)
    for _ in range(rounds):
        results["camera read, no recorder"].append(await window(seconds))
    feed.detach(keeper)
    await runner.cleanup()

    app, runner = await serve(Config(**common, record=str(directory / name)))
    recorder: Recorder = app[RECORDINGS].recorders["default"]
    while recorder.preroll.span < 5.0:
        await asyncio.sleep(0.1)
    packets = recorder.preroll.since(0.0)
    # (the packet data is av.Packet's own buffer; the objects around it are Python's)
    objects = sum(sys.getsizeof(p) + sys.getsizeof(p.packet) + sys.getsizeof(p.shared) for p in packets)
    held = {"bytes": recorder.preroll.bytes, "packets": len(packets), "seconds": recorder.preroll.span,
            "objects": objects}
    for n in range(rounds):
        results["recorder idle (pre-roll)"].append(await window(seconds))
        recorder.event_started(f"bench-{n}", time.time())
        results["recorder writing a clip"].append(await window(seconds))
        recorder.event_ended(f"bench-{n}", time.time())
        await asyncio.sleep(recorder.settings.post_roll + 1.0)
    latencies = []
    for n in range(events):
        await asyncio.sleep(2.5)
        at = time.time()
        held_now = recorder.preroll.since(at - recorder.settings.pre_roll)
        keyframes = [i for i, p in enumerate(held_now) if p.keyframe]
        wanted = keyframes[-1] if len(keyframes) > 1 else len(held_now)  # (up to the newest keyframe)
        began = time.perf_counter()
        recorder.event_started(f"latency-{n}", at)
        clip = recorder.clip
        assert clip is not None
        part = recorder.store.path(clip.id, ".mp4.part")
        while True:
            try:
                if scan(part.read_bytes()).samples >= wanted:
                    break
            except FileNotFoundError:
                pass
            await asyncio.sleep(0.001)
        latencies.append(time.perf_counter() - began)
        recorder.event_ended(f"latency-{n}", time.time())
        await recorder.clip_done(clip.id)
    await runner.cleanup()
    return {"cpu": {k: statistics.median(v) for k, v in results.items()}, "pre_roll": held,
            "latency_ms": sorted(1000 * x for x in latencies)}


def kills(count: int) -> None:
    import json
    import subprocess

    from camtrack.media.stamp import MODULUS, read_stamp
    from camtrack.outputs.recording import Store
    lost = []
    for run in range(count):
        with tempfile.TemporaryDirectory(prefix="camtrack-bench-") as directory:
            process = subprocess.Popen([sys.executable, "tests/record_process.py", directory], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).parent.parent)
            assert process.stdout is not None
            said = json.loads(process.stdout.readline())
            time.sleep(3.0 + 1.5 * run / max(1, count - 1))
            killed = time.time()
            process.kill()
            process.wait()
            with av.open(str(Store(Path(directory)).path(said["clip"], ".mp4.part"))) as container:
                last = [read_stamp(frame.to_ndarray(format="bgr24")) for frame in container.decode(video=0)][-1]
            lost.append(((int(killed * 1000) - last) % MODULUS) / 1000)
    print(f"kill -9 mid-clip, {count} times: the file ends " + ", ".join(f"{x:.2f}" for x in lost)
          + f" s before the kill (max {max(lost):.2f} s)")


async def viewer(rounds: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.honest import CamtrackProcess, HonestViewer
    seen: dict[bool, list[float]] = {True: [], False: []}
    for record in (False, True) * rounds:
        with tempfile.TemporaryDirectory(prefix="camtrack-bench-") as directory:
            options = ["--record", directory, "--record-segments", "60", "--record-min-free", "0"] if record else []
            server = await CamtrackProcess("--source", "pattern", "--bitrate", "3000000", "--keyframe-interval", "1",
                                           *options).start()
            watcher = await HonestViewer(server.ws()).start()
            try:
                await watcher.watch(2.0)
                windows = [await watcher.watch(4.0) for _ in range(3)]
            finally:
                await watcher.stop()
                await server.stop()
        seen[record] += [window.p95 for window in windows]
        print(f"{'recording' if record else 'plain    '} " + " | ".join(f"{w.fps:.1f} fps, p95 {w.p95:.0f} ms"
                                                                  for w in windows), flush=True)
    for record, p95s in seen.items():
        print(f"{'recording' if record else 'plain    '} p95s sorted (ms): {sorted(p95s)}")


async def main(seconds: float, rounds: int, events: int) -> None:
    with tempfile.TemporaryDirectory(prefix="camtrack-bench-") as tmp:
        directory = Path(tmp)
        source = str(h264_file(directory / "camera.mp4"))
        for name, src, mode in (("pattern", "pattern", "transcode"), ("passthrough", source, "passthrough")):
            result = await measure(name, src, mode, seconds, rounds, directory, events)
            cpu = result["cpu"]
            base = cpu["camera read, no recorder"]
            print(f"{name} (640x480, 30 fps): CPU % of a core, median of {rounds} windows of {seconds:g} s:")
            for what, value in cpu.items():
                print(f"  {what:28s} {value:6.2f}  ({value - base:+.2f})")
            held = result["pre_roll"]
            print(f"  pre-roll: {held['bytes'] / 1024:.0f} KiB of packets ({held['packets']} over {held['seconds']:.1f} s) "
                  f"and {held['objects'] / 1024:.0f} KiB of the Python objects around them")
            latency = result["latency_ms"]
            print(f"  event to pre-roll in the file: median {statistics.median(latency):.1f} ms, "
                  f"max {max(latency):.1f} ms ({len(latency)} events)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=10, help="events timed from start to file")
    parser.add_argument("--kills", type=int, default=0, help="measure what N kill -9s lose instead")
    parser.add_argument("--viewer", type=int, default=0, help="measure an honest viewer beside N recording servers "
                        "and N plain ones instead")
    arguments = parser.parse_args()
    if arguments.kills:
        kills(arguments.kills)
    elif arguments.viewer:
        asyncio.run(viewer(arguments.viewer))
    else:
        asyncio.run(main(arguments.seconds, arguments.rounds, arguments.events))
