"""Admission's policy (camtrack.media.admission), table-tested without an event loop: snapshots of
the measurements in, decisions out: each refusal kind at its threshold, the capacity's parts, the
placement with the spill thresholds, and the metric label taken from the kind, not the words."""

from __future__ import annotations

import pytest

from camtrack.media import admission
from camtrack.media.admission import (
    MEASURED,
    CpuUse,
    Limits,
    Measured,
    Placement,
    ProcessLoad,
    Refusal,
    Snapshot,
    Where,
    busy,
    capacity,
    decide,
    place,
)
from camtrack.media.load import LoadMonitor

#: the defaults: lag 50 ms, send budget 20 ms a picture, pictures 250 ms late, 80 % of a CPU quota
LIMITS = Limits()
#: one viewer's sends: 1 ms of work a picture (20 fit the budget)
COST = ProcessLoad(send_cost=0.001)

DECISIONS: list[tuple[str, Snapshot, Refusal | None]] = [
    ("nothing measured yet", Snapshot(load=Measured()), None),
    ("no limits, no load", Snapshot(viewers=500), None),
    ("--max-viewers reached", Snapshot(viewers=3, max_viewers=3), Refusal.FULL_VIEWERS),
    ("under --max-viewers", Snapshot(viewers=2, max_viewers=3, load=Measured(viewers=2)), None),
    ("the camera's max_viewers reached", Snapshot(viewers=1, camera_viewers=1, camera_max_viewers=1),
     Refusal.CAMERA_FULL),
    ("the hard limits first, whatever the load",
     Snapshot(viewers=3, max_viewers=3, load=Measured(lag=1.0)), Refusal.FULL_VIEWERS),
    ("the loop lags over max_lag", Snapshot(load=Measured(lag=0.051)), Refusal.LAG),
    ("the loop lags at max_lag", Snapshot(load=Measured(lag=0.05)), None),
    ("lag not checked", Snapshot(load=Measured(Limits(max_lag=0), lag=1.0)), None),
    ("throttled over 5 %", Snapshot(load=Measured(throttled=0.06)), Refusal.THROTTLED),
    ("throttled 5 %", Snapshot(load=Measured(throttled=0.05)), None),
    ("pictures late", Snapshot(load=Measured(age=0.3)), Refusal.AGE),
    ("pictures late, not checked", Snapshot(load=Measured(Limits(max_age=0), age=0.3)), None),
    ("lag before throttling before age", Snapshot(load=Measured(lag=0.1, throttled=0.5, age=1.0)), Refusal.LAG),
    ("19 of 20 by the send budget", Snapshot(load=Measured(viewers=19, here=COST)), None),
    ("20 of 20 by the send budget", Snapshot(load=Measured(viewers=20, here=COST)), Refusal.CAPACITY),
    ("handshakes count", Snapshot(load=Measured(viewers=17, handshaking=3, here=COST)), Refusal.CAPACITY),
    ("send budget not checked", Snapshot(load=Measured(Limits(send_budget=0), viewers=500, here=COST)), None),
    ("the last overload's viewers", Snapshot(load=Measured(viewers=12, here=COST, remembered=12)), Refusal.CAPACITY),
    ("under a CPU quota: 26 fit", Snapshot(load=Measured(
        viewers=25, cpu=CpuUse(quota=0.25, used=0.15, served=10, viewer_cpu=0.003))), None),
    ("under a CPU quota: 26 reached", Snapshot(load=Measured(
        viewers=26, cpu=CpuUse(quota=0.25, used=0.15, served=10, viewer_cpu=0.003))), Refusal.CAPACITY),
]


