"""The event bus of a server: every start, update and end of an event, in order, to every subscriber,
and the recent events for the listing API.

Publishing never waits: each subscriber has a bounded queue of its own, and one that does not keep
up loses its oldest changes (counted, and logged at most once a minute per kind of subscriber),
never the publisher's time or anyone else's. The last CHANGES changes are kept too, so that a
subscriber coming back (a Server-Sent Events client's Last-Event-ID) gets those it missed, as far as
they reach. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from .model import Action, Change, Event, new_id

logger = logging.getLogger(__name__)

#: events kept for the listing API (open ones and the most recent ended ones)
HISTORY = 1000
#: changes kept for subscribers coming back (`subscribe(after=seq)`): as many as one subscriber's
#: queue holds (camtrack.events.api.STREAM_QUEUE), so keeping them costs what one more slow client does
CHANGES = 256
#: open events one camera may have at once: one more is refused (TooManyOpen)
MAX_OPEN = 32
#: changes a subscriber's queue holds before it loses its oldest
QUEUE = 256
#: a subscriber (by name) losing changes is logged at most this often
LOSS_LOG_INTERVAL = 60.0
#: kinds of one camera counted apart (metrics labels, MQTT state topics); more count as OTHER
MAX_KINDS = 64
OTHER = "other"


class TooManyOpen(Exception):
    """A camera has MAX_OPEN events open already."""


class SubscriptionClosed(Exception):
    """The subscription was closed (its reader left, or the bus closed)."""


class Subscription:
    """One subscriber's view of the bus: every change, in order, from its subscription on, through a
    queue of at most `limit` changes (the oldest is lost when a new one finds it full)."""

    def __init__(self, bus: EventBus, name: str, limit: int, camera: str | None) -> None:
        self.bus = bus
        #: what it is, in the log and in /metrics (a kind of subscriber, not one per client: "sse")
        self.name = name
        self.limit = limit
        #: only this camera's changes (None: every camera's)
        self.camera = camera
        #: changes lost because the queue was full
        self.dropped = 0
        self.closed = False
        self._queue: deque[Change] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, change: Change) -> None:
        """(The bus's.) Queue `change`, losing the oldest when full; never waits."""
        if self.closed or (self.camera is not None and change.camera != self.camera):
            return
        if len(self._queue) >= self.limit:
            self._queue.popleft()
            self.dropped += 1
            self.bus.dropped[self.name] += 1
            self.bus._lost(self.name)
        self._queue.append(change)
        self._ready.set()

    def replay(self, changes: Iterable[Change]) -> None:
        """(The bus's.) Queue changes published before the subscription (the newest `limit` of them
        that are this subscriber's): missed, not lost, so not counted."""
        mine = [change for change in changes if self.camera is None or change.camera == self.camera]
        self._queue.extend(mine[-self.limit:])
        if self._queue:
            self._ready.set()

    def get_nowait(self) -> Change | None:
        """The oldest change queued, else None."""
        return self._queue.popleft() if self._queue else None

    async def get(self) -> Change:
        """The oldest change queued, waiting for one; SubscriptionClosed once closed and empty."""
        while not self._queue:
            if self.closed:
                raise SubscriptionClosed(self.name)
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def __aiter__(self) -> AsyncIterator[Change]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                return

    def close(self) -> None:
        """Leave the bus: what is queued may still be read, then `get` raises SubscriptionClosed."""
        if not self.closed:
            self.closed = True
            self.bus._leave(self)
            self._ready.set()


class EventBus:
    """Events of every camera of a server: `start`, `update`, `end`; `subscribe` to every change."""

    def __init__(self, history: int = HISTORY, max_open: int = MAX_OPEN, changes: int = CHANGES) -> None:
        self.max_open = max_open
        #: the number of the last change published
        self.seq = 0
        #: events started, by (camera, kind)
        self.started: Counter[tuple[str, str]] = Counter()
        #: changes lost by slow subscribers, by subscriber name
        self.dropped: Counter[str] = Counter()
        self._open: dict[str, Event] = {}
        self._history: deque[Event] = deque(maxlen=history)
        self._changes: deque[Change] = deque(maxlen=changes)
        self._subscribers: list[Subscription] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._loss_logged: dict[str, float] = {}
        #: closed (the server stops): no event starts any more
        self.closed = False

    # publishing

    def start(self, camera: str, kind: str, *, source: str, details: dict[str, Any] | None = None,
              at: float | None = None, duration: float | None = None) -> Event:
        """A new event of `camera`, open until `end` (or for `duration` seconds). TooManyOpen when the
        camera has `max_open` open already."""
        if self.closed:
            raise TooManyOpen("the server is stopping")
        if sum(1 for event in self._open.values() if event.camera == camera) >= self.max_open:
            raise TooManyOpen(f"camera {camera} has {self.max_open} open events already: end one first")
        start = time.time() if at is None else at
        event = Event(new_id(start), camera, kind, start, None, dict(details or {}), source)
        self._open[event.id] = event
        self._history.append(event)
        self.started[camera, self.known_kind(camera, kind) or OTHER] += 1
        if duration is not None:
            self._timers[event.id] = asyncio.get_running_loop().call_later(duration, self.end, event.id)
        self._publish("start", event)
        return event

    def update(self, event_id: str, details: dict[str, Any]) -> Event | None:
        """Merge `details` into an open event's; None if it is not open."""
        event = self._open.get(event_id)
        if event is None:
            return None
        event.details.update(details)
        self._publish("update", event)
        return event

    def end(self, event_id: str, at: float | None = None, details: dict[str, Any] | None = None) -> Event | None:
        """End an open event (at `at`, else now), merging `details`; None if it is not open."""
        event = self._open.pop(event_id, None)
        if event is None:
            return None
        timer = self._timers.pop(event_id, None)
        if timer is not None:
            timer.cancel()
        event.end = max(event.start, time.time() if at is None else at)
        if details:
            event.details.update(details)
        self._publish("end", event)
        return event

    def end_all(self, details: dict[str, Any] | None = None) -> None:
        """End every open event now (the server stops)."""
        for event_id in list(self._open):
            self.end(event_id, details=details)

    def known_kind(self, camera: str, kind: str) -> str | None:
        """`kind` if it is one of the first MAX_KINDS kinds of `camera` (counted apart: a caller
        making up kinds must not grow /metrics or the broker's topics without end), else None."""
        if (camera, kind) in self.started:
            return kind
        if sum(1 for seen, _ in self.started if seen == camera) < MAX_KINDS:
            return kind
        return None

    def _publish(self, action: Action, event: Event) -> None:
        self.seq += 1
        change = Change(self.seq, action, copy.deepcopy(event.to_json()))
        self._changes.append(change)
        for subscriber in tuple(self._subscribers):
            subscriber.put(change)

    # reading

    def subscribe(self, name: str, limit: int = QUEUE, camera: str | None = None,
                  after: int | None = None) -> Subscription:
        """Every change from now on (of `camera`, or of all), until the subscription is closed; with
        `after` (a `seq` the subscriber saw last) first those published after it that the bus still
        keeps, the newest `limit` of them. An `after` beyond the last `seq` is one of another run of
        the server (its numbers started again): every change kept is after it. On a closed bus the
        subscription is closed already (what it replays may still be read)."""
        subscription = Subscription(self, name, limit, camera)
        if after is not None:
            subscription.replay(change for change in self._changes if change.seq > after or after > self.seq)
        self.dropped[name] += 0  # (the metric exists from the first subscriber on)
        if self.closed:
            subscription.closed = True
        else:
            self._subscribers.append(subscription)
        return subscription

    def _lost(self, name: str) -> None:
        """A subscriber named `name` lost a change: said once per name every LOSS_LOG_INTERVAL seconds
        (many clients of one kind, an SSE crowd, make one line)."""
        now = time.monotonic()
        if now - self._loss_logged.get(name, -LOSS_LOG_INTERVAL) >= LOSS_LOG_INTERVAL:
            self._loss_logged[name] = now
            logger.warning("event subscriber %s is too slow: it lost its oldest event change (said once a minute "
                           "at most; camtrack_event_changes_dropped_total{subscriber=\"%s\"} counts them)", name, name)

    def _leave(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def get(self, event_id: str) -> Event | None:
        """An open event, or one the history still holds."""
        return self._open.get(event_id) or next((e for e in self._history if e.id == event_id), None)

    def open_events(self, camera: str | None = None) -> list[Event]:
        return [event for event in self._open.values() if camera is None or event.camera == camera]

    def recent(self, camera: str | None = None, kind: str | None = None, since: float | None = None,
               before: str | None = None) -> Iterable[Event]:
        """The events the history holds, newest first, of `camera` and `kind`, started at or after
        `since`, and older than the event `before` (an id; KeyError if the history holds none such)."""
        events = reversed(self._history)
        if before is not None:
            ids = [event.id for event in self._history]
            if before not in ids:
                raise KeyError(before)
            events = reversed(list(self._history)[: ids.index(before)])
        for event in events:
            if (camera is None or event.camera == camera) and (kind is None or event.kind == kind) \
                    and (since is None or event.start >= since):
                yield event

    def close(self) -> None:
        """End every open event and every subscription (the server stops)."""
        self.closed = True
        self.end_all({"reason": "server stopping"})
        for subscription in tuple(self._subscribers):
            subscription.close()
