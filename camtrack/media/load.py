"""How loaded the server is, measured: event-loop lag, how long a picture takes to reach every
viewer's socket, what a viewer's sends cost, the CPU quota's use, with the crowd's handshakes
paced. What these measurements mean for a newcomer (how many viewers fit, refused or not, and
why) is camtrack.media.admission's to say: `measure()` is its snapshot."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .admission import NO_TURN, CpuUse, Measured, ProcessLoad, Refusal, Refused, capacity, cpu_capacity, fits, overload
from .admission import Limits as Limits  # (defined here before: the limits are the policy's)

#: upper bounds (seconds) of the capture-to-wire and event-loop lag histograms
AGE_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024)
#: how often the lag probe wakes up
LAG_PROBE_INTERVAL = 0.05
#: seconds of measurements the admission decision looks at
WINDOW = 2.0
#: how often the cgroup's throttling counter is read (every this many lag probes)
THROTTLE_EVERY = 10
#: seconds an observed overload caps the capacity at the viewers there were then
LIMIT_MEMORY = 10.0
#: consecutive overloaded checks (one every THROTTLE_EVERY probes) before the viewers are remembered
SUSTAINED_CHECKS = 6
#: lag samples needed before the lag counts (a lone stall at start-up is no load)
MIN_LAG_SAMPLES = 10
#: handshakes (offer answered, ICE and DTLS under way) at once; a crowd's others wait their turn
HANDSHAKES_AT_ONCE = 8
#: ... and under a CPU quota, this many per core of it (at least one): a DTLS handshake costs tens
#: of ms of CPU, and under a quarter of a core a few at once starve the encoder and the viewers
HANDSHAKES_PER_QUOTA_CORE = 4
#: CPU seconds the server spends on one viewer's handshake (offer, answer, ICE, DTLS, SRTP: 12 ms
#: measured on the 2-core test machine); under a quota, handshakes start no faster than the CPU
#: left under `max_cpu` of it pays for them (a crowd's handshakes bunched together throttle the
#: process, and every viewer's pictures come late for it) ...
HANDSHAKE_CPU = 0.015
#: ... counting at least this much room (cores), and waiting at most this long between two
MIN_HANDSHAKE_ROOM = 0.005
MAX_HANDSHAKE_INTERVAL = 2.0
#: what a viewer costs the process per picture, as a multiple of its sends' timed work (its RTCP,
#: ICE consent checks and share of the loop's wake-ups besides), for the CPU-quota capacity
VIEWER_CPU_FACTOR = 2.0
#: how long a read of the cgroup's CPU quota is trusted
QUOTA_TTL = 5.0
#: a worker process's report of its sends' cost counts this long (it reports every second)
REPORT_TTL = 5.0
#: how long a newcomer waits for a handshake turn before it is told the server is full
HANDSHAKE_WAIT = 3.5
#: a turn is given back after this long even if the peer neither connected nor failed yet
HANDSHAKE_HOLD = 1.5


@dataclass
class Histogram:
    """Counts of observations at most each bound (not cumulative; the last is +Inf) and their sum."""

    bounds: tuple[float, ...] = AGE_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(AGE_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        # once per viewer and picture: the bucket found in C, not by a Python loop
        self.total += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus wants them."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """The bound of the bucket holding quantile `q` (None with no observations)."""
        total = self.count
        if not total:
            return None
        running = 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += count
            if running >= q * total:
                return bound
        return float("inf")


#: a timed sample: (when, ...)
Sample = TypeVar("Sample", bound=tuple[float, ...])

class LoadMonitor:
    """The server's measured load, and whether one more viewer fits.

    `viewers()` counts viewers now (the caller's wiring). Each sender reports every picture it
    handed to the socket and the work that took (`sent`): the time to send a picture to everyone
    is that work summed over the viewers, so one viewer costs its mean, and `send_budget` over
    that is the capacity (timed work, not the wall time between the first and last viewer's
    send, which other work in between, such as a crowd's handshakes, would inflate). A probe
    task measures the event loop's lag, and the cgroup's throttling when it has a CPU quota.
    """

    def __init__(self, limits: Limits, viewers: Callable[[], int]) -> None:
        self.limits = limits
        self.viewers = viewers
        self.lag = Histogram()
        self.refused = 0
        #: refusals for the measured load, by kind (admission.MEASURED)
        self.refusals: dict[Refusal, int] = {}
        self._lags: deque[tuple[float, float]] = deque()
        #: (when, seconds of work per viewer) of recent pictures
        self._costs: deque[tuple[float, float]] = deque()
        #: (when, seconds from capture to the first viewer's socket) of recent pictures
        self._ages: deque[tuple[float, float]] = deque()
        #: per feed: the picture being sent (its capture time), the work its sends took, and how many
        self._pictures: dict[int, tuple[float, float, int]] = {}
        self._probe: asyncio.Task[None] | None = None
        #: (when, seconds throttled so far) read from the process's CPU cgroup
        self._throttled: deque[tuple[float, float]] = deque()
        #: (when, CPU seconds the process used so far, viewers then)
        self._cpu: deque[tuple[float, float, int]] = deque()
        #: (when, CPU seconds the event loop's own thread used so far)
        self._loop_cpu: deque[tuple[float, float]] = deque()
        #: the cgroup's CPU quota in cores (None: none) and when it was read
        self._quota: tuple[float | None, float] | None = None
        #: by worker process: (when, seconds of work per viewer and picture, CPU per viewer in cores)
        self._reports: dict[str, tuple[float, float, float]] = {}
        #: (viewers, when): the fewest viewers at which an overload (lag, late pictures,
        #: throttling) was seen lately; newcomers beyond it are refused until it is forgotten
        self._limit: tuple[int, float] | None = None
        self._overloaded_checks = 0
        self._turns: asyncio.Semaphore | None = None
        #: loop time before which no handshake starts (paced under a CPU quota)
        self._next_handshake = 0.0
        #: (when,) for each handshake started lately
        self._handshakes: deque[tuple[float]] = deque()
        self.handshaking = 0

    # --- measuring ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._probe is None:
            self._probe = asyncio.ensure_future(self._run_probe())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None

    async def _run_probe(self) -> None:
        loop = asyncio.get_running_loop()
        probes = 0
        while True:
            due = loop.time() + LAG_PROBE_INTERVAL
            await asyncio.sleep(LAG_PROBE_INTERVAL)
            lag = max(0.0, loop.time() - due)
            self.lag.observe(lag)
            now = time.monotonic()
            self._lags.append((now, lag))
            self._trim(self._lags, now)
            probes += 1
            if probes % THROTTLE_EVERY == 0:
                self._cpu.append((now, self._cpu_seconds(), self.viewers()))
                self._trim(self._cpu, now)
                self._loop_cpu.append((now, time.thread_time()))  # (the probe runs on the loop's thread)
                self._trim(self._loop_cpu, now)
                throttled = cgroup_throttled()
                if throttled is not None:
                    self._throttled.append((now, throttled))
                    self._trim(self._throttled, now)
                self._note_overload(now)

    def sent(self, feed: int, captured: float, seconds: float) -> None:
        """One viewer's packets of the picture captured at `captured` went to its socket, which
        took `seconds` of work (header, SRTP, the sends)."""
        now = time.monotonic()
        current = self._pictures.get(feed)
        if current is not None and current[0] == captured:
            self._pictures[feed] = (captured, current[1] + seconds, current[2] + 1)
            return
        if current is not None and captured < current[0]:
            return  # a newcomer's start run: older pictures, sent once, say nothing of the cost
        if current is not None:
            self._costs.append((now, current[1] / current[2]))
            self._trim(self._costs, now)
        self._pictures[feed] = (captured, seconds, 1)
        self._ages.append((now, max(0.0, time.time() - captured)))
        self._trim(self._ages, now)

    def _cpu_seconds(self) -> float:
        """CPU seconds used so far: under a quota, the whole cgroup's (worker processes included,
        what the quota limits), else this process's."""
        if self.quota is not None and (usage := cgroup_usage()) is not None:
            return usage
        return time.process_time()

    def report(self, source: str, cost: float, viewer_cpu: float) -> None:
        """A worker process's sends lately: seconds of work per viewer and picture, and what one of
        its viewers costs it in cores. Each worker sends on a loop of its own, so each fits
        `send_budget` on its own: the capacity is the sum of theirs."""
        self._reports[source] = (time.monotonic(), cost, viewer_cpu)

    def _fresh_reports(self) -> list[tuple[float, float, float]]:
        now = time.monotonic()
        for source in [s for s, r in self._reports.items() if now - r[0] > REPORT_TTL]:
            del self._reports[source]  # a worker gone or restarted
        return list(self._reports.values())

    @staticmethod
    def _trim(samples: deque[Sample], now: float) -> None:
        """Drop the samples (each starting with its time) older than the window."""
        while samples and samples[0][0] < now - WINDOW:
            samples.popleft()

    # --- deciding ----------------------------------------------------------------------------

    @property
    def recent_lag(self) -> float:
        """Median event-loop lag over the window (0 with too few samples to tell)."""
        self._trim(self._lags, time.monotonic())
        return statistics.median(lag for _, lag in self._lags) if len(self._lags) >= MIN_LAG_SAMPLES else 0.0

    @property
    def throttled(self) -> float:
        """Share of the window the process's cgroup was throttled (0 when not capped or not known)."""
        self._trim(self._throttled, time.monotonic())
        if len(self._throttled) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self._throttled[0], self._throttled[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def recent_age(self) -> float:
        """Median time from capture to the first viewer's socket over the window (0 with too few)."""
        self._trim(self._ages, time.monotonic())
        return statistics.median(age for _, age in self._ages) if len(self._ages) >= MIN_LAG_SAMPLES else 0.0

    @property
    def viewer_cost(self) -> float | None:
        """Seconds of work it takes to hand one more viewer a picture, median over the window."""
        self._trim(self._costs, time.monotonic())
        return statistics.median(cost for _, cost in self._costs) if self._costs else None

    @property
    def quota(self) -> float | None:
        """The CPU the process may use by its cgroup's quota, in cores (None: no quota)."""
        now = time.monotonic()
        if self._quota is None or now - self._quota[1] > QUOTA_TTL:
            self._quota = (cgroup_quota(), now)
        return self._quota[0]

    @property
    def cpu_used(self) -> float | None:
        """CPU the process used over the window, in cores (None: too soon to tell)."""
        measured = self._cpu_measured()
        return None if measured is None else measured[0]

    def _cpu_measured(self) -> tuple[float, float] | None:
        """CPU used over the window (cores) and the mean number of viewers it served meanwhile."""
        self._trim(self._cpu, time.monotonic())
        if len(self._cpu) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = self._cpu[0], self._cpu[-1]
        if t1 - t0 < WINDOW / 2:
            return None
        return (c1 - c0) / (t1 - t0), statistics.mean(viewers for _, _, viewers in self._cpu)

    @property
    def loop_cpu(self) -> float | None:
        """CPU the event loop's thread used over the window, in cores (None: too soon to tell).
        It is what one process's viewers are served with (encoders and cameras have threads of
        their own), handshakes included."""
        self._trim(self._loop_cpu, time.monotonic())
        if len(self._loop_cpu) < 2:
            return None
        (t0, c0), (t1, c1) = self._loop_cpu[0], self._loop_cpu[-1]
        if t1 - t0 < WINDOW / 2:
            return None
        return (c1 - c0) / (t1 - t0)

    @property
    def viewer_send_cpu(self) -> float | None:
        """CPU one viewer's sends use in this process, in cores: their timed work per picture by the
        pictures a second of a feed (None: nobody is sent pictures here yet)."""
        cost = self.viewer_cost
        if cost is None or not self._pictures:
            return None
        return cost * len(self._costs) / len(self._pictures) / WINDOW

    def reported_viewer_cpu(self, source: str) -> float | None:
        """What one viewer's sends cost worker `source` lately, in cores (None: no fresh report)."""
        self._fresh_reports()
        report = self._reports.get(source)
        return None if report is None else report[2]

    @property
    def viewer_cpu(self) -> float | None:
        """CPU one more viewer would use, in cores: its sends' timed work (`viewer_send_cpu`) by
        VIEWER_CPU_FACTOR (None: nobody is sent pictures yet). With worker processes, the mean of
        what their viewers cost them."""
        each = self.viewer_send_cpu
        if each is None:
            reports = self._fresh_reports()
            if reports:
                return statistics.mean(r[2] for r in reports) * VIEWER_CPU_FACTOR
            return None
        return each * VIEWER_CPU_FACTOR

    def _cpu_use(self) -> CpuUse | None:
        """Under a CPU quota: the quota, the CPU used over the window less its handshakes (they are
        not what its viewers cost from now on), the viewers it served (their mean: the ones who came
        since are not in it yet, so the capacity does not grow as they come), and what one more
        viewer costs (None: no quota, or not measured yet)."""
        quota, measured, each = self.quota, self._cpu_measured(), self.viewer_cpu
        if quota is None or measured is None or not each:
            return None
        used, served = measured
        self._trim(self._handshakes, time.monotonic())
        used = max(0.0, used - len(self._handshakes) * HANDSHAKE_CPU / WINDOW)
        return CpuUse(quota, used, served, each)

    def cpu_capacity(self) -> int | None:
        """Under a CPU quota, the viewers that fit it (admission.cpu_capacity; None: no quota, or
        not measured yet)."""
        return cpu_capacity(self.limits, self._cpu_use())

    def _remembered(self) -> int | None:
        """The viewers there were at the last sustained overload, while it is remembered."""
        if self._limit is not None and time.monotonic() - self._limit[1] > LIMIT_MEMORY:
            self._limit = None
        return None if self._limit is None else self._limit[0]

    def measure(self) -> Measured:
        """The measured load, admission's snapshot of it. The workers' sends count as they
        reported them (each has a loop and a budget of its own; the main process's own viewers,
        if any, are the few that do not use WebRTC)."""
        return Measured(
            limits=self.limits, viewers=self.viewers(), handshaking=self.handshaking,
            lag=self.recent_lag, age=self.recent_age, throttled=self.throttled,
            here=ProcessLoad(send_cost=self.viewer_cost),
            workers=tuple(ProcessLoad(send_cost=cost, send_cpu=cpu) for _, cost, cpu in self._fresh_reports()),
            cpu=self._cpu_use(), remembered=self._remembered())

    @property
    def capacity(self) -> int | None:
        """Viewers that fit, as admission.capacity reads the measurements (None: unknown yet)."""
        return capacity(self.measure())

    def _note_overload(self, now: float) -> None:
        """Remember how many viewers there were when the server was seen overloaded: a crowd
        arriving after the signals calmed down would otherwise overload it again."""
        viewers = self.viewers()
        if not viewers or overload(self.measure()) is None:
            self._overloaded_checks = 0
            return
        self._overloaded_checks += 1
        if self._overloaded_checks >= SUSTAINED_CHECKS:  # sustained, not one newcomer's handshake
            self._limit = (viewers, now)

    def check(self, joining: int = 1) -> Refused | None:
        """Why `joining` more viewers would not fit the measured load now (besides those
        handshaking), or None (admission.fits)."""
        return fits(self.measure(), joining)

    def full(self, joining: int = 1) -> str | None:
        """`check()`'s reason in words, or None."""
        refused = self.check(joining)
        return None if refused is None else refused.reason

    def refuse(self, refused: Refused) -> None:
        """Count a newcomer refused for the measured load, by its kind (other kinds are not counted here)."""
        if refused.kind.measured:
            self.refused += 1
            self.refusals[refused.kind] = self.refusals.get(refused.kind, 0) + 1

    def _handshake_interval(self) -> float:
        """Seconds between handshake starts under a CPU quota: HANDSHAKE_CPU over the CPU left
        under `max_cpu` of it (0 without a quota, or before the CPU used is known)."""
        quota, used = self.quota, self.cpu_used
        if quota is None or used is None or not self.limits.max_cpu:
            return 0.0
        room = max(MIN_HANDSHAKE_ROOM, self.limits.max_cpu * quota - used)
        return min(MAX_HANDSHAKE_INTERVAL, HANDSHAKE_CPU / room)

    async def handshake_turn(self) -> Callable[[], None] | None:
        """Wait (at most HANDSHAKE_WAIT) for a turn to negotiate; the function returned gives it
        back (call it once the peer connected or ended; it is given back after HANDSHAKE_HOLD
        anyway). None: no turn came, or the server filled up meanwhile."""
        if self._turns is None:
            quota = self.quota
            at_once = HANDSHAKES_AT_ONCE if quota is None else max(1, min(HANDSHAKES_AT_ONCE,
                                                                        int(HANDSHAKES_PER_QUOTA_CORE * quota)))
            self._turns = asyncio.Semaphore(at_once)
        turns = self._turns
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDSHAKE_WAIT
        try:
            await asyncio.wait_for(turns.acquire(), HANDSHAKE_WAIT)
        except TimeoutError:
            self.refuse(NO_TURN)
            return None
        # under a quota, handshakes also start no faster than the CPU left over pays for them
        start = max(loop.time(), self._next_handshake)
        if start > deadline:
            turns.release()
            self.refuse(NO_TURN)
            return None
        self._next_handshake = start + self._handshake_interval()
        if start > loop.time():
            await asyncio.sleep(start - loop.time())
        self.handshaking += 1
        self._handshakes.append((time.monotonic(),))
        done = False

        def give_back() -> None:
            nonlocal done
            if not done:
                done = True
                timer.cancel()
                self.handshaking -= 1
                turns.release()

        timer = asyncio.get_running_loop().call_later(HANDSHAKE_HOLD, give_back)
        if (refused := self.check(joining=0)) is not None:  # it filled up while this one waited
            give_back()
            self.refuse(refused)
            return None
        return give_back


def cgroup_quota() -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`, v2 `cpu.max`), or None when it has none (or it cannot be read)."""
    for stat in _cgroup_cpu_files("cpu.max", "cpu.cfs_quota_us"):
        try:
            if stat.name == "cpu.max":
                quota, _, period = stat.read_text().strip().partition(" ")
                if quota == "max":
                    return None
                return int(quota) / int(period or 100000)
            quota_us = int(stat.read_text())
            if quota_us < 0:
                return None
            return quota_us / int((stat.parent / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


def _cgroup_cpu_files(v2_name: str, v1_name: str) -> list[Path]:
    """The existing file of this process's CPU cgroup named `v1_name` (cgroup v1) or `v2_name` (v2)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            candidates = [Path("/sys/fs/cgroup") / controllers / path.lstrip("/") / v1_name,
                          Path("/sys/fs/cgroup/cpu") / path.lstrip("/") / v1_name]
        elif controllers == "":
            candidates = [Path("/sys/fs/cgroup") / path.lstrip("/") / v2_name]
        else:
            continue
        found += [c for c in candidates if c.exists()][:1]
    return found


def cgroup_usage() -> float | None:
    """CPU seconds this process's CPU cgroup has used (cgroup v1 `cpuacct.usage`, v2 `cpu.stat`
    usage_usec), or None when it cannot be read."""
    for stat in _cgroup_cpu_files("cpu.stat", "cpuacct.usage"):
        try:
            if stat.name == "cpuacct.usage":
                return int(stat.read_text()) * 1e-9
            for entry in stat.read_text().splitlines():
                name, _, value = entry.partition(" ")
                if name == "usage_usec":
                    return int(value) * 1e-6
        except (OSError, ValueError):
            continue
    return None


def cgroup_throttled() -> float | None:
    """Seconds this process's CPU cgroup has been throttled by its quota (cgroup v1 `cpu.stat`
    throttled_time, v2 throttled_usec), or None when there is no such cgroup to read."""
    for stat in _cgroup_cpu_files("cpu.stat", "cpu.stat"):
        try:
            for entry in stat.read_text().splitlines():
                name, _, value = entry.partition(" ")
                if name == "throttled_usec":
                    return int(value) * 1e-6
                if name == "throttled_time":
                    return int(value) * 1e-9
        except (OSError, ValueError):
            continue
    return None