@pytest.mark.parametrize(("what", "snapshot", "kind"), DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decisions(what: str, snapshot: Snapshot, kind: Refusal | None) -> None:
    refused = decide(snapshot)
    assert (None if refused is None else refused.kind) == kind, (what, refused)
    if refused is not None:
        assert refused.text == "server full" and refused.reason  # the client is told the same whatever the kind


CAPACITIES: list[tuple[str, Measured, int | None]] = [
    ("unknown yet", Measured(), None),
    ("the send budget over one viewer's cost", Measured(here=COST), 20),
    ("each worker its own budget, summed", Measured(workers=(ProcessLoad(send_cost=0.001), ProcessLoad(send_cost=0.002))),
     30),
    ("this process's and the workers'", Measured(here=COST, workers=(ProcessLoad(send_cost=0.002),)), 30),
    ("a worker that reported no cost adds nothing", Measured(workers=(ProcessLoad(send_cost=0.0),)), 0),
    ("the CPU quota bounds it", Measured(here=COST, cpu=CpuUse(0.25, 0.15, 10, 0.003)), 20),
    ("the CPU quota bounds it lower", Measured(here=COST, cpu=CpuUse(0.25, 0.19, 10, 0.003)), 13),
    ("the quota used up: no room at all", Measured(cpu=CpuUse(0.25, 0.3, 10, 0.003)), 0),
    ("the quota not checked", Measured(Limits(max_cpu=0), cpu=CpuUse(0.25, 0.3, 10, 0.003)), None),
    ("the last overload's viewers bound it", Measured(here=COST, remembered=12), 12),
]


@pytest.mark.parametrize(("what", "measured", "expected"), CAPACITIES, ids=[c[0] for c in CAPACITIES])
def test_capacity(what: str, measured: Measured, expected: int | None) -> None:
    assert capacity(measured) == expected, what


#: a process at the spill thresholds exactly (100 viewers whose sends use 0.2 of a core), and under each
BUSY = ProcessLoad(100, send_cpu=0.002)
FEW = ProcessLoad(99, send_cpu=0.01)
CHEAP = ProcessLoad(300, send_cpu=0.0006)
QUIET = ProcessLoad(3, send_cpu=0.0005)

PLACEMENTS: list[tuple[str, bool, ProcessLoad, list[ProcessLoad | None], Placement]] = [
    ("on demand: not busy, here", True, FEW, [], Placement(Where.LOCAL)),
    ("on demand: many cheap viewers are not busy", True, CHEAP, [None], Placement(Where.LOCAL)),
    ("on demand: sends unmeasured are not busy", True, ProcessLoad(500), [None], Placement(Where.LOCAL)),
    ("on demand: busy, no worker ready: here, and grow", True, BUSY, [None, None],
     Placement(Where.LOCAL, grow=True)),
    ("on demand: busy: the ready worker", True, BUSY, [None, QUIET], Placement(Where.WORKER, 1)),
    ("on demand: the worker with the fewest viewers, the first on a tie", True, BUSY,
     [ProcessLoad(5), ProcessLoad(2), ProcessLoad(2)], Placement(Where.WORKER, 1)),
    ("on demand: that worker busy too: it still takes the newcomer, and the next one starts", True, BUSY,
     [BUSY, None], Placement(Where.WORKER, 0, grow=True)),
    ("fixed pool: the fewest viewers, whatever this process has", False, QUIET, [ProcessLoad(4), QUIET],
     Placement(Where.WORKER, 1)),
    ("fixed pool: none ready: nowhere (the offer is refused)", False, QUIET, [None], Placement(Where.NOWHERE)),
]


@pytest.mark.parametrize(("what", "on_demand", "here", "workers", "expected"), PLACEMENTS,
                         ids=[p[0] for p in PLACEMENTS])
def test_placement(what: str, on_demand: bool, here: ProcessLoad, workers: list[ProcessLoad | None],
                   expected: Placement) -> None:
    assert place(on_demand, here, workers) == expected, what


def test_busy_is_both_spill_thresholds() -> None:
    assert admission.SPILL_VIEWERS == 100 and admission.SPILL_SEND_CPU == 0.2  # the README's figures
    assert busy(BUSY) and not busy(FEW) and not busy(CHEAP) and not busy(ProcessLoad(1000))


def test_the_metric_label_comes_from_the_kind_not_the_words(monkeypatch) -> None:
    """Rewording a refusal leaves its count where it was: camtrack_viewers_refused_load_total's
    labels are the measured kinds' values, in the order /metrics has always listed them."""
    assert [kind.value for kind in MEASURED] == ["lag", "age", "throttled", "capacity", "turn"]
    monitor = LoadMonitor(Limits(), lambda: 0)
    reworded = admission.Refused(Refusal.LAG, "the loop is slow today")
    monitor.refuse(reworded)
    monitor.refuse(admission.NO_TURN)
    monitor.refuse(admission.Refused(Refusal.FULL_VIEWERS, "--max-viewers"))  # not a refusal for the load
    assert monitor.refusals == {Refusal.LAG: 1, Refusal.TURN: 1} and monitor.refused == 2
