"""camtrack's scale benchmark: many non-decoding viewers, the marginal server CPU per viewer, the
largest N served at >= 29 fps with p95 <= 60 ms, and a crowd against a CPU-capped server.

    python -m bench.run --scale                       # ladder 1,15,30,45 and the crowd (as root)
    python -m bench.run --scale --viewers 1,50,100 --repeat 2 --crowd-quota 40

Each ladder row starts `server.py` (640x480@30 H.264 1 Mbit/s, the pattern) and N aiortc viewers
in client processes; two of them decode (latency from the pattern's stamp), the rest receive,
decrypt and reassemble every frame without decoding it. With more than four cores the server is
pinned to two of them and the clients to the others (`taskset`); on fewer everything shares the
machine and the clients' CPU is reported beside the server's. The marginal CPU per viewer is the
least-squares slope of server CPU over N. `/metrics` gives each row's capture-to-wire p50 and
event-loop lag p50 (bucket bounds).

The crowd (root only, cgroup v1 `cpu.cfs_quota_us`): the server is capped to a share of one core;
probe viewers join one after another until the server refuses them (its capacity C, as it
measures it), then leave; C/2 watchers join, then 2*C newcomers at the same instant. Reported: the
watchers' fps and latency during the crowd, and for each newcomer whether it played or was
refused, how fast, and whether any hung.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .run import ROOT, VIEWERS_PER_PROCESS, children, cpu_seconds, free_port, kill_running, percentile, reports, rss_mb

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
DECODING = 2
FPS_TARGET = 29.0
P95_TARGET = 60.0
#: a newcomer's answer (first picture or refusal) must come within this
OUTCOME_LIMIT = 5.0


@dataclass
class Placement:
    """Which cores the server and the clients run on (empty: anywhere)."""

    server: str = ""
    clients: str = ""

    @classmethod
    def for_machine(cls) -> Placement:
        cores = os.cpu_count() or 1
        if cores > 4:
            return cls("0,1", f"2-{cores - 1}")
        return cls()

    def wrap(self, cores: str, argv: list[str]) -> list[str]:
        return ["taskset", "-c", cores, *argv] if cores else argv


class Server:
    """server.py as its own process, optionally pinned and inside a CPU-capped cgroup."""

    def __init__(self, root: Path, placement: Placement, quota_percent: float | None = None,
                 extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(root / "server.py"), "--host", "127.0.0.1", "--port", str(self.port),
                "--source", "pattern", "--width", "640", "--height", "480", "--fps", "30", "--codec", "h264",
                "--bitrate", "1000000", "--ice-address", "127.0.0.1", "--log-level", "warning",
                "--max-pending", "1000", *(extra or [])]
        self.process = subprocess.Popen(placement.wrap(placement.server, argv), cwd=root,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        #: the CPU cgroups made for it (the server's, or each worker's), removed at stop
        self.cgroups: list[Path] = []
        if quota_percent is not None:
            self.cap(self.process.pid, quota_percent)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)

    def metrics(self) -> str:
        return urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()

    def cap(self, pid: int, quota_percent: float) -> None:
        """Put process `pid` (and the children it starts from now on) in a CPU cgroup of its own
        with a quota of `quota_percent` % of one core."""
        cgroup = CGROUP_CPU / f"camtrack-bench-{pid}"
        cgroup.mkdir()
        self.cgroups.append(cgroup)
        (cgroup / "cpu.cfs_period_us").write_text("100000")
        (cgroup / "cpu.cfs_quota_us").write_text(str(int(quota_percent * 1000)))
        (cgroup / "cgroup.procs").write_text(str(pid))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for cgroup in self.cgroups:
            for _ in range(50):
                try:
                    cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def histogram_p50(metrics: str, name: str, labels: str = "") -> float | None:
    """The upper bound of the bucket holding the median of a Prometheus histogram (summed over
    the series whose labels contain `labels`)."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{") and labels in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = buckets.get(float(bound), 0.0) + float(line.rsplit(" ", 1)[1])
    if not buckets or not buckets.get(float("inf")):
        return None
    total = buckets[float("inf")]
    return next(bound for bound in sorted(buckets) if buckets[bound] >= total / 2)


