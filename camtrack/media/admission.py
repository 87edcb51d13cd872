"""Admission in one place: whether a newcomer may become a viewer, and which process serves it.

A pure policy, no event loop: the callers measure (camtrack.media.load: the loop's lag, how late
pictures are, what a viewer's sends cost, the CPU quota; camtrack.cameras: the viewers counted;
camtrack.workers.pool: the workers' viewers) and hand a snapshot here; what comes back is a
decision they act on and nothing else:

- `decide(snapshot)`: None (admitted), or a `Refused`: a `Refusal` kind (what the metric
  `camtrack_viewers_refused_load_total{reason}` counts, by the kind's value, never by the text)
  and the texts for the log and the client ("server full" whatever the kind, as always).
- `place(...)`: where an admitted peer goes: this process, a worker (and whether to start the
  next one, "grow"), or nowhere (a fixed pool with no worker ready).

One notion of a process's load: `ProcessLoad`, its WebRTC viewers and what one viewer's sends
cost it (seconds of work per picture, and cores). The main process and each worker are measured
alike (the workers report theirs each second), and both decisions read the same figures at two
levels of the same measure:

- *busy* (`busy()`): at least SPILL_VIEWERS viewers whose sends use SPILL_SEND_CPU of a core;
  a busy process takes no more newcomers on demand (they go to a worker; one starts when every
  ready one is busy too);
- *full* (`room()` summed into `capacity()`): the viewers whose sends fit `send_budget` per
  picture, each process its own budget (each has a loop of its own), bounded by the CPU quota and
  by the viewers seen at the last sustained overload; past it, the server refuses newcomers.

The two levels keep the figures they had (README: "More than one core", "Security"): busy at 100
viewers and 0.2 of a core of sends; full at 20 ms of sends a picture (at 30 fps, 0.6 of a core).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

#: share of the window the process may spend throttled by its cgroup's CPU quota: past it, the
#: CPU it was given is used up (a capped server's encoder and loop are starved, not late)
MAX_THROTTLED = 0.05
#: --workers 0: a process is busy (its newcomers go to a worker) once it has at least SPILL_VIEWERS
#: WebRTC viewers of its own and their sends (timed: LoadMonitor.viewer_send_cpu here, a worker's
#: report there) use SPILL_SEND_CPU of a core. Sends, not the loop's whole CPU: a crowd's
#: handshakes raise that for a few seconds only. On the project's 2-core machine 200 viewers'
#: sends took 0.14 core (the loop 0.23 in all) and one process serves about 300 at 30 fps; below
#: that, a worker's ~100 MB would buy nothing. A worker is busy by the same rule.
SPILL_VIEWERS = 100
SPILL_SEND_CPU = 0.2
#: what every refusal tells the client (the kind is for the log and the metric)
CLIENT_TEXT = "server full"


@dataclass
class Limits:
    """When the server counts as full (besides --max-viewers)."""

    #: median event-loop lag over the window above this: full (0: not checked)
    max_lag: float = 0.05
    #: time to hand one picture to every viewer's socket may use at most this; the viewers that
    #: fit are the capacity (0: not checked)
    send_budget: float = 0.02
    #: median time from capture to the first viewer's socket over the window above this: full, the
    #: encoder or the loop cannot keep up (a starved process shows it here first) (0: not checked)
    max_age: float = 0.25
    #: under a CPU quota (a container's, systemd's CPUQuota), the viewers that fit are those that
    #: keep the process's CPU use under this share of it, projected from what it uses now and
    #: what one more viewer costs (0: not checked)
    max_cpu: float = 0.8


class Refusal(enum.Enum):
    """Why a newcomer is refused; the value is the metric's `reason` label."""

    #: --max-viewers reached (the server's viewers over every camera and transport)
    FULL_VIEWERS = "max_viewers"
    #: the camera's own max_viewers reached
    CAMERA_FULL = "camera_max_viewers"
    #: the event loop lags over --max-loop-lag
    LAG = "lag"
    #: pictures reach the viewers later than --max-picture-age
    AGE = "age"
    #: the CPU quota is used up (the cgroup throttled the process)
    THROTTLED = "throttled"
    #: the measured capacity is reached
    CAPACITY = "capacity"
    #: no handshake turn came in time
    TURN = "turn"

    @property
    def measured(self) -> bool:
        """Whether it is a refusal for the measured load (counted in camtrack_viewers_refused_load)."""
        return self not in (Refusal.FULL_VIEWERS, Refusal.CAMERA_FULL)


