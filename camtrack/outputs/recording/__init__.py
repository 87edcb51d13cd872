"""Recording: clips of a camera's events with true pre-roll, cut from the packets viewers get
(docs/recording.md).

- `preroll.py`: the last seconds of a camera's packets, whole GOPs, bounded in time and bytes.
- `fmp4.py`: fragmented MP4 written as it comes, and closing a file a crash left unfinished.
- `recorder.py`: a camera's recorder (a background output): `event_started` / `event_ended`.
- `store.py`: the files on disk (a directory per camera and day), sidecars, retention, space.
- `api.py`: `/api/recordings`: list, fetch (with ranges), thumbnail, delete, protect.

`Recordings` is what the app holds: the stores by directory and the recorders by camera.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from .recorder import RecordedCamera, Recorder, RecorderSettings
from .store import Retention, Store

__all__ = ["EventCalls", "RecordedCamera", "Recorder", "RecorderSettings", "Recordings", "Retention", "Store"]


class EventCalls:
    """A recorder as the event bus's trigger calls it (camtrack.events.recording: `start` and `end`
    of an event id at a wall-clock time), the event's kind found with `kind_of`."""

    def __init__(self, recorder: Recorder, kind_of: Callable[[str], str | None]) -> None:
        self.recorder = recorder
        self.kind_of = kind_of

    def start(self, event_id: str, at: float) -> None:
        self.recorder.event_started(event_id, at, self.kind_of(event_id))

    def end(self, event_id: str, at: float) -> None:
        self.recorder.event_ended(event_id, at)


class Recordings:
    """The recorders of a server's cameras and the stores they write to (one per directory)."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.stores: dict[Path, Store] = {}
        self.recorders: dict[str, Recorder] = {}

    def add(self, camera: RecordedCamera, directory: str, settings: RecorderSettings) -> Recorder:
        """A recorder for `camera` into `directory` (not started: `start` loads its store first)."""
        root = Path(directory).expanduser().resolve()
        store = self.stores.get(root)
        if store is None:
            store = self.stores[root] = Store(root, self.retention)
        recorder = self.recorders[camera.name] = Recorder(camera, store, settings)
        return recorder

    async def load(self) -> None:
        """Index every store's clips, closing those a crash left unfinished (off the event loop)."""
        await asyncio.gather(*(asyncio.to_thread(store.load) for store in self.stores.values()))

    def store_of(self, clip_id: str) -> Store | None:
        """The store holding clip `clip_id`, if any."""
        return next((store for store in self.stores.values() if store.get(clip_id) is not None), None)
