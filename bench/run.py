"""camtrack's benchmark: server CPU, fps, latency and start-up time against N viewers.

    python -m bench.run            # the full sweep (a few minutes)
    python -m bench.run --quick    # a CI-sized run
    python -m bench.run --modes shared --codecs h264 --viewers 8,16 --workers 1,2
                                   # the same rows served by the main process, then by 2 worker processes
    python -m bench.run --browser  # latency in Chromium: WebRTC, and the websocket with WebCodecs, MSE

Each row starts `server.py` as its own process on loopback with the test pattern, connects
N aiortc viewers from separate client processes, and measures one time window. At most
four viewers decode every frame and read the latency stamp; the rest count received frames
without decoding, so that the clients leave the server a fair share of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DECODING_VIEWERS = 4
VIEWERS_PER_PROCESS = 25
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    mode: str
    codec: str
    size: str
    viewers: int
    server_cpu: float
    client_cpu: float
    fps_min: float
    fps_mean: float
    latency_p50: float | None
    latency_p95: float | None
    first_frame_max: float
    #: how old (by its latency stamp) the oldest first picture a viewer saw was
    first_age_max: float | None
    rss_mb: float
    errors: int
    #: --workers: 1 is the main process alone
    workers: int = 1
    #: the main process's own CPU, and each worker's, % of a core (server_cpu is their sum)
    main_cpu: float = 0.0
    worker_cpu: tuple[float, ...] = ()
    #: whose server.py served it (--compare: "before" or "this")
    server: str = "this"
    #: processing results a second per viewer (viewers with --data, bench.overlay), else 0
    data_rate: float = 0.0

    def cells(self) -> list[str]:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        split = "/".join(f"{c:.0f}" for c in self.worker_cpu) or "-"
        return [self.server, self.mode, self.codec, self.size, str(self.workers), str(self.viewers), f"{self.server_cpu:.0f}",
                f"{self.main_cpu:.0f}", split,
                f"{self.client_cpu:.0f}", f"{self.fps_min:.1f}", f"{self.fps_mean:.1f}",
                ms(self.latency_p50), ms(self.latency_p95), ms(self.first_frame_max * 1000),
                ms(self.first_age_max), f"{self.rss_mb:.0f}", str(self.errors)]


HEADER = ["server", "encoder", "codec", "size", "workers", "N", "server CPU %", "main CPU %", "per-worker CPU %",
          "clients CPU %", "fps min", "fps mean",
          "latency p50 ms", "latency p95 ms", "first frame max ms", "first frame age max ms", "server RSS MB",
          "errors"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`: a server's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(found)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(port: int, args: list[str], root: Path = ROOT, stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """`root`'s server.py on 127.0.0.1:`port` with `args` (not waited for: see wait_for_server).
    `stderr=subprocess.DEVNULL` for a server that may say much (a pipe nobody reads fills up)."""
    return subprocess.Popen(
        [sys.executable, str(root / "server.py"), "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=root, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
    )


def wait_for_server(server: subprocess.Popen, port: int, deadline: float, path: str = "/") -> None:
    """Return once the server answers http `path`; RuntimeError (with what it said, when it ended
    and its stderr is a pipe) when it ended or `deadline` (time.monotonic()) passed first."""
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                said = server.stderr.read() if server.stderr is not None and server.poll() is not None else ""
                raise RuntimeError(f"server did not start: {said}") from None
            time.sleep(0.1)


def start_server(port: int, args: list[str], root: Path = ROOT, path: str = "/",
                 stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """launch_server, then wait_for_server (30 s); the server is stopped if it did not start."""
    server = launch_server(port, args, root, stderr)
    try:
        wait_for_server(server, port, time.monotonic() + 30, path)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: subprocess.Popen) -> None:
    """Terminate the server; kill it if it has not ended 10 s later."""
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()


def reports(processes: list[subprocess.Popen[str]], timeout: float = 120.0) -> list[dict[str, Any]]:
    """What each client process (bench.viewers, bench.audio --client) reported once it ended: the
    JSON of its output's last line (waiting `timeout` s at most for each)."""
    return [json.loads(p.communicate(timeout=timeout)[0].strip().splitlines()[-1]) for p in processes]