#: the kinds camtrack_viewers_refused_load_total counts, in its order
MEASURED = tuple(kind for kind in Refusal if kind.measured)


@dataclass(frozen=True)
class Refused:
    """A newcomer refused: the kind, and why in words (for the log)."""

    kind: Refusal
    reason: str
    #: what the client is told
    text: str = CLIENT_TEXT


@dataclass(frozen=True)
class ProcessLoad:
    """One process's WebRTC viewers and what one viewer's sends cost it (None: not measured)."""

    viewers: int = 0
    #: seconds of work to hand one viewer one picture
    send_cost: float | None = None
    #: cores one viewer's sends use (their timed work by the pictures a second)
    send_cpu: float | None = None


@dataclass(frozen=True)
class CpuUse:
    """Under a CPU quota: the quota and what the last window's use says."""

    #: the quota, in cores
    quota: float
    #: cores used over the window, less the handshakes in it (not what its viewers cost from now on)
    used: float
    #: viewers it served meanwhile (their mean)
    served: float
    #: cores one more viewer costs
    viewer_cpu: float


@dataclass(frozen=True)
class Measured:
    """The measured load, for the capacity and the overload checks."""

    limits: Limits = field(default_factory=Limits)
    #: the server's viewers now (every transport, every process) and peers negotiating
    viewers: int = 0
    handshaking: int = 0
    #: median event-loop lag and capture-to-socket age over the window; share of it throttled
    lag: float = 0.0
    age: float = 0.0
    throttled: float = 0.0
    #: this process's sends and each worker's (as it last reported)
    here: ProcessLoad = ProcessLoad()
    workers: tuple[ProcessLoad, ...] = ()
    #: under a CPU quota (None: none, or not measured yet)
    cpu: CpuUse | None = None
    #: the viewers there were at the last sustained overload, while it is remembered
    remembered: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """What one admission decision reads."""

    #: the server's viewers, and --max-viewers (0: no limit)
    viewers: int = 0
    max_viewers: int = 0
    #: the camera's viewers, and its own max_viewers (0: no limit)
    camera_viewers: int = 0
    camera_max_viewers: int = 0
    #: the measured load; None: not consulted (a peer that got through admission and connected is
    #: not refused for the load it found since)
    load: Measured | None = None


def busy(process: ProcessLoad) -> bool:
    """Whether `process` should take no more newcomers on demand (see SPILL_VIEWERS)."""
    return process.viewers >= SPILL_VIEWERS and process.viewers * (process.send_cpu or 0.0) >= SPILL_SEND_CPU


def room(process: ProcessLoad, limits: Limits) -> int | None:
    """The viewers whose sends fit `process`'s send budget per picture (None: not measured or not checked)."""
    if not limits.send_budget or process.send_cost is None or process.send_cost <= 0:
        return None
    return int(limits.send_budget / process.send_cost + 1e-6)


def cpu_capacity(limits: Limits, cpu: CpuUse | None) -> int | None:
    """Under a CPU quota: the viewers the window's CPU served, and as many more as the quota's
    `max_cpu` share leaves room for at `viewer_cpu` each (None: no quota, not measured, not checked)."""
    if not limits.max_cpu or cpu is None or not cpu.viewer_cpu:
        return None
    return max(0, int(cpu.served + (limits.max_cpu * cpu.quota - cpu.used) / cpu.viewer_cpu))