def clients(url: str, placement: Placement, count: int, decoding: int, start_at: float, duration: float,
            join_at: float | None = None, stagger: float = 0.0, light: bool = False) -> list[subprocess.Popen[str]]:
    """Client processes for `count` viewers, the first `decoding` of them decoding (with `light`, the
    others count pictures off the wire without an aiortc receiver: bench/viewers.py)."""
    groups = [(min(count, decoding), True)] if decoding else []
    rest = count - (groups[0][0] if groups else 0)
    while rest > 0:
        groups.append((min(rest, VIEWERS_PER_PROCESS), False))
        rest -= groups[-1][0]
    started = []
    offset = 0
    for n, decode in groups:
        argv = [sys.executable, "-m", "bench.viewers", "--url", url + "/ws", "--count", str(n),
                "--start-at", str(start_at), "--duration", str(duration)]
        if decode:
            argv.append("--decode")
        elif light:
            argv.append("--light")
        if join_at is not None:
            argv += ["--join-at", str(join_at + offset * stagger)]
        offset += n
        if stagger:
            argv += ["--stagger", str(stagger)]
        started.append(subprocess.Popen(placement.wrap(placement.clients, argv), cwd=ROOT,
                                        stdout=subprocess.PIPE, text=True))
    return started


def results_of(processes: list[subprocess.Popen[str]]) -> tuple[list[dict], float]:
    """Every viewer's result, and the clients' CPU seconds in the window."""
    outputs = reports(processes, timeout=180)
    return [v for o in outputs for v in o["viewers"]], sum(o["cpu_seconds"] for o in outputs)


@dataclass
class ScaleRow:
    server: str
    viewers: int
    server_cpu: float
    client_cpu: float
    fps_min: float
    fps_mean: float
    p50: float | None
    p95: float | None
    wire_p50: float | None
    lag_p50: float | None
    rss: float
    errors: int
    #: the server's own count of newcomers refused for its load, by reason
    refusals: str = ""
    #: light viewers: the longest wait between two pictures any of them had (ms)
    gap_max: float | None = None
    #: with workers: each process's CPU % ("main 12 / 20, 21": the main process, then each worker)
    per_process: str = ""

    def cells(self) -> list[str]:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        def bound(value: float | None) -> str:
            return "-" if value is None else f"≤{value * 1000:g}"

        return [self.server, str(self.viewers), f"{self.server_cpu:.1f}", f"{self.client_cpu:.0f}",
                f"{self.fps_min:.1f}", f"{self.fps_mean:.1f}", ms(self.p50), ms(self.p95),
                bound(self.wire_p50), bound(self.lag_p50), f"{self.rss:.0f}",
                f"{self.errors} ({self.refusals})" if self.refusals else str(self.errors), ms(self.gap_max),
                self.per_process or "-"]


SCALE_HEADER = ["server", "N", "server CPU %", "clients CPU %", "fps min", "fps mean", "latency p50 ms",
                "latency p95 ms", "capture-to-wire p50 ms", "loop lag p50 ms", "server RSS MB", "errors",
                "longest gap ms", "CPU % per process (main / workers)"]