def kill_running(processes: list[subprocess.Popen[str]]) -> None:
    """Kill those of `processes` still running (client processes after a failure)."""
    for p in processes:
        if p.poll() is None:
            p.kill()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(mode: str, codec: str, width: int, height: int, viewers: int, duration: float,
            source: str = "pattern", join_spread: float = 0.0, stamped: bool = True, workers: int = 1,
            root: Path = ROOT, server_name: str = "this", extra: tuple[str, ...] = (),
            viewer_options: tuple[str, ...] = ()) -> Row:
    """One row. `mode` is an --encoder (shared, per-viewer), or for an H.264 `source` a --mode
    (passthrough, transcode: the camera's own packets against decoding and encoding them again).
    `root`: the checkout whose server.py serves it (the viewers are always this checkout's);
    `extra`: more server options (bench.processing: a --process function); `viewer_options`: more
    bench.viewers options (bench.overlay: --data)."""
    port = free_port()
    how = ["--mode", mode] if mode in ("passthrough", "transcode") else ["--encoder", mode]
    server = launch_server(
        port, ["--source", source, "--width", str(width), "--height", str(height), "--fps", "30",
               "--codec", codec, *how, "--ice-address", "127.0.0.1", "--log-level", "warning",
               "--webrtc-port", "0", "--workers", str(workers), *extra], root=root)
    clients: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 30
        wait_for_server(server, port, deadline)
        helpers: list[int] = []
        while workers > 1 and len(helpers) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server started {len(helpers)} of {workers} workers")
            helpers = children(server.pid)
            time.sleep(0.1)
        start_at = time.time() + 4 + 0.08 * viewers + join_spread
        url = f"ws://127.0.0.1:{port}/ws"
        groups = [(min(viewers, DECODING_VIEWERS), True)]
        rest = viewers - groups[0][0]
        while rest > 0:
            groups.append((min(rest, VIEWERS_PER_PROCESS), False))
            rest -= groups[-1][0]
        for count, decode in groups:
            argv = [sys.executable, "-m", "bench.viewers", "--url", url, "--count", str(count),
                    "--start-at", str(start_at), "--duration", str(duration), "--join-spread", str(join_spread),
                    *viewer_options]
            if decode:
                argv.append("--decode")
            clients.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True))
        time.sleep(max(0.0, start_at - time.time()))
        pids = [server.pid, *helpers]
        cpu0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(duration)
        cpu1, t1 = [cpu_seconds(p) for p in pids], time.monotonic()
        rss = sum(rss_mb(p) for p in pids)
        cpu = [100 * (b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)]
        results = reports(clients)
    finally:
        kill_running(clients)
        stop_server(server)
    per_viewer = [v for r in results for v in r["viewers"]]
    fps = [v["frames"] / duration for v in per_viewer]
    # a looped clip's pictures carry the stamps of when they were encoded, not of now
    latency = [ms for v in per_viewer for ms in v["latency"]] if stamped else []
    ages = [v["first_age"] for v in per_viewer if "first_age" in v] if stamped else []
    return Row(
        mode=mode, codec=codec, size=f"{width}x{height}", viewers=viewers,
        server_cpu=sum(cpu), main_cpu=cpu[0], worker_cpu=tuple(cpu[1:]), workers=workers,
        client_cpu=100 * sum(r["cpu_seconds"] for r in results) / duration,
        fps_min=min(fps), fps_mean=statistics.mean(fps),
        latency_p50=percentile(latency, 0.5), latency_p95=percentile(latency, 0.95),
        first_frame_max=max(v.get("first_frame", float("inf")) for v in per_viewer),
        first_age_max=max(ages) if ages else None,
        rss_mb=rss, errors=sum(1 for v in per_viewer if "error" in v), server=server_name,
        data_rate=statistics.mean(v.get("data", 0) / duration for v in per_viewer),
    )


