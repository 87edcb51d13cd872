"""What an event is, and a change of one as every subscriber gets it."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

#: the kinds camtrack makes itself; a processing function or an HTTP call names its own
MOTION, HTTP = "motion", "http"
#: a kind: what a topic, a file name and a URL query can carry as it is
KIND = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
#: names an MQTT topic of a camera already has (camtrack/CAMERA/events): no kind may take them
RESERVED_KINDS = frozenset({"events", "available"})


def kind_problem(kind: object) -> str | None:
    """Why `kind` cannot name an event, else None."""
    if not isinstance(kind, str) or not KIND.match(kind):
        return f"a kind must be 1-32 of a-z, 0-9, '_', '-' (starting with a letter or digit), not {kind!r:.40}"
    if kind in RESERVED_KINDS:
        return f"the kind {kind!r} is reserved (an MQTT topic of the camera has that name)"
    return None

#: what happened to an event: it started, its details changed, it ended
Action = Literal["start", "update", "end"]


def new_id(start: float) -> str:
    """An event's id: its start time and 6 random hex digits (Frigate's shape), unique across restarts."""
    return f"{start:.3f}-{secrets.token_hex(3)}"


@dataclass
class Event:
    """Something that happened at a camera, from `start` to `end` (None while it lasts)."""

    id: str
    camera: str
    #: "motion", "http", or a processing function's own ("person", ...)
    kind: str
    #: seconds since the epoch
    start: float
    end: float | None = None
    #: anything JSON carries: what the source said of it
    details: dict[str, Any] = field(default_factory=dict)
    #: what made it: "motion", "processing" or "http"
    source: str = HTTP

    @property
    def ongoing(self) -> bool:
        return self.end is None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "camera": self.camera, "kind": self.kind, "source": self.source,
                "start": round(self.start, 3), "end": None if self.end is None else round(self.end, 3),
                "details": self.details}


@dataclass(frozen=True)
class Change:
    """One change of an event, as every subscriber gets it: `seq` grows by one per change of the bus,
    `event` is the event as it was right after the change (a snapshot: later changes do not touch it)."""

    seq: int
    action: Action
    event: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.event["id"])

    @property
    def camera(self) -> str:
        return str(self.event["camera"])

    @property
    def kind(self) -> str:
        return str(self.event["kind"])

    def to_json(self) -> dict[str, Any]:
        """The payload of every output (Server-Sent Events, webhook, MQTT)."""
        return {"type": self.action, "seq": self.seq, "event": self.event}