def ladder_row(name: str, root: Path, placement: Placement, viewers: int, duration: float,
               workers: int = 1, light: bool = False, join_rate: float = 0.0,
               worker_quota: float | None = None) -> ScaleRow:
    """One row; with `workers` > 1 the server's --workers, its CPU and RSS its workers' too; with
    `join_rate`, the viewers join that many a second instead of all at once (a ladder of hundreds
    measures the server serving them, not the crowd: that is the crowd scenario's); with
    `worker_quota`, each worker capped to that % of one core (a worker's "core")."""
    # (always given: the default, 0, starts workers on demand, which a row of one process must not)
    server = Server(root, placement, extra=["--workers", str(workers)])
    processes: list[subprocess.Popen[str]] = []
    try:
        # (the server answers /healthz once every worker is ready: they are its children by then)
        pids = [server.process.pid, *children(server.process.pid)]
        if worker_quota is not None:
            for pid in pids[1:]:
                server.cap(pid, worker_quota)
        join_at = time.time() + 2
        joining = viewers / join_rate if join_rate else 0.08 * viewers
        start_at = join_at + 2 + joining
        processes = clients(server.url, placement, viewers, min(DECODING, viewers), start_at, duration,
                            join_at=join_at if join_rate else None, stagger=1 / join_rate if join_rate else 0.0,
                            light=light)
        time.sleep(max(0.0, start_at - time.time()))
        # (again: with --workers 0 the server starts workers as its viewers come)
        pids = [server.process.pid, *children(server.process.pid)]
        before, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(duration)
        after, t1 = [cpu_seconds(p) for p in pids], time.monotonic()
        cpu0, cpu1 = sum(before), sum(after)
        each = [100 * (b - a) / (t1 - t0) for a, b in zip(before, after, strict=True)]
        per_process = (f"main {each[0]:.0f} / " + ", ".join(f"{e:.0f}" for e in each[1:])) if len(each) > 1 else ""
        metrics, rss = server.metrics(), sum(rss_mb(p) for p in pids)
        per_viewer, client_cpu = results_of(processes)
    finally:
        kill_running(processes)
        server.stop()
    fps = [v["frames"] / duration for v in per_viewer]
    latency = [ms for v in per_viewer for ms in v["latency"]]
    gaps = [v["gap_max_ms"] for v in per_viewer if v.get("gap_max_ms") is not None]
    return ScaleRow(name, viewers, 100 * (cpu1 - cpu0) / (t1 - t0), 100 * client_cpu / duration,
                    min(fps), statistics.mean(fps), percentile(latency, 0.5), percentile(latency, 0.95),
                    histogram_p50(metrics, "camtrack_capture_to_wire_seconds", 'transport="websocket"'),
                    histogram_p50(metrics, "camtrack_event_loop_lag_seconds"), rss,
                    sum(1 for v in per_viewer if "error" in v), refusals(metrics), max(gaps, default=None),
                    per_process)


def refusals(metrics: str) -> str:
    """The server's refusals for its load, by reason ("turn 3, lag 1"), from /metrics."""
    said = []
    for line in metrics.splitlines():
        if line.startswith("camtrack_viewers_refused_load_total{"):
            count = int(float(line.rsplit(" ", 1)[1]))
            if count:
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                said.append(f"{reason} {count}")
    return ", ".join(said)