def capacity(load: Measured) -> int | None:
    """The viewers the server can take: each process's `room` summed (this process's, and each
    worker's: each has a loop and a budget of its own), at most `cpu_capacity` under a quota, and
    no more than were watching at the last sustained overload (None: unknown yet)."""
    found = room(load.here, load.limits)
    if load.limits.send_budget and load.workers:  # (a worker that reported no cost adds nothing)
        found = (found or 0) + sum(r for w in load.workers if (r := room(w, load.limits)) is not None)
    for bound in (cpu_capacity(load.limits, load.cpu), load.remembered):
        if bound is not None:
            found = bound if found is None else min(found, bound)
    return found


def overload(load: Measured) -> Refused | None:
    """Whether the server is overloaded whatever its capacity: the loop lags, the quota is used
    up, or pictures are late."""
    limits = load.limits
    if limits.max_lag and load.lag > limits.max_lag:
        return Refused(Refusal.LAG, f"event loop lags {load.lag * 1000:.0f} ms")
    if load.throttled > MAX_THROTTLED:
        return Refused(Refusal.THROTTLED, f"CPU quota used up (throttled {load.throttled:.0%} of the time)")
    if limits.max_age and load.age > limits.max_age:
        return Refused(Refusal.AGE, f"pictures reach viewers {load.age * 1000:.0f} ms after capture")
    return None


def fits(load: Measured, joining: int = 1) -> Refused | None:
    """Why `joining` more viewers would not fit the measured load now (besides those handshaking), or None."""
    if (refused := overload(load)) is not None:
        return refused
    found = capacity(load)
    if found is not None and load.viewers + load.handshaking + joining > found:
        return Refused(Refusal.CAPACITY, f"capacity {found} viewers reached")
    return None


def decide(snapshot: Snapshot, joining: int = 1) -> Refused | None:
    """The decision for a newcomer: None (admitted) or why it is refused. The limits on viewers
    first (hard), then, when the snapshot has it, the measured load."""
    if snapshot.max_viewers and snapshot.viewers >= snapshot.max_viewers:
        return Refused(Refusal.FULL_VIEWERS, f"{snapshot.max_viewers} viewers at most (--max-viewers)")
    if snapshot.camera_max_viewers and snapshot.camera_viewers >= snapshot.camera_max_viewers:
        return Refused(Refusal.CAMERA_FULL, f"the camera takes {snapshot.camera_max_viewers} viewers at most")
    if snapshot.load is not None:
        return fits(snapshot.load, joining)
    return None


#: turned away: no handshake turn came in time
NO_TURN = Refused(Refusal.TURN, "no handshake turn in time")


class Where(enum.Enum):
    """Where an admitted peer goes."""

    LOCAL = "local"
    WORKER = "worker"
    #: nowhere: a fixed pool of workers with none ready (the offer is refused as not answerable)
    NOWHERE = "nowhere"


@dataclass(frozen=True)
class Placement:
    """Where a newcomer's peer goes, and whether the next worker should start."""

    where: Where
    #: the index of the worker (in the sequence given to `place`) when `where` is WORKER
    worker: int | None = None
    #: start the next stopped worker (on demand; the pool knows whether one is starting or left)
    grow: bool = False


def place(on_demand: bool, here: ProcessLoad, workers: Sequence[ProcessLoad | None]) -> Placement:
    """Where a newcomer's peer goes, `workers` being each worker's load (None: not ready).

    With a fixed pool (--workers N), to the ready worker with the fewest viewers (NOWHERE when none
    is). On demand (--workers 0), this process keeps its newcomers until it is `busy`; then they
    go to the ready worker with the fewest viewers, and the next worker starts (grow) when there
    is none or when that one is busy too. While a worker starts, newcomers stay here (admission
    still guards this process)."""
    ready = [(load.viewers, index) for index, load in enumerate(workers) if load is not None]
    pick = min(ready)[1] if ready else None
    if not on_demand:
        return Placement(Where.NOWHERE) if pick is None else Placement(Where.WORKER, pick)
    if not busy(here):
        return Placement(Where.LOCAL)
    picked = None if pick is None else workers[pick]
    grow = picked is None or busy(picked)
    return Placement(Where.LOCAL, grow=grow) if pick is None else Placement(Where.WORKER, pick, grow=grow)
