"""The numbered ring: how every item (frame, packet, JPEG) fans out from its maker to its readers.

Items carry a growing sequence number, `seq`. The ring holds the last `size` of them. A live
reader asks for the item after the one it has: it gets that item while the ring still holds it,
otherwise the newest, and the answer says how many it skipped; nothing is ever queued per reader,
so a slow reader costs no memory and never delays the others. A reader that needs every item
in order (a recorder, audio) asks with `in_order=True` and is told (`Overrun`) when it fell
further behind than the ring holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Numbered(Protocol):
    """An item with a sequence number that grows by one or more from item to item."""

    @property
    def seq(self) -> int: ...


T = TypeVar("T", bound=Numbered)


class Overrun(Exception):
    """An in-order reader fell further behind than the ring holds."""

    def __init__(self, wanted: int, oldest: int) -> None:
        super().__init__(f"item {wanted} is gone; the oldest held is {oldest}")
        self.wanted, self.oldest = wanted, oldest


@dataclass(frozen=True)
class Read(Generic[T]):
    """What a reader got: the item, and how many items it skipped to get it."""

    item: T
    skipped: int


class Ring(Generic[T]):
    """The last `size` items of a live sequence and the readers waiting for a newer one; with
    `max_bytes`, also no more than that many bytes as `weigh` counts them (the oldest items go
    first; the newest is always held).

    While closed (before `reopen()`, after `close()`), a reader with nothing newer to read gets
    the closing error.
    """

    def __init__(self, size: int, closed_error: Callable[[], Exception], *, max_bytes: int | None = None,
                 weigh: Callable[[T], int] | None = None) -> None:
        if size < 1:
            raise ValueError("a ring holds at least one item")
        if (max_bytes is None) != (weigh is None):
            raise ValueError("a byte budget needs a weight, and a weight a budget")
        self.size = size
        self.max_bytes = max_bytes
        self._weigh = weigh
        #: the bytes held, as `weigh` counts them (0 without a byte budget)
        self.bytes = 0
        self._items: deque[T] = deque()
        self._closed_error = closed_error
        self._open = False
        #: one future per waiting reader (cheaper than every reader shielding one shared future)
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def open(self) -> bool:
        return self._open

    @property
    def newest(self) -> T | None:
        return self._items[-1] if self._items else None

    @property
    def oldest(self) -> T | None:
        return self._items[0] if self._items else None

    def __iter__(self) -> Iterator[T]:
        """The held items, oldest first."""
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def reopen(self) -> None:
        """Start a new run: empty, and readers wait instead of failing."""
        self._items.clear()
        self.bytes = 0
        self._open = True

    def publish(self, item: T) -> None:
        """Add the newest item (its `seq` above every held one's) and wake the readers."""
        newest = self.newest
        if newest is not None and item.seq <= newest.seq:
            raise ValueError(f"item {item.seq} is not newer than {newest.seq}")
        items = self._items
        items.append(item)
        weigh = self._weigh
        if weigh is None:
            if len(items) > self.size:
                items.popleft()
        else:
            self.bytes += weigh(item)
            while len(items) > 1 and (len(items) > self.size or self.bytes > (self.max_bytes or 0)):
                self.bytes -= weigh(items.popleft())
        self._wake()

    def close(self) -> None:
        """Drop the items and fail whoever waits (and later askers too) with the closing error."""
        self._items.clear()
        self.bytes = 0
        self._open = False
        self._wake()  # woken readers find the ring closed and raise

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a cancelled reader's future is done already
                waiter.set_result(None)

    def get(self, seq: int) -> T | None:
        """The held item numbered `seq`, if any."""
        for item in reversed(self._items):
            if item.seq == seq:
                return item
            if item.seq < seq:
                break
        return None

    def since(self, predicate: Callable[[T], bool], within: int | None = None) -> list[T]:
        """The newest item matching `predicate` and every item after it (empty if none matches
        among the newest `within` items)."""
        items = list(self._items)
        start = len(items) - (within if within is not None else len(items))
        for index in range(len(items) - 1, max(start, 0) - 1, -1):
            if predicate(items[index]):
                return items[index:]
        return []

    async def next(self, after: int = 0, *, newest: bool = False, max_lag: int | None = None) -> Read[T]:
        """The item after number `after` while the ring holds it, else the newest (with the count
        skipped); waits when there is nothing after `after` yet.

        `newest=True` always takes the newest (a reader of pictures that only wants the latest);
        `max_lag` takes the newest when the next is more than that many items behind it.
        """
        while True:
            if self._items and self._items[-1].seq > after:
                return self._pick(after, newest, max_lag)
            if not self._open:
                raise self._closed_error()
            await self._wait()

    async def next_in_order(self, after: int = 0) -> T:
        """The item right after number `after`, for readers that need every item (a recorder,
        audio): `Overrun` if the ring no longer holds it. Waits when there is none yet."""
        while True:
            if self._items and self._items[-1].seq > after:
                oldest = self._items[0]
                if after and oldest.seq > after + 1:
                    raise Overrun(after + 1, oldest.seq)
                return self._pick(after, False, None).item
            if not self._open:
                raise self._closed_error()
            await self._wait()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # a reader that leaves while waiting: do not keep its future until the next item
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _pick(self, after: int, newest: bool, max_lag: int | None) -> Read[T]:
        last = self._items[-1]
        if after == 0:
            return Read(last, 0)  # a first read starts at the newest
        lag = last.seq - after
        if newest or (max_lag is not None and lag > max_lag) or self._items[0].seq > after + 1:
            return Read(last, lag - 1)
        for item in self._items:
            if item.seq > after:
                return Read(item, item.seq - after - 1)
        raise AssertionError("unreachable: the newest item is above `after`")