def slope(rows: list[ScaleRow]) -> float | None:
    """Least-squares server CPU % per viewer."""
    if len({r.viewers for r in rows}) < 2:
        return None
    xs, ys = [r.viewers for r in rows], [r.server_cpu for r in rows]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def admitted(server: Server) -> int:
    """Viewers the server counts now (over /ws)."""
    for line in server.metrics().splitlines():
        if line.startswith('camtrack_viewers{camera="default",transport="websocket"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def crowd(placement: Placement, quota: float, max_watchers: int, duration: float) -> dict[str, object]:
    """The crowd scenario against a server capped to `quota` % of one core: its capacity C is
    probed first (viewers join one after another until it refuses them, then leave); then C/2
    watchers join, and 2*C newcomers at the same instant: some fit, the rest must be refused."""
    server = Server(ROOT, placement, quota)
    processes: list[subprocess.Popen[str]] = []
    try:
        # the probe: viewers join 0.5 s apart until the server refuses them, and leave
        stagger = 0.5
        join = time.time() + 2
        probe = join + stagger * max_watchers + 3
        probers = clients(server.url, placement, max_watchers, 0, probe + 1, 0.5, join_at=join, stagger=stagger)
        processes += probers
        time.sleep(max(0.0, probe - time.time()))
        capacity = max(1, admitted(server))
        probe_refusals = refusals(server.metrics())
        results_of(probers)
        deadline = time.monotonic() + 20
        while admitted(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # (the server's load window forgets them)
        # then half the capacity watches, and a crowd of twice the capacity joins at once
        count = max(1, capacity // 2)
        join = time.time() + 2
        crowd_at = join + stagger * count + 4
        watchers = clients(server.url, placement, count, min(DECODING, count), crowd_at - 1, duration,
                           join_at=join, stagger=stagger)
        crowders = clients(server.url, placement, 2 * capacity, 0, crowd_at - 1, duration, join_at=crowd_at)
        processes += watchers + crowders
        watcher_results, _ = results_of(watchers)
        crowd_results, _ = results_of(crowders)
        metrics = server.metrics()
    finally:
        kill_running(processes)
        server.stop()
    watching = [v for v in watcher_results if "error" not in v]
    played = [v["first_frame_since_join"] for v in crowd_results if "first_frame_since_join" in v]
    refused = [v["error_after"] for v in crowd_results if "server full" in v.get("error", "")]
    other = [v.get("error", "no picture, no refusal") for v in crowd_results
             if "first_frame_since_join" not in v and "server full" not in v.get("error", "")]
    latency = [ms for v in watching for ms in v["latency"]]
    fps = [v["frames"] / duration for v in watching]
    return {"quota_percent": quota, "probe_viewers": max_watchers, "capacity": capacity,
            "server_refusals_while_probing": probe_refusals, "watchers": count,
            "watchers_fps_min": min(fps, default=0.0), "watchers_fps_mean": statistics.mean(fps) if fps else 0.0,
            "watchers_latency_p50": percentile(latency, 0.5), "watchers_latency_p95": percentile(latency, 0.95),
            "crowd": 2 * capacity, "played": len(played), "refused": len(refused), "hung_or_failed": other,
            "slowest_play_s": max(played, default=None), "slowest_refusal_s": max(refused, default=None),
            "outcomes_later_than_5s": sum(1 for t in played + refused if t > OUTCOME_LIMIT),
            "wire_p50": histogram_p50(metrics, "camtrack_capture_to_wire_seconds", 'transport="websocket"'),
            "server_refusals_in_all": refusals(metrics)}


def main(viewers: list[int], repeat: int, duration: float, roots: dict[str, Path], quota: float | None,
         max_watchers: int, workers: tuple[int, ...] = (1,), light: bool = False, join_rate: float = 0.0,
         worker_quota: float | None = None) -> None:
    placement = Placement.for_machine()
    where = (f"server on cores {placement.server}, clients on {placement.clients}" if placement.server
             else "no pinning (too few cores): server and clients share them")
    print(f"# camtrack scale benchmark: {os.cpu_count()} cores, {where}; "
          f"{duration:g} s windows, 640x480@30 H.264 1 Mbit/s, {DECODING} decoding viewers, the rest "
          f"{'counting pictures off the wire (--light)' if light else 'not decoding'}"
          f"{f', joining {join_rate:g} a second' if join_rate else ''}"
          f"{f', each worker capped to {worker_quota:g} % of a core' if worker_quota else ''}",
          flush=True)
    rows: list[ScaleRow] = []
    names: dict[str, None] = {}
    for _ in range(repeat):
        for name, root in roots.items():
            for count in workers:
                label = name if len(workers) == 1 else f"{name} --workers {count}"
                names[label] = None
                for n in viewers:
                    row = ladder_row(label, root, placement, n, duration, count, light, join_rate, worker_quota)
                    rows.append(row)
                    print("  " + "  ".join(row.cells()), file=sys.stderr, flush=True)
    print("| " + " | ".join(SCALE_HEADER) + " |")
    print("|" + "|".join("---" for _ in SCALE_HEADER) + "|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    for name in names:
        mine = [r for r in rows if r.server == name]
        served = [r for r in mine if not r.errors]  # a row with refused viewers served fewer than N
        per_viewer = slope(served)
        good = [r.viewers for r in mine if r.fps_min >= FPS_TARGET and r.p95 is not None and r.p95 <= P95_TARGET]
        print(f"{name}: marginal server CPU per viewer {'-' if per_viewer is None else f'{per_viewer:.3f}'} % of a core "
              f"(least squares over the {len(served)} rows without errors); largest N of the ladder at "
              f">= {FPS_TARGET:g} fps with p95 <= {P95_TARGET:g} ms: {max(good, default=0)}")
    if quota is not None:
        if os.geteuid() != 0 or not CGROUP_CPU.is_dir():
            print("crowd: skipped (needs root and cgroup v1 at /sys/fs/cgroup/cpu)")
            return
        print(json.dumps({"crowd": crowd(placement, quota, max_watchers, duration)}, indent=1))
