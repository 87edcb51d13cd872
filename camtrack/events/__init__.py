"""Events: something happened at a camera, from a start to an end (camtrack/events/, docs/events.md).

`model` is what an event is, `bus` carries every change of one to its subscribers and keeps the recent
ones; the sources make them (`motion` and `data`: the processing stage's data, read by `watcher`; the
HTTP calls of `api`), the outputs send them on (`api`'s Server-Sent Events, `webhook`, `mqtt`), and
`recording` is what a recorder needs of them.
"""

from .bus import EventBus, Subscription, TooManyOpen
from .model import Change, Event

__all__ = ["Change", "Event", "EventBus", "Subscription", "TooManyOpen"]