def live_camera(size: str = "640x480", bitrate: int = 1_000_000, clip: bool = False) -> tuple[subprocess.Popen[str], str]:
    """An RTSP camera on loopback (tests/rtsp_server.py): the pattern at 30 fps, H.264 Main without
    B-frames, a keyframe every 4 s; encoded as it is served, each picture stamped, or (`clip`, for
    sizes this machine cannot encode live beside the server) encoded once and looped."""
    argv = [sys.executable, "-m", "tests.rtsp_server", "--size", size, "--bitrate", str(bitrate)]
    camera = subprocess.Popen(argv + (["--clip"] if clip else []), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert camera.stdout is not None
    return camera, camera.stdout.readline().strip()


def print_table(rows: list[Row]) -> None:
    lines = [HEADER] + [row.cells() for row in rows]
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|")
    for cells in lines[1:]:
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small sweep with short windows (about a minute)")
    parser.add_argument("--modes", default="shared,per-viewer")
    parser.add_argument("--codecs", default="h264,vp8")
    parser.add_argument("--viewers", default=None, help="comma-separated N (default 1,4,16)")
    parser.add_argument("--max-viewers", type=int, default=50,
                        help="one more shared-encoder row at this N, to show how far one box goes (0: none)")
    parser.add_argument("--sizes", default=None, help="comma-separated WxH (default 640x480, plus 1280x720 at N=1,4)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per row")
    parser.add_argument("--passthrough", action="store_true",
                        help="rows of an RTSP camera's own H.264 (the pattern encoded live, 640x480@30, a keyframe "
                             "every 4 s, viewers joining at random points of its GOP) passed through against decoded "
                             "and encoded again, beside the pattern's rows")
    parser.add_argument("--camera", default="640x480", metavar="WxH",
                        help="--passthrough: the camera's size; other than 640x480 it is a looped clip (no latency)")
    parser.add_argument("--camera-bitrate", type=int, default=1_000_000, metavar="BPS")
    parser.add_argument("--workers", default="1", metavar="N[,N...]",
                        help="the server's --workers, each a row of its own (default 1: the main process alone); "
                             "server CPU and RSS are the main process's and its workers' together")
    parser.add_argument("--browser", action="store_true",
                        help="only the latency in Chromium on loopback of WebRTC against the websocket fallback "
                             "(WebCodecs, MSE); needs root and Debian's chromium (bench/browser.py)")
    parser.add_argument("--scale", action="store_true",
                        help="the scale mode (bench/scale.py): a ladder of non-decoding viewers, marginal CPU per "
                             "viewer, the largest N served, and the crowd against a CPU-capped server")
    parser.add_argument("--repeat", type=int, default=1, help="--scale: run the ladder this many times")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="also measure every row (or --scale: the ladder) with the server of another checkout, "
                             "row by row beside this one's (before/after in one run)")
    parser.add_argument("--crowd-quota", type=float, default=30.0,
                        help="--scale: the crowd's server gets this %% of one core (cgroup; 0: no crowd)")
    parser.add_argument("--light", action="store_true",
                        help="--scale: the non-decoding viewers count pictures off the wire without an aiortc "
                             "receiver (no SRTP, no jitter buffer): hundreds fit beside the server")
    parser.add_argument("--join-rate", type=float, default=0.0, metavar="PER_SECOND",
                        help="--scale: ladder viewers join this many a second (default: all at once)")
    parser.add_argument("--worker-quota", type=float, default=None, metavar="PERCENT",
                        help="--scale with --workers: cap each worker process to this %% of one core (cgroup, "
                             "root): a core of its own, played on a machine without cores to spare")
    parser.add_argument("--crowd-watchers", type=int, default=16,
                        help="--scale: probe viewers that join one by one to find the capped server's capacity C")
    args = parser.parse_args()
    if args.browser:
        from . import browser

        browser.report(args.duration or 20.0)
        return

    if args.scale:
        from . import scale

        roots = {"this": ROOT}
        if args.compare:
            roots = {"before": Path(args.compare).resolve(), "this": ROOT}
        scale.main([int(n) for n in (args.viewers or "1,15,30,45").split(",")], args.repeat,
                   args.duration or 10.0, roots, args.crowd_quota or None, args.crowd_watchers,
                   tuple(int(n) for n in args.workers.split(",")), args.light, args.join_rate, args.worker_quota)
        return

    duration = args.duration or (4.0 if args.quick else 10.0)
    counts = [int(n) for n in (args.viewers or ("1,4" if args.quick else "1,4,16")).split(",")]
    modes, codecs = args.modes.split(","), args.codecs.split(",")
    plan = []
    for size in (args.sizes or "640x480").split(","):
        width, height = map(int, size.split("x"))
        plan += [(m, c, width, height, n) for m in modes for c in codecs for n in counts]
    worker_counts = [int(n) for n in args.workers.split(",")]
    if not args.quick and not args.sizes:
        plan += [(m, c, 1280, 720, n) for m in modes for c in codecs for n in (1, 4)]
    if args.max_viewers and not args.quick and "shared" in modes:
        plan += [("shared", c, 640, 480, args.max_viewers) for c in codecs]

    camera = None
    sources = dict.fromkeys(modes, "pattern")
    clip, spread = args.camera != "640x480", 0.0
    if args.passthrough:
        camera, url = live_camera(args.camera, args.camera_bitrate, clip)
        width, height = map(int, args.camera.split("x"))
        modes, codecs, spread = ["shared", "passthrough", "transcode"], ["h264"], 4.0
        sources = {"shared": "pattern", "passthrough": url, "transcode": url}
        plan = [(m, "h264", width, height, n) for m in modes for n in counts]
    print(f"# camtrack benchmark: {os.cpu_count()} cores, {duration:g} s windows, "
          f"{'the pattern beside an RTSP camera of it' if args.passthrough else 'pattern source'} at 30 fps"
          f"{f' ({args.camera} at {args.camera_bitrate} bit/s, looped clip)' if clip else ''}", flush=True)
    # --compare: each row is measured with the other checkout's server and then with this one's, one
    # after the other, so the machine's noise falls on both alike
    servers = [("before", Path(args.compare).resolve())] if args.compare else []
    servers.append(("this", ROOT))
    rows = []
    try:
        for mode, codec, width, height, viewers in plan:
            for workers in worker_counts:
                for server_name, root in servers:
                    camera_row = sources[mode] != "pattern"
                    row = measure(mode, codec, width, height, viewers, duration, sources[mode],
                                  join_spread=spread if camera_row else 0.0, stamped=not (camera_row and clip),
                                  workers=workers, root=root, server_name=server_name)
                    rows.append(row)
                    print("  " + "  ".join(row.cells()), file=sys.stderr, flush=True)
    finally:
        if camera is not None:
            camera.kill()
    print_table(rows)
    if args.compare:
        for one in (r for r in rows if r.server == "before"):
            other = next(r for r in rows if r.server == "this" and (r.mode, r.codec, r.size, r.viewers, r.workers)
                         == (one.mode, one.codec, one.size, one.viewers, one.workers))
            p50 = ("-" if one.latency_p50 is None or other.latency_p50 is None
                   else f"{other.latency_p50:.0f} against {one.latency_p50:.0f} ms")
            print(f"{one.mode} {one.codec} {one.size} N={one.viewers} workers={one.workers}: this / before: "
                  f"server CPU {other.server_cpu / max(one.server_cpu, 1e-9):.2f}x, fps min {other.fps_min:.1f} "
                  f"against {one.fps_min:.1f}, latency p50 {p50}, RSS {other.rss_mb:.0f} against {one.rss_mb:.0f} MB")
    rows = [r for r in rows if r.server == "this"]
    for codec in codecs:
        for mode in modes:
            base = [r for r in rows if (r.mode, r.codec, r.size, r.workers) == (mode, codec, rows[0].size,
                                                                                worker_counts[0])]
            one = next((r for r in base if r.viewers == 1), None)
            if one is None or one.server_cpu <= 0:
                continue
            ratios = ", ".join(f"CPU({r.viewers})/CPU(1) = {r.server_cpu / one.server_cpu:.1f}"
                               for r in base if r.viewers > 1)
            if ratios:
                print(f"{mode} {codec} {rows[0].size}: {ratios}")
    for n in counts:
        for workers in worker_counts[1:]:
            for one in (r for r in rows if r.viewers == n and r.workers == worker_counts[0]):
                other = next((r for r in rows if (r.mode, r.codec, r.size, r.viewers, r.workers)
                              == (one.mode, one.codec, one.size, n, workers)), None)
                if other is not None and one.server_cpu > 0:
                    print(f"{one.mode} {one.codec} {one.size} N={n}: --workers {workers} / --workers {one.workers}: "
                          f"server CPU {other.server_cpu / one.server_cpu:.2f}x, main process CPU "
                          f"{other.main_cpu / max(one.main_cpu, 1e-9):.2f}x, fps min {other.fps_min:.1f} "
                          f"against {one.fps_min:.1f}")
    if args.passthrough:
        for n in counts:
            by = {r.mode: r for r in rows if r.viewers == n}
            if "passthrough" in by and "transcode" in by and by["transcode"].server_cpu > 0:
                print(f"N={n}: passthrough CPU / transcode CPU = "
                      f"{by['passthrough'].server_cpu / by['transcode'].server_cpu:.2f}")

if __name__ == "__main__":
    main()
