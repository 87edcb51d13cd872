"""Events a processing function reports in its data: a pure state machine fed each result's data.

A function (docs/processing.md) reports an event by returning data with an "event" key: one event,
or a list of them, each

    {"kind": "person", "active": true, "details": {...}}

`kind` (letters, digits, "_", "-"; at most 32) names it; `active` (default true) says whether it is
happening in this frame; `details` (optional, a JSON object) is kept with the event (the newest
details of an open event go out as an update when they change); `gap` (optional, seconds, default
DEFAULT_GAP) is how long the kind may go unreported before its event ends. An event of a kind
starts with the first active report, and ends at the first report of it inactive, or `gap` seconds
after the last active one when none came since (its end is then that last active report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .model import kind_problem

#: seconds a kind may go unreported before its event ends
DEFAULT_GAP = 2.0
#: the most kinds one camera's function may report at once (more are ignored)
MAX_KINDS = 16


class BadEvent(ValueError):
    """The data's "event" does not have the shape above (the message says what is wrong)."""


@dataclass(frozen=True)
class Report:
    """One kind reported in one result."""

    kind: str
    active: bool
    details: dict[str, Any]
    gap: float


@dataclass(frozen=True)
class Transition:
    """An event of `kind` starts, changes its details, or ends, at `at`."""

    action: Literal["start", "update", "end"]
    kind: str
    at: float
    details: dict[str, Any]


def reports(data: Any) -> list[Report]:
    """The events `data` reports (none when it has no "event" key); BadEvent if they are malformed."""
    if not isinstance(data, dict) or "event" not in data:
        return []
    given = data["event"]
    items = given if isinstance(given, list) else [given]
    found = []
    for item in items[:MAX_KINDS]:
        if not isinstance(item, dict):
            raise BadEvent(f"an event must be an object like {{\"kind\": \"person\", \"active\": true}}, not {item!r:.80}")
        kind = item.get("kind")
        problem = kind_problem(kind)
        if problem is not None:
            raise BadEvent(problem)
        assert isinstance(kind, str)
        active = item.get("active", True)
        if not isinstance(active, bool):
            raise BadEvent(f"event {kind}: active must be true or false, not {active!r:.40}")
        details = item.get("details", {})
        if not isinstance(details, dict):
            raise BadEvent(f"event {kind}: details must be an object, not {details!r:.40}")
        gap = item.get("gap", DEFAULT_GAP)
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 < gap <= 3600:
            raise BadEvent(f"event {kind}: gap must be seconds, more than 0 and at most 3600, not {gap!r:.40}")
        found.append(Report(kind, active, details, float(gap)))
    return found


@dataclass
class _Open:
    last: float
    gap: float
    details: dict[str, Any]


class DataEvents:
    """Which kinds a camera's function reports as happening (see the module's docstring)."""

    def __init__(self) -> None:
        self._open: dict[str, _Open] = {}

    @property
    def active(self) -> list[str]:
        return list(self._open)

    def feed(self, data: Any, at: float) -> list[Transition]:
        """One result's data, of a frame captured at `at`: the transitions it makes (BadEvent: none)."""
        changes: list[Transition] = []
        for report in reports(data):
            state = self._open.get(report.kind)
            if not report.active:
                if state is not None:
                    del self._open[report.kind]
                    changes.append(Transition("end", report.kind, at, {**state.details, **report.details}))
                continue
            if state is None:
                self._open[report.kind] = _Open(at, report.gap, report.details)
                changes.append(Transition("start", report.kind, at, report.details))
                continue
            state.last, state.gap = at, report.gap
            if report.details != state.details:
                state.details = report.details
                changes.append(Transition("update", report.kind, at, report.details))
        return changes + self.tick(at)

    def tick(self, now: float) -> list[Transition]:
        """Time passed: the kinds whose gap has passed since they were last reported active end (at
        that last report)."""
        ended = [Transition("end", kind, state.last, state.details)
                 for kind, state in self._open.items() if now - state.last >= state.gap]
        for transition in ended:
            del self._open[transition.kind]
        return ended
